"""A server streams its operator's aggregate share before the workers' (``Slots.fetch_slot``): the operator's
round ends on it, and it asks before the round is over (``Operator.collect``)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from secrobust.deploy.server import slots as slots_mod
from secrobust.deploy.server.run import Rounds
from secrobust.deploy.server.slots import Slots
from secrobust.deploy.server.sync import Monitor
from secrobust.protocol import messages as M

OPERATOR = "operator:S1"


def make(round_id: int = 7) -> tuple[Monitor, Slots, SimpleNamespace]:
    monitor = Monitor()
    rounds = Rounds(None)
    rnd = SimpleNamespace(round_id=round_id, finished=False)
    rounds.history[round_id] = rnd          # find() looks there for a finished round
    return monitor, Slots(monitor, rounds, None, 1, "S0", OPERATOR), rnd  # type: ignore[arg-type]


def worker_slot(slots: Slots, caller: str, out: dict[str, float]) -> None:
    release = slots.fetch_slot(caller, M.AGGREGATE_SHARE)
    out[caller] = time.monotonic()
    assert release is not None
    release()


def test_workers_go_first_while_the_operator_waits_for_the_round() -> None:
    monitor, slots, _ = make()
    with monitor:
        slots.operator_fetch(7)
    got: dict[str, float] = {}
    worker_slot(slots, "worker:0", got)                 # round 7 still running: no reply of the operator is due
    assert "worker:0" in got


def test_a_worker_waits_for_the_operators_reply_to_a_finished_round() -> None:
    monitor, slots, rnd = make()
    with monitor:
        slots.operator_fetch(7)
        rnd.finished = True
    release = slots.fetch_slot(OPERATOR, M.AGGREGATE_SHARE)   # the operator's reply, on the fetch's thread
    assert release is not None and slots.fetch_slot(OPERATOR, M.AGGREGATE_SHARE) is None
    got: dict[str, float] = {}
    t = threading.Thread(target=worker_slot, args=(slots, "worker:3", got))
    t.start()
    time.sleep(0.3)
    assert not got, "a worker's reply started while the operator's was still due"
    released = time.monotonic()
    with monitor:
        release()
        release()                                       # a second call changes nothing
    t.join(5.0)
    assert got["worker:3"] >= released
    assert not slots.operator_fetches


def test_a_worker_waits_for_the_operator_at_most_operator_first_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slots_mod, "OPERATOR_FIRST_S", 0.2)
    monitor, slots, rnd = make()
    with monitor:
        release = slots.operator_fetch(7)               # the operator asked and never reads its reply
        rnd.finished = True
    got: dict[str, float] = {}
    start = time.monotonic()
    worker_slot(slots, "worker:1", got)
    assert 0.2 <= got["worker:1"] - start < 4.5          # not until the operator reads (never)
    release()


def test_a_refused_operator_fetch_holds_nothing_back() -> None:
    monitor, slots, rnd = make()
    with monitor:
        release = slots.operator_fetch(7)
        rnd.finished = True
        release()                                       # ``fetch`` refused it (the round aborted)
    got: dict[str, float] = {}
    start = time.monotonic()
    worker_slot(slots, "worker:2", got)
    assert got["worker:2"] - start < 2.0                 # not OPERATOR_FIRST_S (5 s)
