"""Dealer-assisted arithmetic on additive shares in Z_2^64, next to ``compare``'s bitsliced comparisons.

Correlated randomness, all seed-compressed (S0 expands everything from its seed; S1 from its seed plus
one explicit correction word per item):
  AND bit triples  a, b, c = a & b        (``compare``; correction c1)
  daBits           r in {0,1} held both as XOR shares r0 ^ r1 and ring shares ra0 + ra1 (correction ra1)
  product triples  a, b, c = a * b        (ring; correction c1)
Circuits take these from a ``Dealt`` source in a fixed order, the same at both parties, so the sizes of a
circuit's material follow from a dry run (``budget_of``).

Building blocks (generators in ``compare``'s style: ``yield`` what is sent, receive the peer's array):
  to_ring(plane, m)       XOR-shared bits -> ring shares: open c = b ^ r, then [b] = c + [r] - 2 c [r]
  mul(x, y)               Beaver: open e = x - a, f = y - b; [xy] = [c] + e [b] + f [a] + e f (party 0)
  less_than(x, y, bits)   [x < y] as XOR bits, for x - y known to lie in [-2^(bits-1), 2^(bits-1))
  open_ring(x)            reveal ring shares to both parties
Every opened value is the sum of a secret and a fresh uniform mask, so it is uniform on its own.
Nothing here samples randomness or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..primitives import prg
from . import compare
from .compare import AndTripleSeeds, Party

_U = np.uint64


@dataclass(frozen=True)
class Budget:
    """Material a circuit consumes: AND words, daBit plane words (64 daBits each) and ring product triples."""

    and_words: int = 0
    dabit_words: int = 0
    mults: int = 0

    @property
    def dabits(self) -> int:
        return self.dabit_words * compare.WORD

    def __add__(self, other: "Budget") -> "Budget":
        return Budget(self.and_words + other.and_words, self.dabit_words + other.dabit_words,
                      self.mults + other.mults)

    def is_empty(self) -> bool:
        return not (self.and_words or self.dabit_words or self.mults)

    def bytes_to_s1(self) -> int:
        """The dealer's explicit words for S1 (S0 gets only a seed)."""
        return 8 * (self.and_words + self.dabits + self.mults)


def _label(corr_id: str, what: str) -> str:
    return prg.label("correlated", corr_id, what)


@dataclass(frozen=True)
class Correction:
    """S1's explicit words: AND c1, daBit ring halves ra1, product c1."""

    and_c1: np.ndarray
    dabit_ra1: np.ndarray
    mult_c1: np.ndarray

    def matches(self, budget: Budget) -> bool:
        return (self.and_c1.shape == (budget.and_words,) and self.dabit_ra1.shape == (budget.dabits,)
                and self.mult_c1.shape == (budget.mults,)
                and all(a.dtype == _U for a in (self.and_c1, self.dabit_ra1, self.mult_c1)))


_PIECE = 1 << 20
"""Words the dealer expands at a time, so its memory stays bounded whatever the budget."""


def _stream(seed: bytes, corr_id: str, what: str, count: int, offset: int = 0) -> np.ndarray:
    return prg.ring_stream(seed, _label(corr_id, what), count, offset)


def _and_stream(seed: bytes, corr_id: str, what: str, count: int, offset: int = 0) -> np.ndarray:
    return prg.ring_stream(seed, compare._and_label(_label(corr_id, "and"), what), count, offset)


def deal(corr_id: str, budget: Budget, seeds: AndTripleSeeds) -> Correction:
    """Dealer: S1's corrections for the material expanded from ``seeds`` (S0 needs only seeds.s0), made
    piece by piece: c1 = (a0^a1)&(b0^b1)^c0 for AND words, ra1 = r - ra0 for daBits (r = r0 ^ r1 bitwise),
    c1 = (a0+a1)(b0+b1) - c0 for products."""
    s0, s1 = seeds.s0, seeds.s1
    and_c1 = np.empty(budget.and_words, dtype=_U)
    for a in range(0, budget.and_words, _PIECE):
        k = min(_PIECE, budget.and_words - a)
        a0, b0, c0 = (_and_stream(s0, corr_id, w, k, a) for w in ("a0", "b0", "c0"))
        a1, b1 = (_and_stream(s1, corr_id, w, k, a) for w in ("a1", "b1"))
        and_c1[a:a + k] = ((a0 ^ a1) & (b0 ^ b1)) ^ c0
    ra1 = np.empty(budget.dabits, dtype=_U)
    step = _PIECE // compare.WORD
    for w in range(0, budget.dabit_words, step):
        k = min(step, budget.dabit_words - w)
        r = _stream(s0, corr_id, "dabit-x0", k, w) ^ _stream(s1, corr_id, "dabit-x1", k, w)
        bits = np.unpackbits(r.astype("<u8").view(np.uint8), bitorder="little").astype(_U)
        ra1[w * compare.WORD:(w + k) * compare.WORD] = bits - _stream(s0, corr_id, "dabit-a0", k * compare.WORD,
                                                                         w * compare.WORD)
    mult_c1 = np.empty(budget.mults, dtype=_U)
    for a in range(0, budget.mults, _PIECE):
        k = min(_PIECE, budget.mults - a)
        a0, b0, c0 = (_stream(s0, corr_id, w, k, a) for w in ("mul-a0", "mul-b0", "mul-c0"))
        a1, b1 = (_stream(s1, corr_id, w, k, a) for w in ("mul-a1", "mul-b1"))
        mult_c1[a:a + k] = (a0 + a1) * (b0 + b1) - c0
    return Correction(and_c1, ra1, mult_c1)


class Dealt:
    """One party's material, handed out in order and expanded from the seed only when taken (so a large
    circuit run in pieces never holds all of it). A ``Material``."""

    def __init__(self, party: int, corr_id: str, budget: Budget, seed: bytes,
                 correction: Correction | None = None) -> None:
        if party == 1 and (correction is None or not correction.matches(budget)):
            raise ValueError(f"S1's correlated randomness needs corrections sized for {budget}")
        self.party, self.corr_id, self.seed = party, corr_id, seed
        self.correction = correction
        self.budget = budget
        self.used = Budget()

    @classmethod
    def empty(cls, party: int) -> "Dealt":
        """The material of a circuit that needs none (e.g. the median of two values is their mean)."""
        nothing = np.zeros(0, dtype=_U)
        return cls(party, "empty", Budget(), bytes(16), Correction(nothing, nothing, nothing))

    def _need(self, what: str, used: int, k: int, have: int) -> None:
        if used + k > have:
            raise ValueError(f"{what} exhausted: need {used + k}, have {have}")

    def take(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(np.prod(shape))
        at = self.used.and_words
        self._need("bit triples", at, k, self.budget.and_words)
        a, b, c = self._triple(_and_stream, "", k, at, self.correction.and_c1 if self.correction else None)
        self.used = self.used + Budget(and_words=k)
        return a.reshape(shape), b.reshape(shape), c.reshape(shape)

    def take_dabits(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(XOR share as a plane of words_for(m) words, ring shares (m,)) of m fresh daBits: bit p of the
        plane words taken is the daBit whose ring share is entry p (the rest of the last word goes unused)."""
        w = compare.words_for(m)
        at = self.used.dabit_words
        self._need("daBits", at, w, self.budget.dabit_words)
        plane = _stream(self.seed, self.corr_id, f"dabit-x{self.party}", w, at)
        start = at * compare.WORD
        ring_half = (_stream(self.seed, self.corr_id, "dabit-a0", m, start) if self.party == 0
                     else self.correction.dabit_ra1[start:start + m])
        self.used = self.used + Budget(dabit_words=w)
        return plane, ring_half

    def take_mults(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        at = self.used.mults
        self._need("product triples", at, m, self.budget.mults)
        out = self._triple(_stream, "mul-", m, at, self.correction.mult_c1 if self.correction else None)
        self.used = self.used + Budget(mults=m)
        return out

    def _triple(self, stream, prefix: str, k: int, at: int,
                c1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items [at, at + k) of a triple's halves: a, b from this party's seed; c from S0's seed, or S1's
        explicit correction words."""
        a, b = (stream(self.seed, self.corr_id, f"{prefix}{w}{self.party}", k, at) for w in ("a", "b"))
        c = stream(self.seed, self.corr_id, f"{prefix}c0", k, at) if self.party == 0 else c1[at:at + k]
        return a, b, c


class Counter:
    """Stands in for ``Dealt`` in a dry run, to size a circuit's material (its gates depend on sizes only)."""

    def __init__(self) -> None:
        self.used = Budget()

    def take(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.used = self.used + Budget(and_words=int(np.prod(shape)))
        z = np.zeros(shape, dtype=_U)
        return z, z, z

    def take_dabits(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        w = compare.words_for(m)
        self.used = self.used + Budget(dabit_words=w)
        return np.zeros(w, dtype=_U), np.zeros(m, dtype=_U)

    def take_mults(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.used = self.used + Budget(mults=m)
        z = np.zeros(m, dtype=_U)
        return z, z, z


class Material(compare.Source, Protocol):
    """Bit triples, daBits and product triples handed out in order: a party's ``Dealt`` material, or the
    ``Counter`` of a dry run that sizes a circuit (``budget_of``)."""

    def take_dabits(self, m: int) -> tuple[np.ndarray, np.ndarray]: ...

    def take_mults(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def budget_of(circuit) -> tuple[Budget, int]:
    """(material, rounds) of circuit(party, src), from a dry run of party 0 with zero openings."""
    src = Counter()
    rounds = compare.dry_rounds(circuit, src)
    return src.used, rounds


def count_words(circuit) -> tuple[int, int]:
    """(AND words, rounds) of a circuit that takes bit triples only (``budget_of``'s count of them)."""
    budget, rounds = budget_of(circuit)
    return budget.and_words, rounds


# Gates.

def _check_peer(peer: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(peer, np.ndarray) or peer.dtype != _U or peer.shape != shape:
        got = f"{peer.dtype} {peer.shape}" if isinstance(peer, np.ndarray) else type(peer).__name__
        raise ValueError(f"{what} opening must be uint64 of shape {shape}, got {got}")


def to_ring(party: int, plane: np.ndarray, m: int, src: Material) -> Party:
    """Ring shares (m,) of the m XOR-shared bits of ``plane``: one round, words_for(m) words each way."""
    r, ra = src.take_dabits(m)
    c = np.asarray(plane, dtype=_U) ^ r
    peer = yield c
    _check_peer(peer, c.shape, "daBit")
    bits = compare.plane_bits(c ^ peer, m).astype(_U)
    out = ra - (bits * ra) * _U(2)
    if party == 0:
        out = out + bits
    return out


def mul(party: int, x: np.ndarray, y: np.ndarray, src: Material) -> Party:
    """Ring shares of the elementwise product x * y (mod 2^64): one round, 2m words each way."""
    x, y = np.asarray(x, dtype=_U).ravel(), np.asarray(y, dtype=_U).ravel()
    a, b, c = src.take_mults(x.size)
    mine = np.stack([x - a, y - b])
    peer = yield mine
    _check_peer(peer, mine.shape, "product")
    e, f = mine[0] + peer[0], mine[1] + peer[1]
    out = c + e * b + f * a
    if party == 0:
        out = out + e * f
    return out


def less_than(party: int, x: np.ndarray, y: np.ndarray, bits: int, src: Material) -> Party:
    """XOR-shared plane of [x < y], for shared x, y with x - y in [-2^(bits-1), 2^(bits-1)), 2 <= bits <= 64.

    2^bits divides 2^64, so z = (x - y) mod 2^bits has shares z_s mod 2^bits; the sign is bit bits-1 of z:
    z0 ^ z1 at that bit, xor the carry out of the low bits-1 bits. About 3 (bits - 1) AND gates per value."""
    if not 2 <= bits <= 64:
        raise ValueError(f"comparison width must be in [2, 64], got {bits}")
    z = np.asarray(x, dtype=_U).ravel() - np.asarray(y, dtype=_U).ravel()
    low = z & _U((1 << (bits - 1)) - 1)
    carry = yield from compare.carry_out(party, low, bits - 1, src)
    top = compare.to_planes((z >> _U(bits - 1)) & _U(1), 1)[0]
    return carry ^ top


def open_ring(party: int, x: np.ndarray) -> Party:
    """Both parties learn x = x0 + x1."""
    mine = np.asarray(x, dtype=_U)
    peer = yield mine
    _check_peer(peer, mine.shape, "ring")
    return mine + peer


def signed_width(bound: int) -> int:
    """Bits that hold every difference of two values in [0, bound]: [-bound, bound] in two's complement."""
    return max(2, int(bound).bit_length() + 1)


def sources(corr_id: str, budget: Budget, seeds: AndTripleSeeds) -> tuple[Dealt, Dealt]:
    """Both parties' material for one circuit, as the dealer would hand it out (in-process runs and tests)."""
    correction = deal(corr_id, budget, seeds)
    return Dealt(0, corr_id, budget, seeds.s0), Dealt(1, corr_id, budget, seeds.s1, correction)


def run_both(circuit, corr_id: str, seeds: AndTripleSeeds) -> tuple[np.ndarray, np.ndarray]:
    """Size circuit(party, src) by a dry run, deal its material and run both parties in this process."""
    budget, _ = budget_of(circuit)
    src0, src1 = sources(corr_id, budget, seeds)
    out = compare.run_pair(circuit(0, src0), circuit(1, src1))
    if src0.used != budget or src1.used != budget:
        raise AssertionError(f"the circuit used {src0.used} / {src1.used}, its dry run {budget}")
    return out
