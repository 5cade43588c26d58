"""The offline triple pool and the round requests that drive it, without processes: what is kept, what
is discarded, what is refused, and how the operator names triples from the two servers' pools."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secrobust.circuits import validity
from secrobust.deploy.operator import assign_triples
from secrobust.deploy.pool import PENDING, READY, TriplePool
from secrobust.deploy.rounds import RoundRequest
from secrobust.gates.dealer import TripleSeeds, TripleSpec, make_triple
from secrobust.transport.grpc.errors import Rejected

WORDS = validity.and_words(6)


def _req(round_id: int, triple_id: str | None = "t0", prefetch=((1, "t1"),), d: int = 8, rule: str = "krum",
         n: int = 6, check_inputs: bool = True) -> RoundRequest:
    return RoundRequest(round_id, tuple(range(n)), d, rule, 1 if rule != "mean" else 0, triple_id=triple_id,
                        prefetch=tuple(prefetch), check_inputs=check_inputs)


def _part(triple_id: str, n: int = 6, d: int = 8, party: int = 0):
    return make_triple(TripleSpec(triple_id, n, d, "gram", WORDS), TripleSeeds.fresh())[party]


def _refused(fn, code: str) -> Rejected:
    with pytest.raises(Rejected) as info:
        fn()
    assert info.value.code == code, info.value
    return info.value


def test_a_request_registers_its_triple_and_the_prefetch_and_the_next_one_keeps_what_it_names():
    pool = TriplePool()
    plan = pool.plan(_req(0), now=0.0)
    assert [(e.triple_id, e.round_id, e.spec) for e in plan.add] == [
        ("t0", 0, TripleSpec("t0", 6, 8, "gram", WORDS)), ("t1", 1, TripleSpec("t1", 6, 8, "gram", WORDS))]
    pool.commit(plan)
    assert [e.triple_id for e in pool.pending_for(1)] == ["t1"] and pool.pending_for(2) == []
    pool.deliver(_part("t0"), 0, now=1.0)
    pool.deliver(_part("t1"), 1, now=1.0)
    assert pool.take("t0").state == READY
    nxt = pool.plan(_req(1, "t1", ((2, "t2"),)), now=2.0)
    assert [e.triple_id for e in nxt.add] == ["t2"] and nxt.discard == []
    pool.commit(nxt)
    assert {e["triple_id"]: e["state"] for e in pool.public()} == {"t1": READY, "t2": PENDING}


def test_what_a_request_does_not_name_is_discarded_and_never_accepted_again():
    pool = TriplePool()
    pool.commit(pool.plan(_req(0), 0.0))
    pool.deliver(_part("t1"), 1, 0.0)
    gone = pool.commit(pool.plan(_req(1, "u1", (), d=9), 1.0))   # another d: t0 and t1 do not fit
    assert sorted(e.triple_id for e in gone) == ["t0", "t1"] and set(pool.entries) == {"u1"}
    for old in ("t0", "t1"):
        _refused(lambda: pool.plan(_req(2, old, ()), 2.0), "duplicate")
        _refused(lambda: pool.plan(_req(2, "v", ((3, old),)), 2.0), "duplicate")
        _refused(lambda: pool.deliver(_part(old), 1, 2.0), "duplicate")
    assert set(pool.entries) == {"u1"}                 # refused requests change nothing


def test_a_pooled_triple_named_for_another_round_or_shape_is_refused():
    pool = TriplePool()
    pool.commit(pool.plan(_req(0), 0.0))
    _refused(lambda: pool.plan(_req(2, "t1", ()), 1.0), "bad-request")        # it is for round 1
    _refused(lambda: pool.plan(_req(1, "t1", (), d=9), 1.0), "bad-request")   # it has d = 8
    _refused(lambda: pool.plan(_req(1, "t1", (), check_inputs=False), 1.0), "bad-request")  # it has bit triples
    assert set(pool.entries) == {"t0", "t1"}


def test_a_delivery_must_match_what_was_requested():
    pool = TriplePool()
    pool.commit(pool.plan(_req(0), 0.0))
    _refused(lambda: pool.deliver(_part("zz"), 0, 0.0), "out-of-phase")            # never requested
    _refused(lambda: pool.deliver(_part("t1", d=9), 1, 0.0), "out-of-phase")       # other size
    _refused(lambda: pool.deliver(_part("t1"), 0, 0.0), "out-of-phase")            # labelled for another round
    pool.deliver(_part("t1"), 1, 0.0)
    _refused(lambda: pool.deliver(_part("t1"), 1, 0.0), "duplicate")


def test_a_failed_request_is_kept_with_its_error_until_a_round_takes_or_discards_it():
    pool = TriplePool()
    pool.commit(pool.plan(_req(0), 0.0))
    err = RuntimeError("dealer down")
    assert pool.fail("t1", err).error is err
    assert [e["state"] for e in pool.public()] == [PENDING, "failed"]
    assert pool.pending_for(1) == []


def test_round_requests_carry_the_prefetch_list_and_check_it():
    req = _req(4, "t4", ((5, "t5"), (6, "t6")))
    assert RoundRequest.from_json(req.to_json()) == req
    assert _req(4, "t4", ((5, "t5"),), rule="mean").plan().triple_spec() == TripleSpec("t4", 6, 8, "diag", WORDS)
    assert _req(4, "t4", (), rule="mean", check_inputs=False).plan().triple_spec() is None
    bad = [(_req(4, None, ()), "needs a triple id"),
           (_req(4, None, (), rule="mean"), "needs a triple id"),
           (_req(4, None, ((5, "t5"),), rule="mean", check_inputs=False), "uses no triple"),
           (_req(4, "t4", (), check_inputs=1), "check_inputs must be True or False"),
           (_req(4, "t4", (), d=validity.params().max_dimension() + 1), "input validity check is sound"),
           (_req(4, "t4", ((4, "t5"),)), "later rounds"),
           (_req(4, "t4", ((5, "t5"), (5, "t6"))), "later rounds"),
           (_req(4, "t4", ((5, "t4"),)), "distinct"),
           (_req(4, "t4", tuple((5 + i, f"p{i}") for i in range(5))), "at most 4"),
           (_req(4, "x" * 200, ()), "1 to 128")]
    for request, message in bad:
        with pytest.raises(ValueError, match=message):
            RoundRequest.from_json(request.to_json())
    with pytest.raises(ValueError, match="bad round parameters"):
        RoundRequest.from_json({**req.to_json(), "prefetch": [{"round_id": 5, "triple_id": 7}]})


def _status(*entries: tuple[str, int, int, str], kind: str = "gram", and_words: int = WORDS) -> dict:
    return {"triples": [{"triple_id": t, "round_id": r, "n": 6, "d": d, "kind": kind, "and_words": and_words,
                         "state": state} for t, r, d, state in entries]}


def test_the_operator_reuses_what_both_servers_hold_for_the_round_and_names_fresh_ids_otherwise():
    base = _req(7, None, ())
    both = {"S0": _status(("a", 7, 8, "ready"), ("b", 8, 8, "pending")),
            "S1": _status(("a", 7, 8, "ready"), ("b", 8, 8, "pending"))}
    got = assign_triples(base, both, prefetch=2)
    assert got.triple_id == "a" and got.prefetch[0] == (8, "b")
    assert got.prefetch[1][0] == 9 and got.prefetch[1][1].startswith("r9-")
    one_sided = {"S0": _status(("a", 7, 8, "ready")), "S1": _status()}          # S1 restarted and lost it
    failed = {"S0": _status(("a", 7, 8, "ready")), "S1": _status(("a", 7, 8, "failed"))}
    other_d = {"S0": _status(("a", 7, 9, "ready")), "S1": _status(("a", 7, 9, "ready"))}
    unchecked = {name: _status(("a", 7, 8, "ready"), and_words=0) for name in ("S0", "S1")}
    for statuses in (one_sided, failed, other_d, unchecked):
        fresh = assign_triples(base, statuses, prefetch=1)
        assert fresh.triple_id.startswith("r7-") and fresh.triple_id != "a" and fresh.prefetch[0][0] == 8
    ids = {assign_triples(base, one_sided, 1).triple_id for _ in range(20)}
    assert len(ids) == 20                                                          # fresh ids are random
    assert assign_triples(_req(7, None, (), rule="mean", check_inputs=False), both, 1).triple_id is None
    assert assign_triples(base, unchecked, 1).triple_id.startswith("r7-")
    assert assign_triples(replace(base, check_inputs=False), unchecked, 1).triple_id == "a"
    diag = {name: _status(("m", 7, 8, "ready"), ("n", 8, 8, "pending"), kind="diag") for name in ("S0", "S1")}
    mean = assign_triples(_req(7, None, (), rule="mean"), diag, 1)               # the checked mean pools too
    assert (mean.triple_id, mean.prefetch) == ("m", ((8, "n"),))
    assert assign_triples(base, both, prefetch=0).prefetch == ()
    np.testing.assert_equal(RoundRequest.from_json(got.to_json()).prefetch, got.prefetch)


def test_a_long_lived_worker_keeps_only_the_last_outcomes():
    """A worker serving without a round limit must not keep every round's aggregate (it grew to GBs); of the
    outcomes it keeps, only the newest holds one (16 of them were 1.3 GB per worker at d = 10^7)."""
    import logging
    import threading

    import numpy as np

    from secrobust.deploy import worker as W

    stop = threading.Event()
    rounds = iter(range(W.KEEP_OUTCOMES * 5))

    def next_round(_poll):
        r = next(rounds, None)
        if r is None:
            stop.set()
        return r

    runtime = W.WorkerRuntime.__new__(W.WorkerRuntime)
    runtime.log = logging.getLogger("test")
    runtime.ping = lambda: None
    runtime.wait_for_round = next_round
    runtime.participate = lambda r: W.WorkerOutcome(r, "done", aggregate=np.zeros(10))
    kept = runtime.serve(stop)
    assert [o.round_id for o in kept] == list(range(W.KEEP_OUTCOMES * 4, W.KEEP_OUTCOMES * 5))
    assert [o.aggregate is not None for o in kept] == [False] * (W.KEEP_OUTCOMES - 1) + [True]   # 8d bytes, once


def test_the_workers_of_one_process_read_and_encode_as_many_at_once_as_it_has_slots():
    """A process of many simulated workers must not hold every worker's float update and its encoding at
    once (25 x 240 MB at d = 10^7): the workers share ``encode_slots``."""
    import logging
    import threading
    import time

    import numpy as np

    from secrobust.deploy import worker as W

    slots, lock = threading.BoundedSemaphore(2), threading.Lock()
    inside, most = [0], [0]

    def source(r, d):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return W.WorkerInput(np.full(d, 0.5))

    runtimes = []
    for _ in range(8):
        rt = W.WorkerRuntime.__new__(W.WorkerRuntime)
        rt.log, rt.source, rt.encode_slots = logging.getLogger("test"), source, slots
        runtimes.append(rt)
    got = [None] * len(runtimes)

    def go(k):
        got[k] = runtimes[k]._read_and_encode(3, 16, 20)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(runtimes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2
    assert all(g is not None and not isinstance(g, str) and g[1] for g in got)   # each owns its encoding
