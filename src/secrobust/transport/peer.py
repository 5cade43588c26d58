"""A party we call: its gRPC client plus the bulk lane it announces, and which messages take the lane.

A message (sent, or fetched by its phase) whose kind is one of the peer's ``bulk`` kinds goes over the
lane while the peer announces one; every other message goes over gRPC, and so does a bulk one when the
lane cannot be opened (``LaneUnavailable``: nothing was sent or asked, so gRPC gets the same message).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from ..protocol.messages import Message
from .grpc.client import PeerClient
from .grpc.logs import event
from .lane import BulkClient, LaneUnavailable


class Peer:
    """One party as its callers see it: ``client`` (gRPC) and, while it announces one, ``lane``
    (``BulkClient``), used for the message kinds in ``bulk``."""

    def __init__(self, client: PeerClient, lane: BulkClient | None = None, *, bulk: Iterable[str] = (),
                 streams: int = 0) -> None:
        self.client = client
        self.lane = lane
        self.bulk = frozenset(bulk)
        self.streams = streams
        """Messages sent as their bytes are made (``send_stream``) at once, on a lane."""

    @property
    def name(self) -> str:
        return self.client.peer

    def use_lane(self, port: Any) -> None:
        """Follow the lane the peer announces at ``port``, on the host of its gRPC address: the current lane
        while it still fits, a new one (as the gRPC client's identity) otherwise, none without a valid port.
        A replaced lane is closed."""
        valid = not isinstance(port, bool) and isinstance(port, int) and 0 < port < 65536
        address = f"{self.client.address.rpartition(':')[0]}:{port}" if valid else None
        if self.lane is not None and self.lane.address == address:
            return
        if self.lane is not None:
            self.lane.close()
        self.lane = None if address is None else BulkClient(
            self.client.identity, self.client.peer, address, accounting=self.client.accounting,
            connect_timeout=self.client.connect_timeout, streams=self.streams)

    def _lane_for(self, kind: str) -> BulkClient | None:
        return self.lane if kind in self.bulk else None

    def send(self, msg: Message) -> None:
        """``msg`` over the lane if its kind takes it and the lane opens, else over gRPC."""
        lane = self._lane_for(msg.kind)
        if lane is not None:
            try:
                lane.send(msg)
                return
            except LaneUnavailable as exc:
                _unavailable(lane, exc)
        self.client.send(msg)

    def send_stream(self, msg: Message, pieces: Iterable[Any]) -> None:
        """``msg`` over the lane as ``pieces`` yields its arrays' bytes (``BulkClient.send_stream``); raises
        LaneUnavailable (nothing sent) without a lane that streams."""
        lane = self._lane_for(msg.kind)
        if lane is None or not lane.streams:
            raise LaneUnavailable(self.name, self.client.address, "no bulk lane that streams")
        lane.send_stream(msg, pieces)

    def fetch(self, round_id: int, phase: str, *, wait_s: float = 30.0, max_bytes: int = 1 << 40) -> Message:
        """The message of ``phase`` for us in ``round_id``, over the lane if the phase takes it and the lane
        opens, else over gRPC (the peer may hold the call up to ``wait_s``)."""
        lane = self._lane_for(phase)
        if lane is not None:
            try:
                return lane.fetch(round_id, phase, wait_s=wait_s, max_bytes=max_bytes)
            except LaneUnavailable as exc:
                _unavailable(lane, exc)
        return self.client.fetch(round_id, phase, wait_s=wait_s, max_bytes=max_bytes)

    def close(self) -> None:
        self.client.close()
        if self.lane is not None:
            self.lane.close()


def _unavailable(lane: BulkClient, exc: LaneUnavailable) -> None:
    event(lane.log, "bulk-unavailable", level=logging.WARNING, peer=lane.peer, error=str(exc))
