"""Byte accounting of one party's network traffic, per round and per peer.

``message`` bytes are the length of ``Message.to_bytes()`` (what the in-process channel counts);
``wire`` bytes add the protobuf envelope and chunk framing (TLS and HTTP/2 framing not included).

Rows are keyed by the round id of the message's envelope, or by another key a party chooses for a
message (``PartyHandler.account_as``, ``PeerClient.send(account_as=...)``): a server accounts a triple's
traffic under ``"triple:<id>"``, so a round's report adds exactly the triple it used. Only the last
``keep`` keys are kept (a party runs for thousands of rounds; reports ask about recent ones), and a
report reads only the rows of the keys it asks for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable

KEEP_KEYS = 512
_COUNTERS = ("sent", "received", "messages_sent", "messages_received", "wire_sent", "wire_received")


class Accounting:
    """Thread-safe counters: (key, direction, peer) -> message bytes, wire bytes, message count."""

    def __init__(self, keep: int = KEEP_KEYS) -> None:
        self._lock = threading.Lock()
        self._keys: OrderedDict[Hashable, dict[tuple[str, str], list[int]]] = OrderedDict()
        self._keep = keep

    def add(self, round_id: Hashable, direction: str, peer: str, message_bytes: int, wire_bytes: int) -> None:
        if direction not in ("sent", "received"):
            raise ValueError("direction is 'sent' or 'received'")
        with self._lock:
            rows = self._keys.get(round_id)
            if rows is None:
                rows = self._keys[round_id] = {}
                while len(self._keys) > self._keep:
                    self._keys.popitem(last=False)
            row = rows.setdefault((direction, peer), [0, 0, 0])
            row[0] += message_bytes
            row[1] += wire_bytes
            row[2] += 1

    def totals(self, round_id: Hashable | None = None, *more: Hashable) -> dict[str, Any]:
        """{"sent": bytes, "received": bytes, "wire_sent", "wire_received", "messages_sent",
        "messages_received", "by_peer": {peer: the same six counters}} for one round (plus the rows of
        any further keys given) or, without a key, for every key still kept."""
        out: dict[str, Any] = {name: 0 for name in _COUNTERS}
        out["by_peer"] = {}
        with self._lock:
            keys = list(self._keys) if round_id is None else list(dict.fromkeys((round_id, *more)))
            items = [(d, p, list(v)) for k in keys for (d, p), v in self._keys.get(k, {}).items()]
        for direction, peer, (mb, wb, count) in items:
            out[direction] += mb
            out[f"wire_{direction}"] += wb
            out[f"messages_{direction}"] += count
            per = out["by_peer"].setdefault(peer, {name: 0 for name in _COUNTERS})
            per[direction] += mb
            per[f"messages_{direction}"] += count
            per[f"wire_{direction}"] += wb
        return out
