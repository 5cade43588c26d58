"""What a party plugs into its listening side (``grpc.Endpoint`` and the bulk lane beside it).

A ``PartyHandler`` states everything the transport asks of it: six methods every party implements
(admission, size limit, round checks, acceptance, fetch, control) and the hooks below, whose defaults
leave the transport's own behaviour in place. A party overrides the hooks it needs; the transport calls
every hook on every handler, so nothing is looked up by name.

Hooks and their defaults:

* ``stream_window``: a fixed HTTP/2 receive window per stream (``grpc.tls.server_options``); None: gRPC's
  own probing.
* ``reserve(env) -> release | None`` runs after ``precheck`` and may block until the receiver has room for
  the payload (a bound on buffers received at once); the listening side calls ``release(arrived=...)`` once
  the stream is over, accepted or not (``arrived``: every byte of the payload came in, so a refusal was for
  its content, not a stall). None: no slot.
* ``upload_pace(env) -> Pace | None``: the pace this payload must keep (``grpc.pace``); None: the default.
* ``fetch_slot(caller, phase) -> release | None`` runs once ``fetch`` returned and may block until the party
  has room to encode and stream the reply (a bound on replies in memory at once); ``release()`` is called
  when the reply is streamed or the call ends. None: no slot.
* ``account_as(msg, env)`` / ``account_fetch_as(caller, env)``: the key an accepted message's (a fetched
  reply's) bytes are booked under (``grpc.accounting``); default the envelope's round id.
* ``payload_watch(env, buf) -> PayloadWatch | None`` (bulk lane only): sees a payload's bytes as they arrive
  in ``buf`` (``progress(got)`` after each read, ``end(accepted)`` once the call is over, accepted or not,
  after the caller has its verdict). None: nobody watches.
* ``bulk_connections(caller)``: how many bulk-lane connections ``caller`` may hold at once; None: the lane's
  default (``lane.connections_for``).
* ``permits(caller, command)`` raises if ``caller`` may not run ``command``; runs before the command's JSON
  is parsed. Default: every admitted caller may.
* ``max_control_bytes(command)``: the largest JSON argument a command takes; default ``CONTROL_LIMIT``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Hashable, Protocol

if TYPE_CHECKING:
    from ..protocol.messages import Message
    from .grpc import secrobust_pb2 as pb
    from .grpc import wire
    from .grpc.pace import Pace

CONTROL_LIMIT = 64 << 10
"""Bytes of JSON a control command's argument may have, unless its handler says otherwise."""


class PayloadWatch(Protocol):
    """Watches one payload on the bulk lane (``PartyHandler.payload_watch``)."""

    def progress(self, got: int) -> None:
        """The first ``got`` bytes of the payload are in the buffer."""

    def end(self, accepted: bool) -> None:
        """The call is over: the message was accepted (its verdict sent), or not."""


class PartyHandler(ABC):
    """A party's side of every call it serves. Methods may raise ``Rejected`` or any ``ProtocolError``."""

    party: str
    stream_window: int | None = None

    @abstractmethod
    def admitted(self, caller: str) -> bool:
        """May the holder of a certificate with this CN call this party at all?"""

    @abstractmethod
    def max_message_bytes(self, env: "pb.Envelope") -> int:
        """Largest message this party takes for the envelope's round and phase."""

    @abstractmethod
    def precheck(self, env: "pb.Envelope") -> None:
        """Round and phase checks on an envelope, before its payload is read."""

    @abstractmethod
    def accept(self, msg: Message, env: "pb.Envelope") -> None:
        """Take a decoded message whose envelope passed every check."""

    @abstractmethod
    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> "Message | wire.Outgoing":
        """The message of ``phase`` addressed to ``caller`` in ``round_id``, waiting up to ``wait_s``."""

    @abstractmethod
    def control(self, caller: str, command: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        """Round control and reports."""

    def reserve(self, env: "pb.Envelope") -> Callable[..., None] | None:
        """Room for the envelope's payload, released with ``release(arrived=...)``; None: no slot."""
        return None

    def upload_pace(self, env: "pb.Envelope") -> "Pace | None":
        """The pace the envelope's payload must keep; None: the lanes' default."""
        return None

    def fetch_slot(self, caller: str, phase: str) -> Callable[[], None] | None:
        """Room to encode and stream a fetched reply, released with ``release()``; None: no slot."""
        return None

    def account_as(self, msg: Message, env: "pb.Envelope") -> Hashable:
        """The key an accepted message's bytes are booked under."""
        return env.round_id

    def account_fetch_as(self, caller: str, env: "pb.Envelope") -> Hashable:
        """The key a fetched reply's bytes are booked under."""
        return env.round_id

    def payload_watch(self, env: "pb.Envelope", buf: Any) -> PayloadWatch | None:
        """A watcher of the payload arriving in ``buf`` (a uint8 array of ``env.total_bytes``); None: none."""
        return None

    def bulk_connections(self, caller: str) -> int | None:
        """Bulk-lane connections ``caller`` may hold at once; None: the lane's default."""
        return None

    def permits(self, caller: str, command: str) -> None:
        """Raise if ``caller`` may not run ``command``."""

    def max_control_bytes(self, command: str) -> int:
        """The largest JSON argument ``command`` takes."""
        return CONTROL_LIMIT
