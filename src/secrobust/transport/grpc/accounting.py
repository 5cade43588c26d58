"""Byte accounting of one party's network traffic, per round and per peer.

``message`` bytes are the length of ``Message.to_bytes()`` (what the in-process channel counts);
``wire`` bytes add the protobuf envelope and chunk framing (TLS and HTTP/2 framing not included).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any


class Accounting:
    """Thread-safe counters: (round, direction, peer) -> message bytes, wire bytes, message count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])

    def add(self, round_id: int, direction: str, peer: str, message_bytes: int, wire_bytes: int) -> None:
        if direction not in ("sent", "received"):
            raise ValueError("direction is 'sent' or 'received'")
        with self._lock:
            row = self._rows[(round_id, direction, peer)]
            row[0] += message_bytes
            row[1] += wire_bytes
            row[2] += 1

    def totals(self, round_id: int | None = None) -> dict[str, Any]:
        """{"sent": bytes, "received": bytes, "wire_sent", "wire_received", "messages_sent",
        "messages_received", "by_peer": {peer: the same six counters}} for one round or for all."""
        out: dict[str, Any] = {"sent": 0, "received": 0, "wire_sent": 0, "wire_received": 0,
                               "messages_sent": 0, "messages_received": 0, "by_peer": {}}
        with self._lock:
            items = list(self._rows.items())
        for (rid, direction, peer), (mb, wb, count) in items:
            if round_id is not None and rid != round_id:
                continue
            out[direction] += mb
            out[f"wire_{direction}"] += wb
            out[f"messages_{direction}"] += count
            per = out["by_peer"].setdefault(peer, {"sent": 0, "received": 0, "messages_sent": 0,
                                                   "messages_received": 0, "wire_sent": 0, "wire_received": 0})
            per[direction] += mb
            per[f"messages_{direction}"] += count
            per[f"wire_{direction}"] += wb
        return out
