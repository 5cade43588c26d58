"""The order in which a server takes the other server's messages (``deploy.server.sequence.PeerSequence``), without
processes: S1's rows of E reach S0 from the share phase until the comparisons begin, each worker's once, of
the right size, after the participant list only for listed workers; S1 takes neither rows nor a list."""

from __future__ import annotations

import numpy as np
import pytest

from secrobust.circuits import validity
from secrobust.deploy.server.sequence import PeerSequence
from secrobust.protocol import messages as M
from secrobust.protocol.messages import Message
from secrobust.protocol.server import RoundPlan
from secrobust.transport.grpc.errors import Rejected

D = 5


def _plan(check: bool = True, reveal: tuple[str, ...] = ("distances",)) -> RoundPlan:
    return RoundPlan(4, (3, 5, 8), D, 20, reveal, None, "t-seq", validity=check)


def _row(worker, d: int = D, kind: str = M.MASKED_OPEN) -> Message:
    return Message(kind, 4, "S1", "S0", {"worker": worker}, {"e": np.zeros(d, dtype=np.uint64)})


def _code(fn) -> str:
    with pytest.raises(Rejected) as info:
        fn()
    return info.value.code


def test_s0_takes_rows_before_and_after_the_participants_until_the_comparisons():
    seq = PeerSequence(0, _plan())
    seq.advance(_row(5))
    assert _code(lambda: seq.advance(_row(5))) == "duplicate"
    assert _code(lambda: seq.advance(_row(9))) == "out-of-phase"            # not in the round
    assert _code(lambda: seq.advance(_row(3, d=D + 1))) == "wrong-size"
    assert _code(lambda: seq.advance(_row(True))) == "out-of-phase"
    assert _code(lambda: seq.check(M.VALIDITY_SEED)) == "out-of-phase"      # the list comes first
    seq.advance(Message(M.PARTICIPANTS, 4, "S1", "S0", {"workers": [3, 5]}))
    assert _code(lambda: seq.advance(_row(8))) == "out-of-phase"            # not listed
    seq.advance(Message(M.VALIDITY_SEED, 4, "S1", "S0", {"seed": bytes(16)}))
    seq.advance(_row(3))                                                     # still in transit: taken
    seq.advance(Message(M.VALIDITY_OPEN, 4, "S1", "S0", {"step": 0}, {"x": np.zeros(1, np.uint64)}))
    assert _code(lambda: seq.check(M.MASKED_OPEN)) == "out-of-phase"        # the comparisons began
    assert seq.rows == {3, 5}


def test_without_the_check_rows_end_with_the_weights_and_s1_takes_no_rows():
    seq = PeerSequence(0, _plan(check=False))
    seq.advance(Message(M.PARTICIPANTS, 4, "S1", "S0", {"workers": [3, 5, 8]}))
    seq.advance(_row(8))
    seq.advance(Message(M.WEIGHTS, 4, "S1", "S0", {}, {"weights": np.ones(3)}))
    assert _code(lambda: seq.check(M.MASKED_OPEN)) == "out-of-phase"
    s1 = PeerSequence(1, _plan())
    for kind in (M.MASKED_OPEN, M.PARTICIPANTS, M.WEIGHTS):
        assert _code(lambda: s1.check(kind)) == "out-of-phase"
    s1.check(M.VALIDITY_SEED)
    assert s1.kinds.count(M.VALIDITY_OPEN) == validity.rounds(3)


def test_the_mean_streams_its_rows_as_validity_openings_and_the_unchecked_mean_none():
    seq = PeerSequence(0, _plan(reveal=()))
    seq.advance(_row(3, kind=M.VALIDITY_MASKED_OPEN))
    assert _code(lambda: seq.advance(_row(5))) == "out-of-phase"            # wrong kind for this round
    none = PeerSequence(0, _plan(check=False, reveal=()))
    assert _code(lambda: none.check(M.VALIDITY_MASKED_OPEN)) == "out-of-phase"
