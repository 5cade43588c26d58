"""The calling side: a mutual-TLS client to one peer party (send, fetch, control).

Refusals come back as :class:`RemoteRejected` with the peer's code; a peer that is down, refuses
the TLS handshake or does not answer in time becomes :class:`PartyUnreachable`. A failed channel
is dropped and rebuilt on the next call, so a restarted peer is reached again without delay. A call
to a peer that is not (yet) reachable is retried for ``connect_timeout`` seconds before it fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, TypeVar

import grpc

from ...pki.certs import Identity
from ...protocol.messages import VERSION, Message
from . import secrobust_pb2 as pb
from . import wire
from .accounting import Accounting
from .endpoint import SERVICE, dumps
from .errors import ERROR_KEY, PartyUnreachable, Rejected, RemoteRejected
from .logs import LOGGER_NAME, Timer, event
from .tls import secure_channel

T = TypeVar("T")
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def transfer_timeout(nbytes: int, base: float = 30.0, rate: float = 20e6) -> float:
    """A deadline for moving ``nbytes``: ``base`` seconds plus ``rate`` bytes per second."""
    return base + nbytes / rate


class Caller:
    """The calling side of either lane: ``identity`` calls the party ``peer`` at ``address`` and books the
    bytes in ``accounting``."""

    def __init__(self, identity: Identity, peer: str, address: str, *, accounting: Accounting | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.identity = identity
        self.peer = peer
        self.address = address
        self.accounting = accounting or Accounting()
        self.connect_timeout = connect_timeout
        self.log = logging.getLogger(LOGGER_NAME)


class PeerClient(Caller):
    """Calls to the party ``peer`` at ``address`` over gRPC, authenticated as ``identity``."""

    def __init__(self, identity: Identity, peer: str, address: str, *, accounting: Accounting | None = None,
                 connect_timeout: float = 5.0) -> None:
        super().__init__(identity, peer, address, accounting=accounting, connect_timeout=connect_timeout)
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

    def _call(self, attempt: Callable[[grpc.Channel], T]) -> T:
        """Run ``attempt`` on the channel; while the peer is not reachable (UNAVAILABLE without a
        secrobust code), try again for up to ``connect_timeout`` seconds, then raise PartyUnreachable."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                return attempt(self._get())
            except grpc.RpcError as err:
                retry = (err.code() == grpc.StatusCode.UNAVAILABLE
                         and ERROR_KEY not in dict(err.trailing_metadata() or ())
                         and time.monotonic() + 0.2 < deadline)
                if not retry:
                    raise self._translate(err) from None
                self._reset()       # a fresh channel dials at once; the old one may sit in reconnect backoff
            time.sleep(0.2)

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
        if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # gRPC's own message-size limit (either side), before any secrobust code could run
            return RemoteRejected(self.peer, "too-large", f"RESOURCE_EXHAUSTED: {details}", status)
        return RemoteRejected(self.peer, "internal", f"{status.name if status else '?'}: {details}", status)

    def send(self, msg: Message, *, timeout: float | None = None, account_as: Any = None) -> pb.Ack:
        """Stream ``msg`` to the peer; returns its Ack once the peer accepted the whole message.
        ``account_as`` books the bytes under that key instead of the message's round id."""
        if msg.recipient != self.peer:
            raise ValueError(f"message for {msg.recipient!r} handed to the client of {self.peer!r}")
        return self.send_encoded(wire.encode(msg), timeout=timeout, account_as=account_as)

    def send_encoded(self, out: wire.Outgoing, *, timeout: float | None = None, account_as: Any = None) -> pb.Ack:
        """Stream an already encoded message (used to test replays: the same id twice)."""
        timer = Timer()
        wire_bytes = 0

        def stream() -> Any:
            nonlocal wire_bytes
            wire_bytes = 0
            for chunk in wire.chunks(out):
                wire_bytes += chunk.ByteSize()
                yield chunk

        env = out.envelope

        def attempt(channel: grpc.Channel) -> pb.Ack:
            call = channel.stream_unary(f"/{SERVICE}/Send", request_serializer=pb.Chunk.SerializeToString,
                                        response_deserializer=pb.Ack.FromString)
            return call(stream(), timeout=timeout or transfer_timeout(env.total_bytes))

        try:
            ack = self._call(attempt)
        except (RemoteRejected, PartyUnreachable) as exc:
            event(self.log, "send-failed", level=logging.WARNING, recipient=self.peer, round=env.round_id,
                  phase=env.phase, bytes=env.total_bytes, error=str(exc))
            raise
        self.accounting.add(env.round_id if account_as is None else account_as, "sent", self.peer, env.total_bytes,
                            wire_bytes)
        event(self.log, "sent", recipient=self.peer, round=env.round_id, phase=env.phase, bytes=env.total_bytes,
              seconds=round(timer.seconds, 6))
        return ack

    def send_raw(self, payloads: list[bytes], *, timeout: float = 10.0) -> pb.Ack:
        """Stream arbitrary request bytes to Send (tests of malformed protobufs)."""
        def attempt(channel: grpc.Channel) -> pb.Ack:
            call = channel.stream_unary(f"/{SERVICE}/Send", request_serializer=lambda b: b,
                                        response_deserializer=pb.Ack.FromString)
            return call(iter(payloads), timeout=timeout)

        return self._call(attempt)

    def call_raw(self, method: str, payload: bytes, *, timeout: float = 10.0) -> bytes:
        """Send arbitrary request bytes to ``Fetch`` or ``Control`` (tests of malformed requests); returns
        the raw reply (a Fetch reply's chunks concatenated)."""
        if method not in ("Fetch", "Control"):
            raise ValueError("call_raw is for Fetch and Control; use send_raw for Send")

        def attempt(channel: grpc.Channel) -> bytes:
            if method == "Control":
                call = channel.unary_unary(f"/{SERVICE}/Control", request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)
                return call(payload, timeout=timeout)
            stream = channel.unary_stream(f"/{SERVICE}/Fetch", request_serializer=lambda b: b,
                                          response_deserializer=lambda b: b)
            return b"".join(stream(payload, timeout=timeout))

        return self._call(attempt)

    def fetch(self, round_id: int, phase: str, *, wait_s: float = 30.0, max_bytes: int = 1 << 40,
              timeout: float | None = None) -> Message:
        """Pull the message of ``phase`` for us in ``round_id``; the peer may hold the call up to ``wait_s``."""
        timer = Timer()
        req = pb.FetchRequest(version=VERSION, round_id=round_id, requester=self.identity.party, phase=phase,
                              timeout_s=wait_s)

        def attempt(channel: grpc.Channel) -> tuple[Message, pb.Envelope, int]:
            call = channel.unary_stream(f"/{SERVICE}/Fetch", request_serializer=pb.FetchRequest.SerializeToString,
                                        response_deserializer=wire.parse_chunk)
            stream = call(req, timeout=timeout or wait_s + 60.0)
            return wire.read_stream(stream, caller=self.peer, me=self.identity.party, max_bytes=max_bytes)

        try:
            msg, env, wire_bytes = self._call(attempt)
        except Rejected as rej:
            raise RemoteRejected(self.peer, rej.code, f"reply refused locally: {rej.reason}") from None
        self.accounting.add(env.round_id, "received", self.peer, env.total_bytes, wire_bytes)
        event(self.log, "fetched", sender=self.peer, round=round_id, phase=phase, bytes=env.total_bytes,
              seconds=round(timer.seconds, 6))
        return msg

    def control(self, command: str, round_id: int = 0, args: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> dict[str, Any]:
        """Run a control command on the peer; returns its JSON result."""
        req = pb.ControlRequest(version=VERSION, round_id=round_id, sender=self.identity.party, command=command,
                                json=dumps(args or {}))

        def attempt(channel: grpc.Channel) -> pb.ControlReply:
            call = channel.unary_unary(f"/{SERVICE}/Control", request_serializer=pb.ControlRequest.SerializeToString,
                                       response_deserializer=pb.ControlReply.FromString)
            return call(req, timeout=timeout)

        reply = self._call(attempt)
        out = json.loads(reply.json.decode()) if reply.json else {}
        if not isinstance(out, dict):
            raise RemoteRejected(self.peer, "bad-request", "control reply is not a JSON object")
        return out
