"""Dealer-assisted two-party comparisons on additive shares in Z_2^64, bitsliced.

A vector of m ring values is held as x = x0 + x1 (mod 2^64). Comparisons run on XOR-shared *bit
planes*: plane j of m values is ceil(m/64) uint64 words whose bit p of word w is bit j of value
64w + p, so one NumPy operation on a plane is one gate for 64 values, and one batched opening
serves a whole layer of gates for every value at once.

AND gates use Beaver bit triples (a, b, c = a & b) made by the dealer (``make_and_triple``):
each party opens e_s = x_s ^ a_s and f_s = y_s ^ b_s in one message per layer, then
z_s = c_s ^ (e & b_s) ^ (f & a_s) ^ [s = 0](e & f). Openings are uniformly random.

Every two-party routine is a generator run by one party: it ``yield``s the array it sends to the
other party and receives the other's array back (``gen.send``); its return value is that party's
share of the output. ``run_pair`` drives both parties in one process; a network server drives its own
generator with real messages. Nothing here samples randomness or does I/O.

Building blocks, each with a plaintext twin (``plain_*``) the tests compare against:
  carry_out(a, b, k)    = [a + b >= 2^k] for k-bit a (party 0's private value) and b (party 1's)
  msb(x)                = bit 63 of x
  less_than_public(x, c)= [x < c] as unsigned 64-bit integers, for public c (per element)
  less_than(x, y)       = [x < y] as signed integers, for x, y known to lie in [-2^62, 2^62)
  and_reduce(rows)      = AND of a (g, W) stack of planes along its first axis
Costs per value: carry_out on k bits uses about 3k AND gates in ceil(log2 k) + 1 rounds;
less_than_public about 6*64 gates in 7 rounds; msb and less_than about 3*63 gates in 7 rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Protocol

import numpy as np

from ..primitives import prg

Party = Generator[np.ndarray, np.ndarray, np.ndarray]
WORD = 64
_U = np.uint64
_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


# Bit planes.

def words_for(m: int) -> int:
    """Words per plane for m values."""
    return (int(m) + WORD - 1) // WORD


def to_planes(values: np.ndarray, bits: int = WORD) -> np.ndarray:
    """(m,) uint64 -> (bits, ceil(m/64)) uint64 planes of bits 0..bits-1 (padding values are 0)."""
    v = np.ascontiguousarray(values, dtype=_U).ravel()
    w = words_for(v.size)
    padded = np.zeros(w * WORD, dtype=_U)
    padded[: v.size] = v
    b = np.unpackbits(padded.view(np.uint8).reshape(w * WORD, 8), axis=1, bitorder="little")
    planes = np.packbits(np.ascontiguousarray(b[:, :bits].T), axis=1, bitorder="little")
    return np.ascontiguousarray(planes).view("<u8").astype(_U, copy=False).reshape(bits, w)


def plane_bits(plane: np.ndarray, m: int) -> np.ndarray:
    """The first m bits of a plane (W,) as a bool array."""
    p = np.ascontiguousarray(plane, dtype="<u8")
    return np.unpackbits(p.view(np.uint8), bitorder="little")[:m].astype(bool)


def bits_plane(bits: np.ndarray) -> np.ndarray:
    """A bool array (m,) -> plane (ceil(m/64),)."""
    b = np.asarray(bits, dtype=np.uint8).ravel()
    w = words_for(b.size)
    padded = np.zeros(w * WORD, dtype=np.uint8)
    padded[: b.size] = b
    return np.packbits(padded, bitorder="little").view("<u8").astype(_U, copy=False)


def _pad(values: np.ndarray) -> np.ndarray:
    """Values padded with zeros to a multiple of 64, so that planes of concatenated blocks stay aligned."""
    out = np.zeros(words_for(values.size) * WORD, dtype=_U)
    out[: values.size] = values
    return out


# Beaver bit triples.

@dataclass(frozen=True)
class AndTripleSeeds:
    s0: bytes
    s1: bytes

    @classmethod
    def fresh(cls) -> "AndTripleSeeds":
        return cls(prg.fresh_seed(), prg.fresh_seed())


def _and_label(triple_id: str, what: str) -> str:
    return prg.label("and-triple", triple_id, what)


def make_and_triple(triple_id: str, words: int, seeds: AndTripleSeeds) -> np.ndarray:
    """Dealer: ``words`` bit-triple words; returns S1's explicit c1 = ((a0^a1) & (b0^b1)) ^ c0.
    S0 needs only seed s0 (a0, b0, c0), S1 seed s1 (a1, b1) and c1."""
    a0, b0, c0 = (prg.ring_stream(seeds.s0, _and_label(triple_id, k), words) for k in ("a0", "b0", "c0"))
    a1, b1 = (prg.ring_stream(seeds.s1, _and_label(triple_id, k), words) for k in ("a1", "b1"))
    return ((a0 ^ a1) & (b0 ^ b1)) ^ c0


@dataclass
class AndSource:
    """One party's share of a sequence of bit triples, handed out in order (the same order at both parties)."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    used: int = 0

    @classmethod
    def for_party(cls, party: int, triple_id: str, words: int, seed: bytes, c1: np.ndarray | None = None) -> "AndSource":
        names = ("a0", "b0", "c0") if party == 0 else ("a1", "b1")
        streams = [prg.ring_stream(seed, _and_label(triple_id, k), words) for k in names]
        if party == 1:
            if c1 is None or c1.shape != (words,):
                raise ValueError(f"S1's bit triples need c1 of shape ({words},)")
            streams.append(np.asarray(c1, dtype=_U))
        return cls(*streams)

    @property
    def words(self) -> int:
        return int(self.a.size)

    def take(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(np.prod(shape))
        if self.used + k > self.a.size:
            raise ValueError(f"bit triples exhausted: need {self.used + k} words, have {self.a.size}")
        sl = slice(self.used, self.used + k)
        self.used += k
        return self.a[sl].reshape(shape), self.b[sl].reshape(shape), self.c[sl].reshape(shape)


class Source(Protocol):
    """Where a circuit takes its bit triples, in the same order at both servers: a party's ``AndSource``,
    or material that also holds daBits and product triples (``arith.Material``)."""

    def take(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# Gates.

def and_gate(party: int, x: np.ndarray, y: np.ndarray, src: Source) -> Party:
    """[x & y] from [x], [y] with one bit triple per word; one round (e_s, f_s both ways)."""
    a, b, c = src.take(x.shape)
    e, f = x ^ a, y ^ b
    peer = yield np.stack([e, f])
    if peer.shape != (2, *x.shape) or peer.dtype != _U:
        raise ValueError(f"AND opening must be uint64 of shape {(2, *x.shape)}, got {peer.dtype} {peer.shape}")
    e, f = e ^ peer[0], f ^ peer[1]
    z = c ^ (e & b) ^ (f & a)
    if party == 0:
        z ^= e & f
    return z


def carry_out(party: int, own: np.ndarray, bits: int, src: Source) -> Party:
    """[a + b >= 2^bits] for party 0's values a and party 1's values b (low ``bits`` bits of each).

    Generate g_i = a_i & b_i (one layer), propagate p_i = a_i ^ b_i (free: the shares are a_i and b_i),
    then a binary tree of (G, P) o (G', P') = (G ^ (P & G'), P & P') from the low bits up; G and P & G'
    never both hold, so OR is XOR.
    """
    planes = to_planes(own, bits)
    zero = np.zeros_like(planes)
    g = yield from and_gate(party, planes if party == 0 else zero, zero if party == 0 else planes, src)
    big_g, big_p = g, planes
    while big_g.shape[0] > 1:
        rows = big_g.shape[0]
        h = rows // 2
        lo_g, hi_g, lo_p, hi_p = big_g[0:2 * h:2], big_g[1:2 * h:2], big_p[0:2 * h:2], big_p[1:2 * h:2]
        if rows == 2:
            t = yield from and_gate(party, hi_p, lo_g, src)
            new_g, new_p = hi_g ^ t, hi_p
        else:
            t = yield from and_gate(party, np.concatenate([hi_p, hi_p]), np.concatenate([lo_g, lo_p]), src)
            new_g, new_p = hi_g ^ t[:h], t[h:]
        if rows % 2:
            new_g = np.concatenate([new_g, big_g[rows - 1:]])
            new_p = np.concatenate([new_p, big_p[rows - 1:]])
        big_g, big_p = new_g, new_p
    return big_g[0]


def msb(party: int, share: np.ndarray, src: Source) -> Party:
    """[bit 63 of x] = x0_63 ^ x1_63 ^ carry out of the low 63 bits of x0 + x1."""
    x = np.asarray(share, dtype=_U).ravel()
    carry = yield from carry_out(party, x & np.uint64((1 << 63) - 1), 63, src)
    return carry ^ to_planes(x >> np.uint64(63), 1)[0]


def less_than(party: int, x_share: np.ndarray, y_share: np.ndarray, src: Source) -> Party:
    """[x < y] for shared x, y whose signed values lie in [-2^62, 2^62): the sign of x - y."""
    return (yield from msb(party, np.asarray(x_share, dtype=_U) - np.asarray(y_share, dtype=_U), src))


def less_than_public(party: int, share: np.ndarray, c: np.ndarray | int, src: Source) -> Party:
    """[x < c] as unsigned integers, x = x0 + x1 mod 2^64 arbitrary, c public (scalar or per element).

    With c' = 2^64 - c (c >= 1): x >= c iff x + c' >= 2^64, and
    [x >= c] = k0 + carry(x0 + c' mod 2^64, x1) - carry(x0, x1) where k0 = [x0 + c' >= 2^64] is local
    to party 0; the result is a bit, so it equals k0 ^ carry ^ carry. Both carries run in one circuit.
    Elements with c = 0 get [x < 0] = 0.
    """
    x = np.asarray(share, dtype=_U).ravel()
    m = x.size
    cc = np.broadcast_to(np.asarray(c, dtype=_U), (m,))
    zero_c = cc == 0
    c_neg = (np.uint64(0) - cc) if m else cc
    if party == 0:
        shifted = x + c_neg
        own = np.concatenate([_pad(shifted), _pad(x)])
        k0 = bits_plane((shifted < x) & ~zero_c)
    else:
        own = np.concatenate([_pad(x), _pad(x)])
        k0 = None
    carries = yield from carry_out(party, own, WORD, src)
    w = words_for(m)
    valid = bits_plane(~zero_c)
    lt = carries[:w] ^ carries[w:]
    if party == 0:
        lt = lt ^ k0 ^ valid
    return lt & valid


def and_reduce(party: int, rows: np.ndarray, src: Source) -> Party:
    """AND of a (g, W) stack of planes along its first axis, in ceil(log2 g) rounds."""
    cur = np.asarray(rows, dtype=_U)
    while cur.shape[0] > 1:
        h = cur.shape[0] // 2
        t = yield from and_gate(party, cur[0:h], cur[h:2 * h], src)
        cur = np.concatenate([t, cur[2 * h:]]) if cur.shape[0] % 2 else t
    return cur[0]


def open_plane(party: int, plane: np.ndarray, m: int) -> Party:
    """Reveal a shared plane to both parties: the first m bits, as bools."""
    peer = yield np.asarray(plane, dtype=_U)
    if peer.shape != plane.shape or peer.dtype != _U:
        raise ValueError(f"opened plane must be uint64 of shape {plane.shape}")
    return plane_bits(plane ^ peer, m)


# Running both parties in one process, and counting.

def run_pair(gen0: Party, gen1: Party, on_round: Callable[[np.ndarray, np.ndarray], None] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Drive both parties' generators in lockstep, exchanging each round's arrays; return both outputs."""
    try:
        out0 = next(gen0)
    except StopIteration as stop:
        return stop.value, _finish(gen1)
    out1 = next(gen1)
    while True:
        if on_round is not None:
            on_round(out0, out1)
        done0 = done1 = False
        try:
            nxt0 = gen0.send(out1)
        except StopIteration as stop:
            done0, res0 = True, stop.value
        try:
            nxt1 = gen1.send(out0)
        except StopIteration as stop:
            done1, res1 = True, stop.value
        if done0 != done1:
            raise RuntimeError("the two parties' circuits have different numbers of rounds")
        if done0:
            return res0, res1
        out0, out1 = nxt0, nxt1


def _finish(gen: Party) -> np.ndarray:
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the two parties' circuits have different numbers of rounds")


def dry_rounds(circuit: Callable[[int, object], Party], src: object) -> int:
    """Rounds of circuit(0, src), run with zero openings; ``src`` counts the material it takes."""
    gen = circuit(0, src)
    rounds = 0
    try:
        out = next(gen)
        while True:
            rounds += 1
            out = gen.send(np.zeros_like(out))
    except StopIteration:
        pass
    return rounds


# Plaintext twins.

def plain_carry_out(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    mask = _ONES if bits == WORD else np.uint64((1 << bits) - 1)
    a, b = np.asarray(a, dtype=_U) & mask, np.asarray(b, dtype=_U) & mask
    if bits == WORD:
        return (a + b) < a
    return ((a + b) >> np.uint64(bits)) & np.uint64(1) == 1


def plain_msb(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=_U) >> np.uint64(63)) == 1


def plain_less_than_public(x: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    return np.asarray(x, dtype=_U) < np.asarray(c, dtype=_U)


def plain_less_than(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=_U).view(np.int64) < np.asarray(y, dtype=_U).view(np.int64)
