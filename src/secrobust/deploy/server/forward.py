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
* S1 forwards a share only if its header names that worker and one uint64 array of d words
  (``messages.read_header`` on the bytes in; otherwise the share takes the usual path and its checks).
  A Byzantine worker's x1 is any ring element either way; e stays uniform (a1_{p_i} is a one-time pad S0
  never sees, used once per round, whole or in pieces).
* A forward that fails after the share was taken (S0 refused it, the link broke) is replaced by the row sent
  whole (``S1Steps``); if S0 did take the first, the second is a duplicate and the round aborts, as any
  row that cannot be delivered does.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ...errors import MalformedMessage
from ...protocol import messages as M
from ...protocol import streaming
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


_DONE = object()
_CANCEL = object()


class RowForward:
    """One worker's row of E, streamed to S0 while its share arrives (a ``transport.handler.PayloadWatch``)."""

    def __init__(self, monitor: "Monitor", rnd: "RoundRun", worker: int, buf: np.ndarray,
                 triple: "TripleShare1 | Callable[[], TripleShare1 | None]", send_stream: Any) -> None:
        """``triple``: S1's share of the round's triple, or a function that gives it once S1 has it (a share
        can start to arrive a moment before: its pieces are opened from then on)."""
        plan = rnd.plan
        self.monitor = monitor
        self.rnd = rnd
        self.worker = worker
        self.buf = buf
        self.triple = triple if not callable(triple) else None
        self._triple_source = triple if callable(triple) else None
        self.position = rnd.streamed.position[worker]
        self.center = plan.center
        self.d = plan.d
        self.piece = piece_columns(plan.d)
        self.kind = plan.open_kind
        self._send_stream = send_stream
        self.log = logging.getLogger(LOGGER_NAME)
        self.offset: int | None = None
        self.opened = 0
        """Columns of e opened and queued so far."""
        self.stopped = False
        self.sealed = False
        """The share was taken and the last piece queued."""
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._pieces: queue.SimpleQueue = queue.SimpleQueue()

    # the upload's side (the lane's receiving thread)

    def progress(self, got: int) -> None:
        if self.stopped:
            return
        try:
            if self.offset is None and not self._begin(got):
                return
            assert self.offset is not None
            if not self._have_triple():
                return
            whole = (got - self.offset) // 8
            while self.opened + self.piece < self.d and whole >= self.opened + self.piece:
                self._open(self.opened + self.piece)
        except Exception as exc:                # the share takes the usual path; S0 gets nothing of this one
            self._stop(exc)

    def end(self, accepted: bool) -> None:
        if self.stopped:
            return
        if not (accepted and self.offset is not None):
            self._stop(None)
            return
        try:
            if not self._have_triple():
                raise LookupError("S1 had no triple for the round when the share was in")
            self._open(self.d)
        except Exception as exc:
            self._stop(exc)
            return
        self.sealed = True
        self._pieces.put(_DONE)
        self.buf = None

    def _begin(self, got: int) -> bool:
        """Read the share's header once it is in: forward only a share of this worker with one x1 of d words."""
        read = M.read_header(memoryview(self.buf)[:got], len(self.buf))
        if read is None:
            return False
        h, offset = read
        fits = (h["kind"] == M.SHARE_MASKED and h["fields"].get("worker") == self.worker
                and h["arrays"] == [["x1", "<u8", [self.d]]] and offset + 8 * self.d == len(self.buf))
        if not fits:
            raise MalformedMessage("not a masked share of this worker with one vector of d words")
        self.offset = offset
        threading.Thread(target=self._send, name=f"S1-forward-{self.worker}", daemon=True).start()
        return True

    def _have_triple(self) -> bool:
        if self.triple is None and self._triple_source is not None:
            self.triple = self._triple_source()
        return self.triple is not None

    def _open(self, stop: int) -> None:
        """Open columns [opened, stop) of the row and queue them."""
        start = self.opened
        x1 = np.frombuffer(self.buf, dtype="<u8", count=stop - start, offset=self.offset + 8 * start)
        self._pieces.put(streaming.opening_columns(x1, self.triple, self.position, self.center, start))
        self.opened = stop

    def _stop(self, exc: BaseException | None) -> None:
        self.stopped = True
        self.buf = None
        if self.offset is not None:
            self._pieces.put(_CANCEL)
        else:
            self._finish(exc or Cancelled("the share did not arrive"))
        if exc is not None:
            event(self.log, "forward-off", level=logging.INFO, round=self.rnd.round_id, worker=self.worker,
                  reason=str(exc)[:200])

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
        """The pieces as they are opened (the lane asks for the first once S0 said "go")."""
        event(self.log, "forward-open", round=self.rnd.round_id, worker=self.worker)
        while True:
            try:
                item = self._pieces.get(timeout=PIECE_WAIT_S)
            except queue.Empty:
                raise Cancelled(f"no piece of the share came for {PIECE_WAIT_S:g} s") from None
            if item is _DONE:
                return
            if item is _CANCEL:
                raise Cancelled("the share did not arrive in full, or was refused")
            yield memoryview(item).cast("B")

    def _finish(self, exc: BaseException | None) -> None:
        """Done, delivered or not. A forward whose share S1 did not take is forgotten: the worker may send again,
        and its row then goes afresh; one of a taken share stays for ``S1Steps`` to await (or replace)."""
        with self.monitor:
            self.error = exc
            self.done.set()
            forwards = self.rnd.streamed.forwards
            if exc is not None and self.worker not in self.rnd.received and forwards.get(self.worker) is self:
                del forwards[self.worker]
            self.monitor.notify()
        if isinstance(exc, Cancelled) and self.offset is not None:
            event(self.log, "forward-cut", round=self.rnd.round_id, worker=self.worker, opened=self.opened)

    @property
    def delivered(self) -> bool:
        """S0 acknowledged the whole row."""
        return self.done.is_set() and self.error is None
