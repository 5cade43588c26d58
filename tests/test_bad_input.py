"""Bad input gets a specific error, and a rejected message leaves the party's state untouched."""

import numpy as np
import pytest

import secrobust
from secrobust import (
    MalformedMessage,
    RoundAborted,
    TripleReuseError,
    UnexpectedMessage,
)
from secrobust.errors import DuplicateWorker, UnknownWorker
from secrobust.gates.dealer import TripleSeeds
from secrobust.primitives import ring, sharing
from secrobust.protocol import messages as M
from secrobust.protocol.nodes import DealerNode, ServerNode
from secrobust.protocol.offline import request_triple
from secrobust.protocol.server import RoundPlan
from secrobust.protocol.worker import share_key, share_update

GOOD = np.random.default_rng(0).normal(size=(7, 5))


@pytest.mark.parametrize("updates,match", [
    (np.zeros((2, 3, 4)), r"\(n, d\) matrix"),
    (np.zeros((0, 4)), r"n, d >= 1"),
    (np.zeros((4, 0)), r"n, d >= 1"),
    ([np.zeros(3), np.zeros(4)], r"worker 1 sent dimension 4, worker 0 sent 3"),
    ([np.zeros((2, 2))], r"one flat vector"),
    ([], r"no updates"),
    ("not updates", r"real numbers|flat vector"),
    (np.array([[1 + 1j, 0]]), r"real numbers"),
])
def test_bad_shapes(updates, match):
    with pytest.raises(ValueError, match=match):
        secrobust.aggregate(updates, "mean", 0)


@pytest.mark.parametrize("value,what", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_values_name_the_worker(value, what):
    x = GOOD.copy()
    x[4, 2] = value
    with pytest.raises(ValueError, match=r"update 4 contains NaN or inf"):
        secrobust.aggregate(x, "krum", 1)
    with pytest.raises(ValueError, match=r"update 4 contains NaN or inf"):
        secrobust.rules.krum(x, 1)


def test_out_of_range_norm_names_the_worker_and_the_bound():
    x = GOOD.copy()
    x[2] *= 1e6
    with pytest.raises(ValueError, match=r"1 update\(s\) above the bound 128 at frac_bits=20: 2 \("):
        secrobust.aggregate(x, "mean", frac_bits=20, over_bound="error")
    limit = secrobust.max_norm(20, 5)
    ok = GOOD.copy()
    ok[0] = ok[0] / np.linalg.norm(ok[0]) * limit * 0.999999
    secrobust.aggregate(ok, "mean")


@pytest.mark.parametrize("rule,n,f,match", [
    ("krum", 6, 2, r"krum' needs n >= 2f \+ 3; got n=6, f=2 \(n must be at least 7\)"),
    ("multi-krum", 4, 1, r"needs n >= 2f \+ 3"),
    ("geomed", 4, 2, r"needs n >= 2f \+ 1"),
    ("mda", 2, 1, r"needs n >= 2f \+ 1"),
    ("norm-clip", 3, 2, r"needs n >= 2f \+ 1"),
    ("cclip", 3, 2, r"needs n >= 2f \+ 1"),
    ("mean", 2, 2, r"needs n >= f \+ 1"),
])
def test_n_too_small_for_f(rule, n, f, match):
    with pytest.raises(ValueError, match=match):
        secrobust.aggregate(GOOD[:n], rule, f, min_participants=2)
    with pytest.raises(ValueError, match=match):
        secrobust.rules.weights(GOOD[:n], rule, f)


@pytest.mark.parametrize("kwargs,match", [
    ({"rule": "medoid"}, r"unknown rule 'medoid'; choose one of mean, .*krum"),
    ({"rule": "median", "reveal": "distances"}, r"rule 'median' runs only with reveal='aggregate'"),
    ({"rule": "krum", "f": -1}, r"f must be a non-negative integer"),
    ({"rule": "krum", "f": 1.5}, r"f must be a non-negative integer"),
    ({"rule": "krum", "f": 1, "m": 3}, r"unknown option\(s\) \['m'\]; allowed: power"),
    ({"rule": "multi-krum", "f": 1, "mm": 3}, r"unknown option\(s\) \['mm'\]; allowed: m"),
    ({"rule": "multi-krum", "f": 1, "m": 0}, r"1 <= m <= n"),
    ({"rule": "geomed", "f": 1, "iterations": 0}, r"positive integer"),
    ({"rule": "norm-clip", "f": 1, "tau": -1.0}, r"tau must be a positive"),
    ({"rule": "cclip", "f": 1, "center": np.zeros(4)}, r"center has dimension 4, the updates have 5"),
    ({"rule": "mean", "frac_bits": 40}, r"frac_bits must be an integer in \[0, 28\]"),
    ({"rule": "mean", "drop": {9: "S0"}}, r"drop maps a worker"),
    ({"rule": "mean", "drop": {1: "S2"}}, r"drop maps a worker"),
    ({"rule": "mean", "dp_noise_std": -1.0}, r"dp_noise_std must be finite"),
    ({"rule": "mean", "dp_noise_std": 100.0}, r"dp_noise_std 100 is above 59.6.*would wrap"),
    ({"rule": "mean", "unchecked": [7]}, r"outside 0..6"),
    ({"rule": "mean", "ring_rows": {7: np.zeros(5, np.uint64)}}, r"ring_rows maps worker indices in 0..6"),
    ({"rule": "mean", "ring_rows": {0: np.zeros(4, np.uint64)}}, r"ring_rows\[0\] has shape \(4,\)"),
    ({"rule": "mean", "ring_rows": {0: np.zeros(5)}}, r"ring_rows\[0\] must be a uint64"),
    ({"rule": "mean", "check_inputs": "yes"}, r"check_inputs must be True or False"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        secrobust.aggregate(GOOD, **kwargs)


def test_mda_refuses_an_exponential_search():
    x = np.random.default_rng(1).normal(size=(41, 2))
    with pytest.raises(ValueError, match=r"C\(41, 20\) = .* subsets"):
        secrobust.aggregate(x, "mda", 20)


def test_too_many_dropouts_abort_the_round():
    with pytest.raises(RoundAborted, match=r"only 6 workers reached both servers; the rule needs n >= 2f \+ 3"):
        secrobust.aggregate(GOOD, "krum", 2, drop={0: "S1"})


def test_dropouts_are_tolerated():
    x = np.random.default_rng(2).normal(size=(9, 6))
    res = secrobust.aggregate(x, "multi-krum", 1, drop={2: "S0", 5: "S1", 7: "both"})
    assert res.participants == (0, 1, 3, 4, 6, 8)
    kept = list(res.participants)
    expect = secrobust.plain_aggregate(x[kept], "multi-krum", 1)
    assert np.array_equal(res.weights[kept], expect.weights)
    assert np.all(res.weights[[2, 5, 7]] == 0)
    assert np.array_equal(res.aggregate, expect.aggregate)
    assert np.isnan(res.distances[2]).all()


def _started(party: int, n: int = 7, d: int = 5, round_id: int = 0) -> ServerNode:
    node = ServerNode(party)
    node.start_round(RoundPlan(round_id, tuple(range(n)), d, 20, ("distances",), None, "t0"))
    return node


def _share(round_id: int = 0, worker: int = 0, d: int = 5) -> M.Message:
    return share_update(round_id, worker, ring.encode(np.ones(d)), bytes(16))


def test_protocol_messages_are_checked_and_a_rejection_keeps_the_state():
    s0, s1 = _started(0), _started(1)
    to_s1 = _share()
    s1.receive_share(to_s1)
    before = s1.state
    with pytest.raises(DuplicateWorker, match="worker 0 already sent"):
        s1.receive_share(to_s1)
    assert s1.state is before
    with pytest.raises(UnknownWorker, match="worker 9 is not expected"):
        s1.receive_share(_share(worker=9))
    with pytest.raises(UnexpectedMessage, match="round 3, this is round 0"):
        s1.receive_share(_share(round_id=3, worker=1))
    with pytest.raises(UnexpectedMessage, match="S0 receives no shares"):
        s0.receive_share(_share(worker=1))
    with pytest.raises(MalformedMessage, match=r"expected uint64 \(5,\)"):
        s1.receive_share(_share(worker=1, d=4))
    forged = M.Message(M.SHARE_MASKED, 0, "worker:3", "S1", fields={"worker": 2}, arrays={"x1": np.zeros(5, np.uint64)})
    with pytest.raises(UnexpectedMessage, match="must come from worker:2, came from worker:3"):
        s1.receive_share(forged)
    assert set(s1.state.inputs) == {0} and not s0.state.inputs
    with pytest.raises(UnexpectedMessage, match="no triple yet, so no share keys"):
        s0.share_key_message(0)
    with pytest.raises(UnknownWorker, match="worker 9 is not expected"):
        s0.share_key_message(9)


def test_s0_takes_only_a_well_formed_participant_list_from_s1():
    s0 = _started(0)
    bad = [M.Message(M.PARTICIPANTS, 0, "S1", "S0", fields={"workers": w}) for w in ([0, 0], [0, 11], "0,1", [True])]
    for msg in bad:
        with pytest.raises(MalformedMessage):
            s0.agree(msg, 1, "")
    with pytest.raises(UnexpectedMessage, match="must come from S1"):
        s0.agree(M.Message(M.PARTICIPANTS, 0, "worker:1", "S0", fields={"workers": [1]}), 1, "")
    assert s0.current.participants is None
    assert s0.agree(M.Message(M.PARTICIPANTS, 0, "S1", "S0", fields={"workers": [4, 1]}), 1, "") == (1, 4)


def test_a_worker_takes_only_its_own_key_for_this_round():
    plan = RoundPlan(2, (5, 6), 3, 20, (), None, None, validity=False)
    s0 = ServerNode(0)
    s0.start_round(plan, bytes(16))
    msg = s0.share_key_message(6)
    assert share_key(msg, 2, 6, 3) == sharing.input_key(bytes(16), 1)
    for args in ((2, 5, 3), (3, 6, 3), (2, 6, 4)):
        with pytest.raises(UnexpectedMessage):
            share_key(msg, *args)
    with pytest.raises(ValueError, match="share master seed"):
        ServerNode(0).start_round(plan)


def test_a_triple_is_never_reused():
    dealer = DealerNode()
    s0 = _started(0)
    request = request_triple(0, s0.current.plan.triple_spec())
    m0, _ = dealer.handle(request, TripleSeeds.fresh())
    with pytest.raises(TripleReuseError, match="already used"):
        dealer.handle(request, TripleSeeds.fresh())
    s0.receive_triple(m0)
    s0.start_round(s0.current.plan)
    with pytest.raises(TripleReuseError, match="already used"):
        s0.receive_triple(m0)


def test_a_cluster_uses_a_fresh_triple_every_round():
    cluster = secrobust.Cluster(insecure_test_seed=5)
    ids = []
    for _ in range(3):
        cluster.run_round(GOOD, "krum", 1)
        ids.append(cluster.s0.current.triple.spec.triple_id)
    assert len(set(ids)) == 3
    assert all(t in cluster.s1.ledger and t in cluster.dealer.ledger for t in ids)


def test_truncated_message_bytes_are_refused():
    data = _share().to_bytes()
    with pytest.raises(MalformedMessage, match="needs 40 bytes"):
        M.Message.from_bytes(data[:-3])
    with pytest.raises(MalformedMessage, match="trailing bytes"):
        M.Message.from_bytes(data + b"\0")


def _to_validity(n: int = 5, d: int = 4) -> tuple[ServerNode, ServerNode, M.Message, M.Message]:
    """Two servers driven through a round up to their first validity-check messages."""
    plan = RoundPlan(0, tuple(range(n)), d, 20, ("distances",), None, "tv")
    s0, s1, dealer = ServerNode(0), ServerNode(1), DealerNode()
    s0.start_round(plan)
    s1.start_round(plan)
    m0, m1 = dealer.handle(request_triple(0, plan.triple_spec()), TripleSeeds.fresh())
    s0.receive_triple(m0)
    s1.receive_triple(m1)
    for w in range(n):
        key = share_key(s0.share_key_message(w), 0, w, d)
        s1.take_share(share_update(0, w, ring.encode(np.full(d, 0.1 * w)), key))
        s0.take_rows(s1.open_rows())
    s1.agree(None, 1, "")
    s0.agree(s1.participants_message(), 1, "")
    v0, v1 = s0.validity_seed_message(bytes(16)), s1.validity_seed_message(bytes([1]) * 16)
    s0.receive_validity_seed(v1)
    s1.receive_validity_seed(v0)
    for node in (s0, s1):
        node.project()
        node.finish_opening()
    return s0, s1, s0.validity_start(), s1.validity_start()


def test_bad_validity_messages_are_refused():
    s0, _, _, from_s1 = _to_validity()
    wrong_step = M.Message(M.VALIDITY_OPEN, 0, "S1", "S0", fields={"step": 3}, arrays=dict(from_s1.arrays))
    with pytest.raises(UnexpectedMessage, match="validity opening 3, expected 0"):
        s0.validity_step(wrong_step)
    short = M.Message(M.VALIDITY_OPEN, 0, "S1", "S0", fields={"step": 0}, arrays={"x": from_s1.arrays["x"][:, :1]})
    with pytest.raises(MalformedMessage, match="AND opening must be uint64 of shape"):
        s0.validity_step(short)
    with pytest.raises(UnexpectedMessage, match="expected validity-seed"):
        s0.receive_validity_seed(from_s1)


def test_s0_refuses_weights_for_another_set_of_participants():
    s0, s1, to_s1, to_s0 = _to_validity()
    while to_s1 is not None:
        to_s1, to_s0 = s0.validity_step(to_s0), s1.validity_step(to_s1)
    s1.open_view(s0.view_share_message())
    weights = s1.choose(secrobust.rules.get_rule("krum"), 1, {})
    forged = M.Message(M.WEIGHTS, 0, "S1", "S0", fields={**weights.fields, "participants": "0" * 32},
                       arrays=dict(weights.arrays))
    with pytest.raises(UnexpectedMessage, match="another set of participants"):
        s0.receive_weights(forged)
    s0.receive_weights(weights)
