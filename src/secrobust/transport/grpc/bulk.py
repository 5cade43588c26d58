"""Transitional: the bulk lane is ``transport.lane`` and the lane-or-gRPC choice ``transport.peer.Peer``.
These names stay until deploy.server, deploy.process and deploy.approval import from there."""

from __future__ import annotations

from typing import Any

from ...protocol.messages import Message
from ..lane import BulkClient, BulkServer, LaneUnavailable
from ..peer import Peer
from .client import PeerClient


def lane_beside(old: BulkClient | None, grpc: PeerClient, port: Any) -> BulkClient | None:
    """``Peer.use_lane`` for a (lane, client) pair: the lane to use from now on."""
    peer = Peer(grpc, old)
    peer.use_lane(port)
    return peer.lane


def send_over(lane: BulkClient | None, grpc: PeerClient, msg: Message) -> None:
    """``Peer.send`` of ``msg`` over ``lane`` if there is one."""
    Peer(grpc, lane, bulk=(msg.kind,)).send(msg)


def fetch_over(lane: BulkClient | None, grpc: PeerClient, round_id: int, phase: str, wait_s: float) -> Message:
    """``Peer.fetch`` over ``lane`` if there is one."""
    return Peer(grpc, lane, bulk=(phase,)).fetch(round_id, phase, wait_s=wait_s)


__all__ = ["BulkClient", "BulkServer", "LaneUnavailable", "fetch_over", "lane_beside", "send_over"]
