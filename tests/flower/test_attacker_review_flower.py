"""Attacker review (2026-12-07), secrobust x Flower: what a bound Byzantine ClientApp controls besides its
update. Its metrics go into FedAvg's weighted metric average in ``SecRobust.aggregate_train`` before the
round's error handling: two Byzantine clients reporting num-examples of +1e308 and -1e308 (the first and
last worker id, so the float sum absorbs every honest count and then cancels to 0.0) made that average
divide by zero, and the ZeroDivisionError stopped the ServerApp. Now the metrics are dropped with a
WARNING and the round goes on (docs/ranges.md, "Known seams (attacker review, 2026-12-07)")."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

import secrobust  # noqa: E402
from secrobust.flower import FlowerServers, SecRobust, SecRobustMod, run_inprocess  # noqa: E402
from deployments import running  # noqa: E402

N = 7
D = 24
F = 2
SEED = 1207
HUGE = {0: 1e308, N - 1: -1e308}
"""Byzantine clients' reported num-examples: sum([1e308, 10, ..., 10, -1e308]) == 0.0 in floats."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    yield from running(FlowerServers, N, tmp_path_factory.mktemp("flower-review"))


def test_byzantine_metrics_do_not_stop_the_server_app(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    rng = np.random.default_rng(SEED)
    x = 0.1 * rng.normal(size=(N, D))
    assert sum([HUGE[0]] + [10] * (N - 2) + [HUGE[N - 1]]) == 0.0

    app = ClientApp(mods=[SecRobustMod(worker_config=servers.worker_config_template())])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        base = msg.content["arrays"].to_numpy_ndarrays()[0]
        count: Any = HUGE.get(pid, 10)
        return Message(RecordDict({"arrays": ArrayRecord([base + x[pid]]),
                                   "metrics": MetricRecord({"num-examples": count, "loss": 1.0})}), reply_to=msg)

    strategy = SecRobust(servers.operator_configs(), "krum", F, reveal="weights", insecure_test_seed=SEED,
                         fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(D)]), num_rounds=1)

    try:
        run_inprocess(server, app, N)
    finally:
        strategy.close()
    assert len(strategy.history) == 1
    rec = strategy.history[0]
    assert rec.error is None and rec.worker_ids == tuple(range(N))
    want = secrobust.aggregate(x, "krum", F, reveal="weights")
    assert np.array_equal(rec.result.weights, want.weights)
    assert any("metrics not aggregated" in r.getMessage() for r in caplog.records), caplog.text
