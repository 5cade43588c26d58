"""Errors of the gRPC transport, and their stable codes on the wire.

A receiver that refuses a message answers with a gRPC status and the trailing metadata
``secrobust-error: <code>``; the sender turns that back into :class:`RemoteRejected` with the same
``code``. The codes are part of the wire protocol: tests and operators match on them.
"""

from __future__ import annotations

import grpc

from ...errors import (DuplicateWorker, MalformedMessage, ProtocolError, RoundAborted, TripleReuseError,
                       UnexpectedMessage, UnknownWorker)

ERROR_KEY = "secrobust-error"

# code -> gRPC status it travels with
CODES: dict[str, grpc.StatusCode] = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "unknown-party": grpc.StatusCode.PERMISSION_DENIED,
    "sender-mismatch": grpc.StatusCode.PERMISSION_DENIED,
    "not-permitted": grpc.StatusCode.PERMISSION_DENIED,
    "version": grpc.StatusCode.FAILED_PRECONDITION,
    "wrong-recipient": grpc.StatusCode.FAILED_PRECONDITION,
    "wrong-round": grpc.StatusCode.FAILED_PRECONDITION,
    "out-of-phase": grpc.StatusCode.FAILED_PRECONDITION,
    "replay": grpc.StatusCode.ALREADY_EXISTS,
    "duplicate": grpc.StatusCode.ALREADY_EXISTS,
    "malformed-protobuf": grpc.StatusCode.INVALID_ARGUMENT,
    "malformed-stream": grpc.StatusCode.INVALID_ARGUMENT,
    "too-large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "busy": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "digest": grpc.StatusCode.DATA_LOSS,
    "malformed-message": grpc.StatusCode.INVALID_ARGUMENT,
    "envelope-mismatch": grpc.StatusCode.INVALID_ARGUMENT,
    "wrong-size": grpc.StatusCode.INVALID_ARGUMENT,
    "round-aborted": grpc.StatusCode.ABORTED,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "bad-request": grpc.StatusCode.INVALID_ARGUMENT,
    "internal": grpc.StatusCode.INTERNAL,
}


class Rejected(ProtocolError):
    """Raised on the receiving side to refuse a call with a stable code (see ``CODES``)."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.reason = message


class RemoteRejected(ProtocolError):
    """The peer refused our call; ``code`` is the peer's reason code, ``party`` who refused."""

    def __init__(self, party: str, code: str, message: str, status: grpc.StatusCode | None = None) -> None:
        super().__init__(f"{party} refused the call [{code}]: {message}")
        self.party = party
        self.code = code
        self.reason = message
        self.status = status


class PartyUnreachable(RoundAborted):
    """A server or the dealer did not answer (down, refused the TLS handshake, or timed out)."""

    def __init__(self, party: str, address: str, detail: str) -> None:
        super().__init__(f"{party} at {address} is unreachable: {detail}")
        self.party = party
        self.address = address
        self.detail = detail


def rejection_for(exc: BaseException) -> Rejected:
    """Map a protocol error raised by a party's handler to the code sent back to the caller."""
    if isinstance(exc, Rejected):
        return exc
    if isinstance(exc, UnknownWorker):
        return Rejected("unknown-party", str(exc))
    if isinstance(exc, (DuplicateWorker, TripleReuseError)):
        return Rejected("duplicate", str(exc))
    if isinstance(exc, MalformedMessage):
        return Rejected("malformed-message", str(exc))
    if isinstance(exc, UnexpectedMessage):
        return Rejected("out-of-phase", str(exc))
    if isinstance(exc, (RoundAborted, RemoteRejected)):
        return Rejected("round-aborted", str(exc))
    return Rejected("internal", f"{type(exc).__name__}: {exc}")
