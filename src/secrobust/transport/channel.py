"""The Channel interface and the in-memory channel used by the in-process runner.

Byte counts are those of the wire encoding (``Message.wire_size`` = ``len(Message.to_bytes())``). With a
tap attached (the view tests) or ``serialize=True`` every message crosses as bytes and is decoded on
receipt; otherwise the receiver gets ``Message.detached()``, the same message with read-only arrays,
which skips two copies of every array (about 0.5 s of a 50 x 10^6 round).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import UnexpectedMessage
from ..protocol.messages import Message


@dataclass
class Stats:
    """Bytes sent and received per party (S0, S1, dealer, worker:i) and wall seconds per phase."""

    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes_between: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    """Bytes per (sender, recipient) pair."""

    def record(self, sender: str, recipient: str, nbytes: int) -> None:
        self.bytes_sent[sender] += nbytes
        self.bytes_received[recipient] += nbytes
        self.messages_sent[sender] += 1
        self.bytes_between[(sender, recipient)] += nbytes

    def servers_bytes(self) -> int:
        """Bytes between S0 and S1, both directions."""
        return self.bytes_between.get(("S0", "S1"), 0) + self.bytes_between.get(("S1", "S0"), 0)

    def by_role(self) -> dict[str, dict[str, int]]:
        """Bytes per role, all workers summed under "workers"."""
        out: dict[str, dict[str, int]] = {}
        for party in sorted(set(self.bytes_sent) | set(self.bytes_received)):
            role = "workers" if party.startswith("worker:") else party
            entry = out.setdefault(role, {"sent": 0, "received": 0})
            entry["sent"] += self.bytes_sent.get(party, 0)
            entry["received"] += self.bytes_received.get(party, 0)
        return out

    def as_dict(self) -> dict:
        return {"bytes_by_role": self.by_role(), "bytes_sent": dict(self.bytes_sent),
                "bytes_received": dict(self.bytes_received), "messages_sent": dict(self.messages_sent),
                "seconds": dict(self.seconds)}


Tap = Callable[[str, str, str, bytes], None]
"""Observer of every message on a channel: (sender, recipient, kind, bytes). Tests use it to read a party's view."""


class Channel(Protocol):
    stats: Stats

    def send(self, msg: Message) -> None: ...

    def receive(self, recipient: str, kind: str) -> Message: ...


class InMemoryChannel:
    """FIFO mailboxes per recipient; messages are serialised on send and parsed on receive."""

    def __init__(self, stats: Stats | None = None, tap: Tap | None = None, serialize: bool = False) -> None:
        self.stats = stats if stats is not None else Stats()
        self.tap = tap
        self.serialize = serialize or tap is not None
        self._boxes: dict[str, deque[tuple[str, bytes | Message]]] = defaultdict(deque)

    def send(self, msg: Message) -> None:
        if self.serialize:
            data: bytes | Message = msg.to_bytes()
            size = len(data)
            if self.tap is not None:
                self.tap(msg.sender, msg.recipient, msg.kind, data)
        else:
            data, size = msg.detached(), msg.wire_size()
        self.stats.record(msg.sender, msg.recipient, size)
        self._boxes[msg.recipient].append((msg.kind, data))

    def receive(self, recipient: str, kind: str) -> Message:
        """The oldest message of ``kind`` waiting for ``recipient``."""
        box = self._boxes[recipient]
        for i, (k, data) in enumerate(box):
            if k == kind:
                del box[i]
                return data if isinstance(data, Message) else Message.from_bytes(data)
        raise UnexpectedMessage(f"{recipient} has no {kind} message waiting")

    def receive_all(self, recipient: str, kind: str) -> list[Message]:
        out = []
        while any(k == kind for k, _ in self._boxes[recipient]):
            out.append(self.receive(recipient, kind))
        return out

    def pending(self, recipient: str, kind: str | None = None) -> int:
        """Messages waiting for ``recipient`` (of ``kind`` only, if given)."""
        box = self._boxes[recipient]
        return len(box) if kind is None else sum(k == kind for k, _ in box)
