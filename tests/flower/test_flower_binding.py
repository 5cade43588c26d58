"""Issue 18, point 2: a Flower client's worker id is bound to its node out of band, never taken from its
reply. Byzantine ClientApps (a mod in front of ``SecRobustMod`` that rewrites the train reply) try to
censor an honest client by claiming its id, to fail the round with an id the servers do not admit, to
kill the ServerApp with a malformed reply, and to replay another node's signed binding. In every case
the bad reply alone is dropped with a logged reason, the round completes, and the honest clients'
rows are aggregated as ``secrobust.aggregate`` aggregates them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from deployments import running  # noqa: E402
from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

import secrobust  # noqa: E402
from secrobust.flower import FlowerServers, SecRobust, SecRobustMod, run_inprocess  # noqa: E402
from secrobust.flower import keys as K  # noqa: E402
from secrobust.flower.inprocess import FIRST_NODE_ID  # noqa: E402

N = 9
D = 40
SEED = 977
ATTACKER = 1
VICTIM = 0

Tamper = Callable[[int, Message, dict[str, Any]], "dict[str, Any] | None"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    yield from running(FlowerServers, N, tmp_path_factory.mktemp("flower-binding"))


def _updates(seed: int, rounds: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=D) * 0.5 + 0.1 * rng.normal(size=(rounds, N, D))


def _node(pid: int) -> int:
    return FIRST_NODE_ID + pid


def _client(srv: FlowerServers, x: np.ndarray, tamper: Tamper | None, worker_config: Any = None) -> ClientApp:
    """Client i returns the global model plus x[round - 1, i]; ``tamper(pid, train message, record)`` may
    replace the secrobust record of a train reply (a Byzantine ClientApp's own code)."""

    def byzantine(msg: Message, ctx: Context, call_next: Any) -> Message:
        reply = call_next(msg, ctx)
        rec = None if reply.has_error() else reply.content.config_records.get(K.RECORD)
        if tamper is None or rec is None or rec.get("stage") != K.STAGE_TRAINED:
            return reply
        new = tamper(int(ctx.node_config["partition-id"]), msg, dict(rec))
        if new is not None:
            reply.content.config_records[K.RECORD] = ConfigRecord(new)
        return reply

    app = ClientApp(mods=[byzantine, SecRobustMod(worker_config=worker_config or srv.worker_config_template())])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        r = int(msg.content["config"]["server-round"])
        base = msg.content["arrays"].to_numpy_ndarrays()[0]
        return Message(RecordDict({"arrays": ArrayRecord([base + x[r - 1, pid]]),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    return app


def _run(srv: FlowerServers, x: np.ndarray, tamper: Tamper | None, worker_config: Any = None,
         **kw: Any) -> SecRobust:
    rounds = x.shape[0]
    strategy = SecRobust(srv.operator_configs(), "krum", 1, reveal="weights", insecure_test_seed=SEED,
                         fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N, **kw)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(D)]), num_rounds=rounds)

    try:
        run_inprocess(server, _client(srv, x, tamper, worker_config), N)
    finally:
        strategy.close()
    return strategy


def _honest_rounds(strategy: SecRobust, x: np.ndarray, dropped: set[int]) -> None:
    """Every round completed over exactly the other clients, the victim included, with krum's weights and
    aggregate on their rows."""
    kept = tuple(i for i in range(N) if i not in dropped)
    assert len(strategy.history) == x.shape[0]
    for rec in strategy.history:
        assert rec.error is None
        assert rec.worker_ids == kept and VICTIM in rec.worker_ids
        assert rec.node_ids == tuple(_node(i) for i in kept)
        assert len(rec.result.participants) == len(kept)
        want = secrobust.aggregate(x[rec.server_round - 1][list(kept)], "krum", 1, reveal="weights")
        assert np.array_equal(rec.result.weights, want.weights)
        assert np.allclose(rec.result.aggregate, want.aggregate, atol=1e-3)


def _logged(caplog: pytest.LogCaptureFixture, node: int, *words: str) -> None:
    lines = [r.getMessage() for r in caplog.records
             if r.name == "secrobust.flower" and r.levelno == logging.WARNING and f"node {node}" in r.getMessage()]
    assert any(all(w in line for w in words) for line in lines), lines


# the three attacks of the issue


def test_a_client_claiming_an_honest_clients_id_does_not_censor_it(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(11, rounds=2)

    def claim_victim(pid: int, msg: Message, rec: dict[str, Any]) -> dict[str, Any] | None:
        if pid == ATTACKER:
            rec["worker"] = VICTIM
            return rec
        return None

    strategy = _run(servers, x, claim_victim)
    _honest_rounds(strategy, x, {ATTACKER})
    _logged(caplog, _node(ATTACKER), "worker 0", "worker 1")


def test_a_client_claiming_an_id_the_servers_do_not_admit_does_not_fail_the_round(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(12, rounds=1)

    def claim_unknown(pid: int, msg: Message, rec: dict[str, Any]) -> dict[str, Any] | None:
        if pid == ATTACKER:
            rec["worker"] = 99
            return rec
        return None

    strategy = _run(servers, x, claim_unknown)
    _honest_rounds(strategy, x, {ATTACKER})
    _logged(caplog, _node(ATTACKER), "worker 99")


MALFORMED = {
    2: lambda rec: {**rec, "worker": "abc"},
    3: lambda rec: {**rec, "d": "many"},
    4: lambda rec: {k: v for k, v in rec.items() if k != "worker"} | {"worker": [1, 2]},
    5: lambda rec: {**rec, **{k: b"\x00garbage" for k in rec if isinstance(rec[k], bytes)}, "worker": 5},
}


def test_malformed_replies_are_dropped_alone_and_the_serverapp_lives(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(13, rounds=2)

    def malformed(pid: int, msg: Message, rec: dict[str, Any]) -> dict[str, Any] | None:
        return MALFORMED[pid](rec) if pid in MALFORMED else None

    strategy = _run(servers, x, malformed)
    _honest_rounds(strategy, x, set(MALFORMED))
    for pid in MALFORMED:
        _logged(caplog, _node(pid), "dropped")


# forged and replayed bindings


def test_another_nodes_signed_reply_replayed_in_the_same_round_is_dropped(servers, caplog):
    """The attacker waits for the victim's reply of this very round and sends a copy of its record: the
    victim's certificates and a signature the victim made, but for the victim's node, not the attacker's."""
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(14, rounds=2)
    seen: dict[int, dict[str, Any]] = {}
    ready = {r: threading.Event() for r in (1, 2)}

    def replay(pid: int, msg: Message, rec: dict[str, Any]) -> dict[str, Any] | None:
        r = int(msg.content["config"]["server-round"])
        if pid == VICTIM:
            seen[r] = dict(rec)
            ready[r].set()
            return None
        if pid == ATTACKER:
            assert ready[r].wait(30.0)
            return dict(seen[r])
        return None

    strategy = _run(servers, x, replay)
    _honest_rounds(strategy, x, {ATTACKER})
    _logged(caplog, _node(ATTACKER), "signature")


def test_a_valid_certificate_with_a_forged_signature_is_dropped(servers, caplog):
    """The attacker shows the victim's (public) certificates with its own claim: it cannot sign for them."""
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(15, rounds=1)
    from secrobust.flower import binding as B

    victim = servers.identity("worker:0")

    def forge(pid: int, msg: Message, rec: dict[str, Any]) -> dict[str, Any] | None:
        if pid != ATTACKER:
            return None
        rec.update({B.CERT_FIELDS["S0"]: victim.certs["S0"], B.CERT_FIELDS["S1"]: victim.certs["S1"],
                    "worker": VICTIM})
        return rec

    strategy = _run(servers, x, forge)
    _honest_rounds(strategy, x, {ATTACKER})
    _logged(caplog, _node(ATTACKER), "signature")


def test_a_certified_worker_the_servers_do_not_admit_is_dropped_before_the_round_opens(servers, caplog, tmp_path):
    """worker:9 holds a key certified by both CAs (so it can sign a correct binding), but the servers admit
    workers 0..N-1 only: its reply is dropped instead of making open-round fail for everyone."""
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    from secrobust.flower import binding as B
    from secrobust.pki.ceremony import make_deployment_certs
    from secrobust.pki.certs import Identity, party_paths

    paths = make_deployment_certs(servers.cert_dir, ["worker:9"])["worker:9"]
    outsider = Identity.load(party_paths(paths.key.parent, "worker:9"))
    x = _updates(16, rounds=1)

    def outsider_signs(pid: int, msg: Message, rec: dict[str, Any]) -> dict[str, Any] | None:
        if pid != ATTACKER:
            return None
        challenge = B.Challenge.from_record(msg.content.config_records[K.RECORD])
        rec.update(B.sign_binding(outsider, challenge, msg.metadata.dst_node_id))
        rec["worker"] = 9
        return rec

    strategy = _run(servers, x, outsider_signs)
    _honest_rounds(strategy, x, {ATTACKER})
    _logged(caplog, _node(ATTACKER), "worker 9", "admit")


def test_a_node_pinned_by_provisioning_cannot_bring_another_workers_key(servers, caplog):
    """``node_workers`` (from provisioning, e.g. Flower's node authentication) pins each node to one worker:
    a node that signs with another worker's valid key is dropped, and an unlisted node too."""
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(17, rounds=1)
    pins = {_node(i): i for i in range(N)}
    pins[_node(ATTACKER)] = 7            # provisioning says the attacker's node is worker 7's
    del pins[_node(7)]                   # and worker 7's node is not provisioned at all
    strategy = _run(servers, x, None, node_workers=pins)
    _honest_rounds(strategy, x, {ATTACKER, 7})
    _logged(caplog, _node(ATTACKER), "worker 1", "worker 7")
    _logged(caplog, _node(7), "not provisioned")


def test_one_workers_key_on_two_nodes_binds_neither(servers, caplog):
    """Node 8 runs with worker 7's key and certificates: both bindings are valid, the servers take one
    share per worker, so both replies sit out (only the key holder loses) and the round goes on."""
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    x = _updates(18, rounds=1)
    template = servers.worker_config_template()

    def config(ctx: Context) -> str:
        return template.replace("{partition-id}", str(min(int(ctx.node_config["partition-id"]), 7)))

    strategy = _run(servers, x, None, worker_config=config)
    _honest_rounds(strategy, x, {7, 8})
    for pid in (7, 8):
        _logged(caplog, _node(pid), "worker 7", "nodes")


# the binding itself, without servers


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from secrobust.pki.ceremony import make_deployment_certs
    from secrobust.pki.certs import Identity, party_paths

    def load(root, party):
        paths = make_deployment_certs(root, [party])[party]
        return Identity.load(party_paths(paths.key.parent, party))

    root = tmp_path_factory.mktemp("binding-pki")
    other = tmp_path_factory.mktemp("foreign-pki")
    ids = {p: load(root, p) for p in ("worker:0", "worker:1", "dealer")}
    ids["foreign:0"] = load(other, "worker:0")
    return ids


def _binding(pki, **kw):
    from secrobust.flower.binding import WorkerBinding

    return WorkerBinding(pki["worker:0"].cas, **kw)


def _refused(binding, node, record, challenge, *words):
    from secrobust.flower.binding import BindingRefused

    with pytest.raises(BindingRefused) as info:
        binding.bind(node, record, challenge)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_a_binding_holds_for_its_node_round_run_and_nonce_only(pki):
    from secrobust.flower.binding import Challenge, sign_binding

    b = _binding(pki)
    ch = Challenge.fresh(run_id=2**63 + 5, server_round=3)
    rec = {"stage": K.STAGE_TRAINED, "worker": 1, "d": 4, **sign_binding(pki["worker:1"], ch, 77)}
    assert b.bind(77, rec, ch) == 1
    assert b.bind(77, {k: v for k, v in rec.items() if k != "worker"}, ch) == 1
    assert Challenge.decode(ch.encode()) == ch
    _refused(b, 78, rec, ch, "signature", "node 78")                                      # another node
    _refused(b, 77, rec, Challenge.fresh(ch.run_id, 4), "signature")                      # a later round
    _refused(b, 77, rec, Challenge(ch.run_id + 1, 3, ch.nonce), "signature")             # another run
    _refused(b, 77, rec, Challenge.fresh(ch.run_id, 3), "signature")                      # another nonce
    assert Challenge.fresh(1, 1).nonce != Challenge.fresh(1, 1).nonce


def test_certificates_must_chain_to_both_operator_cas_and_name_one_worker_and_key(pki):
    from secrobust.flower.binding import (
        CERT_FIELDS,
        SIGNATURE_FIELD,
        Challenge,
        sign_binding,
    )

    b = _binding(pki)
    ch = Challenge.fresh(1, 1)
    good = sign_binding(pki["worker:0"], ch, 5)
    foreign = sign_binding(pki["foreign:0"], ch, 5)         # worker:0 under other CAs, signed correctly
    _refused(b, 5, foreign, ch, "not issued by S0's CA")
    _refused(b, 5, {**good, CERT_FIELDS["S1"]: foreign[CERT_FIELDS["S1"]]}, ch, "not issued by S1's CA")
    _refused(b, 5, {**good, CERT_FIELDS["S1"]: pki["worker:1"].certs["S1"]}, ch, "different parties")
    _refused(b, 5, {**good, CERT_FIELDS["S0"]: pki["worker:0"].cas["S0"]}, ch)          # the CA's own cert
    dealer = {CERT_FIELDS[o]: pki["dealer"].certs[o] for o in ("S0", "S1")}
    _refused(b, 5, {**good, **dealer}, ch, "not a worker's")
    _refused(b, 5, {k: v for k, v in good.items() if k != SIGNATURE_FIELD}, ch, "no binding signature")
    _refused(b, 5, {k: v for k, v in good.items() if k != CERT_FIELDS["S0"]}, ch, "no worker certificate")
    _refused(b, 5, {**good, CERT_FIELDS["S0"]: b"x" * 9000}, ch, "no worker certificate")
    _refused(b, 5, {**good, SIGNATURE_FIELD: b"\x30" * 70}, ch, "signature")
    _refused(b, 5, {**good, "worker": True}, ch, "claims worker True")
    assert b.bind(5, good, ch) == 0


def test_admission_and_provisioned_nodes(pki):
    from secrobust.flower.binding import Challenge, check_node_workers, sign_binding

    ch = Challenge.fresh(1, 1)
    rec = sign_binding(pki["worker:1"], ch, 5)
    _refused(_binding(pki, workers=[0, 2]), 5, rec, ch, "worker 1", "do not admit")
    _refused(_binding(pki, node_workers={5: 0, 6: 1}), 5, rec, ch, "provisioned as worker 0")
    _refused(_binding(pki, node_workers={6: 1}), 5, rec, ch, "not provisioned")
    assert _binding(pki, workers=[1], node_workers={5: 1}).bind(5, rec, ch) == 1
    with pytest.raises(ValueError, match="two nodes"):
        check_node_workers({5: 1, 6: 1})
    with pytest.raises(ValueError, match="node id"):
        check_node_workers({"5": 1})
    with pytest.raises(ValueError, match="worker id"):
        check_node_workers({5: -1})
