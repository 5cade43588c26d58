"""Clip factors of norm-clip and cclip on secret-shared squared norms: a deterministic 2PC reciprocal square root.

Input: this server's ring share of the squared norms N_i = ||x_i - v||^2 (n,), uint64 at scale 2^(2F), each
known to lie in [0, nmax] (nmax = (2 * 2^27)^2 = 2^56 by default: the validity check's norm bound).
Output: this server's ring shares of the weights w_i = min(1, tau / ||x_i - v||) / n at scale 2^W
(W = ``ring.WEIGHT_FRAC_BITS`` = 32, the fixed point of ``ring.encode_weights``); for cclip one more entry,
the center weight 1 - sum_i w_i at scale 2^W. tau is public (real units), or None for the median of the
norms computed on shares (``np.median``: the mean of the two middle norms for even n).

Everything is an exact function of the integers N_i: truncations are exact (no probabilistic truncation),
so ``plain_clip_weights`` reproduces the shared result bit for bit. The algorithm (see docs/clip2pc.md):

 1. One comparison layer: B_k = [N >= 2^k] for k = 0..K (2^K <= nmax), plus [N > floor(T^2)] for a public
    T = tau 2^F, or all pairwise [N_b < N_a] for the median (ranks with ties broken by index). The one-hot
    leading-bit position b of N (b = -1 for N = 0) makes every per-lane constant c_b a *linear* function of
    the ring bits: sum_b [lead = b] c_b = c_{-1} + sum_k B_k (c_k - c_{k-1}).
 2. Normalise: m = N / 4^floor(b/2) in [1, 4) (N = 0 is treated as N = 1), M = N * 4^(E - floor(b/2)) exact,
    then m at scale 2^30 by an exact truncation.
 3. rsqrt(m): a quadratic guess a_p - m (b_p - c_p m) whose coefficients depend on the parity p of b
    (relative error <= 0.0032; two products), then ``ITERATIONS`` = 2 Newton steps y <- (3 y - (y^2)(m y)) / 2,
    two product rounds each (y^2 and m y side by side, then their product), every product truncated.
 4. c = T 2^-floor(b/2) rsqrt(m). Public T: G = (T/n) 2^(31 + L - floor(b/2)) (L = floor(log2 n)) is again a
    per-lane constant, times s = [N > T^2] (one product, beside step 2); w = trunc(G y) + (1 - s) round(2^W / n).
    Median: S_i = sqrt(N_i) 2^30 = trunc(m y) 2^floor(b/2); T 2^31 = sum_i sel_i S_i (x2 for odd n) with
    sel_i = [rank_i in the middle]; s_i = [T < S_i] (computed values: equal norms give equal S, so s = 0);
    w = trunc(trunc(T 2^(31 + E - floor(b/2))) * s trunc(y 2^(1+L) / n)) + (1 - s) round(2^W / n).

Error (docs/clip2pc.md): |w_i - w_i*| <= rho w_i* + alpha 2^-32 against the exact w_i* = min(1, tau/||x_i||)/n,
with (rho, alpha) = (2^-28, 2) for a public tau and (2^-25, 5) for the median; the center weight's error is
at most the sum of the weights' errors. rsqrt itself is within 2^-28 relative (measured 2^-28.75).

Exact truncation of x = x0 + x1 mod 2^64 with x in [0, 2^63):
    floor(x / 2^k) = (x0 >> k) + (x1 >> k) + [x0 mod 2^k + x1 mod 2^k >= 2^k] - 2^(64-k) [x0 + x1 >= 2^64]
where the first bit is ``compare.carry_out`` on k bits and the wrap bit, since bit 63 of x is 0, is the OR of
the two shares' bit 63 (one AND gate); both become ring bits with daBits (``arith.to_ring``).

Every opened array is a Beaver or daBit opening: a secret plus a fresh uniform mask. Nothing here samples
randomness or does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real

import numpy as np

from ..gates import arith, compare
from ..gates.compare import Party
from ..primitives import ring

_U = np.uint64
_MOD = 1 << 64
_LIMIT = 1 << 63

RULES = ("norm-clip", "cclip")
WEIGHT_BITS = ring.WEIGHT_FRAC_BITS
DEFAULT_NMAX = int(2 * ring.SCALED_NORM_BOUND) ** 2      # 2^56
MAX_NMAX = 1 << 58
FRAC = 30                  # fixed-point bits of the mantissa iteration
ITERATIONS = 2             # Newton steps; the guess's relative error 0.0032 falls to 1.5e-5, then 3.5e-10
# The guess: the relative-minimax quadratic a - b m + c m^2 for rsqrt on [1, 2] (error 0.0032) for an even
# leading bit (m in [1, 2)); for an odd one (m in [2, 4)) the same in m/2, divided by sqrt 2. Scale 2^30.
GUESS_EVEN = (1696124562, 784383784, 158578338)   # round((1.57963909, 0.73051433, 0.14768759) 2^30)
GUESS_ODD = (1199341180, 277321546, 28032954)     # round((a / sqrt 2, b / (2 sqrt 2), c / (4 sqrt 2)) 2^30)
Q_PUBLIC = 31              # (T/n) 2^-floor(b/2) at scale 2^(31 + L), L = floor(log2 n), on the public path
KN_BITS = 32               # kn = round(2^(32 + L) / n); y 2^(L+1) / n = trunc(y kn, 31) on the median path


def _floor_half(b: int) -> int:
    return b // 2 if b >= 0 else 0


def _round(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


@dataclass(frozen=True)
class Plan:
    """Everything public about one clip-weights circuit: sizes, widths and the per-lane constant tables.

    Tables are indexed by b + 1 for the leading-bit position b in -1..K (b = -1 means N = 0)."""

    n: int
    rule: str
    nmax: int
    frac_bits: int
    top: int                      # K: 2^K <= nmax < 2^(K+1)
    half: int                     # E = K // 2
    width: int                    # comparison width for differences of values in [0, nmax]
    median: bool
    floor_t2: int | None          # floor(T^2) for a public T = tau 2^F
    unclipped: bool               # public T with T^2 >= nmax: every factor is 1, nothing to compute
    c1: int                       # round(2^W / n): the weight of an unclipped update
    log_n: int                    # L = floor(log2 n): keeps 1/n-scaled values near 2^32 / 2^30
    kn: int                       # round(2^(32 + L) / n)
    p4: tuple[int, ...]           # 4^(E - floor(b/2)): M = N p4 in [4^E, 4^(E+1))
    zero_fix: tuple[int, ...]     # 4^E for b = -1 (N = 0 is treated as N = 1), else 0
    guess: tuple[tuple[int, ...], ...]   # (a, b, c) of the initial guess a - m (b - c m), each at scale 2^30
    down: tuple[int, ...]         # 2^(E - floor(b/2))
    up: tuple[int, ...]           # 2^floor(b/2) (0 for N = 0, so that its square root is 0)
    lane: tuple[int, ...]         # public tau: round((T/n) 2^(31 + L - floor(b/2))), 0 where N > T^2 is impossible

    @property
    def root_width(self) -> int:
        """Width for T 2^31 - 2 S: both lie below 2^(32 + E) (1 + 2^-28), S = sqrt(N) 2^30 < 2^(31 + E)."""
        return self.half + 34

    @property
    def outputs(self) -> int:
        return self.n + (self.rule == "cclip")


def check_tau(tau) -> None:
    if tau is None:
        return
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, (Real, np.floating, np.integer)):
        raise ValueError(f"tau must be a positive finite number or None (the median norm), got {tau!r}")
    if not (math.isfinite(float(tau)) and float(tau) > 0):
        raise ValueError(f"tau must be a positive finite number or None (the median norm), got {tau!r}")


def plan(n: int, tau: float | None, rule: str, frac_bits: int = ring.DEFAULT_FRAC_BITS,
         nmax: int = DEFAULT_NMAX) -> Plan:
    """Validate the public parameters and build the circuit's constants (also used by the twin)."""
    if rule not in RULES:
        raise ValueError(f"clip weights on shares support the rules {RULES}, got {rule!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"need at least one norm, got n = {n!r}")
    if isinstance(nmax, bool) or not isinstance(nmax, (int, np.integer)) or not 1 <= nmax <= MAX_NMAX:
        raise ValueError(f"nmax must be an integer in [1, 2^58], got {nmax!r}")
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) or not 0 <= frac_bits <= 40:
        raise ValueError(f"frac_bits must be an integer in [0, 40], got {frac_bits!r}")
    check_tau(tau)
    n, nmax, frac_bits = int(n), int(nmax), int(frac_bits)
    top = nmax.bit_length() - 1
    half = top // 2
    lanes = range(-1, top + 1)
    c1 = _round(Fraction(1 << WEIGHT_BITS, n))
    log_n = n.bit_length() - 1
    kn = _round(Fraction(1 << (KN_BITS + log_n), n))
    floor_t2, unclipped, lane = None, False, (0,) * (top + 2)
    if tau is not None:
        t = Fraction(float(tau)) * (1 << frac_bits)
        floor_t2 = math.floor(t * t)
        unclipped = floor_t2 >= nmax
        if not unclipped:
            # A lane b can have N > T^2 only if its largest value 2^(b+1) - 1 exceeds floor(T^2); then
            # T < 2^((b+1)/2) and the constant stays below 2^(32 + L)/n + 1 <= 2^32 + 1.
            lane = tuple(_round(t / n * Fraction(2) ** (Q_PUBLIC + log_n - _floor_half(b)))
                         if b >= 0 and (1 << (b + 1)) - 1 > floor_t2 else 0 for b in lanes)
    return Plan(
        n=n, rule=rule, nmax=nmax, frac_bits=frac_bits, top=top, half=half,
        width=arith.signed_width(nmax), median=tau is None, floor_t2=floor_t2, unclipped=unclipped,
        c1=c1, log_n=log_n, kn=kn,
        p4=tuple(4 ** (half - _floor_half(b)) for b in lanes),
        zero_fix=tuple(4 ** half if b < 0 else 0 for b in lanes),
        guess=tuple(tuple(GUESS_ODD[j] if b >= 0 and b % 2 else GUESS_EVEN[j] for b in lanes) for j in range(3)),
        down=tuple(2 ** (half - _floor_half(b)) for b in lanes),
        up=tuple(2 ** _floor_half(b) if b >= 0 else 0 for b in lanes),
        lane=lane,
    )


def _median_ranks(n: int) -> tuple[int, int, int]:
    """(lo, hi, factor): the middle ranks are lo..hi-1; T 2^31 = factor * sum of their S = sqrt(N) 2^30."""
    if n % 2:
        return (n - 1) // 2, (n + 1) // 2, 2
    return n // 2 - 1, n // 2 + 1, 1


# Two-party building blocks (generators in ``compare``'s style).

def parallel(*gens: Party) -> Party:
    """Run circuits side by side, one message per round carrying every unfinished circuit's message;
    returns the list of their results. Material is taken in a fixed order, the same at both parties."""
    results: list = [None] * len(gens)
    outs: dict[int, np.ndarray] = {}
    for i, g in enumerate(gens):
        try:
            outs[i] = np.asarray(next(g))
        except StopIteration as stop:
            results[i] = stop.value
    while outs:
        order = sorted(outs)
        mine = np.concatenate([outs[i].ravel() for i in order]) if order else np.zeros(0, _U)
        peer = yield mine
        if not isinstance(peer, np.ndarray) or peer.dtype != _U or peer.shape != mine.shape:
            raise ValueError(f"combined opening must be uint64 of shape {mine.shape}")
        nxt: dict[int, np.ndarray] = {}
        at = 0
        for i in order:
            k = outs[i].size
            piece = peer[at: at + k].reshape(outs[i].shape)
            at += k
            try:
                nxt[i] = np.asarray(gens[i].send(piece))
            except StopIteration as stop:
                results[i] = stop.value
        outs = nxt
    return results


def ring_bits(party: int, planes: list[np.ndarray], sizes: list[int], src: arith.Source) -> Party:
    """Ring shares of several XOR-shared planes (plane j holds sizes[j] bits) in one daBit round."""
    packed = np.concatenate([compare.plane_bits(p, m) for p, m in zip(planes, sizes)])   # a local bit permutation
    bits = yield from arith.to_ring(party, compare.bits_plane(packed), packed.size, src)
    return np.split(bits, np.cumsum(sizes)[:-1])


def trunc(party: int, x: np.ndarray, k: int, src: arith.Source) -> Party:
    """Shares of floor(x / 2^k) for shared x known to lie in [0, 2^63), exactly; 0 <= k <= 63.

    carry_out on k bits (about 3k AND gates, ceil(log2 k) + 1 rounds) with the wrap bit's AND gate in its
    first round, then one daBit round: ceil(log2 k) + 2 rounds, 2 daBits per value."""
    x = np.asarray(x, dtype=_U).ravel()
    if k == 0:
        return x
    if not 1 <= k <= 63:
        raise ValueError(f"truncation by {k} bits is out of range")
    m = x.size
    top = compare.to_planes(x >> _U(63), 1)[0]
    zero = np.zeros_like(top)
    carry, both = yield from parallel(
        compare.carry_out(party, x & _U((1 << k) - 1), k, src),
        compare.and_gate(party, top if party == 0 else zero, zero if party == 0 else top, src))
    carry_r, wrap_r = yield from ring_bits(party, [carry, top ^ both], [m, m], src)
    return (x >> _U(k)) + carry_r - wrap_r * _U((1 << (64 - k)) % _MOD)


def mul_trunc(party: int, x: np.ndarray, y: np.ndarray, k: int, src: arith.Source) -> Party:
    """floor(x y / 2^k) for shared x, y whose product lies in [0, 2^63)."""
    p = yield from arith.mul(party, x, y, src)
    return (yield from trunc(party, p, k, src))


def _const(party: int, value: int, m: int) -> np.ndarray:
    """Shares of a public constant: party 0 holds it."""
    return np.full(m, value % _MOD if party == 0 else 0, dtype=_U)


def _lin(party: int, bits: np.ndarray, table: tuple[int, ...]) -> np.ndarray:
    """Shares of table[lead + 1] per lane from the ring bits B_k = [N >= 2^k] (shape (K+1, n))."""
    deltas = np.array([(table[k + 1] - table[k]) % _MOD for k in range(bits.shape[0])], dtype=_U)
    out = (bits * deltas[:, None]).sum(axis=0, dtype=_U)
    return out + _const(party, table[0], bits.shape[1])


def _rsqrt(party: int, m_f: np.ndarray, bits: np.ndarray, p: Plan, src: arith.Source) -> Party:
    """rsqrt(m) at scale 2^30 for m in [1, 4) at scale 2^30: the lane's quadratic guess by Horner,
    a - m (b - c m) (two products and truncations; b - c m > 0), then ``ITERATIONS`` Newton steps."""
    a, b, c = (_lin(party, bits, t) for t in p.guess)
    cm = yield from mul_trunc(party, c, m_f, FRAC, src)
    y = a - (yield from mul_trunc(party, m_f, b - cm, FRAC, src))
    return (yield from _newton(party, m_f, y, src))


def _newton(party: int, m_f: np.ndarray, y: np.ndarray, src: arith.Source) -> Party:
    """y <- (3 y - (y^2)(m y)) / 2: y^2 and m y in one product round and one truncation, then their product."""
    n = m_f.size
    for _ in range(ITERATIONS):
        ab = yield from mul_trunc(party, np.concatenate([y, m_f]), np.concatenate([y, y]), FRAC, src)
        c = yield from arith.mul(party, ab[:n], ab[n:], src)
        y = yield from trunc(party, _U(3 << FRAC) * y - c, FRAC + 1, src)
    return y


def _middle(party: int, ranks: np.ndarray, up: np.ndarray, p: Plan, src: arith.Source) -> Party:
    """sel_i * 2^floor(b_i/2) with sel_i = [rank_i in lo..hi-1]."""
    lo, hi, _ = _median_ranks(p.n)
    x = np.concatenate([ranks - _const(party, hi, p.n), ranks - _const(party, lo, p.n)])
    lt = yield from arith.less_than(party, x, np.zeros_like(x), arith.signed_width(p.n), src)
    (r,) = yield from ring_bits(party, [lt], [2 * p.n], src)
    sel = r[: p.n] - r[p.n:]
    return (yield from arith.mul(party, sel, up, src))


def clip_weights_circuit(party: int, norms_share: np.ndarray, tau: float | None, rule: str,
                         src: arith.Source, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
                         nmax: int = DEFAULT_NMAX) -> Party:
    """One server's circuit: its ring share of N_i = ||x_i - v||^2 (n,) at scale 2^(2 frac_bits), known to lie
    in [0, nmax] -> its ring shares of w_i = min(1, tau / ||x_i - v||) / n at scale 2^32 (n,), and for
    ``rule == "cclip"`` one more entry, the center weight 1 - sum_i w_i at scale 2^32 (shape (n + 1,)).

    tau: public clipping radius in real units (the norms' units, so T = tau 2^frac_bits in scaled units), or
    None for the median norm computed on shares. Raises ValueError for a bad tau, rule, nmax or share."""
    x = np.asarray(norms_share)
    if x.dtype != _U or x.ndim != 1:
        raise ValueError(f"the norms' share must be a uint64 vector, got {x.dtype} {x.shape}")
    p = plan(x.size, tau, rule, frac_bits, nmax)
    n = p.n
    if p.unclipped:
        return _finish(party, p, np.zeros(n, _U), np.zeros(n, _U))

    # 1. One comparison layer: [N < 2^k], then [N <= floor(T^2)] or the pairwise [N_b < N_a].
    lanes = [x - _const(party, 1 << k, n) for k in range(p.top + 1)]
    if p.median:
        a_idx, b_idx = np.triu_indices(n, 1)
        lanes.append(x[b_idx] - x[a_idx])
    else:
        lanes.append(x - _const(party, p.floor_t2 + 1, n))
    flat = np.concatenate(lanes)
    lt = yield from arith.less_than(party, flat, np.zeros_like(flat), p.width, src)
    (r,) = yield from ring_bits(party, [lt], [flat.size], src)
    k1 = (p.top + 1) * n
    bits = _const(party, 1, k1).reshape(p.top + 1, n) - r[:k1].reshape(p.top + 1, n)   # B_k = [N >= 2^k]

    # 2. Normalised mantissa m in [1, 4) at scale 2^30 (and, for a public tau, the selected lane constant).
    if p.median:
        big_m = yield from arith.mul(party, x, _lin(party, bits, p.p4), src)
    else:
        s = _const(party, 1, n) - r[k1:]                                      # s = [N > floor(T^2)]
        prod = yield from arith.mul(party, np.concatenate([x, s]),
                                    np.concatenate([_lin(party, bits, p.p4), _lin(party, bits, p.lane)]), src)
        big_m, g_sel = prod[:n], prod[n:]
    big_m = big_m + _lin(party, bits, p.zero_fix)
    shift = 2 * p.half - FRAC
    m_f = (yield from trunc(party, big_m, shift, src)) if shift >= 0 else big_m * _U(1 << -shift)

    # 3. rsqrt(m).
    if not p.median:
        y = yield from _rsqrt(party, m_f, bits, p, src)
        # 4. w = (T/n) 2^-floor(b/2) rsqrt(m) at scale 2^(31 + L + 30 - (29 + L)) = 2^32.
        out = yield from mul_trunc(party, g_sel, y, Q_PUBLIC + p.log_n + FRAC - WEIGHT_BITS, src)
        return _finish(party, p, out, s)

    # Median: ranks (ties broken by index) -> middle selection, beside Newton.
    pair = r[k1:]
    ranks = np.zeros(n, _U)
    np.add.at(ranks, b_idx, _const(party, 1, pair.size) - pair)      # a < b precedes b unless N_b < N_a
    np.add.at(ranks, a_idx, pair)                                     # b > a precedes a iff N_b < N_a
    up = _lin(party, bits, p.up)
    y, sel_up = yield from parallel(_rsqrt(party, m_f, bits, p, src), _middle(party, ranks, up, p, src))
    root, yn = yield from parallel(mul_trunc(party, m_f, y, FRAC, src),
                                   trunc(party, y * _U(p.kn), KN_BITS - 1, src))
    prod = yield from arith.mul(party, np.concatenate([root, root]), np.concatenate([up, sel_up]), src)
    sq, mid = prod[:n], prod[n:]                                      # S = sqrt(N) 2^30; sel S
    _, _, factor = _median_ranks(n)
    t31 = np.full(n, mid.sum(dtype=_U), dtype=_U) * _U(factor)       # T 2^31
    (s, s_yn), g = yield from parallel(_select_lanes(party, t31, sq, yn, p, src),
                                       mul_trunc(party, t31, _lin(party, bits, p.down), p.half + 1, src))
    # g = T 2^-floor(b/2) at scale 2^30 where s = 1; where s = 0 the product T 2^(31 + E - floor(b/2)) may
    # exceed 2^63 and g is then arbitrary, but it is multiplied by s rsqrt(m) 2^(31 + L) / n = 0 there.
    out = yield from mul_trunc(party, g, s_yn, 2 * FRAC + 1 + p.log_n - WEIGHT_BITS, src)
    return _finish(party, p, out, s)


def _select_lanes(party: int, t31: np.ndarray, sq: np.ndarray, yn: np.ndarray, p: Plan,
                  src: arith.Source) -> Party:
    """(s, s * yn) with s_i = [T < sqrt(N_i)] as ring bits, compared at scale 2^31: [T 2^31 < 2 S_i]."""
    s_plane = yield from arith.less_than(party, t31, sq * _U(2), p.root_width, src)
    (s,) = yield from ring_bits(party, [s_plane], [p.n], src)
    return s, (yield from arith.mul(party, s, yn, src))


def _finish(party: int, p: Plan, out: np.ndarray, s: np.ndarray) -> np.ndarray:
    w = out + _const(party, p.c1, p.n) - s * _U(p.c1)
    if p.rule == "cclip":
        center = _const(party, 1 << WEIGHT_BITS, 1) - w.sum(dtype=_U)
        w = np.concatenate([w, center])
    return w


# The plaintext twin.

def _ptrunc(x: list[int], k: int) -> list[int]:
    for v in x:
        if not 0 <= v < _LIMIT:
            raise AssertionError(f"truncation input {v} outside [0, 2^63)")
    return [v >> k for v in x]


def _pmul(x: list[int], y: list[int]) -> list[int]:
    out = [a * b for a, b in zip(x, y)]
    for v in out:
        if not 0 <= v < _LIMIT:
            raise AssertionError(f"product {v} outside [0, 2^63)")
    return out


def plain_rsqrt(norms: np.ndarray, nmax: int = DEFAULT_NMAX) -> tuple[list[int], list[int], list[int]]:
    """The twin of steps 1-3 for N (object ints in [0, nmax]): (leading bit b, m at 2^30, y = rsqrt(m) at 2^30)."""
    p = plan(len(norms), 1.0, "norm-clip", nmax=nmax)
    vals = [int(v) for v in norms]
    lead = [v.bit_length() - 1 for v in vals]
    tab = lambda table: [table[b + 1] for b in lead]                            # noqa: E731
    big_m = [a + z for a, z in zip(_pmul(vals, tab(p.p4)), tab(p.zero_fix))]
    shift = 2 * p.half - FRAC
    m_f = _ptrunc(big_m, shift) if shift >= 0 else [v << -shift for v in big_m]
    a, b, c = (tab(t) for t in p.guess)
    v = [bb - cm for bb, cm in zip(b, _ptrunc(_pmul(c, m_f), FRAC))]
    y = [aa - w for aa, w in zip(a, _ptrunc(_pmul(m_f, v), FRAC))]
    for _ in range(ITERATIONS):
        a, b = _ptrunc(_pmul(y, y), FRAC), _ptrunc(_pmul(m_f, y), FRAC)
        c = _pmul(a, b)
        y = _ptrunc([(3 << FRAC) * yy - cc for yy, cc in zip(y, c)], FRAC + 1)
    return lead, m_f, y


def plain_clip_weights(norms: np.ndarray, tau: float | None, rule: str, *,
                       frac_bits: int = ring.DEFAULT_FRAC_BITS, nmax: int = DEFAULT_NMAX) -> np.ndarray:
    """The same integers as ``clip_weights_circuit`` computes on shares, from the opened N (n,) uint64 in
    [0, nmax]: (n,) or, for cclip, (n + 1,) uint64 at scale 2^32. Raises AssertionError if an intermediate
    leaves the range the circuit relies on (it never should)."""
    vals = np.asarray(norms)
    if vals.dtype != _U or vals.ndim != 1:
        raise ValueError(f"the norms must be a uint64 vector, got {vals.dtype} {vals.shape}")
    p = plan(vals.size, tau, rule, frac_bits, nmax)
    n = p.n
    ints = [int(v) for v in vals]
    if any(v > p.nmax for v in ints):
        raise ValueError(f"a squared norm is above nmax = {p.nmax}")
    if p.unclipped:
        return _finish(0, p, np.zeros(n, _U), np.zeros(n, _U))
    lead, m_f, y = plain_rsqrt(vals, p.nmax)
    tab = lambda table: [table[b + 1] for b in lead]                            # noqa: E731
    if not p.median:
        s = [int(v > p.floor_t2) for v in ints]
        g_sel = [si * g for si, g in zip(s, tab(p.lane))]
        out = _ptrunc(_pmul(g_sel, y), Q_PUBLIC + p.log_n + FRAC - WEIGHT_BITS)
    else:
        order = sorted(range(n), key=lambda i: (ints[i], i))
        rank = [0] * n
        for r_, i in enumerate(order):
            rank[i] = r_
        lo, hi, factor = _median_ranks(n)
        root = _ptrunc(_pmul(m_f, y), FRAC)
        yn = _ptrunc(_pmul(y, [p.kn] * n), KN_BITS - 1)
        sq = _pmul(root, tab(p.up))
        t31 = factor * sum(sq[i] for i in range(n) if lo <= rank[i] < hi)
        if not 0 <= t31 < _LIMIT or any(abs(t31 - 2 * v) >= 1 << (p.root_width - 1) for v in sq):
            raise AssertionError("the median comparison leaves its width")
        s = [int(t31 < 2 * v) for v in sq]
        g = _pmul([t31 * si for si in s], [d if si else 0 for d, si in zip(tab(p.down), s)])
        g = _ptrunc(g, p.half + 1)
        out = _ptrunc(_pmul(g, yn), 2 * FRAC + 1 + p.log_n - WEIGHT_BITS)
    return _finish(0, p, np.array(out, dtype=_U), np.array(s, dtype=_U))


def run_clip_weights(shares: tuple[np.ndarray, np.ndarray], tau: float | None, rule: str,
                     seeds: compare.AndTripleSeeds, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
                     nmax: int = DEFAULT_NMAX, corr_id: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """Both servers in this process (tests, benchmarks): deal the material and run the circuit."""
    return arith.run_both(lambda party, src: clip_weights_circuit(
        party, shares[party], tau, rule, src, frac_bits=frac_bits, nmax=nmax), corr_id, seeds)
