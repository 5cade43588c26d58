"""Parties that die: the dealer, S1 or S0 killed (SIGKILL) makes the round fail with an error naming
the unreachable party; after a restart on the same address the next round gives the in-process result.
A dealer that dies after it delivered the next round's triple (prefetch) costs nothing for that round.
Every rule, the mean too, needs the dealer's triple while the input validity check is on."""

from __future__ import annotations

import time

import numpy as np
import pytest

from secrobust.deploy.local import LocalDeployment, LocalOptions
from secrobust.transport.grpc import PartyUnreachable

from .helpers import Background, FakeWorker, assert_same_result, log_records, oracle, pooled


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(6, tmp_path_factory.mktemp("dep"),
                        LocalOptions(share_window_s=20.0, peer_timeout_s=10.0, connect_timeout_s=1.5))
    with d:
        yield d
    assert all(not c.alive for c in d.children.values())


def _updates(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=30) + 0.2 * rng.normal(size=(6, 30))


def _next_round_works(dep: LocalDeployment, seed: int) -> None:
    x = _updates(seed)
    _, want = oracle(dep, x, "krum", 1)
    assert_same_result(dep.aggregate(x, "krum", 1), want)


def test_a_dealer_killed_after_prefetch_leaves_one_round_from_the_pool_then_fails_cleanly(dep):
    _next_round_works(dep, 1)                     # this round also asked for the next round's triple
    nxt = dep.operator.next_round_id()
    tid = pooled(dep, nxt)
    dep.kill("dealer")
    x = _updates(2)
    _, want = oracle(dep, x, "krum", 1)
    assert_same_result(dep.aggregate(x, "krum", 1), want)   # bytes too: the dealer's traffic of its triple
    used = dep.operator.clients["S1"].control("report", nxt)["triple"]
    assert used["triple_id"] == tid and used["prefetched"] and used["ready_at_open"]
    # its own prefetch failed with the dealer down: the pool is empty, the next round needs the dealer
    with pytest.raises(PartyUnreachable) as info:
        dep.aggregate(_updates(3), "krum", 1)
    assert info.value.party == "dealer" and dep.addresses["dealer"] in str(info.value)
    assert not [e for e in dep.operator.status()["S1"]["triples"] if e["state"] == "ready"]
    dep.restart("dealer")
    _next_round_works(dep, 4)


@pytest.mark.slow  # kills the dealer inside a ~0.3 s window; it missed once under a loaded 2-core run: `pytest -m slow`
def test_the_dealer_killed_while_it_makes_a_triple_fails_the_round_cleanly_and_the_next_works(dep):
    d = 2_000_000                                 # a fresh (n, d), so nothing is pooled: the dealer makes it now
    x = np.tile(_updates(20), (1, d // 30 + 1))[:, :d] * 0.01   # within the encoder range
    run = Background(dep.aggregate, x, "krum", 1)
    try:
        deadline = time.monotonic() + 30.0
        while not dep.operator.dealer.control("status", timeout=5.0).get("making"):
            assert time.monotonic() < deadline and run.thread.is_alive(), "the dealer never started a triple"
        dep.kill("dealer")
        with pytest.raises(PartyUnreachable) as info:
            run.result()
        assert info.value.party == "dealer"
    finally:
        run.thread.join(120.0)
    events = [r for r in log_records(dep, "dealer") if r.get("d") == d]
    assert [r["event"] for r in events] == ["triple-making"]  # killed before it was made, let alone sent
    del x
    dep.restart("dealer")
    _next_round_works(dep, 21)


def test_the_checked_mean_needs_the_dealer_and_the_unchecked_mean_does_not(dep):
    dep.kill("dealer")
    try:
        x = _updates(4)
        _, want = oracle(dep, x, "mean", 0, check_inputs=False)
        assert_same_result(dep.aggregate(x, "mean", 0, check_inputs=False), want, bytes_too=False)
        with pytest.raises(PartyUnreachable) as info:      # the input validity check takes a diag triple
            dep.aggregate(x, "mean", 0)
        assert info.value.party == "dealer"
    finally:
        dep.restart("dealer")
    _, want = oracle(dep, x, "mean", 0)
    assert_same_result(dep.aggregate(x, "mean", 0), want)


@pytest.mark.parametrize("victim", ["S1", "S0"])
def test_a_server_killed_mid_round_fails_it_cleanly_and_the_next_round_works_after_restart(dep, victim):
    watcher = FakeWorker(dep, 5)
    try:
        run = Background(dep.aggregate, _updates(5), "krum", 1, absent=[5], share_window_s=2.0)
        watcher.wait_open()
        dep.kill(victim)
        with pytest.raises(PartyUnreachable) as info:
            run.result()
        assert info.value.party == victim
    finally:
        watcher.close()
        run.thread.join(120.0)
    dep.restart(victim)
    _next_round_works(dep, 6)


def test_a_server_down_before_the_round_is_reported_by_name(dep):
    dep.kill("S1")
    try:
        with pytest.raises(PartyUnreachable) as info:
            dep.aggregate(_updates(7), "krum", 1)
        assert info.value.party == "S1"
    finally:
        dep.restart("S1")
    _next_round_works(dep, 8)


def test_a_restarted_server_refuses_round_ids_it_already_ran(dep):
    _next_round_works(dep, 9)
    last = dep.operator.next_round_id() - 1
    dep.kill("S0")
    dep.restart("S0")
    from secrobust.deploy.rounds import RoundRequest
    from secrobust.transport.grpc import RemoteRejected
    with pytest.raises(RemoteRejected) as info:
        dep.operator.open_round(RoundRequest(last, tuple(range(6)), 30, "mean", triple_id="t-again"))
    assert info.value.code == "wrong-round" and info.value.party == "S0"
    _next_round_works(dep, 10)


def test_a_killed_worker_process_is_a_dropout_and_rejoins_after_restart(dep):
    name = "worker-4"
    dep.kill(name)
    x = _updates(11)
    _, want = oracle(dep, x, "krum", 1, drop={4: "both"})
    assert_same_result(dep.aggregate(x, "krum", 1, share_window_s=2.0), want)
    dep.restart(name)
    _next_round_works(dep, 12)
