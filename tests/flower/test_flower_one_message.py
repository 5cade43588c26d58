"""One message per node and round (issue 21): with each node pinned to its worker, ``one_message=True`` opens
the round before training and each node trains and shares in one ClientApp call. Against real S0, S1 and
dealer processes, with the ServerApp and the ClientApps in this process (node ids 1001 + partition id)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flower_apps import run_strategy, stepping_client
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from secrobust.deploy.local import LocalOptions
from secrobust.flower import FlowerServers, SecRobust
from secrobust.flower import keys as K
from secrobust.flower.inprocess import FIRST_NODE_ID
from secrobust.flower.strategy import SecRobustError

N = 6
D = 12
BYZ = 0
PINS = {FIRST_NODE_ID + i: i for i in range(N)}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    srv = FlowerServers(N, tmp_path_factory.mktemp("one-message"),
                        LocalOptions(share_window_s=30.0, peer_timeout_s=15.0, connect_timeout_s=2.0))
    with srv:
        yield srv


def _client(srv: FlowerServers, stages: list, worker_config=None) -> ClientApp:
    def count(msg: Message, ctx: Context, nxt):
        cfg = msg.content.config_records.get(K.RECORD)
        stages.append((int(ctx.node_config["partition-id"]), None if cfg is None else cfg.get("stage")))
        return nxt(msg, ctx)

    return stepping_client(srv, D, BYZ, count, worker_config=worker_config)


def _run(srv: FlowerServers, rounds: int = 2, worker_config=None, **kw):
    strategy = SecRobust(srv.operator_configs(), "krum", 1, reveal="weights", fraction_evaluate=0.0, **kw)
    stages: list = []
    return strategy, run_strategy(strategy, _client(srv, stages, worker_config), N, rounds, D), stages


def test_one_message_per_node_and_round_gives_the_two_message_result(servers):
    one, result1, stages1 = _run(servers, one_message=True, node_workers=PINS)
    assert sorted(stages1) == sorted((pid, K.STAGE_TRAIN_SHARE) for pid in range(N) for _ in range(2))
    two, result2, stages2 = _run(servers, node_workers=PINS)
    assert sorted(stages2) == sorted([(pid, s) for pid in range(N) for s in (K.STAGE_TRAIN, K.STAGE_SHARE)] * 2)
    for strategy in (one, two):
        for r in (1, 2):
            weights = strategy.round_metrics[r]["secrobust-weights"]
            assert weights[BYZ] == 0.0 and strategy.round_metrics[r]["secrobust-participants"] == N
    final1, final2 = (r.arrays.to_numpy_ndarrays()[0] for r in (result1, result2))
    assert np.array_equal(final1, final2) and not np.array_equal(final1, np.zeros(D))


def test_without_pinned_nodes_one_message_falls_back_to_two(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    strategy, _, stages = _run(servers, rounds=1, one_message=True)
    assert sorted(s for _, s in stages) == sorted([K.STAGE_TRAIN, K.STAGE_SHARE] * N)
    assert any("one-message needs each node pinned" in r.getMessage() for r in caplog.records)
    assert strategy.round_metrics[1]["secrobust-weights"][BYZ] == 0.0


def test_a_node_with_another_workers_key_aborts_the_round_opened_before_training(servers):
    """Node 4 runs with worker 3's files: its share may already be in the round (as worker 3's), so the
    round is aborted, not aggregated."""
    template = servers.worker_config_template()

    def config(ctx: Context) -> str:
        pid = int(ctx.node_config["partition-id"])
        return template.replace("{partition-id}", str(3 if pid == 4 else pid))

    with pytest.raises(SecRobustError, match=r"opened before training\) aborted: .*node 1005: node 1005 is "
                       r"provisioned as worker 4, its binding proves worker 3"):
        _run(servers, rounds=1, worker_config=config, one_message=True, node_workers=PINS)
