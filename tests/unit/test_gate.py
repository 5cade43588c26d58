"""The call gate: per-certificate caps and the workers' total, so the protocol parties keep their threads."""

from __future__ import annotations

import pytest

from secrobust.transport.grpc.errors import Rejected
from secrobust.transport.grpc.gate import CallGate, CallLimits


def test_one_worker_gets_at_most_its_cap_and_others_are_unaffected():
    gate = CallGate(CallLimits(per_worker=3, workers_total=10, per_party=4, reserved=8))
    held = [gate.enter("worker:0") for _ in range(3)]
    with pytest.raises(Rejected, match="worker:0 already has 3 calls") as info:
        gate.enter("worker:0")
    assert info.value.code == "busy"
    other = gate.enter("worker:1")
    peer = gate.enter("S1")
    held[0]()
    again = gate.enter("worker:0")                 # a slot freed is a slot to take
    for release in (*held[1:], other, peer, again):
        release()
    assert gate.in_progress("worker:0") == 0


def test_workers_together_never_take_the_protocol_parties_threads():
    limits = CallLimits(per_worker=3, workers_total=5, per_party=4, reserved=8)
    gate = CallGate(limits)
    for w in range(5):
        gate.enter(f"worker:{w}")
    with pytest.raises(Rejected, match="workers already have 5 calls"):
        gate.enter("worker:9")
    peers = [gate.enter(name) for name in ("S1", "dealer", "operator:S0") for _ in range(2)]
    assert len(peers) == 6 and limits.threads == 13


def test_a_release_counts_once():
    gate = CallGate(CallLimits(per_worker=1, workers_total=2, per_party=1, reserved=1))
    release = gate.enter("worker:0")
    release()
    release()
    gate.enter("worker:0")
    with pytest.raises(Rejected):
        gate.enter("worker:0")


def test_the_pool_leaves_room_for_every_honest_worker_and_the_reserve():
    limits = CallLimits.for_workers(50)
    assert limits.workers_total >= 2 * 50 and limits.reserved >= 3 * limits.per_party
    assert limits.threads == limits.workers_total + limits.reserved


def test_the_streaming_peer_gets_its_streams_beyond_the_party_cap_and_no_one_else_does():
    """S1 forwards up to ``FORWARD_STREAMS`` rows of E at once besides its other calls (``deploy.server.forward``):
    S0's gate lets the peer named as the streamer hold that many more, and keeps every other party at its cap."""
    from secrobust.deploy.server.forward import FORWARD_STREAMS
    from secrobust.deploy.server.slots import upload_slots
    from secrobust.transport.grpc.gate import PER_PARTY, PROTOCOL_PARTIES

    limits = CallLimits.for_workers(50, "S1", FORWARD_STREAMS)
    gate = CallGate(limits)
    held = [gate.enter("S1") for _ in range(PER_PARTY + FORWARD_STREAMS)]
    with pytest.raises(Rejected, match="busy|already has"):
        gate.enter("S1")
    dealer = [gate.enter("dealer") for _ in range(PER_PARTY)]
    with pytest.raises(Rejected):
        gate.enter("dealer")
    assert limits.reserved == PROTOCOL_PARTIES * PER_PARTY + FORWARD_STREAMS
    assert upload_slots(50) <= FORWARD_STREAMS              # every upload S1 takes at n = 50 can be forwarded
    for release in (*held, *dealer):
        release()
    assert CallLimits.for_workers(50).cap("S1", False) == PER_PARTY
