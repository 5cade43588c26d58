"""reveal="weights" and reveal="aggregate" over a real deployment: the rule runs on shares between the S0
and S1 processes (``rule-open`` messages) and every result equals the in-process run bit for bit; S1
receives no view share, the reports and archives hold no weights (aggregate) or view (both); bad modes
are refused before any work, at the operator and at the servers; servers opened with different modes
abort at the request confirmation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from deployments import running

import secrobust
from secrobust.circuits import validity
from secrobust.deploy.local import LocalDeployment
from secrobust.deploy.rounds import RoundRequest
from secrobust.primitives import ring
from secrobust.protocol import messages as M
from secrobust.transport.grpc import RemoteRejected

from .helpers import assert_same_result, log_records, oracle

N_WORKERS = 7
SEED = 1234


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    yield from running(LocalDeployment, N_WORKERS, tmp_path_factory.mktemp("dep"))


def _updates(seed: int, n: int = 6, d: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) * 0.5 + 0.1 * rng.normal(size=(n, d))
    x[0] = -3.0 * x[0]
    return x


def _same(got: secrobust.AggregateResult, want: secrobust.AggregateResult, reveal: str, *,
          bytes_too: bool = True) -> None:
    assert got.reveal == want.reveal == reveal
    assert got.distances is None and got.revealed == {}
    if reveal == "aggregate":
        assert got.weights is None and want.weights is None
    else:
        assert got.weights is not None and np.array_equal(got.weights, want.weights)
    assert_same_result(got, want, bytes_too=bytes_too)   # aggregate, participants, rejected (and byte counts)


def _s1_round(dep: LocalDeployment, r: int) -> list[str]:
    return [rec["phase"] for rec in log_records(dep, "S1") if rec["event"] == "received" and rec.get("round") == r]


CASES = [("krum", "weights", {}), ("krum", "aggregate", {"dp_noise_std": 0.01}),
         ("multi-krum", "weights", {"m": 3}), ("multi-krum", "aggregate", {}),
         ("norm-clip", "aggregate", {"tau": 0.8}), ("cclip", "weights", {}),
         ("median", "aggregate", {}), ("trimmed-mean", "aggregate", {}),
         ("mda", "aggregate", {})]     # any rule on shares runs with no deployment change


@pytest.mark.parametrize(("rule", "reveal", "kw"), CASES, ids=[f"{r}-{m}" for r, m, _ in CASES])
def test_the_rule_on_shares_gives_the_in_process_result_exactly(dep, rule, reveal, kw):
    x = _updates(len(rule) + len(reveal))
    r, want = oracle(dep, x, rule, 1, reveal=reveal, insecure_test_seed=SEED, **kw)
    if "dp_noise_std" in kw:    # the deployment's test seed fixes the noise of the seed's round 0, as in process
        want = secrobust.aggregate(x, rule, 1, reveal=reveal, insecure_test_seed=SEED, **kw)
    got = dep.aggregate(x, rule, 1, reveal=reveal, insecure_test_seed=SEED, **kw)
    _same(got, want, reveal, bytes_too="dp_noise_std" not in kw)
    phases = _s1_round(dep, r)
    assert M.VIEW_SHARE not in phases and M.RULE_OPEN in phases          # S1 opened nothing
    for name in ("S0", "S1"):
        report = dep.operator.clients[name].control("report", r)
        assert report["reveal"] == reveal and "view" not in report and report["seconds"]["rule"] > 0
        assert (report["weights"] is None) == (reveal == "aggregate")
        assert not [rec for rec in log_records(dep, name) if rec.get("round") == r and rec.get("phase") == M.WEIGHTS]
        records = [rec for rec in log_records(dep, name) if rec.get("round") == r]
        steps = [rec["steps"] for rec in records if rec["event"] == "rule-done"]
        assert steps == [sum(rec["event"] == "received" and rec["phase"] == M.RULE_OPEN for rec in records)]


def test_a_dropout_and_a_rejected_ring_attacker_with_the_weights_kept_shared(dep):
    x = _updates(60)
    drop = {2: "S1"}
    r, want = oracle(dep, x, "krum", 1, reveal="aggregate", drop=drop, insecure_test_seed=SEED)
    got = dep.aggregate(x, "krum", 1, reveal="aggregate", drop=drop, insecure_test_seed=SEED, share_window_s=3.0)
    _same(got, want, "aggregate")
    assert got.participants == (0, 1, 3, 4, 5)
    rows = {0: ring.encode(x[1:].mean(axis=0), ring.DEFAULT_FRAC_BITS) + np.uint64(1 << 63)}
    r, want = oracle(dep, x, "multi-krum", 1, reveal="weights", ring_rows=rows, insecure_test_seed=SEED)
    got = dep.aggregate(x, "multi-krum", 1, reveal="weights", ring_rows=rows, insecure_test_seed=SEED)
    _same(got, want, "weights")
    assert got.rejected == {0: validity.REASON} and got.weights[0] == 0
    assert M.VIEW_SHARE not in _s1_round(dep, r)


def test_a_bad_mode_or_a_rule_without_a_circuit_is_refused_before_any_work(dep):
    x = _updates(70)
    r = dep.operator.next_round_id()
    with pytest.raises(ValueError, match="reveal must be one of 'distances', 'weights', 'aggregate'"):
        dep.aggregate(x, "krum", 1, reveal="everything")
    with pytest.raises(ValueError, match="rule 'geomed' runs only with reveal='distances'"):
        dep.aggregate(x, "geomed", 1, reveal="aggregate", iterations=4)
    assert dep.operator.next_round_id() == r                             # nothing was opened
    base = dep.operator.with_triples(RoundRequest(r, tuple(range(6)), x.shape[1], "krum", 1, reveal="weights"))
    for bad, why in ((replace(base, reveal="everything"), "reveal must be one of"),
                     (replace(base, rule="geomed", reveal="aggregate"), "runs only with reveal='distances'")):
        for name in ("S0", "S1"):                                        # each server checks for itself
            with pytest.raises(RemoteRejected) as info:
                dep.operator.clients[name].control("open-round", r, bad.to_json())
            assert info.value.code == "bad-request" and why in info.value.reason
    assert dep.operator.next_round_id() == r


def test_servers_opened_with_different_modes_abort_at_the_request_confirmation(dep):
    x = _updates(80)
    op = dep.operator
    r = op.next_round_id()
    # a fresh triple id: each server pools it for its own mode, S1 asks the dealer for its spec
    base = RoundRequest(r, tuple(range(6)), x.shape[1], "krum", 1, share_window_s=3.0, reveal="weights",
                        triple_id=f"r{r}-mixed-modes")
    op.clients["S0"].control("open-round", r, base.to_json())
    op.clients["S1"].control("open-round", r, replace(base, reveal="aggregate").to_json())
    reps = op.reports(r, wait_s=30.0)
    for name in ("S0", "S1"):
        assert reps[name]["status"] == "aborted" and "different requests" in reps[name]["reason"], reps[name]
        assert reps[name]["participants"] == [] and reps[name]["weights"] is None
    assert reps["S1"]["traffic"]["by_peer"].get("S0", {}).get("messages_received", 0) == 0
    _, want = oracle(dep, x, "krum", 1, reveal="aggregate")
    _same(dep.aggregate(x, "krum", 1, reveal="aggregate"), want, "aggregate")   # the next round is fine


def test_a_pooled_triple_serves_only_a_round_of_the_same_mode_and_circuit():
    """No processes: the pool and the operator match a triple by its whole spec, the rule circuit's
    material and the weighted-sum correlation included."""
    from secrobust.deploy.operator import assign_triples
    from secrobust.deploy.pool import TriplePool
    from secrobust.transport.grpc.errors import Rejected

    req = {m: RoundRequest(7, tuple(range(6)), 8, "krum", 1, triple_id="t7", prefetch=((8, "t8"),), reveal=m)
           for m in ("distances", "weights", "aggregate")}
    specs = {m: r.plan().triple_spec() for m, r in req.items()}
    assert specs["distances"].rule.is_empty() and not specs["weights"].rule.is_empty()
    assert not specs["weights"].vector and specs["aggregate"].vector
    pool = TriplePool()
    pool.commit(pool.plan(req["weights"], 0.0))
    assert pool.entries["t8"].spec == replace(specs["weights"], triple_id="t8")     # the prefetch: the same spec
    for other in ("distances", "aggregate"):
        with pytest.raises(Rejected) as info:
            pool.plan(req[other], 0.0)
        assert info.value.code == "bad-request" and "is pooled for round 7" in info.value.reason
    statuses = {name: {"triples": pool.public()} for name in ("S0", "S1")}
    assert assign_triples(replace(req["weights"], triple_id=None, prefetch=()), statuses, 1).triple_id == "t7"
    for other in ("distances", "aggregate"):
        assert assign_triples(replace(req[other], triple_id=None, prefetch=()), statuses, 1).triple_id != "t7"


def _circuit_openings(rule: str, n: int, f: int, dmax: int) -> list[int]:
    """Bytes of each opening of the rule's circuit for n workers (a dry run of party 0 on zero shares)."""
    from secrobust.gates import arith
    from secrobust.rules.registry import circuit_on_shares
    from secrobust.rules.view import DISTANCES

    circuit = circuit_on_shares(rule)
    view = {k: np.zeros((n, n) if k == DISTANCES else n, dtype=np.uint64) for k in circuit.needs}
    gen = circuit.circuit(0, view, n, f, {}, dmax, arith.Counter())
    sizes = []
    try:
        out = next(gen)
        while True:
            sizes.append(np.asarray(out).nbytes)
            out = gen.send(np.zeros_like(out))
    except StopIteration:
        pass
    return sizes


@pytest.mark.parametrize("reveal", ["weights", "aggregate"])
def test_the_peer_takes_the_rule_openings_in_order_and_no_more_than_the_circuit_has(reveal):
    """No processes: S0's and S1's expected sequences of peer messages with the rule on shares, the cap
    before a server's own circuit has ended, the exact count after, and the size bound of one opening."""
    from secrobust.deploy.server.sequence import (
        PeerSequence,
        rule_open_bytes,
        rule_step_cap,
    )
    from secrobust.protocol.messages import Message
    from secrobust.rules import sizing
    from secrobust.rules.view import dmax_for
    from secrobust.transport.grpc.errors import Rejected

    req = RoundRequest(3, tuple(range(8)), 8, "krum", 1, triple_id="t", reveal=reveal)
    plan = req.plan()
    cap = rule_step_cap(req, plan)
    steps = sizing.rounds("krum", 8, 1, {}, dmax_for(plan.bound))
    assert cap > steps
    for n in range(5, 9):                              # fewer participants open no more in any one step
        assert max(_circuit_openings("krum", n, 1, dmax_for(plan.bound))) <= rule_open_bytes(plan)

    def msg(kind, step=None):
        return Message(kind, 3, "S1", "S0", fields={} if step is None else {"step": step})

    def refused(seq, m, code="out-of-phase"):
        with pytest.raises(Rejected) as info:
            seq.advance(m)
        assert info.value.code == code
        return info.value.reason

    for receiver in (0, 1):
        seq = PeerSequence(receiver, plan, cap)
        assert M.VIEW_SHARE not in seq.kinds and M.WEIGHTS not in seq.kinds
        if receiver == 0:
            seq.advance(Message(M.PARTICIPANTS, 3, "S1", "S0", fields={"workers": list(range(8))}))
        seq.advance(msg(M.VALIDITY_SEED))
        for k in range(validity.rounds(8)):
            seq.advance(msg(M.VALIDITY_OPEN, k))
        refused(seq, msg(M.VIEW_SHARE if receiver == 1 else M.WEIGHTS))
        refused(seq, msg(M.AGGREGATE_SHARE))           # not before a single rule opening
        refused(seq, msg(M.RULE_OPEN, 1))               # steps in order
        for k in range(cap):
            seq.advance(msg(M.RULE_OPEN, k))
        assert "beyond the" in refused(seq, msg(M.RULE_OPEN, cap))
        with pytest.raises(secrobust.RoundAborted):    # this server's circuit had fewer: the peer sent too many
            seq.rule_finished(cap - 1)
        seq = PeerSequence(receiver, plan, cap)        # and a peer that stops short of this server's count
        if receiver == 0:
            seq.advance(Message(M.PARTICIPANTS, 3, "S1", "S0", fields={"workers": list(range(8))}))
        seq.advance(msg(M.VALIDITY_SEED))
        for k in range(validity.rounds(8)):
            seq.advance(msg(M.VALIDITY_OPEN, k))
        for k in range(steps):
            seq.advance(msg(M.RULE_OPEN, k))
        seq.rule_finished(steps + 1)
        assert "1 more rule openings" in refused(seq, msg(M.AGGREGATE_SHARE))
        seq.advance(msg(M.RULE_OPEN, steps))
        refused(seq, msg(M.RULE_OPEN, steps + 1))
        assert not seq.rule_over
        seq.advance(msg(M.AGGREGATE_SHARE))
        assert seq.rule_over and seq.expected() is None


@pytest.mark.parametrize("kw", [{"pre": "nnm"}, {"pre": "bucketing", "s": 2}, {"pre": "arc"}],
                         ids=["nnm", "bucketing", "arc"])
def test_pre_aggregation_over_the_network_equals_the_in_process_run(dep, kw):
    x = _updates(7, n=7)
    rule, f = ("krum", 1) if kw["pre"] != "bucketing" else ("mean", 1)
    want = secrobust.aggregate(x, rule, f, insecure_test_seed=SEED, **kw)
    got = dep.aggregate(x, rule, f, insecure_test_seed=SEED, **kw)
    np.testing.assert_array_equal(got.weights, want.weights)
    np.testing.assert_array_equal(got.aggregate, want.aggregate)
    assert set(got.revealed) == set(want.revealed), (list(got.revealed), list(want.revealed))


def test_pre_aggregation_with_a_hidden_mode_is_refused_before_any_work(dep):
    with pytest.raises(ValueError, match="runs with reveal='distances' only"):
        dep.aggregate(_updates(1), "krum", 1, pre="nnm", reveal="weights")
