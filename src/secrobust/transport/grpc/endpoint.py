"""The listening side of a party: a gRPC server with mutual TLS that feeds a PartyHandler.

Every call is checked in this order, and refused with a stable code (see ``errors.CODES``) while
the server keeps serving:

1. the caller's certificate is from one of the two organisations' CAs (TLS handshake), from the CA
   that certifies its CN towards this party (``unauthenticated``), and its CN is a party the handler
   admits (``unknown-party``); the caller has a free call slot (``busy``, see ``gate``);
2. the request parses as protobuf (``malformed-protobuf``) and the stream opens with an envelope
   (``malformed-stream``);
3. the envelope: version, sender = certificate CN, recipient = this party, a known phase, sizes
   (``version``, ``sender-mismatch``, ``wrong-recipient``, ``out-of-phase``, ``too-large``);
4. the message id was never accepted before (``replay``);
5. the handler's round-state check of the envelope (``wrong-round``, ``out-of-phase``, ``duplicate``),
   before any payload is buffered;
6. chunk order, sizes and the SHA-256 digest (``malformed-stream``, ``digest``); the Message decodes
   (``malformed-message``) and its header equals the envelope (``envelope-mismatch``);
7. the handler's acceptance of the decoded message (``wrong-size`` and any protocol error).

``Fetch`` and ``Control`` requests are checked the same way as far as they apply: protobuf
(``malformed-protobuf``), version, requester/sender = certificate CN, a finite fetch timeout and a
``Control`` argument within the command's size limit (``bad-request``, ``too-large``), JSON arguments
(``bad-request``; the handler's ``permits(caller, command)`` runs before the JSON is parsed), then the
handler's round checks (``wrong-round``, ``not-permitted``, ...). A request
above gRPC's 8 MiB message limit is refused by gRPC itself (RESOURCE_EXHAUSTED, which the client
reports as ``too-large``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc
import numpy as np

from ...pki.certs import Identity
from ...protocol.messages import VERSION, Message
from ..handler import PartyHandler
from ..tls import server_credentials
from . import secrobust_pb2 as pb
from . import tap, wire
from .accounting import Accounting
from .admission import Admission
from .errors import CODES, ERROR_KEY, Rejected, rejection_for
from .gate import CallLimits
from .logs import LOGGER_NAME, Timer, event
from .pace import Pace, pace_for, payload_deadline
from .tls import caller_party, server_options

SERVICE = "secrobust.v1.Party"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode()


class Endpoint:
    """A party's gRPC server: ``start()`` binds ``address`` (TLS only) and returns the bound port."""

    def __init__(self, identity: Identity, address: str, handler: PartyHandler, *, limits: CallLimits | None = None,
                 accounting: Accounting | None = None) -> None:
        if identity.party != handler.party:
            raise ValueError(f"identity {identity.party!r} does not match handler {handler.party!r}")
        self.identity = identity
        self.address = address
        self.handler = handler
        self.accounting = accounting or Accounting()
        self.log = logging.getLogger(LOGGER_NAME)
        limits = limits or CallLimits.for_workers(0)
        self.admission = Admission(handler, limits)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.threads,
                                                              thread_name_prefix=f"{identity.party}-rpc"),
                                   options=server_options(self.handler.stream_window))
        handlers = {
            "Send": grpc.stream_unary_rpc_method_handler(self._send, request_deserializer=wire.parse_chunk,
                                                         response_serializer=pb.Ack.SerializeToString),
            "Fetch": grpc.unary_stream_rpc_method_handler(self._fetch, request_deserializer=wire.parser(pb.FetchRequest),
                                                          response_serializer=pb.Chunk.SerializeToString),
            "Control": grpc.unary_unary_rpc_method_handler(self._control,
                                                           request_deserializer=wire.parser(pb.ControlRequest),
                                                           response_serializer=pb.ControlReply.SerializeToString),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port: int | None = None

    def start(self) -> int:
        port = self._server.add_secure_port(self.address, server_credentials(self.identity))
        if port == 0:
            raise OSError(f"{self.identity.party}: cannot bind {self.address}")
        self._server.start()
        self.port = port
        event(self.log, "listening", address=self.address, port=port)
        return port

    def stop(self, grace: float | None = 1.0) -> None:
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def _caller(self, context: grpc.ServicerContext) -> str:
        cn = caller_party(context, self.identity)
        if cn is None:
            raise Rejected("unauthenticated", "the call carries no client certificate issued for its name by the "
                           "CA that certifies that name here")
        if not self.handler.admitted(cn):
            raise Rejected("unknown-party", f"{cn!r} is not a party of this deployment")
        return cn

    def _refuse(self, context: grpc.ServicerContext, exc: BaseException, **fields: Any) -> None:
        rej = rejection_for(exc)
        level = logging.ERROR if rej.code == "internal" else logging.WARNING
        event(self.log, "refused", level=level, code=rej.code, reason=rej.reason, **fields)
        if rej.code == "internal":
            self.log.exception("internal error while serving a call")
        context.set_trailing_metadata(((ERROR_KEY, rej.code),))
        context.abort(CODES[rej.code], str(rej))

    def _send(self, requests: Iterator[Any], context: grpc.ServicerContext) -> pb.Ack:
        timer = Timer()
        info: dict[str, Any] = {}
        message_id: bytes | None = None
        accepted = False
        release: Any = None
        leave: Any = None
        watchdog: _PaceWatch | None = None
        got = [0]
        ended = [False]

        def counted() -> Iterator[Any]:
            for chunk in requests:
                if isinstance(chunk, pb.Chunk):
                    got[0] += len(chunk.data)
                yield chunk
            ended[0] = True
        try:
            caller = self._caller(context)
            info["sender"] = caller
            leave = self.admission.enter(caller)

            def precheck(env: pb.Envelope) -> None:
                nonlocal message_id, release, watchdog
                info.update(round=env.round_id, phase=env.phase, bytes=env.total_bytes, seq=env.seq)
                release = self.admission.admit(env)
                message_id = env.message_id
                if release is not None:     # a sender that stalls must not keep its slot
                    watchdog = _PaceWatch(context, pace_for(self.handler, env), lambda: got[0], self.log, info)

            msg, env, wire_bytes = wire.read_stream(counted(), caller=caller, me=self.handler.party,
                                                    max_bytes=_ABSOLUTE_LIMIT, precheck=precheck)
            self.deliver(msg, env, caller, wire_bytes)
            accepted = True
            tap.write(tap.line(env))
            event(self.log, "received", seconds=round(timer.seconds, 6), **info)
            return pb.Ack(message_id=env.message_id, bytes_received=env.total_bytes)
        except Exception as exc:  # every failure becomes a coded refusal; the server keeps serving
            self._refuse(context, exc, **info)
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if release is not None:
                cut = watchdog is not None and watchdog.fired
                release(arrived=ended[0] and not cut and got[0] >= info.get("bytes", 0))
            if message_id is not None:
                self.admission.settle(message_id, accepted)
            if leave is not None:
                leave()

    def _fetch(self, request: Any, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        timer = Timer()
        release: Any = None
        leave: Any = None
        try:
            if not isinstance(request, pb.FetchRequest):
                raise Rejected("malformed-protobuf", "request is not a valid FetchRequest protobuf")
            caller = self._authenticate(context, request.version, request.requester, "requester")
            found, leave, release = self.take_fetch(caller, request)
            out = found if isinstance(found, wire.Outgoing) else wire.encode(found)
            del found
        except Exception as exc:
            if release is not None:
                release()
            if leave is not None:
                leave()
            self._refuse(context, exc, requester=getattr(request, "requester", None),
                         round=getattr(request, "round_id", None), phase=getattr(request, "phase", None))
            raise
        wire_bytes = 0
        env = out.envelope
        watchdog = _watchdog(context, payload_deadline(env.total_bytes)) if release is not None else None
        try:
            for chunk in wire.chunks(out):
                wire_bytes += chunk.ByteSize()
                yield chunk
        finally:
            if watchdog is not None:
                watchdog.cancel()
            del out
            if release is not None:
                release()
            leave()
        self.accounting.add(self.handler.account_fetch_as(caller, env), "sent", caller, env.total_bytes, wire_bytes)
        tap.write(tap.line(env))
        event(self.log, "served", requester=caller, round=env.round_id, phase=env.phase,
              bytes=env.total_bytes, seconds=round(timer.seconds, 6))

    def deliver(self, msg: Message, env: pb.Envelope, caller: str, wire_bytes: int) -> None:
        """Hand a decoded message to the handler and book its bytes under the handler's ``account_as``."""
        self.handler.accept(msg, env)
        self.accounting.add(self.handler.account_as(msg, env), "received", caller, env.total_bytes, wire_bytes)

    def take_fetch(self, caller: str, request: pb.FetchRequest) -> tuple[Any, Any, Any]:
        """A fetch's checks and slots, shared with the bulk lane: a finite timeout, a call-gate slot, the
        handler's reply (waiting up to the timeout, capped at 600 s) and its fetch slot. Returns (reply,
        release of the gate slot, release of the fetch slot or None); on a refusal nothing stays held."""
        if not math.isfinite(request.timeout_s):
            raise Rejected("bad-request", f"fetch timeout_s must be a finite number, got {request.timeout_s}")
        leave = self.admission.enter(caller)
        try:
            found = self.handler.fetch(caller, request.round_id, request.phase,
                                       min(max(request.timeout_s, 0.0), 600.0))
            return found, leave, self.handler.fetch_slot(caller, request.phase)
        except BaseException:
            leave()
            raise

    def _authenticate(self, context: grpc.ServicerContext, version: int, claimed: str, role: str) -> str:
        """The caller's certificate name, after checking the protocol version and that the request's
        claimed identity is that name."""
        caller = self._caller(context)
        if version != VERSION:
            raise Rejected("version", f"protocol version {version} is not supported")
        if claimed != caller:
            raise Rejected("sender-mismatch", f"{role} {claimed!r} but certificate {caller!r}")
        return caller

    def _control(self, request: Any, context: grpc.ServicerContext) -> pb.ControlReply:
        leave: Any = None
        try:
            if not isinstance(request, pb.ControlRequest):
                raise Rejected("malformed-protobuf", "request is not a valid ControlRequest protobuf")
            caller = self._authenticate(context, request.version, request.sender, "sender")
            leave = self.admission.enter(caller)
            self.handler.permits(caller, request.command)
            limit = self.handler.max_control_bytes(request.command)
            if len(request.json) > limit:
                raise Rejected("too-large", f"{request.command!r} arguments of {len(request.json)} bytes exceed "
                               f"the limit of {limit} bytes")
            try:
                args = json.loads(request.json.decode()) if request.json else {}
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise Rejected("bad-request", f"control arguments are not JSON: {exc}") from None
            if not isinstance(args, dict):
                raise Rejected("bad-request", "control arguments must be a JSON object")
            result = self.handler.control(caller, request.command, request.round_id, args)
            return pb.ControlReply(json=dumps(result))
        except Exception as exc:
            self._refuse(context, exc, sender=getattr(request, "sender", None), command=getattr(request, "command", None),
                         round=getattr(request, "round_id", None))
            raise
        finally:
            if leave is not None:
                leave()


_ABSOLUTE_LIMIT = 1 << 40


class _PaceWatch:
    """Cancels a call whose payload falls behind ``pace`` (``got()``: payload bytes in so far), from now on."""

    def __init__(self, context: grpc.ServicerContext, pace: Pace, got: Callable[[], int], log: logging.Logger,
                 info: dict[str, Any]) -> None:
        self.context, self.pace, self.got, self.log, self.info = context, pace, got, log, info
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._over = False
        self.fired = False
        """The call was cut for falling behind its pace."""
        self._arm()

    def _arm(self) -> None:
        timer = threading.Timer(max(0.0, self.pace.due(self.start, self.got()) - time.monotonic()), self._check)
        timer.daemon = True
        with self._lock:
            if self._over:
                return
            self._timer = timer
        timer.start()

    def _check(self) -> None:
        got = self.got()
        if time.monotonic() < self.pace.due(self.start, got):
            self._arm()
            return
        with self._lock:
            if self._over:
                return
            self._over = self.fired = True
        event(self.log, "payload-cut", level=logging.WARNING, lane="grpc", **self.info,
              reason=f"{got} payload bytes after {time.monotonic() - self.start:.1f} s, below {self.pace.rate:g} B/s "
                     f"after {self.pace.grace_s:g} s of grace")
        self.context.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._over = True
            timer = self._timer
        if timer is not None:
            timer.cancel()


def _watchdog(context: grpc.ServicerContext, seconds: float) -> threading.Timer:
    """Cancel the call after ``seconds``: a peer that stops sending (or reading) releases the slot it holds."""
    timer = threading.Timer(seconds, context.cancel)
    timer.daemon = True
    timer.start()
    return timer

