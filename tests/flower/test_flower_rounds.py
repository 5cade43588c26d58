"""secrobust.flower against real S0, S1 and dealer processes, with Flower's ServerApp and ClientApps run in
this process (``run_inprocess``: no Ray). Every round the SecRobust strategy returns is what
``secrobust.aggregate`` returns on the clients' updates, bit for bit, in every reveal mode; the Flower
side never carries an update; the mod refuses a plain FedAvg train message."""

from __future__ import annotations

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

import secrobust  # noqa: E402
from secrobust.deploy.local import in_process_reference  # noqa: E402
from secrobust.flower import FlowerServers, SecRobust, SecRobustMod, run_inprocess  # noqa: E402
from secrobust.flower import keys as K  # noqa: E402
from secrobust.flower.binding import CHALLENGE_FIELD, Challenge, WorkerBinding  # noqa: E402
from deployments import running  # noqa: E402

N = 7
D = 60
SEED = 4321


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    yield from running(FlowerServers, N, tmp_path_factory.mktemp("flower"))


def _updates(seed: int, rounds: int = 2, n: int = N, d: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) * 0.5 + 0.1 * rng.normal(size=(rounds, n, d))
    x[:, 0] = -3.0 * x[:, 0]          # one outlier per round
    return x


def _client(srv: FlowerServers, x: np.ndarray) -> ClientApp:
    """Client i returns the global model plus its fixed update x[round - 1, i] (float64: the mod's
    difference of the two is then the update exactly)."""
    app = ClientApp(mods=[SecRobustMod(worker_config=srv.worker_config_template())])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        r = int(msg.content["config"]["server-round"])
        base = msg.content["arrays"].to_numpy_ndarrays()[0]
        return Message(RecordDict({"arrays": ArrayRecord([base + x[r - 1, pid]]),
                                   "metrics": MetricRecord({"num-examples": 10, "loss": float(pid)})}), reply_to=msg)

    return app


def _run(srv: FlowerServers, x: np.ndarray, rule: str, f: int, **kw):
    rounds, n, d = x.shape
    strategy = SecRobust(srv.operator_configs(), rule, f, fraction_evaluate=0.0, min_available_nodes=n,
                         min_train_nodes=n, **kw)
    server = ServerApp()
    final = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        final["result"] = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(d)]), num_rounds=rounds)

    try:
        grid = run_inprocess(server, _client(srv, x), n)
    finally:
        strategy.close()
    return strategy, grid, final["result"]


def _same(got: secrobust.AggregateResult, want: secrobust.AggregateResult) -> None:
    assert np.array_equal(got.aggregate, want.aggregate)
    assert (got.weights is None) == (want.weights is None)
    if want.weights is not None:
        assert np.array_equal(got.weights, want.weights)
    assert set(got.revealed) == set(want.revealed)
    for key, value in want.revealed.items():
        assert np.array_equal(got.revealed[key], value, equal_nan=True)
    assert got.participants == want.participants
    assert got.rejected == want.rejected
    assert (got.rule, got.f, got.reveal) == (want.rule, want.f, want.reveal)


CASES = [("krum", "distances", {}), ("krum", "weights", {}), ("krum", "aggregate", {"dp_noise_std": 0.01}),
         ("multi-krum", "weights", {"options": {"m": 3}}), ("median", "aggregate", {}),
         ("norm-clip", "aggregate", {"options": {"tau": 0.8}}), ("mean", "distances", {"norm_bound": 12.0}),
         ("krum", "distances", {"options": {"pre": "nnm"}})]


@pytest.mark.parametrize(("rule", "reveal", "kw"), CASES, ids=[f"{r}-{m}-{'-'.join(k)}" for r, m, k in CASES])
def test_every_round_is_secrobust_aggregate_bit_for_bit(servers, rule, reveal, kw):
    x = _updates(len(rule) * 7 + len(reveal))
    if "norm_bound" in kw:
        x[:, 3] *= 4.0                    # above the norm bound (not the encoder's): the check rejects worker 3
    strategy, grid, result = _run(servers, x, rule, 1, reveal=reveal, insecure_test_seed=SEED, **kw)
    assert [rec.error for rec in strategy.history] == [None, None]
    options = dict(kw.pop("options", {}))
    model = np.zeros(D)
    for rec in strategy.history:
        assert rec.worker_ids == tuple(range(N)) and not rec.declined
        updates = x[rec.server_round - 1]
        want = secrobust.aggregate(updates, rule, 1, reveal=reveal, insecure_test_seed=SEED, **kw, **options)
        _same(rec.result, want)
        if "dp_noise_std" not in kw:     # byte counts too, as the deployment counts them (tests/net)
            ref = in_process_reference(rec.round_id, updates, rule, 1, reveal=reveal, insecure_test_seed=SEED,
                                       **kw, **options)
            assert dict(rec.result.stats.bytes_sent) == dict(ref.stats.bytes_sent)
            assert dict(rec.result.stats.messages_sent) == dict(ref.stats.messages_sent)
        if "norm_bound" in kw:
            assert 3 in rec.result.rejected
        model = model + rec.result.aggregate
    # the global model is the sum of the rounds' robust aggregates (the clients send differences)
    assert np.array_equal(result.arrays.to_numpy_ndarrays()[0], model)


def test_the_flower_server_never_carries_an_update(servers):
    d = 4000
    x = _updates(5, rounds=1, d=d) / np.sqrt(d / D)
    strategy, grid, _ = _run(servers, x, "krum", 1, reveal="weights")
    assert strategy.history[0].result is not None
    # what crossed Flower's links from the clients, all replies of both stages together: metrics and a few
    # config values, less than one update's 8d bytes
    assert grid.bytes_from_clients < d * 8
    assert grid.bytes_to_clients > N * d * 8          # the global model went out to each client


def test_the_mod_refuses_a_plain_fedavg_train_message(servers):
    x = _updates(6, rounds=1)
    app = _client(servers, x)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    try:
        msg = Message(RecordDict({"arrays": ArrayRecord([np.zeros(D)]), "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=1, message_type="train")
        with pytest.raises(ValueError, match="never sent to the Flower server"):
            app(msg, ctx)
        challenge = Challenge.fresh(1, 1)
        msg.content.config_records[K.RECORD] = ConfigRecord({"stage": K.STAGE_TRAIN, "server-round": 1,
                                                             CHALLENGE_FIELD: challenge.encode()})
        reply = app(msg, ctx)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert not reply.content.array_records                          # the update stayed on the client
    record = reply.content.config_records[K.RECORD]
    assert record["worker"] == 0
    # the reply proves worker 0 for node 1 in this round, under the CAs the operators hold
    binding = WorkerBinding(servers.identity("operator:S0").cas)
    assert binding.bind(1, record, challenge) == 0
    assert np.array_equal(ctx.state.array_records[K.STATE]["update"].numpy(), x[0, 0])


def test_a_client_that_cannot_share_is_left_out_and_the_round_goes_on(servers):
    x = _updates(7, rounds=1)
    x[0, 2, 0] = np.inf                   # the honest encoder refuses it: worker 2 declines at both servers
    # the servers wait for the share window before they go on without it (a decline does not close the
    # intake), so the window is short here
    strategy, _, _ = _run(servers, x, "krum", 1, reveal="weights", insecure_test_seed=SEED, share_window_s=3.0)
    rec = strategy.history[0]
    assert rec.error is None and set(rec.declined) == {2}
    assert 2 not in rec.result.participants
    kept = [i for i in range(N) if i != 2]
    rows = x[0].copy()
    rows[2] = 0.0                         # never read: worker 2 is dropped at both servers in process too
    want = secrobust.aggregate(rows, "krum", 1, reveal="weights", insecure_test_seed=SEED, drop={2: "both"})
    assert np.array_equal(rec.result.aggregate, want.aggregate)
    assert rec.result.participants == tuple(kept) == want.participants
