"""A Message as a stream of chunks, and the strict reassembly of such a stream.

Sender side: ``to_chunks(msg)`` encodes the message once (``Message.to_bytes``), writes the
Envelope (version, round id, sender, recipient, phase = kind, sequence number, a fresh 16-byte
message id, total length, chunk count and SHA-256) into chunk 0, and cuts the bytes into chunks of
``CHUNK_BYTES``. Receiver side: ``check_envelope`` validates the envelope before any payload is
buffered; ``Reassembler`` accepts the chunks in order into one preallocated buffer and refuses gaps,
overruns, a wrong count or a wrong digest; ``decode`` turns the bytes into a Message and checks that
its own header says the same as the envelope.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from google.protobuf.message import DecodeError

from ...errors import MalformedMessage
from ...protocol.messages import KINDS, VERSION, Message
from . import secrobust_pb2 as pb
from .errors import Rejected
from .tls import CHUNK_BYTES

MESSAGE_ID_BYTES = 16


class _Sequence:
    """Per-process sequence numbers: start at the wall clock in ns so they keep rising across restarts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last


SEQUENCE = _Sequence()


@dataclass(frozen=True)
class Outgoing:
    """An encoded message ready to stream, with its envelope."""

    envelope: pb.Envelope
    data: bytes

    @property
    def message_id(self) -> bytes:
        return self.envelope.message_id


def encode(msg: Message, *, message_id: bytes | None = None, seq: int | None = None,
           chunk_bytes: int = CHUNK_BYTES) -> Outgoing:
    """Encode ``msg`` and build its envelope (a fresh random message id unless one is given)."""
    data = msg.to_bytes()
    count = max(1, -(-len(data) // chunk_bytes))
    env = pb.Envelope(version=msg.version, round_id=msg.round_id, sender=msg.sender, recipient=msg.recipient,
                      phase=msg.kind, seq=SEQUENCE.next() if seq is None else seq,
                      message_id=os.urandom(MESSAGE_ID_BYTES) if message_id is None else message_id,
                      total_bytes=len(data), chunk_count=count, sha256=hashlib.sha256(data).digest())
    return Outgoing(env, data)


def chunks(out: Outgoing, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """The chunk stream of an encoded message; chunk 0 carries the envelope."""
    view = memoryview(out.data)
    for i in range(out.envelope.chunk_count):
        piece = bytes(view[i * chunk_bytes:(i + 1) * chunk_bytes])
        yield pb.Chunk(envelope=out.envelope, index=0, data=piece) if i == 0 else pb.Chunk(index=i, data=piece)


def to_chunks(msg: Message, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """``chunks(encode(msg))``."""
    return chunks(encode(msg, chunk_bytes=chunk_bytes), chunk_bytes)


def check_envelope(env: pb.Envelope, *, caller: str | None, me: str, max_bytes: int,
                   chunk_bytes: int = CHUNK_BYTES) -> None:
    """Checks that need no round state: version, identity, kind, sizes. Raises Rejected.

    ``caller`` is the CN of the peer's certificate (None skips the identity check, for replies read
    by a client that already authenticated the server).
    """
    if env.version != VERSION:
        raise Rejected("version", f"protocol version {env.version} is not supported (this is version {VERSION})")
    if caller is not None and env.sender != caller:
        raise Rejected("sender-mismatch", f"envelope says sender {env.sender!r} but the TLS certificate is {caller!r}")
    if env.recipient != me:
        raise Rejected("wrong-recipient", f"message for {env.recipient!r} reached {me!r}")
    if env.phase not in KINDS:
        raise Rejected("out-of-phase", f"unknown phase {env.phase!r}")
    if len(env.message_id) != MESSAGE_ID_BYTES:
        raise Rejected("malformed-stream", f"message id must be {MESSAGE_ID_BYTES} bytes, got {len(env.message_id)}")
    if len(env.sha256) != 32:
        raise Rejected("malformed-stream", "envelope digest must be 32 bytes of SHA-256")
    if env.total_bytes > max_bytes:
        raise Rejected("too-large", f"{env.phase} of {env.total_bytes} bytes exceeds the limit of {max_bytes} bytes")
    want = max(1, -(-env.total_bytes // chunk_bytes))
    if env.chunk_count != want:
        raise Rejected("malformed-stream", f"{env.total_bytes} bytes must come in {want} chunks, "
                       f"envelope says {env.chunk_count}")


def lazy_buffer(nbytes: int) -> np.ndarray:
    """A receive buffer whose pages the kernel commits only as bytes are written into it (``bytearray(n)``
    zeroes, and so commits, all n at once): a sender that announces 8d bytes and sends none costs nothing."""
    return np.empty(nbytes, dtype=np.uint8)


class Reassembler:
    """Collects the payload of one stream into a preallocated buffer, checking order and sizes."""

    def __init__(self, env: pb.Envelope, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.env = env
        self.chunk_bytes = chunk_bytes
        self.buffer = lazy_buffer(env.total_bytes)
        self._view = memoryview(self.buffer)
        self.pos = 0
        self.next_index = 0
        self.wire_bytes = 0

    def add(self, chunk: pb.Chunk) -> None:
        if chunk.index != self.next_index:
            raise Rejected("malformed-stream", f"chunk {chunk.index} arrived where chunk {self.next_index} was due")
        if self.next_index > 0 and chunk.HasField("envelope"):
            raise Rejected("malformed-stream", f"chunk {chunk.index} carries a second envelope")
        n = len(chunk.data)
        if n > self.chunk_bytes or self.pos + n > len(self.buffer):
            raise Rejected("malformed-stream", f"chunk {chunk.index} of {n} bytes overruns the declared "
                           f"{self.env.total_bytes} bytes")
        if self.next_index + 1 < self.env.chunk_count and n != self.chunk_bytes:
            raise Rejected("malformed-stream", f"chunk {chunk.index} has {n} bytes; all but the last carry "
                           f"{self.chunk_bytes}")
        self._view[self.pos:self.pos + n] = chunk.data
        self.pos += n
        self.next_index += 1
        self.wire_bytes += chunk.ByteSize()

    def finish(self) -> np.ndarray:
        if self.next_index != self.env.chunk_count or self.pos != self.env.total_bytes:
            raise Rejected("malformed-stream", f"stream ended after {self.next_index} of {self.env.chunk_count} "
                           f"chunks ({self.pos} of {self.env.total_bytes} bytes)")
        if hashlib.sha256(self.buffer).digest() != self.env.sha256:
            raise Rejected("digest", "SHA-256 of the reassembled bytes does not match the envelope")
        return self.buffer


def decode(env: pb.Envelope, data: bytes | bytearray | np.ndarray) -> Message:
    """Decode the reassembled bytes and check the message header against the envelope."""
    try:
        msg = Message.from_bytes(data)
    except MalformedMessage as exc:
        raise Rejected("malformed-message", str(exc)) from None
    pairs = (("version", msg.version, env.version), ("round", msg.round_id, env.round_id),
             ("sender", msg.sender, env.sender), ("recipient", msg.recipient, env.recipient),
             ("phase", msg.kind, env.phase))
    for name, inner, outer in pairs:
        if inner != outer:
            raise Rejected("envelope-mismatch", f"message header {name} {inner!r} differs from envelope {outer!r}")
    return msg


def read_stream(stream: Iterable[Any], *, caller: str | None, me: str, max_bytes: int,
                precheck: Callable[[pb.Envelope], None] | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> tuple[Message, pb.Envelope, int]:
    """Receive one whole message from a chunk stream. Returns (message, envelope, wire bytes).

    ``precheck`` sees the envelope before any payload is buffered (the receiver's round and phase
    checks). An ``Unparsed`` item stands for a chunk that did not parse as protobuf.
    """
    it = iter(stream)
    first = next(it, None)
    if first is None:
        raise Rejected("malformed-stream", "empty stream")
    if not isinstance(first, pb.Chunk):
        raise Rejected("malformed-protobuf", "chunk 0 is not a valid Chunk protobuf")
    if not first.HasField("envelope"):
        raise Rejected("malformed-stream", "chunk 0 has no envelope")
    check_envelope(first.envelope, caller=caller, me=me, max_bytes=max_bytes, chunk_bytes=chunk_bytes)
    if precheck is not None:
        precheck(first.envelope)
    asm = Reassembler(first.envelope, chunk_bytes)
    for chunk in itertools.chain([first], it):
        if not isinstance(chunk, pb.Chunk):
            raise Rejected("malformed-protobuf", f"chunk {asm.next_index} is not a valid Chunk protobuf")
        asm.add(chunk)
    return decode(first.envelope, asm.finish()), first.envelope, asm.wire_bytes


class Unparsed:
    """Stands for request bytes that did not parse (gRPC itself would turn None into a generic error)."""

    def __init__(self, what: str) -> None:
        self.what = what


def parser(cls: Any) -> Callable[[bytes], Any]:
    """A deserializer for protobuf ``cls`` that never raises: bad bytes become an ``Unparsed``."""
    def parse(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except (DecodeError, ValueError, RuntimeError):
            return Unparsed(cls.__name__)
    return parse


parse_chunk = parser(pb.Chunk)
