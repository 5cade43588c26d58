"""ServerApp: FedAvg replaced by SecRobust, which runs every training round at S0 and S1."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from secrobust.flower import SecRobust

from .task import app_config, model, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = app_config(context)
    net = model()
    # was: strategy = FedAvg(fraction_evaluate=0.0); rule, f, reveal, servers (secrobust-dir), ... come from
    # [tool.flwr.app.config]; a missing secrobust-dir or unreachable servers stop the run with one clear error
    strategy = SecRobust.from_run_config(cfg)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = test(net)
        return MetricRecord({"accuracy": acc, "loss": loss})

    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(net.state_dict()),
                                num_rounds=int(cfg.get("num-server-rounds", 3)), evaluate_fn=evaluate)
    finally:
        strategy.close()
    path = strategy.history_path()
    if path is not None:        # the final model beside secrobust's history, as Flower's checkpoint guide saves it
        net.load_state_dict(result.arrays.to_torch_state_dict())
        torch.save(net.state_dict(), path.parent / "final_model.pt")
        print(f"secrobust's history: {path}; final model: {path.parent / 'final_model.pt'}")
    for rec in strategy.history:
        print(f"round {rec.server_round}: secrobust round {rec.round_id}, weights "
              f"{None if rec.result is None or rec.result.weights is None else rec.result.weights.round(3)}")
    print("final accuracy", result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]["accuracy"])
