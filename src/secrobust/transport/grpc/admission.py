"""What a party checks before it reads a payload, on either lane (gRPC or the bulk lane): the call gate
(concurrent calls per certificate), the replay cache, the message's size limit, and the handler's round
checks and slot."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from ..handler import PartyHandler
from . import secrobust_pb2 as pb
from .errors import Rejected
from .gate import CallGate, CallLimits

REPLAY_CACHE = 1 << 20


class ReplayCache:
    """Message ids accepted so far (bounded, oldest forgotten first) and ids being received now."""

    def __init__(self, capacity: int = REPLAY_CACHE) -> None:
        self._lock = threading.Lock()
        self._done: OrderedDict[bytes, None] = OrderedDict()
        self._active: set[bytes] = set()
        self._capacity = capacity

    def begin(self, message_id: bytes) -> None:
        with self._lock:
            if message_id in self._done or message_id in self._active:
                raise Rejected("replay", f"message id {message_id.hex()} was already received")
            self._active.add(message_id)

    def end(self, message_id: bytes, accepted: bool) -> None:
        with self._lock:
            self._active.discard(message_id)
            if accepted:
                self._done[message_id] = None
                while len(self._done) > self._capacity:
                    self._done.popitem(last=False)


class Admission:
    """One party's admission checks, shared by its gRPC endpoint and its bulk lane."""

    def __init__(self, handler: PartyHandler, limits: CallLimits) -> None:
        self.handler = handler
        self.gate = CallGate(limits)
        self.replays = ReplayCache()

    def enter(self, caller: str) -> Callable[[], None]:
        """A call-gate slot for ``caller`` (Rejected when its certificate has too many calls open); returns
        its release."""
        return self.gate.enter(caller)

    def admit(self, env: pb.Envelope) -> Callable[..., None] | None:
        """A message's checks before any payload is read: its size limit, the replay cache (the id stays
        taken until ``settle``), the handler's round checks and its slot (``reserve``). Returns the slot's
        release; on a refusal nothing stays held."""
        limit = self.handler.max_message_bytes(env)
        if env.total_bytes > limit:
            raise Rejected("too-large", f"{env.phase} of {env.total_bytes} bytes exceeds the limit of {limit} bytes")
        self.replays.begin(env.message_id)
        try:
            self.handler.precheck(env)
            return self.handler.reserve(env)
        except BaseException:
            self.replays.end(env.message_id, False)
            raise

    def settle(self, message_id: bytes, accepted: bool) -> None:
        """The end of a message admitted by ``admit``: its id stays taken if it was accepted, else is freed."""
        self.replays.end(message_id, accepted)
