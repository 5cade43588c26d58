"""Start the dealer, S0 and S1 (each its own process), then this Flower app on Flower's Simulation Engine.

    .venv/bin/python examples/flower/run.py --clients 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from flwr.simulation import run_simulation

    from secrobust.flower import FlowerServers
    from secrobust_example import client_app, server_app

    with FlowerServers(args.clients) as servers:
        # what `flwr run` would read from pyproject.toml's [tool.flwr.app.config]
        os.environ["SECROBUST_DIR"] = str(servers.cert_dir)
        os.environ["SECROBUST_WORKER_CONFIG"] = servers.worker_config_template()
        os.environ["SECROBUST_EXAMPLE_CONFIG"] = json.dumps(
            {"num-server-rounds": args.rounds, "rule": "krum", "f": 2, "byzantine": 2, "attack": "sign-flip",
             "share-window-s": 60.0, "fraction-evaluate": 0.0})
        run_simulation(server_app=server_app.app, client_app=client_app.app, num_supernodes=args.clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"include_dashboard": False, "logging_level": "ERROR"}})


if __name__ == "__main__":
    main()
