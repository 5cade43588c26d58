"""S1 forwards a worker's row of E while that worker's share is still arriving (bulk lane to bulk lane).

e_i = x1_i - v - a1_{p_i} is column-wise (``streaming.opening_columns``), so S1 opens each piece of x1_i as it
lands in the upload's receive buffer and streams it to S0 as the payload of one ordinary row message: S0
receives, byte for byte, the ``opening_message`` S1 would have sent once the share was in. With 26 uploads
sharing S1's link, rows sent whole leave in waves and S1's link to S0 idles between them; forwarded, it
carries E as fast as the shares arrive.

What each side may assume of the other:
* S0 takes the message only once it is whole, and S1 holds back the row's last piece until it has accepted
  the share (``RowForward.end``). So S0 never holds a row of a worker S1 did not take (and will list), and a
  share that does not arrive in full, or is refused for its content, closes the stream mid-payload: S0
  takes nothing, and the worker's next attempt, if any, streams afresh.
* S1 forwards a share only if its first bytes are, byte for byte, the header ``worker.share_update`` makes for
  that worker, round and d (``worker.share_header``): such a share can then be refused only because the
  intake closed or the round ended, so a worker cannot have row after row streamed by sending shares S1
  refuses. A worker has at most one forward a round (a retry's row goes whole), so a1_{p_i}, a one-time pad
  S0 never sees, pads at most one stream of x1_i: e stays uniform, whole or in pieces. A Byzantine worker's
  x1 is any ring element either way.
* Pieces are opened by the forward's sending thread, from the upload's receive buffer, only as S0's socket
  takes them: S1 holds the share's bytes (its receive buffer) until the forward ends, not pieces of E.
* A forward that fails after the share was taken (S0 refused it, the link broke) is replaced by the row sent
  whole (``S1Steps``); if S0 did take the first, the second is a duplicate and the round aborts, as any
  row that cannot be delivered does.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ...errors import MalformedMessage
from ...protocol import streaming
from ...protocol.worker import share_header
from ...transport.grpc.logs import LOGGER_NAME, event

if TYPE_CHECKING:
    from ...gates.dealer import TripleShare1
    from .run import RoundRun
    from .sync import Monitor

FORWARD_STREAMS = 32
"""Rows of E S1 forwards at once (more uploads in flight send their rows whole once taken)."""
PIECE_COLUMNS = 1 << 17
"""Columns of a forwarded piece at most (1 MiB of words)."""
MIN_PIECE_COLUMNS = 512
PIECE_WAIT_S = 600.0
"""A forward gives up if no piece comes for this long (the upload's pace ends it far sooner)."""


def piece_columns(d: int) -> int:
    """Columns per forwarded piece: about an eighth of the row, within [MIN_PIECE_COLUMNS, PIECE_COLUMNS]."""
    return min(PIECE_COLUMNS, max(MIN_PIECE_COLUMNS, -(-d // 8)))


def worth_forwarding(d: int) -> bool:
    """A row of at least two pieces (with one, forwarding is sending it whole)."""
    return d > piece_columns(d)


class Cancelled(Exception):
    """The share behind a forward did not arrive in full, or was refused: its stream is cut."""


class RowForward:
    """One worker's row of E, streamed to S0 while its share arrives (a ``transport.handler.PayloadWatch``: the
    lane's receiving thread calls ``progress`` and ``end``; a thread of its own sends)."""

    def __init__(self, monitor: "Monitor", rnd: "RoundRun", worker: int, buf: np.ndarray,
                 triple: "TripleShare1 | Callable[[], TripleShare1 | None]", send_stream: Any,
                 release: Callable[[], None] = lambda: None) -> None:
        """``triple``: S1's share of the round's triple, or a function that gives it once S1 has it (a share
        can start to arrive a moment before). ``release`` is called once, with the lock held, when the forward
        is over (S1 counts the forwards that run)."""
        plan = rnd.plan
        self.monitor = monitor
        self.rnd = rnd
        self.worker = worker
        self.buf: np.ndarray | None = buf
        self.triple = triple if not callable(triple) else None
        self._triple_source = triple if callable(triple) else None
        self.position = rnd.streamed.position[worker]
        self.center = plan.center
        self.d = plan.d
        self.piece = piece_columns(plan.d)
        self.kind = plan.open_kind
        self._send_stream = send_stream
        self._release = release
        self.log = logging.getLogger(LOGGER_NAME)
        self.header = share_header(rnd.round_id, worker, plan.d)
        self.offset: int | None = None
        """Where x1 starts in the share's bytes, once its header is in and is the expected one."""
        self.opened = 0
        """Columns of e handed to S0's socket so far."""
        self._cv = threading.Condition()
        self._got = 0
        self._wake_at = 0
        """The byte count at which the sending thread wants to hear from ``progress``."""
        self.sealed = False
        """S1 took the share: the last piece may go."""
        self.stopped = False
        """The share did not arrive in full, was refused, or was not one to forward: the stream is cut."""
        self._started = False
        self.done = threading.Event()
        self.error: BaseException | None = None

    # the upload's side (the lane's receiving thread)

    def progress(self, got: int) -> None:
        if self.stopped or self.done.is_set():
            return
        if self.offset is None:
            try:
                if not self._begin(got):
                    return
            except Exception as exc:            # the share takes the usual path; S0 gets nothing of this one
                self._stop(exc)
                return
        if got >= self._wake_at:
            with self._cv:
                self._got = got
                self._cv.notify()
        else:
            self._got = got

    def end(self, accepted: bool) -> None:
        if self.stopped or self.done.is_set():
            return
        if accepted and self.offset is not None:
            with self._cv:
                self._got = len(self.buf) if self.buf is not None else self._got
                self.sealed = True
                self._cv.notify()
        else:
            self._stop(None)

    def _begin(self, got: int) -> bool:
        """Start the sending thread once the share's first bytes are the header ``share_update`` makes for this
        worker, round and d; raise if they cannot be."""
        assert self.buf is not None
        n = min(got, len(self.header))
        if bytes(self.buf[:n]) != self.header[:n] or len(self.buf) != len(self.header) + 8 * self.d:
            raise MalformedMessage("not the masked share this worker's round and d make")
        if got < len(self.header):
            return False
        with self.monitor:
            self.rnd.streamed.forwarded.add(self.worker)     # its one forward this round
        self.offset = len(self.header)
        threading.Thread(target=self._send, name=f"S1-forward-{self.worker}", daemon=True).start()
        self._started = True
        return True

    def _stop(self, exc: BaseException | None) -> None:
        with self._cv:
            self.stopped = True
            self._cv.notify()
        if not self._started:
            self._finish(exc or Cancelled("the share did not arrive"))
        if exc is not None:
            event(self.log, "forward-off", level=logging.INFO, round=self.rnd.round_id, worker=self.worker,
                  reason=str(exc)[:200])

    def _have_triple(self) -> bool:
        if self.triple is None and self._triple_source is not None:
            self.triple = self._triple_source()
        return self.triple is not None

    # the sending thread

    def _send(self) -> None:
        template = streaming.opening_message(self.rnd.round_id, self.kind, self.worker,
                                             np.empty(self.d, dtype=np.uint64))
        try:
            self._send_stream(template, self._stream())
        except BaseException as exc:
            self._finish(exc)
            return
        self._finish(None)

    def _stream(self) -> Iterator[memoryview]:
        """The pieces, each opened once its columns are in (the last once S1 took the share) and S0's socket
        asks for it (the lane asks for the first once S0 said "go")."""
        event(self.log, "forward-open", round=self.rnd.round_id, worker=self.worker)
        while self.opened < self.d:
            stop = min(self.opened + self.piece, self.d)
            self._wait_for(stop)
            x1 = np.frombuffer(self.buf, dtype="<u8", count=stop - self.opened, offset=self.offset + 8 * self.opened)
            e = streaming.opening_columns(x1, self.triple, self.position, self.center, self.opened)
            self.opened = stop
            yield memoryview(e).cast("B")

    def _wait_for(self, stop: int) -> None:
        """Until columns [opened, stop) are in (and, for the last piece, the share was taken) and S1 holds the
        triple; Cancelled if the share will not be forwarded."""
        assert self.offset is not None
        need = self.offset + 8 * stop
        with self._cv:
            self._wake_at = need
            while True:
                if self.stopped:
                    raise Cancelled("the share did not arrive in full, or was refused")
                ready = self.sealed if stop == self.d else self._got >= need
                if ready and self._have_triple():
                    return
                if ready and self.sealed:
                    raise Cancelled("S1 had no triple for the round when the share was in")
                if not self._cv.wait(0.2 if ready else PIECE_WAIT_S) and not ready:
                    raise Cancelled(f"no piece of the share came for {PIECE_WAIT_S:g} s")

    def _finish(self, exc: BaseException | None) -> None:
        """Done, delivered or not. A forward whose share S1 did not take is forgotten (the worker's row, if it
        is ever taken, goes whole); one of a taken share stays for ``S1Steps`` to await (or replace)."""
        with self.monitor:
            if self.done.is_set():
                return
            self.error = exc
            self.buf = None
            self.done.set()
            forwards = self.rnd.streamed.forwards
            if exc is not None and self.worker not in self.rnd.received and forwards.get(self.worker) is self:
                del forwards[self.worker]
            self._release()
            self.monitor.notify()
        if isinstance(exc, Cancelled) and self._started:
            event(self.log, "forward-cut", round=self.rnd.round_id, worker=self.worker, opened=self.opened)

    @property
    def delivered(self) -> bool:
        """S0 acknowledged the whole row."""
        return self.done.is_set() and self.error is None
