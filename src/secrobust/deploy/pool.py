"""The offline triple pool of one server: triples requested ahead of the rounds that will use them.

Who decides what. The operator names, in every ``open-round`` request, the triple id of this round
(``triple_id``) and the triples to have ready for the next rounds (``prefetch``: pairs (round id, triple
id), at most ``MAX_PREFETCH``). Both servers receive the same request, so they agree on which triple a
round uses by construction; no extra message between the servers is needed. A prefetched triple has
the same spec as the round whose request named it ((n, d, kind, and_words), and with the rule on shares
the rule circuit's material and the weighted-sum correlation: ``TripleSpec.rule``, ``vector``), and is *for* one later round id: its
request and its two deliveries carry that round id, so the traffic is accounted to the round that
uses it, exactly as in the in-process run.

What each server does with a request (``plan`` checks everything first, ``commit`` applies it, so a
refused request changes nothing):

* an id the pool holds (pending or delivered) is kept if the request names it with the same round and
  spec; named with another round or spec, the request is refused (``bad-request``);
* an id this server has seen before and no longer holds (used, discarded or failed) is refused
  (``duplicate``): a triple is never reused;
* a new id becomes a *pending* entry; S1 asks the dealer for it (this round's first, then the
  prefetches, one request at a time);
* every entry the request does not name is *discarded* (a triple for another (n, d, kind), or for a
  round id that was skipped): its id stays in ``seen`` and is never used.

A dealer delivery is accepted only for a pending entry with the same id, round and spec (``claim`` in
the node's ledger happens then); the round thread takes the delivered part out of the pool (``take``),
so it is used once. A triple's request and deliveries are accounted under ``triple_key(id)``, and a
round's report adds the traffic of the triple it used (as the in-process run counts it). An entry whose
request failed keeps the error, and the round that names it fails
with that error (``PartyUnreachable(party="dealer")`` when the dealer was down).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..gates.dealer import TripleShare0, TripleShare1, TripleSpec
from ..transport.grpc.errors import Rejected
from .rounds import MAX_PREFETCH, RoundRequest

__all__ = ["MAX_PREFETCH", "PoolEntry", "PoolPlan", "TriplePool", "triple_key"]


def triple_key(triple_id: str) -> str:
    """The accounting key of a triple's request and deliveries (added to the report of the round that
    uses it; a discarded triple's traffic is in no round's report)."""
    return f"triple:{triple_id}"


def _shape(spec: TripleSpec) -> str:
    out = f"n={spec.n}, d={spec.d}, {spec.kind}, {spec.and_words} bit-triple words"
    if not spec.rule.is_empty():
        out += f", rule material {rule_words(spec)}"
    return out + (", a weighted-sum correlation" if spec.vector else "")


def rule_words(spec: TripleSpec) -> list[int]:
    """The rule circuit's material as it travels (``protocol.offline``): [AND words, daBit words, products]."""
    return [spec.rule.and_words, spec.rule.dabit_words, spec.rule.mults]


PENDING, READY, FAILED = "pending", "ready", "failed"


@dataclass(eq=False)
class PoolEntry:
    """One triple this server expects or holds."""

    triple_id: str
    round_id: int
    spec: TripleSpec
    state: str = PENDING
    part: TripleShare0 | TripleShare1 | None = None
    error: BaseException | None = None
    requested: bool = False
    registered_at: float = 0.0
    delivered_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {"triple_id": self.triple_id, "round_id": self.round_id, "n": self.spec.n, "d": self.spec.d,
                "kind": self.spec.kind, "and_words": self.spec.and_words, "rule": rule_words(self.spec),
                "vector": self.spec.vector, "state": self.state}


@dataclass
class PoolPlan:
    """What ``commit`` will do: entries to add (in request order) and ids to discard."""

    add: list[PoolEntry] = field(default_factory=list)
    discard: list[str] = field(default_factory=list)


class TriplePool:
    """Pending and delivered triples of one server, and every triple id it has ever seen.

    Not thread-safe by itself: the server calls it under its round lock.
    """

    def __init__(self) -> None:
        self.entries: dict[str, PoolEntry] = {}
        self.seen: set[str] = set()

    def wanted(self, request: RoundRequest) -> list[tuple[str, int, TripleSpec]]:
        """(triple id, round id, spec) of every triple the request names, this round's first."""
        spec = request.plan().triple_spec()
        if spec is None:
            return []
        out = [(spec.triple_id, request.round_id, spec)]
        for round_id, triple_id in request.prefetch:
            out.append((triple_id, round_id, replace(spec, triple_id=triple_id)))
        return out

    def plan(self, request: RoundRequest, now: float) -> PoolPlan:
        """Check the request against the pool; raises Rejected and changes nothing if it conflicts."""
        plan = PoolPlan()
        named = set()
        for triple_id, round_id, spec in self.wanted(request):
            named.add(triple_id)
            held = self.entries.get(triple_id)
            if held is not None:
                if held.round_id != round_id or held.spec != spec:
                    raise Rejected("bad-request", f"triple {triple_id} is pooled for round {held.round_id} with "
                                   f"{_shape(held.spec)}; the request names it for round {round_id} with "
                                   f"{_shape(spec)}")
            elif triple_id in self.seen:
                raise Rejected("duplicate", f"triple {triple_id} was already used or discarded here; "
                               "a triple is never reused")
            else:
                plan.add.append(PoolEntry(triple_id, round_id, spec, registered_at=now))
        plan.discard = [t for t in self.entries if t not in named]
        return plan

    def commit(self, plan: PoolPlan) -> list[PoolEntry]:
        """Apply a checked plan; returns the discarded entries."""
        gone = [self.entries.pop(t) for t in plan.discard]
        for entry in plan.add:
            self.entries[entry.triple_id] = entry
            self.seen.add(entry.triple_id)
        return gone

    def pending_for(self, round_id: int) -> list[PoolEntry]:
        """Entries waiting for the dealer's delivery whose messages carry ``round_id``."""
        return [e for e in self.entries.values() if e.state == PENDING and e.round_id == round_id]

    def deliver(self, part: TripleShare0 | TripleShare1, round_id: int, now: float) -> PoolEntry:
        """Record the dealer's part of a pending triple; raises Rejected if it was not asked for."""
        tid = part.spec.triple_id
        entry = self.entries.get(tid)
        if entry is None:
            if tid in self.seen:
                raise Rejected("duplicate", f"triple {tid} was already used or discarded here")
            raise Rejected("out-of-phase", f"triple {tid} was not requested")
        if entry.state != PENDING:
            raise Rejected("duplicate", f"triple {tid} was already delivered here")
        if entry.round_id != round_id or entry.spec != part.spec:
            raise Rejected("out-of-phase", f"triple {tid} arrived for round {round_id} with {_shape(part.spec)}; "
                           f"it was requested for round {entry.round_id} with {_shape(entry.spec)}")
        entry.part = part
        entry.state = READY
        entry.delivered_at = now
        return entry

    def fail(self, triple_id: str, error: BaseException) -> PoolEntry | None:
        entry = self.entries.get(triple_id)
        if entry is not None and entry.state == PENDING:
            entry.state = FAILED
            entry.error = error
        return entry

    def take(self, triple_id: str) -> PoolEntry:
        """Remove a delivered or failed entry for its round (its id stays in ``seen``)."""
        return self.entries.pop(triple_id)

    def public(self) -> list[dict[str, Any]]:
        return [e.public() for e in sorted(self.entries.values(), key=lambda e: (e.round_id, e.triple_id))]
