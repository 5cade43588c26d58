"""100 Flower clients on Flower's Simulation Engine (Ray) against real S0, S1 and dealer processes: seconds
per round and memory, written to bench/results/flower_sim.{md,json}.

Usage (about 5 minutes on an idle 2-core machine):
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python bench/flower_sim_bench.py \\
        --clients 100 --byzantine 20 --rounds 3 --rule multi-krum
Each round's seconds split into: train (the ServerApp sends the global model, the 100 ClientApps train on
two Ray actors and answer with their worker id), share (the share stage: every client encodes its update
and shares it with S0 and S1 over mutual TLS) and collect (the servers finish the rule and the strategy
fetches the two aggregate shares). Memory: VmHWM of S0, S1 and the dealer, of this process (ServerApp,
SuperLink state) and the sampled peak of the summed RSS of the whole process tree (Ray's processes too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "flower_sim.md"
MB = 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--byzantine", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rule", default="multi-krum")
    ap.add_argument("--reveal", default="distances")
    ap.add_argument("--attack", default="sign-flip")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--backend", default="ray")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from secrobust.flower.sim import SimConfig, run

    cfg = SimConfig(clients=args.clients, byzantine=args.byzantine, rounds=args.rounds, rule=args.rule,
                    reveal=args.reveal, attack=args.attack,
                    attack_options={"scale": 8.0} if args.attack == "sign-flip" else {},
                    dataset=args.dataset, model=args.model, backend=args.backend)
    s = run(cfg, None, progress=lambda t: print(t, flush=True))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    mem = s["memory_bytes"]
    lines = [f"# Flower simulation: {cfg.clients} clients, {cfg.byzantine} Byzantine ({cfg.attack}), {cfg.rule}, "
             f"reveal={cfg.reveal}", "",
             f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
             f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}, commit {commit}",
             f"- machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
             f"- flwr {s['flwr_version']} ({'Simulation Engine, Ray' if cfg.backend == 'ray' else 'in process'}), "
             f"dataset {s['dataset']}, model {cfg.model} (d = {s['d']}), local SGD {cfg.local_steps} steps of "
             f"{cfg.batch_size}, lr {cfg.lr}",
             f"- servers started in {s['seconds']['servers_startup']:.1f} s; whole Flower run "
             f"{s['seconds']['flower_run']:.1f} s (Ray start included)", "",
             "| round | train s | share s | collect s | round s | participants | Byzantine weight | test accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for r, total in zip(s["rounds"], s["seconds"]["per_round"]):
        sec = r["seconds"]
        lines.append(f"| {r['server_round']} | {sec['train']:.2f} | {sec.get('share', 0):.2f} | "
                     f"{sec.get('collect', 0):.2f} | {total:.2f} | {r['participants']} | {r['byzantine_weight']} | "
                     f"{s['accuracy'][str(r['server_round'])]:.4f} |")
    servers = ", ".join(f"{k} {v / MB:.0f} MB" for k, v in mem["peak_rss_servers"].items())
    lines += ["", f"Memory (peak RSS): {servers}; this process (ServerApp + SuperLink state) "
              f"{mem['peak_rss_this_process'] / MB:.0f} MB; whole process tree (Ray's workers included, sampled "
              f"every 0.5 s) {mem['peak_rss_process_tree_sampled'] / MB:.0f} MB.", "",
              f"final accuracy {s['final_accuracy']:.4f} (initial {s['initial_accuracy']:.4f}), "
              f"byzantine_weight {s['byzantine_weight']}"]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(s, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
