"""The offline phase: S1 asks the dealer for a triple; the dealer answers both servers.

The request carries only public sizes (n, d, kind) and a fresh triple id; the dealer never sees data.
"""

from __future__ import annotations

import numpy as np

from ..errors import MalformedMessage, UnexpectedMessage
from ..gates.arith import Budget, Correction
from ..gates.dealer import (
    TripleLedger,
    TripleSeeds,
    TripleShare0,
    TripleShare1,
    TripleSpec,
    make_triple,
)
from .messages import TRIPLE_REQUEST, TRIPLE_S0, TRIPLE_S1, Message


def request_triple(round_id: int, spec: TripleSpec) -> Message:
    return Message(TRIPLE_REQUEST, round_id, "S1", "dealer", fields=_meta(spec))


def _meta(spec: TripleSpec) -> dict:
    out = {"triple_id": spec.triple_id, "n": spec.n, "d": spec.d, "kind": spec.kind}
    if spec.and_words:
        out["and_words"] = spec.and_words
    if not spec.rule.is_empty():
        out["rule"] = [spec.rule.and_words, spec.rule.dabit_words, spec.rule.mults]
    if spec.vector:
        out["vector"] = True
    return out


def spec_from_fields(fields: dict) -> TripleSpec:
    try:
        and_words = fields.get("and_words", 0)
        if isinstance(and_words, bool) or not isinstance(and_words, int):
            raise ValueError(f"and_words must be an integer, got {and_words!r}")
        rule = fields.get("rule", [0, 0, 0])
        if not isinstance(rule, list) or len(rule) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in rule):
            raise ValueError(f"rule material must be three integers, got {rule!r}")
        return TripleSpec(str(fields["triple_id"]), int(fields["n"]), int(fields["d"]), str(fields["kind"]), and_words,
                          Budget(*rule), fields.get("vector", False))
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"bad triple description: {exc}") from None


def answer_request(msg: Message, seeds: TripleSeeds, ledger: TripleLedger) -> tuple[Message, Message]:
    """Dealer step: make a fresh triple for the request; a repeated triple id is refused."""
    if msg.kind != TRIPLE_REQUEST:
        raise UnexpectedMessage(f"the dealer takes only {TRIPLE_REQUEST}, got {msg.kind}")
    spec = spec_from_fields(dict(msg.fields))
    ledger.claim(spec.triple_id)
    part0, part1 = make_triple(spec, seeds)
    meta = _meta(spec)
    f0 = {**meta, "seed_a0": part0.seed_a0, "seed_c0": part0.seed_c0}
    f1 = {**meta, "seed_a1": part1.seed_a1}
    arrays1 = {"c1": part1.c1}
    if spec.and_words:
        f0["seed_and"] = part0.seed_and
        f1["seed_and"] = part1.seed_and
        arrays1["and_c1"] = part1.and_c1
    if not spec.rule.is_empty():
        f0["seed_rule"], f1["seed_rule"] = part0.seed_rule, part1.seed_rule
        corr = part1.rule_correction
        arrays1.update(rule_and_c1=corr.and_c1, rule_dabit_ra1=corr.dabit_ra1, rule_mult_c1=corr.mult_c1)
    if spec.vector:
        f0["seed_vector"], f1["seed_vector"] = part0.seed_vector, part1.seed_vector
        arrays1["vector_c1"] = part1.vector_c1
    to_s0 = Message(TRIPLE_S0, msg.round_id, "dealer", "S0", fields=f0)
    to_s1 = Message(TRIPLE_S1, msg.round_id, "dealer", "S1", fields=f1, arrays=arrays1)
    return to_s0, to_s1


def triple_from_message(msg: Message) -> TripleShare0 | TripleShare1:
    """Rebuild a server's part of a triple from the dealer's message, checking its sizes."""
    spec = spec_from_fields(dict(msg.fields))
    seed_and = _seed(msg, "seed_and") if spec.and_words else None
    seed_rule = None if spec.rule.is_empty() else _seed(msg, "seed_rule")
    seed_vector = _seed(msg, "seed_vector") if spec.vector else None
    if msg.kind == TRIPLE_S0:
        return TripleShare0(spec, _seed(msg, "seed_a0"), _seed(msg, "seed_c0"), seed_and, seed_rule, seed_vector)
    if msg.kind == TRIPLE_S1:
        c1 = msg.arrays.get("c1")
        want = (spec.n, spec.n) if spec.kind == "gram" else (spec.n,)
        if c1 is None or c1.dtype != np.uint64 or c1.shape != want:
            raise MalformedMessage(f"triple C1 must be uint64 of shape {want}")
        and_c1 = msg.arrays.get("and_c1")
        if spec.and_words and (and_c1 is None or and_c1.dtype != np.uint64 or and_c1.shape != (spec.and_words,)):
            raise MalformedMessage(f"the triple's bit-triple words must be uint64 of shape ({spec.and_words},)")
        correction = None
        if seed_rule is not None:
            parts = [msg.arrays.get(k) for k in ("rule_and_c1", "rule_dabit_ra1", "rule_mult_c1")]
            if any(p is None for p in parts) or not (correction := Correction(*parts)).matches(spec.rule):
                raise MalformedMessage(f"the rule's correction words must be uint64, sized for {spec.rule}")
        vector_c1 = msg.arrays.get("vector_c1")
        if spec.vector and (vector_c1 is None or vector_c1.dtype != np.uint64 or vector_c1.shape != (spec.d,)):
            raise MalformedMessage(f"the weighted-sum correction must be uint64 of shape ({spec.d},)")
        return TripleShare1(spec, _seed(msg, "seed_a1"), np.asarray(c1, dtype=np.uint64), seed_and,
                            None if and_c1 is None else np.asarray(and_c1, dtype=np.uint64), seed_rule, correction,
                            seed_vector, vector_c1 if spec.vector else None)
    raise UnexpectedMessage(f"expected a triple, got {msg.kind}")


def _seed(msg: Message, name: str) -> bytes:
    seed = msg.fields.get(name)
    if not isinstance(seed, bytes) or len(seed) not in (16, 32):
        raise MalformedMessage(f"triple field {name} must be a 16- or 32-byte seed")
    return seed
