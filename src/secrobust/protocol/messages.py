"""Protocol messages and their byte encoding.

Wire format: b"SRB1" | u32 little-endian header length | UTF-8 JSON header | array payloads.
The header carries the protocol version, kind, round id, sender, recipient and phase, small scalar
fields, and (name, dtype, shape) for each array; arrays follow as raw little-endian bytes in that
order. Decoding checks every size, so truncated or padded input is a MalformedMessage.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import MalformedMessage

VERSION = 1
MAGIC = b"SRB1"
_ALLOWED_DTYPES = {"<u8": np.dtype("<u8"), "<f8": np.dtype("<f8"), "<i8": np.dtype("<i8"), "|u1": np.dtype("|u1")}
_MAX_HEADER = 1 << 20

# Kinds, in protocol order.
TRIPLE_REQUEST = "triple-request"
TRIPLE_S0 = "triple-s0"
TRIPLE_S1 = "triple-s1"
SHARE_KEY = "share-key"
SHARE_MASKED = "share-masked"
PARTICIPANTS = "participants"
MASKED_OPEN = "masked-open"
VIEW_SHARE = "view-share"
WEIGHTS = "weights"
AGGREGATE_SHARE = "aggregate-share"
VALIDITY_SEED = "validity-seed"
VALIDITY_MASKED_OPEN = "validity-masked-open"
VALIDITY_OPEN = "validity-open"
RULE_OPEN = "rule-open"
KINDS = (TRIPLE_REQUEST, TRIPLE_S0, TRIPLE_S1, SHARE_KEY, SHARE_MASKED, PARTICIPANTS, VALIDITY_SEED,
         MASKED_OPEN, VALIDITY_MASKED_OPEN, VALIDITY_OPEN, VIEW_SHARE, RULE_OPEN, WEIGHTS, AGGREGATE_SHARE)


@dataclass(frozen=True)
class Message:
    """One protocol message. ``fields`` hold JSON scalars or bytes; ``arrays`` hold NumPy arrays."""

    kind: str
    round_id: int
    sender: str
    recipient: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    version: int = VERSION

    def to_bytes(self) -> bytes:
        header, wire = self._encode()
        return b"".join([header, *(memoryview(a.reshape(-1)).cast("B") for a in wire)])

    def wire_header(self) -> bytes:
        """The bytes of ``to_bytes()`` before the arrays (magic, length, JSON header)."""
        return self._encode()[0]

    def wire_size(self) -> int:
        """len(self.to_bytes()), without copying the arrays."""
        header, wire = self._encode()
        return len(header) + sum(a.nbytes for a in wire)

    def detached(self) -> "Message":
        """The message as ``from_bytes(to_bytes())`` gives it, without copying the arrays: the header goes
        through the same encoding and checks, and the arrays become read-only little-endian views, so the
        receiver cannot change the sender's data."""
        header, wire = self._encode()
        h = _check_header(json.loads(header[8:]))
        arrays = {}
        for name, a in zip(self.arrays, wire):
            view = a.view()
            view.flags.writeable = False
            arrays[name] = view
        return Message(kind=h["kind"], round_id=h["round"], sender=h["sender"], recipient=h["recipient"],
                       fields={k: _decode_field(v) for k, v in h["fields"].items()}, arrays=arrays, version=h["v"])

    def _encode(self) -> tuple[bytes, list[np.ndarray]]:
        """The header bytes, and the arrays as they cross the wire (C-contiguous, little-endian)."""
        specs = []
        wire = []
        for name, arr in self.arrays.items():
            a = np.asarray(arr)
            a = a if a.flags.c_contiguous else a.copy(order="C")
            dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("|", "<") else a.dtype
            key = dt.str
            if key not in _ALLOWED_DTYPES:
                raise TypeError(f"array {name!r} has dtype {a.dtype}, not one of {sorted(_ALLOWED_DTYPES)}")
            specs.append([name, key, list(a.shape)])
            wire.append(a.astype(dt, copy=False))
        header = {
            "v": self.version, "kind": self.kind, "round": self.round_id, "sender": self.sender,
            "recipient": self.recipient, "fields": {k: _encode_field(v) for k, v in self.fields.items()},
            "arrays": specs,
        }
        hb = json.dumps(header, separators=(",", ":")).encode()
        return b"".join([MAGIC, struct.pack("<I", len(hb)), hb]), wire

    @classmethod
    def from_bytes(cls, data: bytes) -> "Message":
        view = memoryview(data)
        read = read_header(view, len(view))
        if read is None:
            raise MalformedMessage("not a secrobust message (bad magic)")
        h, pos = read
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, shape in h["arrays"]:
            dt = _ALLOWED_DTYPES[dtype]
            nbytes = dt.itemsize * math.prod(shape)
            if pos + nbytes > len(view):
                raise MalformedMessage(f"array {name!r} needs {nbytes} bytes, {len(view) - pos} left")
            arrays[name] = np.frombuffer(view[pos : pos + nbytes], dtype=dt).reshape(shape)
            pos += nbytes
        if pos != len(view):
            raise MalformedMessage(f"{len(view) - pos} trailing bytes after the last array")
        return cls(kind=h["kind"], round_id=h["round"], sender=h["sender"], recipient=h["recipient"],
                   fields={k: _decode_field(v) for k, v in h["fields"].items()}, arrays=arrays, version=h["v"])


def read_header(prefix: memoryview, total: int) -> tuple[dict, int] | None:
    """The checked header of a message of ``total`` bytes whose first bytes are ``prefix``, and the offset of its
    first array; None while the prefix is too short to hold the header. MalformedMessage if it cannot be one."""
    if len(prefix) >= 4 and bytes(prefix[:4]) != MAGIC or total < 8:
        raise MalformedMessage("not a secrobust message (bad magic)")
    if len(prefix) < 8:
        return None
    (hlen,) = struct.unpack("<I", prefix[4:8])
    if hlen > _MAX_HEADER or 8 + hlen > total:
        raise MalformedMessage(f"header length {hlen} does not fit a message of {total} bytes")
    if len(prefix) < 8 + hlen:
        return None
    try:
        header = json.loads(bytes(prefix[8 : 8 + hlen]))
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"header is not valid JSON: {str(exc)[:200]}") from None
    return _check_header(header), 8 + hlen


def _encode_field(value: Any) -> Any:
    if isinstance(value, dict):
        raise TypeError("message fields hold scalars, strings, bytes or lists, not dicts")
    if isinstance(value, (bytes, bytearray)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_encode_field(v) for v in value]
    return value


def _decode_field(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"hex"} or not isinstance(value["hex"], str) or value["hex"] != value["hex"].lower():
            raise MalformedMessage("a field object must be {'hex': lower-case hex digits}")
        try:
            return bytes.fromhex(value["hex"])
        except ValueError:
            raise MalformedMessage("a bytes field is not valid hex") from None
    if isinstance(value, list):
        return [_decode_field(v) for v in value]
    return value


def _check_header(h: Any) -> dict:
    if not isinstance(h, dict):
        raise MalformedMessage("header is not an object")
    want = {"v": int, "kind": str, "round": int, "sender": str, "recipient": str, "fields": dict, "arrays": list}
    for key, typ in want.items():
        if not isinstance(h.get(key), typ) or (typ is int and isinstance(h.get(key), bool)):
            raise MalformedMessage(f"header field {key!r} missing or not {typ.__name__}")
    if h["v"] != VERSION:
        raise MalformedMessage(f"protocol version {h['v']} is not supported (this is version {VERSION})")
    if h["kind"] not in KINDS:
        raise MalformedMessage(f"unknown message kind {h['kind']!r}")
    if h["round"] < 0:
        raise MalformedMessage("round id must be non-negative")
    for spec in h["arrays"]:
        ok = (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
              and isinstance(spec[1], str) and spec[1] in _ALLOWED_DTYPES
              and isinstance(spec[2], list) and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in spec[2]))
        if not ok:
            raise MalformedMessage(f"bad array spec {spec!r}")
    return h
