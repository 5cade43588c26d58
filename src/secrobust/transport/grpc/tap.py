"""A test-only record of the messages a listening party took or served, for the golden transcripts.

With ``SECROBUST_WIRE_TAP`` naming a folder, every message this process's Endpoint (gRPC or bulk lane)
accepted from a sender, or served to a fetching party, adds one JSON line to ``<folder>/<pid>.jsonl``:
round id, kind, sender, recipient, size in bytes and the SHA-256 of the ``Message.to_bytes()`` bytes.
Every message of a deployment reaches a listening party (S0, S1 or the dealer), so the lines of those
processes hold a round's whole flow. Unset (the default), nothing is recorded and nothing is hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from . import secrobust_pb2 as pb

ENV = "SECROBUST_WIRE_TAP"
_LOCK = threading.Lock()


def folder() -> str | None:
    """The tap's folder, or None when the tap is off."""
    return os.environ.get(ENV) or None


def line(env: pb.Envelope, data: Any = None) -> dict[str, Any] | None:
    """The record of one message (``data``: its bytes; without them, the envelope's verified digest), or None
    when the tap is off."""
    if folder() is None:
        return None
    digest = hashlib.sha256(data).hexdigest() if data is not None else env.sha256.hex()
    return {"round": env.round_id, "kind": env.phase, "sender": env.sender, "recipient": env.recipient,
            "size": env.total_bytes, "sha256": digest}


def write(record: dict[str, Any] | None) -> None:
    """Append ``record`` (from ``line``) to this process's file; None is nothing to write."""
    where = folder()
    if record is None or where is None:
        return
    with _LOCK, open(Path(where) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, separators=(",", ":")) + "\n")


def read(where: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record in the tap folder ``where``, all processes' files together (no order across files)."""
    out = []
    for path in sorted(Path(where).glob("*.jsonl")):
        out.extend(json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text)
    return out
