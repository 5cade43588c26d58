"""What the Flower tests share: a ClientApp whose nodes each step the model by a fixed vector (one node,
the Byzantine one, by -30 times it) through secrobust's mod, and waiting for ``flower-servers`` to be up.
Import it after ``pytest.importorskip("flwr")``."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from secrobust.flower import SecRobustMod, run_inprocess


def stepping_client(srv: Any, d: int, byzantine: int, *before: Callable, worker_config: Any = None,
                    on_train: Callable[[int], None] | None = None) -> Any:
    """A ClientApp for ``srv`` (a FlowerServers): node p returns w + (1 + 0.01 p), node ``byzantine``
    w - 30 (1 + 0.01 p); ``before`` are mods that run ahead of secrobust's."""
    app = ClientApp(mods=[*before, SecRobustMod(worker_config=worker_config or srv.worker_config_template())])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if on_train is not None:
            on_train(pid)
        w = msg.content["arrays"].to_numpy_ndarrays()[0]
        step = np.ones(d) + 0.01 * pid
        if pid == byzantine:
            step = -30.0 * step
        return Message(RecordDict({"arrays": ArrayRecord([w + step]),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    return app


def run_strategy(strategy: Any, client: Any, nodes: int, rounds: int, d: int) -> Any:
    """Run ``strategy`` from a zero model of dimension ``d`` for ``rounds`` rounds with ``nodes`` in-process
    nodes of ``client``, close it, and return what ``strategy.start`` returned (None if it raised)."""
    server = ServerApp()
    out = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        out["result"] = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(d)]), num_rounds=rounds)

    try:
        run_inprocess(server, client, nodes)
    finally:
        strategy.close()
    return out.get("result")


def wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 180.0) -> dict:
    """The ready file ``flower-servers --ready-file`` writes, once it is there (the launcher's output if it dies)."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "flower-servers did not get ready"
        time.sleep(0.2)
    return json.loads(ready.read_text())
