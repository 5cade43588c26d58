"""Correlated randomness for the Gram matrix, made by the dealer (crypto provider).

A triple is two random masks A0, A1 (n x d) and C = A0 (A0 + 2 A1)^T (kind "gram", n x n; its
symmetrisation is A0 A0^T + A0 A1^T + A1 A0^T) or c_i = ||a0_i||^2 + 2 <a0_i, a1_i> (kind "diag", n),
shared as C0 + C1. A0 is S0's share of the inputs: row i is
keyed by ``sharing.input_key(seed_a0, i)``, the key S0 hands worker i, so the workers' S0 shares
are the dealer's masks and only S1 opens anything (``protocol.server``). Seed-compressed: S0 gets
only the seeds of A0 and C0; S1 gets the seed of A1 and C1 = C - C0 explicitly. The dealer sees no
data: A0 is random and chosen before any worker has an update.
With ``and_words`` > 0 the same triple carries the input-validity check's Beaver bit triples
(``secrobust.gates.compare``): a seed for each server and S1's correction words c1. With a non-empty ``rule``
budget it also carries the material of a rule run on shares (``secrobust.gates.arith``: bit triples, daBits,
product triples). With ``vector`` it carries the shared weighted sum's correlation (``reveal="aggregate"``):
random u (S0's) and u' (S1's) in Z^n and shares r0 + c1 = u^T A1 + u'^T A0 in Z^d (see ``protocol.server``).
Rows of A are labelled by a worker's position in the round's expected worker list, so the
triple for a subset of workers (after dropouts) is the sub-matrix of the same triple.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import TripleReuseError
from ..primitives import kernel, prg, sharing
from . import arith
from .arith import Budget, Correction
from .compare import AndTripleSeeds, make_and_triple

TRIPLE_KINDS = ("gram", "diag")
DEFAULT_CHUNK_BYTES = 16 << 20
"""Column chunks of about 16 MB: below glibc's largest mmap threshold (32 MB), so after the first chunk the
chunk buffers come back from the heap instead of fresh pages (about 0.2 ms per MB of page faults here)."""
MAX_AND_WORDS = 1 << 26


@dataclass(frozen=True)
class TripleSpec:
    """What is asked of the dealer: public sizes only."""

    triple_id: str
    n: int
    d: int
    kind: str
    and_words: int = 0
    rule: Budget = Budget()
    vector: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Budget) or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= MAX_AND_WORDS
                for v in (self.rule.and_words, self.rule.dabit_words, self.rule.mults)):
            raise ValueError(f"the rule's material must be a Budget of integers in [0, {MAX_AND_WORDS}], got {self.rule!r}")
        if not isinstance(self.vector, bool):
            raise ValueError(f"vector must be True or False, got {self.vector!r}")
        if self.kind not in TRIPLE_KINDS:
            raise ValueError(f"triple kind must be one of {TRIPLE_KINDS}, got {self.kind!r}")
        if isinstance(self.and_words, bool) or not isinstance(self.and_words, (int, np.integer)) \
                or not 0 <= self.and_words <= MAX_AND_WORDS:
            raise ValueError(f"and_words must be an integer in [0, {MAX_AND_WORDS}], got {self.and_words!r}")
        for name in ("n", "d"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"triple size {name} must be an integer, got {value!r}")
        if self.n < 1 or self.d < 1:
            raise ValueError(f"triple sizes must be positive, got n={self.n}, d={self.d}")


@dataclass(frozen=True)
class TripleSeeds:
    """The dealer's randomness for one triple."""

    a0: bytes
    a1: bytes
    c0: bytes
    bits: AndTripleSeeds | None = None
    rule: AndTripleSeeds | None = None
    vector: AndTripleSeeds | None = None

    @classmethod
    def fresh(cls) -> "TripleSeeds":
        return cls(prg.fresh_seed(), prg.fresh_seed(), prg.fresh_seed(), AndTripleSeeds.fresh(), AndTripleSeeds.fresh(),
                   AndTripleSeeds.fresh())


@dataclass(frozen=True)
class TripleShare0:
    spec: TripleSpec
    seed_a0: bytes
    seed_c0: bytes
    seed_and: bytes | None = None
    seed_rule: bytes | None = None
    seed_vector: bytes | None = None

    def rule_source(self) -> arith.Dealt:
        return arith.Dealt(0, rule_label(self.spec), self.spec.rule, _need(self.seed_rule, "rule"))

    def vector_parts(self) -> tuple[np.ndarray, np.ndarray]:
        """(u (n,), r0 (d,)): S0's mask of its weight shares and its share of u^T A1 + u'^T A0."""
        seed = _need(self.seed_vector, "vector")
        return (prg.ring_stream(seed, vector_label(self.spec, "u0"), self.spec.n),
                prg.ring_stream(seed, vector_label(self.spec, "r0"), self.spec.d))


@dataclass(frozen=True)
class TripleShare1:
    spec: TripleSpec
    seed_a1: bytes
    c1: np.ndarray
    seed_and: bytes | None = None
    and_c1: np.ndarray | None = None
    seed_rule: bytes | None = None
    rule_correction: Correction | None = None
    seed_vector: bytes | None = None
    vector_c1: np.ndarray | None = None

    def rule_source(self) -> arith.Dealt:
        return arith.Dealt(1, rule_label(self.spec), self.spec.rule, _need(self.seed_rule, "rule"), self.rule_correction)

    def vector_parts(self) -> tuple[np.ndarray, np.ndarray]:
        """(u' (n,), c1 (d,)): S1's mask of its weight shares and its share of u^T A1 + u'^T A0."""
        seed = _need(self.seed_vector, "vector")
        return prg.ring_stream(seed, vector_label(self.spec, "u1"), self.spec.n), _need(self.vector_c1, "vector")


def _need(value, what: str):
    if value is None:
        raise ValueError(f"this triple carries no {what} material")
    return value


def rule_label(spec: TripleSpec) -> str:
    return prg.label("triple", spec.triple_id, "rule")


def vector_label(spec: TripleSpec, what: str) -> str:
    return prg.label("triple", spec.triple_id, "vector", what)


def mask_label(spec: TripleSpec, party: int) -> str:
    return prg.label("triple", spec.triple_id, f"A{party}")


def c0_label(spec: TripleSpec) -> str:
    return prg.label("triple", spec.triple_id, "C0")


def chunk_columns(n: int, d: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[int, int]]:
    """Column ranges so that one n x chunk uint64 block is about chunk_bytes."""
    width = max(1, chunk_bytes // (8 * max(n, 1)))
    return [(c, min(c + width, d)) for c in range(0, d, width)]


def mask_columns(seed: bytes, spec: TripleSpec, party: int, start: int, stop: int,
                 rows: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Columns [start, stop) of A_party, for all rows or the given row positions (A_0 = S0's input shares),
    written into ``out`` (uint64, that shape, contiguous rows) when given."""
    rows = np.arange(spec.n) if rows is None else rows
    if party == 0:
        return sharing.input_rows(seed, rows, start, stop, out)
    purpose = mask_label(spec, party)
    if out is None:
        out = np.empty((len(rows), stop - start), dtype=np.uint64)
    elif out.dtype != np.uint64 or out.shape != (len(rows), stop - start):
        raise ValueError(f"mask columns go into a uint64 matrix of shape {(len(rows), stop - start)}")
    for r, i in enumerate(rows):
        prg.fill_ring_stream(seed, prg.label(purpose, "row", int(i)), out[r], start)
    return out


def mask_streams(seed: bytes, spec: TripleSpec, party: int) -> list[prg.RingStream]:
    """A_party's rows as streams from column 0: ``next_columns`` gives what ``mask_columns`` gives for
    consecutive column ranges, with one AES key schedule per row for the whole pass, not one per row and range."""
    if party == 0:
        return [sharing.input_stream(seed, i) for i in range(spec.n)]
    purpose = mask_label(spec, party)
    return [prg.RingStream(seed, prg.label(purpose, "row", i)) for i in range(spec.n)]


def next_columns(streams: list[prg.RingStream], width: int) -> np.ndarray:
    """The next ``width`` columns of the rows behind ``streams`` (one row per stream)."""
    out = np.empty((len(streams), width), dtype=np.uint64)
    for r, stream in enumerate(streams):
        stream.fill(out[r])
    return out


def c0_share(seed_c0: bytes, spec: TripleSpec) -> np.ndarray:
    size = spec.n * spec.n if spec.kind == "gram" else spec.n
    c0 = prg.ring_stream(seed_c0, c0_label(spec), size)
    return c0.reshape(spec.n, spec.n) if spec.kind == "gram" else c0


def make_triple(spec: TripleSpec, seeds: TripleSeeds) -> tuple[TripleShare0, TripleShare1]:
    """C = A0 (A0 + 2 A1)^T (or its diagonal) computed column chunk by column chunk; returns both servers' parts.
    Only C's symmetrisation matters (the servers use H_ii and H_ij + H_ji), and that of A0 (A0 + 2 A1)^T is
    A0 A0^T + A0 A1^T + A1 A0^T: one product instead of a product and a symmetric one."""
    c = np.zeros((spec.n, spec.n) if spec.kind == "gram" else spec.n, dtype=np.uint64)
    vec = _vector_seeds(spec, seeds)
    if vec is not None:
        u0 = prg.ring_stream(vec.s0, vector_label(spec, "u0"), spec.n)
        u1 = prg.ring_stream(vec.s1, vector_label(spec, "u1"), spec.n)
        vector_c1 = np.zeros(spec.d, dtype=np.uint64)
    rows0, rows1 = mask_streams(seeds.a0, spec, 0), mask_streams(seeds.a1, spec, 1)
    for start, stop in chunk_columns(spec.n, spec.d):
        a0, a1 = next_columns(rows0, stop - start), next_columns(rows1, stop - start)
        if vec is not None:
            vector_c1[start:stop] = np.matmul(u0, a1) + np.matmul(u1, a0)
        a1 += a1
        a1 += a0
        c += kernel.matmul_t(a0, a1) if spec.kind == "gram" else kernel.rowdot(a0, a1)
    c1 = c - c0_share(seeds.c0, spec)
    part0, part1 = TripleShare0(spec, seeds.a0, seeds.c0), TripleShare1(spec, seeds.a1, c1)
    if spec.and_words:
        if seeds.bits is None:
            raise ValueError("a triple with bit triples needs their seeds")
        and_c1 = make_and_triple(spec.triple_id, spec.and_words, seeds.bits)
        part0 = replace(part0, seed_and=seeds.bits.s0)
        part1 = replace(part1, seed_and=seeds.bits.s1, and_c1=and_c1)
    if not spec.rule.is_empty():
        if seeds.rule is None:
            raise ValueError("a triple with a rule's material needs its seeds")
        part0 = replace(part0, seed_rule=seeds.rule.s0)
        part1 = replace(part1, seed_rule=seeds.rule.s1,
                        rule_correction=arith.deal(rule_label(spec), spec.rule, seeds.rule))
    if vec is not None:
        vector_c1 -= prg.ring_stream(vec.s0, vector_label(spec, "r0"), spec.d)
        part0 = replace(part0, seed_vector=vec.s0)
        part1 = replace(part1, seed_vector=vec.s1, vector_c1=vector_c1)
    return part0, part1


def _vector_seeds(spec: TripleSpec, seeds: TripleSeeds) -> AndTripleSeeds | None:
    if not spec.vector:
        return None
    if seeds.vector is None:
        raise ValueError("a triple with a weighted-sum correlation needs its seeds")
    return seeds.vector


class TripleLedger:
    """Remembers triple ids already issued or consumed, and refuses them a second time."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def claim(self, triple_id: str) -> None:
        if triple_id in self._seen:
            raise TripleReuseError(f"triple {triple_id!r} was already used; a triple is never reused")
        self._seen.add(triple_id)

    def __contains__(self, triple_id: str) -> bool:
        return triple_id in self._seen
