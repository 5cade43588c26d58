"""ServerApp: SecRobust from the run config; writes what the test checks to ``summary-file``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from secrobust.flower import SecRobust

from .client_app import D

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    ends: list[float] = []
    strategy = SecRobust.from_run_config(cfg, fraction_evaluate=0.0, on_round=lambda rec: ends.append(time.time()))
    initial = np.zeros(D)
    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord([initial]),
                                num_rounds=int(cfg["num-server-rounds"]))
    finally:
        strategy.close()
    final = result.arrays.to_numpy_ndarrays()[0]
    summary = {"rounds": [{"server_round": r.server_round, "round_id": r.round_id, "workers": list(r.worker_ids),
                           "weights": None if r.result is None or r.result.weights is None
                           else [float(v) for v in r.result.weights], "error": r.error,
                           "seconds": r.seconds} for r in strategy.history],
               "initial": initial.tolist(), "final": final.tolist(), "round_ends": ends}
    if cfg.get("summary-file"):
        Path(str(cfg["summary-file"])).write_text(json.dumps(summary))
