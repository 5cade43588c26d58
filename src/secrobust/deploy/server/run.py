"""A round at one server (``RoundRun``: request, phase, inbox from the peer, rows streamed so far, outcome)
and the rounds it keeps (``Rounds``: the open one, the last few finished, the last round id on disk)."""

from __future__ import annotations

import os
import time
from collections import OrderedDict, defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import RoundAborted
from ...protocol.messages import Message
from ...protocol import streaming
from ...protocol.server import RoundPlan
from ...transport.grpc import Accounting
from ..pool import triple_key
from ..rounds import RoundRequest
from .sequence import PeerSequence, rule_step_cap

KEEP_ROUNDS = 8
KEEP_SHARES = 2
PHASES = ("share", "agree", "offline", "open", "validity", "distances", "rule", "aggregate", "done")


class PeerTimeout(RoundAborted):
    """The other server (or the dealer's triple) did not arrive within the configured time."""


class PeerAborted(RoundAborted):
    """The other server (or the operator) aborted the round and said why."""


def key_traffic_key(round_id: int) -> str:
    """The accounting key of S0's share-key replies of a round (``Accounting``)."""
    return f"keys:{round_id}"


class Streamed:
    """A round's rows at one server while the share phase runs (``protocol.streaming``).

    S1: its masked shares in arrival order (one n_plan x d matrix, so an upload's receive buffer is freed
    as soon as it is copied in), how many of them were opened to S0 and added to the Gram share, and
    <x1_k, v> for a center. S0: A0 for every planned position and the columns of 2 A0 E^T filled so far.
    """

    def __init__(self, party: int, plan: RoundPlan) -> None:
        n, d = len(plan.worker_ids), plan.d
        self.position = {w: i for i, w in enumerate(plan.worker_ids)}
        self.order: list[int] = []
        self.opened = 0
        self.rows: np.ndarray | None = np.empty((n, d), dtype=np.uint64) if party == 1 else None
        self.a0: np.ndarray | None = None
        kind = plan.triple_kind
        self.row_gram = streaming.RowGram(n, kind) if party == 1 and kind else None
        self.col_gram = streaming.ColumnGram(n, kind) if party == 0 and kind else None
        self.u = np.zeros(n, dtype=np.uint64) if party == 1 and plan.center is not None else None
        self.weighted: streaming.WeightedRows | None = None
        """S0, reveal="aggregate": u^T E over the rows of E taken so far."""
        self.forwards: dict[int, Any] = {}
        """S1: worker -> its ``forward.RowForward`` (the row of E streamed while the share arrived)."""
        self.forwarded: set[int] = set()
        """S1: workers whose share's row was streamed this round (one each: a retry's row goes whole)."""

    def release(self) -> None:
        self.rows = self.a0 = None
        self.weighted = None
        self.forwards = {}


class RoundRun:
    """One round at one server: its request, phase, inbox from the peer, and outcome."""

    def __init__(self, request: RoundRequest, party: int, min_participants: int) -> None:
        self.request = request
        self.plan = request.plan()
        self.spec = request.cohort_spec(min_participants)
        self.digest = request.digest()
        self.confirmed = False
        """The other server holds a request with the same digest (``confirm-request``): no share is used before."""
        self.reveal = bool(self.plan.reveal)
        """The round opens a masked E: the rule needs distances or norms (S1 opens them, or the rule runs on
        their shares)."""
        self.on_shares = request.secure_rule()
        """The rule's circuit when it runs on shares (``reveal`` "weights" or "aggregate"), else None."""
        self.mode = request.reveal
        self.uses_triple = self.plan.triple_kind is not None
        self.phase = "share"
        self.status = "running"
        self.reason = ""
        self.error: dict[str, Any] = {}
        self.intake_open = True
        """S1: masked shares are taken; S0: share keys are handed out."""
        self.received: set[int] = set()
        """S1: workers whose masked share arrived; S0: workers that fetched their share key."""
        self.in_flight: set[int] = set()
        """S1: workers whose masked share is being received (one at a time each: it takes an 8d-byte buffer)."""
        self.dropped: dict[int, str] = {}
        """S1: workers whose upload took a slot and ended without a share (stalled, cut off, refused): out of
        this round, so that no certificate holds a slot twice."""
        self.declined: dict[int, str] = {}
        """Workers that said why they sit this round out (``declines``), first reason each."""
        self.inbox: dict[str, deque[Message]] = defaultdict(deque)
        self.peer_seq = PeerSequence(party, self.plan, rule_step_cap(request, self.plan))
        self.streamed = Streamed(party, self.plan)
        self.triple_in = False
        self.triple: dict[str, Any] = {}
        self.deferred: list[str] = []
        """S1: the triples this request prefetches for later rounds, requested from the dealer once it ends."""
        self.share_deadline = time.monotonic() + request.share_window_s
        self.seconds: dict[str, float] = defaultdict(float)
        self.participants: tuple[int, ...] = ()
        self.rejected: dict[int, str] = {}
        self.weights: np.ndarray | None = None
        self.center_weight = 0.0
        self.view: dict[str, np.ndarray] = {}
        self.own_share: np.ndarray | None = None
        self.aggregate_digest = ""

    @property
    def round_id(self) -> int:
        return self.request.round_id

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def check_alive(self) -> None:
        """Raise PeerAborted if the other server (or the operator) aborted this round."""
        if self.error.get("type") == "PeerAborted":
            raise PeerAborted(self.reason)

    def close_when_all_answered(self) -> None:
        """S1's intake closes once every expected worker has sent its share, declined the round or been
        dropped: no one else can still arrive, so the round need not wait out its share window. (A worker
        declines, or is dropped, only for itself, under its own certificate, so no worker can close the
        window for another.)"""
        if self.received | set(self.declined) | set(self.dropped) >= set(self.plan.worker_ids):
            self.intake_open = False


def traffic(accounting: Accounting, rnd: RoundRun) -> dict[str, Any]:
    """A round's traffic at this server: its own messages plus the offline traffic of the triple it used."""
    if rnd.triple_in:
        return accounting.totals(rnd.round_id, triple_key(rnd.triple["triple_id"]))
    return accounting.totals(rnd.round_id)


class Rounds:
    """The round open at this server (``current``), the last ``KEEP_ROUNDS`` finished ones (for fetches and
    reports; aggregate shares of the last ``KEEP_SHARES`` only), and the last round id opened (``last``),
    kept in the state directory if there is one, so round ids increase across restarts."""

    def __init__(self, state_dir: str | os.PathLike[str] | None) -> None:
        self.current: RoundRun | None = None
        self.history: OrderedDict[int, RoundRun] = OrderedDict()
        self._file = None if state_dir is None else Path(state_dir) / "last_round"
        self.last = self._load()

    def _load(self) -> int:
        if self._file is None or not self._file.exists():
            return -1
        return int(self._file.read_text().strip() or -1)

    def _store(self, round_id: int) -> None:
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(str(round_id))
        os.replace(tmp, self._file)

    def start(self, run: RoundRun) -> None:
        """``run`` is the open round from now on; its id is stored before anything else sees it."""
        self._store(run.round_id)
        self.last = run.round_id
        self.current = run

    def open(self, round_id: int) -> RoundRun | None:
        """The current round if it is ``round_id``."""
        rnd = self.current
        return rnd if rnd is not None and rnd.round_id == round_id else None

    def find(self, round_id: int) -> RoundRun | None:
        """Round ``round_id``, the current one or a kept finished one."""
        return self.open(round_id) or self.history.get(round_id)

    def running(self) -> bool:
        return self.current is not None and not self.current.finished

    def archive(self, rnd: RoundRun) -> None:
        """Keep the finished ``rnd`` for fetches and reports; forget the oldest."""
        self.history[rnd.round_id] = rnd
        while len(self.history) > KEEP_ROUNDS:
            self.history.popitem(last=False)
        for old in list(self.history.values())[:-KEEP_SHARES]:
            old.own_share = None
