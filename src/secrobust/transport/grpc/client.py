"""The calling side: a mutual-TLS client to one peer party (send, fetch, control).

Refusals come back as :class:`RemoteRejected` with the peer's code; a peer that is down, refuses
the TLS handshake or does not answer in time becomes :class:`PartyUnreachable`. A failed channel
is dropped and rebuilt on the next call, so a restarted peer is reached again without delay.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import grpc

from ...certs import Identity
from ...protocol.messages import VERSION, Message
from . import secrobust_pb2 as pb
from . import wire
from .accounting import Accounting
from .endpoint import SERVICE, dumps
from .errors import ERROR_KEY, PartyUnreachable, RemoteRejected, Rejected
from .logs import LOGGER_NAME, Timer, event
from .tls import secure_channel

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def transfer_timeout(nbytes: int, base: float = 30.0, rate: float = 20e6) -> float:
    """A deadline for moving ``nbytes``: ``base`` seconds plus ``rate`` bytes per second."""
    return base + nbytes / rate


class PeerClient:
    """Calls to the party ``peer`` at ``address``, authenticated as ``identity``."""

    def __init__(self, identity: Identity, peer: str, address: str, *, accounting: Accounting | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.identity = identity
        self.peer = peer
        self.address = address
        self.accounting = accounting or Accounting()
        self.connect_timeout = connect_timeout
        self.log = logging.getLogger(LOGGER_NAME)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None

    def _get(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                self._channel = secure_channel(self.address, self.identity, self.peer)
            return self._channel

    def _reset(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def close(self) -> None:
        self._reset()

    def _ready(self, channel: grpc.Channel) -> None:
        try:
            grpc.channel_ready_future(channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            self._reset()
            raise PartyUnreachable(self.peer, self.address,
                                   f"no TLS connection within {self.connect_timeout:g} s") from None

    def _translate(self, err: grpc.RpcError) -> Exception:
        status = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        md = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
        code = md.get(ERROR_KEY)
        if code:
            reason = details or ""
            prefix = f"[{code}] "
            return RemoteRejected(self.peer, code, reason[len(prefix):] if reason.startswith(prefix) else reason, status)
        if status in _UNREACHABLE:
            self._reset()
            return PartyUnreachable(self.peer, self.address, f"{status.name if status else '?'}: {details}")
        return RemoteRejected(self.peer, "internal", f"{status.name if status else '?'}: {details}", status)

    def send(self, msg: Message, *, timeout: float | None = None) -> pb.Ack:
        """Stream ``msg`` to the peer; returns its Ack once the peer accepted the whole message."""
        if msg.recipient != self.peer:
            raise ValueError(f"message for {msg.recipient!r} handed to the client of {self.peer!r}")
        return self.send_encoded(wire.encode(msg), timeout=timeout)

    def send_encoded(self, out: wire.Outgoing, *, timeout: float | None = None) -> pb.Ack:
        """Stream an already encoded message (used to test replays: the same id twice)."""
        timer = Timer()
        channel = self._get()
        self._ready(channel)
        call = channel.stream_unary(f"/{SERVICE}/Send", request_serializer=pb.Chunk.SerializeToString,
                                    response_deserializer=pb.Ack.FromString)
        wire_bytes = 0

        def stream() -> Any:
            nonlocal wire_bytes
            for chunk in wire.chunks(out):
                wire_bytes += chunk.ByteSize()
                yield chunk

        env = out.envelope
        try:
            ack = call(stream(), timeout=timeout or transfer_timeout(env.total_bytes))
        except grpc.RpcError as err:
            exc = self._translate(err)
            event(self.log, "send-failed", level=logging.WARNING, recipient=self.peer, round=env.round_id,
                  phase=env.phase, bytes=env.total_bytes, error=str(exc))
            raise exc from None
        self.accounting.add(env.round_id, "sent", self.peer, env.total_bytes, wire_bytes)
        event(self.log, "sent", recipient=self.peer, round=env.round_id, phase=env.phase, bytes=env.total_bytes,
              seconds=round(timer.seconds, 6))
        return ack

    def send_raw(self, payloads: list[bytes], *, timeout: float = 10.0) -> pb.Ack:
        """Stream arbitrary request bytes to Send (tests of malformed protobufs)."""
        channel = self._get()
        self._ready(channel)
        call = channel.stream_unary(f"/{SERVICE}/Send", request_serializer=lambda b: b,
                                    response_deserializer=pb.Ack.FromString)
        try:
            return call(iter(payloads), timeout=timeout)
        except grpc.RpcError as err:
            raise self._translate(err) from None

    def fetch(self, round_id: int, phase: str, *, wait_s: float = 30.0, max_bytes: int = 1 << 40,
              timeout: float | None = None) -> Message:
        """Pull the message of ``phase`` for us in ``round_id``; the peer may hold the call up to ``wait_s``."""
        timer = Timer()
        channel = self._get()
        self._ready(channel)
        call = channel.unary_stream(f"/{SERVICE}/Fetch", request_serializer=pb.FetchRequest.SerializeToString,
                                    response_deserializer=wire.parse_chunk)
        req = pb.FetchRequest(version=VERSION, round_id=round_id, requester=self.identity.party, phase=phase,
                              timeout_s=wait_s)
        try:
            stream = call(req, timeout=timeout or wait_s + 60.0)
            msg, env, wire_bytes = wire.read_stream(stream, caller=self.peer, me=self.identity.party,
                                                    max_bytes=max_bytes)
        except grpc.RpcError as err:
            raise self._translate(err) from None
        except Rejected as rej:
            raise RemoteRejected(self.peer, rej.code, f"reply refused locally: {rej.reason}") from None
        self.accounting.add(env.round_id, "received", self.peer, env.total_bytes, wire_bytes)
        event(self.log, "fetched", sender=self.peer, round=round_id, phase=phase, bytes=env.total_bytes,
              seconds=round(timer.seconds, 6))
        return msg

    def control(self, command: str, round_id: int = 0, args: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> dict[str, Any]:
        """Run a control command on the peer; returns its JSON result."""
        channel = self._get()
        self._ready(channel)
        call = channel.unary_unary(f"/{SERVICE}/Control", request_serializer=pb.ControlRequest.SerializeToString,
                                   response_deserializer=pb.ControlReply.FromString)
        req = pb.ControlRequest(version=VERSION, round_id=round_id, sender=self.identity.party, command=command,
                                json=dumps(args or {}))
        try:
            reply = call(req, timeout=timeout)
        except grpc.RpcError as err:
            raise self._translate(err) from None
        out = json.loads(reply.json.decode()) if reply.json else {}
        if not isinstance(out, dict):
            raise RemoteRejected(self.peer, "bad-request", "control reply is not a JSON object")
        return out
