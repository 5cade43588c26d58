"""How fast a payload must arrive: a grace from the moment its sender may start, then a least average rate.

Both lanes (gRPC streams in ``endpoint``, the TLS bulk lane in ``bulk``) cut a payload that falls behind its
``Pace``; a receiver may ask a pace of its own for a payload (``upload_pace``: S1's share uploads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import secrobust_pb2 as pb

if TYPE_CHECKING:
    from ..handler import PartyHandler

PAYLOAD_GRACE_S = 30.0
MIN_RATE = 2e6
"""Bytes per second a payload must keep up, on average, after ``PAYLOAD_GRACE_S`` seconds of grace (every
payload but a worker's share, whose receiver sets its own ``Pace``: ``upload_pace``)."""
UPLOAD_GRACE_S = 5.0
UPLOAD_MIN_RATE = 1e6
"""A worker's share upload at S1, by default: 1 MB/s on average from its first byte after 5 s of grace."""


@dataclass(frozen=True)
class Pace:
    """The least pace of a payload: ``grace_s`` seconds from the moment the sender may start, then ``rate``
    bytes per second on average. With ``got`` bytes in, the sender is cut off at ``due(start, got)`` unless
    more arrive: a sender of nothing at ``start + grace_s``, a trickle soon after, and any sender by
    ``start + grace_s + total / rate``. Bytes sent ahead of the pace are credit, never a debt."""

    grace_s: float
    rate: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.grace_s) and self.grace_s > 0 and math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"a pace needs a positive grace and rate, got {self.grace_s!r} s, {self.rate!r} B/s")

    def due(self, start: float, got: int) -> float:
        return start + self.grace_s + got / self.rate

    def limit(self, nbytes: int) -> float:
        """The longest a payload of ``nbytes`` can take: ``due`` with every byte but the last in."""
        return self.grace_s + nbytes / self.rate


def default_pace() -> Pace:
    return Pace(PAYLOAD_GRACE_S, MIN_RATE)


def pace_for(handler: "PartyHandler", env: pb.Envelope) -> Pace:
    """The pace the handler asks of this payload (``upload_pace(env)``), else ``default_pace()``."""
    pace = handler.upload_pace(env)
    return pace if pace is not None else default_pace()


def payload_deadline(nbytes: int) -> float:
    """How long a payload of ``nbytes`` may take to arrive or be read: ``default_pace().limit``."""
    return default_pace().limit(nbytes)
