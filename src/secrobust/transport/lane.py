"""The bulk lane: the protocol's 8d-byte messages over plain mutual-TLS sockets beside gRPC.

gRPC costs about 25 ms of CPU per side for an 8 MB message here (HTTP/2 frames of 16 KB, a protobuf per
1 MiB chunk, a SHA-256 of every payload); a TLS 1.3 socket moves the same bytes for about 5-7 ms. Masked
shares (worker -> S1), rows of E (S1 -> S0) and aggregate shares (server -> worker, operator) take this
lane when the receiving server offers it; everything else stays on gRPC.

Identity and checks are the ``grpc.Endpoint``'s, in the same order: the caller's certificate is verified
against both CAs and its name admitted only from the CA that certifies it towards us
(``transport.tls``) and by the handler; then the call gate, the envelope (sender = certificate name),
the replay cache, the handler's ``precheck`` and ``reserve`` *before* the client may send the payload,
then decode and ``accept``. Integrity of the bytes is TLS's AEAD; the envelope's digest field is not
used on this lane.

Frames (all lengths 4-byte big-endian):
  client: b"S" + len + Envelope, the server answers a verdict; if it is "go", the payload
          (``total_bytes``), and the server answers the final verdict.
  client: b"F" + len + FetchRequest; the server answers a verdict, then on "ok": len + Envelope + payload.
  verdict: len + JSON {"ok": true} | {"go": true} | {"code": ..., "message": ...}.
A connection carries one call at a time; the client keeps a few open per peer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from google.protobuf.message import DecodeError

from ..pki.certs import Identity, worker_index
from ..protocol.messages import VERSION, Message
from .grpc import secrobust_pb2 as pb
from .grpc import tap, wire
from .grpc.accounting import Accounting
from .grpc.client import Caller
from .grpc.errors import PartyUnreachable, Rejected, RemoteRejected, rejection_for
from .grpc.logs import LOGGER_NAME, Timer, event
from .grpc.pace import Pace, pace_for, payload_deadline
from .tls import client_context, server_context, socket_party

if TYPE_CHECKING:
    from .grpc.endpoint import Endpoint

SEND, FETCH = b"S", b"F"
HEADER_LIMIT = 64 << 10
HANDSHAKE_S = 10.0
IDLE_S = 300.0
IO_S = 120.0
CONNECTIONS_PER_CALLER = 4
CONNECTIONS_PER_WORKER = 2
HEADER_S = 10.0
"""A frame header must arrive within this long after its first byte."""
_LEN = struct.Struct(">I")
_NO_DIGEST = bytes(32)


class LaneUnavailable(PartyUnreachable):
    """The bulk lane could not be opened (no connection, handshake refused): nothing was sent, so the
    caller may send the same message over gRPC instead."""


def connections_for(caller: str) -> int:
    """Bulk connections a name may hold at a server: a worker makes one call at a time."""
    return CONNECTIONS_PER_WORKER if worker_index(caller) is not None else CONNECTIONS_PER_CALLER


# framing

class StreamMismatch(ValueError):
    """``send_stream``'s pieces did not add up to the message's size (a caller's bug, not the link's)."""


class Stalled(socket.timeout):
    """A payload fell behind its ``Pace``."""


def _recv_paced(sock: ssl.SSLSocket, into: memoryview, pace: Pace,
                progress: Callable[[int], None] | None = None) -> None:
    """Fill ``into`` at ``pace`` or raise ``Stalled``; ``progress(got)`` after every read."""
    start = time.monotonic()
    got, n = 0, len(into)
    while got < n:
        left = pace.due(start, got) - time.monotonic()
        if left <= 0:
            raise Stalled(f"{got} of {n} bytes after {time.monotonic() - start:.1f} s, below {pace.rate:g} B/s "
                          f"after {pace.grace_s:g} s of grace")
        sock.settimeout(min(left, IO_S))
        try:
            k = sock.recv_into(into[got:], n - got)
        except socket.timeout:
            continue
        if k == 0:
            raise ConnectionError(f"the connection closed after {got} of {n} payload bytes")
        got += k
        if progress is not None:
            progress(got)


def _recv_exact(sock: ssl.SSLSocket, n: int, into: memoryview | None = None,
                deadline: float | None = None) -> memoryview:
    buf = into if into is not None else memoryview(bytearray(n))
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"{n - got} of {n} bytes still missing at the deadline")
            sock.settimeout(min(left, IO_S))
        k = sock.recv_into(buf[got:], n - got)
        if k == 0:
            raise ConnectionError("the connection closed in the middle of a frame")
        got += k
    return buf


def _send_all(sock: ssl.SSLSocket, data: memoryview, deadline: float) -> None:
    """``sendall`` that gives up at ``deadline``: a reader that stops reading cannot hold a reply (and the
    fetch slot it takes) for longer than its size allows (``payload_deadline``)."""
    sent = 0
    while sent < len(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout(f"{len(data) - sent} of {len(data)} bytes still unsent at the deadline")
        sock.settimeout(min(left, IO_S))
        sent += sock.send(data[sent:sent + (1 << 20)])


def _send_frame(sock: ssl.SSLSocket, payload: bytes, kind: bytes = b"") -> None:
    sock.sendall(kind + _LEN.pack(len(payload)) + payload)


def _recv_frame(sock: ssl.SSLSocket, limit: int = HEADER_LIMIT, deadline: float | None = None) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, 4, deadline=deadline))
    if n > limit:
        raise Rejected("too-large", f"a frame header of {n} bytes exceeds {limit}")
    return bytes(_recv_exact(sock, n, deadline=deadline))


def _verdict(sock: ssl.SSLSocket, **fields: Any) -> None:
    _send_frame(sock, json.dumps(fields, separators=(",", ":")).encode())


def bulk_envelope(msg: Message, data: bytes | bytearray | None, message_id: bytes | None = None,
                  total: int | None = None) -> pb.Envelope:
    """The envelope of ``msg`` (``data``, or ``total`` bytes sent later) on this lane (its digest field unused:
    TLS authenticates the bytes)."""
    size = len(data) if data is not None else int(total or 0)
    count = max(1, -(-size // wire.CHUNK_BYTES))
    return pb.Envelope(version=msg.version, round_id=msg.round_id, sender=msg.sender, recipient=msg.recipient,
                       phase=msg.kind, seq=wire.SEQUENCE.next(),
                       message_id=os.urandom(wire.MESSAGE_ID_BYTES) if message_id is None else message_id,
                       total_bytes=size, chunk_count=count, sha256=_NO_DIGEST)


# the listening side

class BulkServer:
    """Serves an ``Endpoint``'s handler on a second port, with the endpoint's gate, replay cache and
    accounting; ``start()`` returns the bound port."""

    def __init__(self, endpoint: "Endpoint", address: str, *, max_connections: int = 256) -> None:
        self.endpoint = endpoint
        self.handler = endpoint.handler
        self.identity = endpoint.identity
        self.address = address
        self.max_connections = max_connections
        self.ctx = server_context(self.identity)
        self.log = logging.getLogger(LOGGER_NAME)
        self._lock = threading.Lock()
        self._open = 0
        self._per_caller: dict[str, int] = {}
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self.port: int | None = None

    def start(self) -> int:
        host, _, port = self.address.rpartition(":")
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.bind((host.strip("[]"), int(port or 0)))
        lsock.listen(128)
        self._listener = lsock
        self.port = lsock.getsockname()[1]
        threading.Thread(target=self._accept_loop, name=f"{self.identity.party}-bulk", daemon=True).start()
        event(self.log, "bulk-listening", address=self.address, port=self.port)
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() blocked in another thread
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                event(self.log, "bulk-accept-failed", level=logging.WARNING, error=str(exc))
                time.sleep(0.1)                 # e.g. out of file descriptors under a flood: retry
                continue
            with self._lock:
                if self._open >= self.max_connections:
                    raw.close()
                    continue
                self._open += 1
                self._socks.add(raw)
            try:
                threading.Thread(target=self._serve, args=(raw,), daemon=True).start()
            except RuntimeError:
                with self._lock:
                    self._open -= 1
                    self._socks.discard(raw)
                raw.close()

    def _serve(self, raw: socket.socket) -> None:
        caller: str | None = None
        sock: ssl.SSLSocket | None = None
        try:
            raw.settimeout(HANDSHAKE_S)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock = self.ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                event(self.log, "refused", level=logging.WARNING, code="unauthenticated", reason=str(exc), lane="bulk")
                return
            with self._lock:
                self._socks.discard(raw)
                self._socks.add(sock)           # raw is detached now: stop() must reach the TLS socket
            caller = self._admit(sock)          # counted against the name from here on, even if the verdict fails
            if caller is None:
                return
            while not self._stopping.is_set():
                sock.settimeout(IDLE_S)
                kind = sock.recv(1)
                if not kind:
                    return
                sock.settimeout(IO_S)
                if kind == SEND:
                    self._take(sock, caller)
                elif kind == FETCH:
                    self._give(sock, caller)
                else:
                    _verdict(sock, code="malformed-stream", message=f"unknown frame kind {kind!r}")
                    return
        except (ConnectionError, OSError, ssl.SSLError, Rejected):
            return
        finally:
            with self._lock:
                self._open -= 1
                self._socks.discard(raw)
                if sock is not None:
                    self._socks.discard(sock)
                if caller is not None:
                    self._per_caller[caller] -= 1
            if sock is not None:
                sock.close()
            raw.close()

    def _admit(self, sock: ssl.SSLSocket) -> str | None:
        caller = socket_party(sock, self.identity)
        code = None
        if caller is None:
            code = ("unauthenticated", "the connection carries no client certificate issued for its name by the CA "
                    "that certifies that name here")
        elif not self.handler.admitted(caller):
            code = ("unknown-party", f"{caller!r} is not a party of this deployment")
        else:
            cap = self.handler.bulk_connections(caller) or connections_for(caller)
            with self._lock:
                if self._per_caller.get(caller, 0) >= cap:
                    code = ("busy", f"{caller} already has {cap} bulk connections here")
                else:
                    self._per_caller[caller] = self._per_caller.get(caller, 0) + 1
        if code is not None:
            event(self.log, "refused", level=logging.WARNING, code=code[0], reason=code[1], lane="bulk")
            _verdict(sock, code=code[0], message=code[1])
            return None
        try:
            _verdict(sock, ok=True)
        except BaseException:
            with self._lock:
                self._per_caller[caller] -= 1
            raise
        return caller

    def _refuse(self, sock: ssl.SSLSocket, exc: BaseException, **info: Any) -> None:
        rej = rejection_for(exc)
        level = logging.ERROR if rej.code == "internal" else logging.WARNING
        event(self.log, "refused", level=level, code=rej.code, reason=rej.reason, lane="bulk", **info)
        if rej.code == "internal":
            self.log.exception("internal error while serving a bulk call")
        _verdict(sock, code=rej.code, message=rej.reason)

    def _take(self, sock: ssl.SSLSocket, caller: str) -> None:
        """One message: envelope checks, precheck and reserve, then "go", the payload, decode, accept."""
        timer = Timer()
        info: dict[str, Any] = {"sender": caller}
        message_id: bytes | None = None
        accepted = arrived = False
        release: Any = None
        leave: Any = None
        watch: Any = None
        try:
            header = _recv_frame(sock, deadline=time.monotonic() + HEADER_S)
        except Rejected as exc:
            self._refuse(sock, exc, **info)
            raise                               # the unread header leaves the stream out of step: close it
        try:
            try:
                env = pb.Envelope.FromString(header)
            except DecodeError:
                raise Rejected("malformed-protobuf", "the frame header is not a valid Envelope protobuf") from None
            info.update(round=env.round_id, phase=env.phase, bytes=env.total_bytes)
            leave = self.endpoint.admission.enter(caller)
            wire.check_envelope(env, caller=caller, me=self.handler.party, max_bytes=1 << 40)
            release = self.endpoint.admission.admit(env)
            message_id = env.message_id
            pace = pace_for(self.handler, env)
            _verdict(sock, go=True)
            buf = wire.lazy_buffer(env.total_bytes)
            watch = self.handler.payload_watch(env, buf)
            _recv_paced(sock, memoryview(buf), pace, None if watch is None else watch.progress)
            arrived = True
            msg = wire.decode(env, buf)
            seen = tap.line(env, buf)
            del buf
            self.endpoint.deliver(msg, env, caller, env.total_bytes + env.ByteSize() + 9)
            accepted = True
            tap.write(seen)
            _verdict(sock, ok=True)
            event(self.log, "received", seconds=round(timer.seconds, 6), lane="bulk", **info)
        except Stalled as exc:
            event(self.log, "payload-cut", level=logging.WARNING, reason=str(exc), lane="bulk", **info)
            raise
        except (ConnectionError, ssl.SSLError, OSError):
            raise
        except Exception as exc:
            self._refuse(sock, exc, **info)
        finally:
            if watch is not None:
                watch.end(accepted)
            if release is not None:
                release(arrived=arrived)
            if message_id is not None:
                self.endpoint.admission.settle(message_id, accepted)
            if leave is not None:
                leave()

    def _give(self, sock: ssl.SSLSocket, caller: str) -> None:
        """One fetch: the Endpoint's checks, then the reply's envelope and bytes."""
        timer = Timer()
        leave: Any = None
        release: Any = None
        try:
            header = _recv_frame(sock, deadline=time.monotonic() + HEADER_S)
        except Rejected as exc:
            self._refuse(sock, exc, requester=caller)
            raise
        try:
            try:
                req = pb.FetchRequest.FromString(header)
            except DecodeError:
                raise Rejected("malformed-protobuf", "the frame header is not a valid FetchRequest protobuf") from None
            if req.version != VERSION:
                raise Rejected("version", f"protocol version {req.version} is not supported")
            if req.requester != caller:
                raise Rejected("sender-mismatch", f"requester {req.requester!r} but certificate {caller!r}")
            found, leave, release = self.endpoint.take_fetch(caller, req)
            msg = found if isinstance(found, Message) else wire.decode(found.envelope, found.data)
            del found
            data = msg.to_bytes()
            envelope = bulk_envelope(msg, data)
            seen = tap.line(envelope, data)
            del msg
        except Exception as exc:
            if release is not None:
                release()
            if leave is not None:
                leave()
            if isinstance(exc, (ConnectionError, ssl.SSLError, OSError)):
                raise
            self._refuse(sock, exc, requester=caller)
            return
        try:
            _verdict(sock, ok=True)
            _send_frame(sock, envelope.SerializeToString())
            _send_all(sock, memoryview(data), time.monotonic() + payload_deadline(len(data)))
        finally:
            del data
            if release is not None:
                release()
            leave()
        self.endpoint.accounting.add(self.handler.account_fetch_as(caller, envelope), "sent", caller,
                                     envelope.total_bytes, envelope.total_bytes + envelope.ByteSize() + 4)
        tap.write(seen)
        event(self.log, "served", requester=caller, round=envelope.round_id, phase=envelope.phase,
              bytes=envelope.total_bytes, seconds=round(timer.seconds, 6), lane="bulk")


# the calling side

class BulkClient(Caller):
    """Sends and fetches over the bulk lane of ``peer`` at ``address``, as ``identity``. Up to
    ``CONNECTIONS_PER_CALLER`` calls run at once, each on its own connection, kept open between calls, and
    beside them up to ``streams`` messages sent as their bytes are made (``send_stream``)."""

    def __init__(self, identity: Identity, peer: str, address: str, *, accounting: Accounting | None = None,
                 connect_timeout: float = 5.0, streams: int = 0) -> None:
        super().__init__(identity, peer, address, accounting=accounting, connect_timeout=connect_timeout)
        self.ctx = client_context(identity, peer)
        self._idle: list[tuple[float, ssl.SSLSocket]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(CONNECTIONS_PER_CALLER)
        self.streams = streams
        self._stream_slots = threading.BoundedSemaphore(max(streams, 1))

    def close(self) -> None:
        with self._lock:
            socks, self._idle = self._idle, []
        for _, s in socks:
            s.close()

    def _connect(self) -> ssl.SSLSocket:
        host, _, port = self.address.rpartition(":")
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                raw = socket.create_connection((host.strip("[]"), int(port)), timeout=HANDSHAKE_S)
                try:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock = self.ctx.wrap_socket(raw, server_hostname=self.identity.target_for(self.peer))
                except BaseException:
                    raw.close()
                    raise
                try:
                    sock.settimeout(IO_S)
                    verdict = json.loads(_recv_frame(sock))
                except BaseException:
                    sock.close()
                    raise
                if "code" in verdict:
                    sock.close()
                    if verdict["code"] == "busy":   # no room on the lane now: the caller takes gRPC
                        raise LaneUnavailable(self.peer, self.address, f"bulk lane: {verdict.get('message')}")
                    self._check(verdict)
                return sock
            except (ConnectionRefusedError, socket.timeout) as exc:
                if time.monotonic() + 0.2 >= deadline:
                    raise LaneUnavailable(self.peer, self.address, f"bulk lane: {exc}") from None
                time.sleep(0.2)
            except (ssl.SSLError, OSError) as exc:
                raise LaneUnavailable(self.peer, self.address, f"bulk lane: {exc}") from None

    @contextmanager
    def _connection(self, slots: threading.BoundedSemaphore | None = None) -> Iterator[ssl.SSLSocket]:
        with slots or self._slots:
            sock = None
            with self._lock:
                while self._idle and sock is None:
                    since, candidate = self._idle.pop()
                    if time.monotonic() - since < IDLE_S / 2:
                        sock = candidate        # younger than half the server's idle limit: still open there
                    else:
                        candidate.close()
            if sock is None:
                sock = self._connect()
            ok = False
            try:
                yield sock
                ok = True
            except RemoteRejected:
                ok = True                       # a refusal leaves the connection in step: keep it
                raise
            finally:
                if ok:
                    with self._lock:
                        self._idle.append((time.monotonic(), sock))
                else:
                    sock.close()

    def _check(self, verdict: dict[str, Any]) -> dict[str, Any]:
        if "code" in verdict:
            raise RemoteRejected(self.peer, str(verdict["code"]), str(verdict.get("message", "")))
        return verdict

    def send(self, msg: Message, *, account_as: Any = None, message_id: bytes | None = None) -> None:
        """Hand ``msg`` to the peer's handler; raises RemoteRejected with the peer's code if refused.
        ``message_id`` is for tests of replays (a fresh random id otherwise)."""
        data = msg.to_bytes()
        self._deliver(msg, bulk_envelope(msg, data, message_id), lambda sock: sock.sendall(data), self._slots,
                      account_as)

    def send_stream(self, msg: Message, pieces: Iterable[bytes | memoryview]) -> None:
        """Send ``msg``'s header and then its arrays' bytes as ``pieces`` yields them (the receiver sees one
        message, byte for byte ``msg.to_bytes()`` had the arrays held the pieces; ``msg``'s arrays give only the
        shapes). If ``pieces`` raises, the connection is closed mid-payload, so the peer takes nothing; the
        exception propagates. Takes one of ``streams`` slots, not a call slot."""
        if self.streams < 1:
            raise ValueError(f"the bulk client of {self.peer!r} sends no streams")
        header, total = msg.wire_header(), msg.wire_size()

        def write(sock: ssl.SSLSocket) -> None:
            sock.sendall(header)
            sent = len(header)
            for piece in pieces:
                sent += len(memoryview(piece).cast("B"))
                if sent > total:
                    raise StreamMismatch(f"stream pieces overrun the message's {total} bytes")
                sock.sendall(piece)
            if sent != total:
                raise StreamMismatch(f"stream pieces ended after {sent} of {total} bytes")
        self._deliver(msg, bulk_envelope(msg, None, total=total), write, self._stream_slots, None, streamed=True)

    def _deliver(self, msg: Message, env: pb.Envelope, write: Callable[[ssl.SSLSocket], None],
                 slots: threading.BoundedSemaphore, account_as: Any, **logged: Any) -> None:
        """One send call: the envelope, the peer's "go", ``write(sock)`` for the payload, the final verdict; then
        the bytes booked and logged. A connection lost before "go" is LaneUnavailable (nothing was taken),
        after it PartyUnreachable."""
        if msg.recipient != self.peer:
            raise ValueError(f"message for {msg.recipient!r} handed to the bulk client of {self.peer!r}")
        timer = Timer()
        payload_out = False
        try:
            with self._connection(slots) as sock:
                sock.settimeout(IO_S)
                _send_frame(sock, env.SerializeToString(), SEND)
                verdict = json.loads(_recv_frame(sock))
                if "code" in verdict:
                    self._check(verdict)
                payload_out = True
                write(sock)
                self._check(json.loads(_recv_frame(sock)))
        except (RemoteRejected, LaneUnavailable, StreamMismatch):
            raise
        except (ConnectionError, ssl.SSLError, OSError, ValueError) as exc:
            # before "go" the peer cannot have taken the message (e.g. a kept connection it closed meanwhile)
            lost = PartyUnreachable if payload_out else LaneUnavailable
            raise lost(self.peer, self.address, f"bulk lane: {exc}") from None
        self.accounting.add(msg.round_id if account_as is None else account_as, "sent", self.peer, env.total_bytes,
                            env.total_bytes + env.ByteSize() + 5)
        event(self.log, "sent", recipient=self.peer, round=msg.round_id, phase=msg.kind, bytes=env.total_bytes,
              seconds=round(timer.seconds, 6), lane="bulk", **logged)

    def fetch(self, round_id: int, phase: str, *, wait_s: float = 30.0, max_bytes: int = 1 << 40) -> Message:
        """Pull the message of ``phase`` for us in ``round_id`` (the peer may hold the call up to ``wait_s``)."""
        timer = Timer()
        req = pb.FetchRequest(version=VERSION, round_id=round_id, requester=self.identity.party, phase=phase,
                              timeout_s=wait_s)
        answered = False
        try:
            with self._connection() as sock:
                sock.settimeout(wait_s + IO_S)
                _send_frame(sock, req.SerializeToString(), FETCH)
                self._check(json.loads(_recv_frame(sock)))
                answered = True
                env = pb.Envelope.FromString(_recv_frame(sock))
                wire.check_envelope(env, caller=None, me=self.identity.party, max_bytes=max_bytes)
                if env.sender != self.peer:
                    raise Rejected("sender-mismatch", f"reply from {env.sender!r}, expected {self.peer!r}")
                buf = bytearray(env.total_bytes)
                _recv_exact(sock, env.total_bytes, memoryview(buf))
        except (RemoteRejected, Rejected, LaneUnavailable):
            raise
        except (ConnectionError, ssl.SSLError, OSError, ValueError, DecodeError) as exc:
            lost = PartyUnreachable if answered else LaneUnavailable
            raise lost(self.peer, self.address, f"bulk lane: {exc}") from None
        msg = wire.decode(env, buf)
        self.accounting.add(round_id, "received", self.peer, env.total_bytes, env.total_bytes + env.ByteSize() + 4)
        event(self.log, "fetched", sender=self.peer, round=round_id, phase=phase, bytes=env.total_bytes,
              seconds=round(timer.seconds, 6), lane="bulk")
        return msg
