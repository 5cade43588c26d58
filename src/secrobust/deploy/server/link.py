"""What a round's steps share at one server: the link to the other server (send it the next message, wait
for its next one of a kind) and the round's phase clock."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ...errors import RoundAborted
from ...protocol.messages import Message
from ...transport.grpc import PeerClient
from ...transport.grpc.logs import Timer
from ...transport.peer import Peer
from .forward import FORWARD_STREAMS
from .run import PeerTimeout, RoundRun
from .sequence import OPEN_KINDS
from .sync import Monitor


class PeerLink:
    """The other server as a round's steps see it (``peer``: its gRPC client, and for S1 the bulk lane S0
    announces, which the rows of E take) and the peer timeout; and the phase clock (``phase``) of the rounds."""

    def __init__(self, monitor: Monitor, client: PeerClient, peer_timeout_s: float) -> None:
        self.monitor = monitor
        self.peer = Peer(client, bulk=OPEN_KINDS, streams=FORWARD_STREAMS)
        self.peer_name = client.peer
        self.peer_timeout_s = peer_timeout_s

    def use_bulk(self, port: Any) -> None:
        """S1: send the rows of E over S0's bulk lane when S0 offers one (learnt from its answer to
        ``confirm-request``)."""
        self.peer.use_lane(port)

    def close(self) -> None:
        """Close the bulk lane (the gRPC client stays)."""
        if self.peer.lane is not None:
            self.peer.lane.close()

    def send(self, rnd: RoundRun, msg: Message) -> None:
        """Send ``msg`` to the other server unless the round was aborted (rows of E over the bulk lane)."""
        with self.monitor:
            rnd.check_alive()
        self.peer.send(msg)

    def wait(self, rnd: RoundRun, kind: str, gone: Callable[[], bool] | None = None) -> Message:
        """The peer's next ``kind`` message; PeerTimeout after the peer timeout, RoundAborted at once if
        ``gone()`` says none will come."""
        limit = self.peer_timeout_s
        deadline = time.monotonic() + limit

        def arrived() -> bool:
            if rnd.inbox[kind]:
                return True
            rnd.check_alive()
            if gone is not None and gone():
                raise RoundAborted(f"{self.peer_name} moved on without sending the next {kind}")
            return False
        with self.monitor:
            if not self.monitor.wait_until(arrived, deadline):
                raise PeerTimeout(f"{self.peer_name} sent no {kind} within {limit:g} s")
            return rnd.inbox[kind].popleft()

    def enter(self, rnd: RoundRun, phase: str) -> Timer:
        """Mark the round as in ``phase`` (waking whoever waits on it); the timer of the phase."""
        with self.monitor:
            rnd.phase = phase
            self.monitor.notify()
        return Timer()

    @contextmanager
    def phase(self, rnd: RoundRun, phase: str) -> Iterator[None]:
        """Mark the round as in ``phase`` and add the time spent to ``rnd.seconds[phase]``."""
        timer = self.enter(rnd, phase)
        try:
            yield
        finally:
            rnd.seconds[phase] += timer.seconds
