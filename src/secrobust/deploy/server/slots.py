"""How many large payloads a server holds at once: S1's upload slots for the workers' masked shares, S0's
backlog of rows of E, and the aggregate-share replies both encode at once."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from ...pki.certs import worker_index
from ...protocol import messages as M
from ...transport.grpc import secrobust_pb2 as pb
from ...transport.grpc.errors import Rejected
from ...transport.grpc.logs import LOGGER_NAME, event
from ...transport.grpc.pace import MIN_RATE, PAYLOAD_GRACE_S, Pace
from ..config import PartyConfig
from .forward import FORWARD_STREAMS
from .run import RoundRun, Rounds
from .sequence import OPEN_KINDS
from .sync import Monitor

UPLOAD_SLOTS = 8
"""Masked shares S1 receives at once (``reserve``), at least; more in a round of more than 15 workers
(``upload_slots``)."""
UPLOAD_WINDOW = 1 << 20
"""S1's HTTP/2 receive window per stream (``tls.server_options``): uploads that wait for a slot hold at most
this much in gRPC's buffers."""
ROW_BACKLOG = 16
"""Rows of E that S0 holds (received or being received) before it has added them to its Gram share."""
FETCH_SLOTS = 4
"""Aggregate-share replies a server encodes and streams at once (``fetch_slot``)."""
FETCH_WAIT_S = 60.0
"""The longest an aggregate-share fetch waits for a slot before it is refused (``busy``)."""
OPERATOR_FIRST_S = 5.0
"""The longest a worker's aggregate-share reply waits for the server's operator's reply to a finished round to
be streamed first (the operator asks before the round ends, ``Operator.collect``; its round ends on it)."""


def upload_slots(n: int) -> int:
    """S1's upload slots in a round of n workers: more than any k < n/2 worker certificates can hold (each
    has one share in flight at a time), so theirs never keep an honest share waiting for a slot."""
    return max(UPLOAD_SLOTS, n // 2 + 1)


class Slots:
    """The slots of one server: payloads being received (``uploads``: S1's masked shares, S0's rows of E)
    and aggregate-share replies being sent (``fetching``, one per caller), each given back by the release
    the lanes call when the payload is done."""

    def __init__(self, monitor: Monitor, rounds: Rounds, cfg: PartyConfig, index: int, peer_name: str,
                 operator_name: str) -> None:
        self.monitor = monitor
        self.rounds = rounds
        self.cfg = cfg
        self.index = index
        self.peer_name = peer_name
        self.operator_name = operator_name
        self.log = logging.getLogger(LOGGER_NAME)
        self.uploads = 0
        self.fetching = 0
        self.fetchers: set[str] = set()
        """Callers holding an aggregate-share slot: one each, so a few slow readers cannot hold them all."""
        self.operator_fetches: Counter[int] = Counter()
        """Round id -> the operator's aggregate-share fetches of it, waiting for the round or being streamed."""
        self._operator_round = threading.local()

    def reserve(self, env: pb.Envelope) -> Callable[..., None] | None:
        """Bounds on the 8d-byte messages a server holds at once (``Endpoint`` calls this once ``precheck``
        passed; a stream that waits is held back by flow control). S1 receives at most ``upload_slots(n)``
        masked shares at once (each is a buffer, committed as its bytes arrive, until it is copied into the
        round's matrix; a worker with its share in flight has no row there yet): so S1 needs about 8nd bytes
        for the shares, and they complete one after another (their rows are opened while the rest upload)
        instead of all at the end. S0 takes a row of E only while fewer than ``ROW_BACKLOG`` +
        ``forward.FORWARD_STREAMS`` rows are arriving or wait to be added to its Gram share (S1 then sends more
        slowly): room for every row S1 forwards while its shares arrive."""
        if self.index == 1 and env.phase == M.SHARE_MASKED and worker_index(env.sender) is not None:
            return self._reserve_upload(env)
        if self.index == 1 and env.phase == M.SHARE_MASKED:
            def room(rnd: RoundRun | None) -> bool:
                return self.uploads < UPLOAD_SLOTS
        elif self.index == 0 and env.phase in OPEN_KINDS and env.sender == self.peer_name:
            def room(rnd: RoundRun | None) -> bool:
                return rnd is None or len(rnd.inbox[env.phase]) + self.uploads < ROW_BACKLOG + FORWARD_STREAMS
        else:
            return None

        def free() -> bool:
            rnd = self.rounds.open(env.round_id)
            if room(rnd):
                return True
            if rnd is None or rnd.finished or self.monitor.closing or (self.index == 1 and not rnd.intake_open):
                raise Rejected("out-of-phase", f"round {env.round_id} moved on while the {env.phase} message "
                               "waited for its turn")
            return False
        with self.monitor:
            self.monitor.wait_until(free)
            self.uploads += 1
        return self._uploads_release

    def _reserve_upload(self, env: pb.Envelope) -> Callable[..., None]:
        """An upload slot for a worker's share (``precheck`` marked it in flight; ``upload_slots`` of them per
        round): the worker is out of ``in_flight`` again when its stream ends, and if that stream took a slot
        and did not bring its payload in full (stalled, cut off by its pace, disconnected), the worker is
        dropped from the round (``RoundRun.dropped``). A payload that arrived whole and was refused for its
        content leaves the worker free to send again: it paid its bytes at the pace, and a worker holds one
        slot at a time whatever it does."""
        w = worker_index(env.sender)
        assert w is not None

        def done(stalled: bool) -> None:
            dropped = False
            with self.monitor:
                rnd = self.rounds.open(env.round_id)
                if rnd is None:
                    return
                rnd.in_flight.discard(w)
                if stalled and w not in rnd.received and rnd.intake_open and not rnd.finished:
                    rnd.dropped.setdefault(w, "its upload took a slot and did not bring its payload in full "
                                              "(stalled, cut off by the upload pace, or disconnected)")
                    rnd.close_when_all_answered()
                    self.monitor.notify()
                    dropped = True
            if dropped:
                event(self.log, "upload-dropped", level=logging.WARNING, round=env.round_id, phase="share", worker=w)

        def free() -> bool:
            rnd = self.rounds.open(env.round_id)
            if rnd is None or rnd.finished or self.monitor.closing or not rnd.intake_open:
                raise Rejected("out-of-phase", f"round {env.round_id} moved on while the {env.phase} "
                               "message waited for its turn")
            return self.uploads < upload_slots(len(rnd.plan.worker_ids))
        try:
            with self.monitor:
                self.monitor.wait_until(free)
                self.uploads += 1
        except BaseException:
            done(False)
            raise

        def release(arrived: bool = False) -> None:
            self._uploads_release()
            done(not arrived)
        return release

    def _uploads_release(self, arrived: bool = False) -> None:
        """Give back an upload slot and wake waiters (``arrived``, passed by the lanes for a reserved payload,
        changes nothing here)."""
        with self.monitor:
            self.uploads -= 1
            self.monitor.notify()

    def upload_pace(self, env: pb.Envelope) -> Pace | None:
        """The pace a worker's share upload must keep at S1 (``transport.grpc.pace.Pace``; the configured
        ``upload_grace_s`` and ``upload_min_rate``). A row of E at S0 may come as fast as its worker's share
        reaches S1 (``forward``): the lanes' default grace on top of the share's, and the slower of the two
        rates. Other payloads keep the lanes' default."""
        if self.index == 1 and env.phase == M.SHARE_MASKED and worker_index(env.sender) is not None:
            return Pace(self.cfg.upload_grace_s, self.cfg.upload_min_rate)
        if self.index == 0 and env.phase in OPEN_KINDS and env.sender == self.peer_name:
            return Pace(PAYLOAD_GRACE_S + self.cfg.upload_grace_s, min(MIN_RATE, self.cfg.upload_min_rate))
        return None

    def operator_fetch(self, round_id: int) -> Callable[[], None]:
        """With the lock held: the operator asks for round ``round_id``'s aggregate share (``fetch``, before it
        waits for the round). Until the returned release (or the one ``fetch_slot`` hands the reply on this
        thread), workers' replies to a finished round wait for it (``OPERATOR_FIRST_S`` at most)."""
        self.operator_fetches[round_id] += 1
        self._operator_round.release = None
        done = False

        def release() -> None:
            nonlocal done
            with self.monitor:
                if done:
                    return
                done = True
                self.operator_fetches[round_id] -= 1
                if self.operator_fetches[round_id] <= 0:
                    del self.operator_fetches[round_id]
                self.monitor.notify()
        self._operator_round.release = release
        return release

    def _operator_first(self) -> bool:
        """With the lock held: the operator's reply to a finished round is due or being streamed."""
        return any((rnd := self.rounds.find(rid)) is not None and rnd.finished for rid in self.operator_fetches)

    def fetch_slot(self, caller: str, phase: str) -> Callable[[], None] | None:
        """At most ``FETCH_SLOTS`` aggregate shares (8d bytes each, plus their encoding) are encoded and
        streamed at once: every worker fetches both servers' shares as soon as a round ends, and n replies
        in memory together would cost about 16nd bytes. The operator's reply takes no slot and goes first:
        the round ends for the operator when it has both shares, and each worker's waits at most
        ``OPERATOR_FIRST_S`` for it (the link is shared with the workers' otherwise)."""
        if phase != M.AGGREGATE_SHARE:
            return None
        if caller == self.operator_name:
            release = getattr(self._operator_round, "release", None)
            self._operator_round.release = None
            return release
        now = time.monotonic()
        deadline, first_until = now + FETCH_WAIT_S, now + OPERATOR_FIRST_S

        def free() -> bool:
            if self.monitor.closing:
                return True
            return self.fetching < FETCH_SLOTS and (time.monotonic() >= first_until or not self._operator_first())
        with self.monitor:
            if caller in self.fetchers:
                raise Rejected("busy", f"{caller} is already fetching an aggregate share here")
            if not self.monitor.wait_until(free, deadline):
                raise Rejected("busy", f"no aggregate-share slot came free within {FETCH_WAIT_S:g} s")
            self.fetching += 1
            self.fetchers.add(caller)

        def release() -> None:
            with self.monitor:
                self.fetchers.discard(caller)
                self.fetching -= 1
                self.monitor.notify()
        return release
