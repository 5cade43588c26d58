r"""Byzantine attacks as plain callables with one signature.

Every attack is called as ``attack(honest, own, rng) -> byzantine`` where

- ``honest``: (h, d) the updates the h honest workers send this round (attacks are omniscient:
  they may read them, as in the papers below);
- ``own``: (f, d) the updates the f Byzantine workers would have sent had they been honest
  (computed on their own data, with flipped labels for the label-flip attack);
- ``rng``: a seeded ``numpy.random.Generator`` (the only source of randomness);
- the result: (f, d) float64, the rows the Byzantine workers send instead.

Inputs may be NumPy arrays or CPU torch tensors; outputs are NumPy. Options (scale, epsilon, ...)
are keyword arguments; ``make_attack(name, **options)`` binds them and rejects unknown ones.
Below, \mu and \sigma are the coordinate-wise mean and standard deviation of the honest rows.

Ring attacks (``RING_ATTACKS``, ``is_ring_attack(name)``) are called as
``attack(honest, own, rng, frac_bits) -> byzantine`` and return (f, d) ``uint64``: the exact elements of
Z_2^64 the Byzantine workers send (``ring_rows=`` of the engine), which no float row can express. With
F = ``frac_bits``, E(v) = round(2^F v) mod 2^64 is the honest encoding, y_i = E(honest_i) are the honest
ring rows, and ``~x`` is the signed reading of x in [-2^63, 2^63). The protocol computes squared
distances and norms in Z_2^64, so before the input validity check (``secrobust.validity``: every
accepted ``~x`` has L2 norm at most B = 2^27) these rows made S1 see values that have nothing to do
with the true vectors; the check rejects all of them (weight 0).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import norm as _normal

from secrobust import ring

Attack = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
RingAttack = Callable[[np.ndarray, np.ndarray, np.random.Generator, int], np.ndarray]


def _rows(honest: Any, own: Any) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(honest, dtype=np.float64)
    o = np.asarray(own, dtype=np.float64)
    if h.ndim != 2 or o.ndim != 2 or (h.size and o.size and h.shape[1] != o.shape[1]):
        raise ValueError(f"expected honest (h, d) and own (f, d), got {h.shape} and {o.shape}")
    return h, o


def none(honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
    """No attack: the Byzantine workers send their honest updates (the baseline row)."""
    _, o = _rows(honest, own)
    return o.copy()


def sign_flip(honest: Any, own: Any, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    r"""Sign flip: worker j sends :math:`-s\, g_j`, its own honest update negated and scaled.

    With s = 1 this is the bit-flipping / sign-flipping attack of Karimireddy, He, Jaggi,
    "Learning from History for Byzantine Robust Optimization" (ICML 2021) and Allen-Zhu,
    Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic Gradient Descent"
    (ICLR 2021). With f Byzantine and h honest workers the plain mean is
    :math:`(\sum_{honest} g_i - s \sum_{byz} g_j)/n`, which points uphill once f s > h
    (s > 4 for 4 of 20 workers).
    """
    _, o = _rows(honest, own)
    return -float(scale) * o


def label_flip(honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
    r"""Label flip: the Byzantine workers train honestly on labels mapped y -> 9 - y.

    The poisoning happens in the data (``data.flip_labels``; the runner flips the labels of the
    Byzantine workers when ``flips_labels("label-flip")`` is true), so the update is ``own``
    unchanged. Used as "LF" by Karimireddy, He, Jaggi (ICML 2021) and by Allen-Zhu et al.
    (ICLR 2021).
    """
    _, o = _rows(honest, own)
    return o.copy()


def gaussian(honest: Any, own: Any, rng: np.random.Generator, *, std: float = 1.0) -> np.ndarray:
    r"""Gaussian noise: each Byzantine row is drawn from :math:`\mathcal N(0, \mathrm{std}^2 I_d)`.

    The random-vector Byzantine behaviour of Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine
    Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS 2017).
    """
    _, o = _rows(honest, own)
    return rng.normal(0.0, float(std), size=o.shape)


def ipm(honest: Any, own: Any, rng: np.random.Generator, *, epsilon: float = 0.1) -> np.ndarray:
    r"""Inner-product manipulation: every Byzantine row is :math:`-\varepsilon \mu`.

    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation" (UAI 2019). A small epsilon (0.1) keeps the rows close to the honest ones so that
    distance-based rules accept them while the inner product of the aggregate with the true
    gradient shrinks or turns negative; a large epsilon defeats the mean.
    """
    h, o = _rows(honest, own)
    return np.tile(-float(epsilon) * h.mean(axis=0), (o.shape[0], 1))


def alie_z(n: int, f: int) -> float:
    r""":math:`z_{max} = \Phi^{-1}((n - s)/n)` with :math:`s = \lfloor n/2 + 1 \rfloor - f`.

    s is the number of honest workers the attacker needs on its side for a majority; z_max is the
    largest shift (in standard deviations) that still leaves n - s workers farther from the mean.
    """
    s = n // 2 + 1 - f
    return float(_normal.ppf((n - s) / n))


def alie(honest: Any, own: Any, rng: np.random.Generator, *, z: float | None = None) -> np.ndarray:
    r"""A little is enough: every Byzantine row is :math:`\mu - z\,\sigma` (coordinate-wise).

    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses for Distributed
    Learning" (NeurIPS 2019). By default z = ``alie_z(n, f)`` with n = h + f, the paper's
    z_max (0.385 for n = 20, f = 4). sigma uses ddof = 1. The shift hides inside the honest
    spread in every coordinate, so distance- and median-based rules accept it.
    """
    h, o = _rows(honest, own)
    f = o.shape[0]
    zz = alie_z(h.shape[0] + f, f) if z is None else float(z)
    sigma = h.std(axis=0, ddof=1) if h.shape[0] > 1 else np.zeros(h.shape[1])
    return np.tile(h.mean(axis=0) - zz * sigma, (f, 1))


def mimic(honest: Any, own: Any, rng: np.random.Generator, *, target: int | None = None) -> np.ndarray:
    r"""Mimic: every Byzantine worker copies one honest worker's update :math:`x_{i^*}`.

    Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing"
    (ICLR 2022). Over-weighting one honest worker biases the aggregate toward its data under
    heterogeneity while every Byzantine row looks honest. Unless ``target`` fixes i*, it is
    :math:`\arg\max_i |\langle z, x_i - \mu\rangle|` with z the top principal direction of the
    honest rows (the paper's heuristic, here recomputed each round rather than fixed after a
    warm-up phase). Those projections are :math:`s_1 u_1`, so i* is read off the top eigenvector
    u_1 of the h x h Gram matrix of the centred rows.
    """
    h, o = _rows(honest, own)
    if target is None:
        centred = h - h.mean(axis=0)
        _, vectors = np.linalg.eigh(centred @ centred.T)
        i_star = int(np.argmax(np.abs(vectors[:, -1])))
    else:
        if not 0 <= int(target) < h.shape[0]:
            raise ValueError(f"mimic target must be in [0, {h.shape[0]}), got {target}")
        i_star = int(target)
    return np.tile(h[i_star], (o.shape[0], 1))


def zero(honest: Any, own: Any, rng: np.random.Generator) -> np.ndarray:
    r"""Zero: the Byzantine workers send the zero vector (a crashed or free-riding worker).

    The s = 0 member of the scaled-update family of Blanchard et al. (NeurIPS 2017): it shrinks
    the plain mean by the factor h/n and is harmless but visible to distance-based rules.
    """
    _, o = _rows(honest, own)
    return np.zeros_like(o)


def large_norm(honest: Any, own: Any, rng: np.random.Generator, *, norm: float = 1e4) -> np.ndarray:
    r"""Large norm: every Byzantine row is :math:`-\mathrm{norm}\cdot\mu/\lVert\mu\rVert`.

    Blanchard et al. (NeurIPS 2017), Lemma 1: a single Byzantine worker moves any linear rule
    (the mean) to an arbitrary point. The rows are far outside the honest encoder's range, so the
    runner submits them as ``unchecked`` (a Byzantine worker is not bound by the encoder); with
    ``norm`` large enough their squared distances wrap modulo 2^64 in the secure protocol (see
    the threat model in the README).
    """
    h, o = _rows(honest, own)
    mu = h.mean(axis=0)
    length = float(np.linalg.norm(mu))
    direction = mu / length if length > 0 else np.full(h.shape[1], 1.0 / np.sqrt(h.shape[1]))
    return np.tile(-float(norm) * direction, (o.shape[0], 1))


def _ring_inputs(honest: Any, own: Any, frac_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(honest floats, own floats, y = E(honest)): the honest ring rows exactly as the engine encodes them."""
    h, o = _rows(honest, own)
    return h, o, ring.encode(h, frac_bits).reshape(h.shape)


def _rows_of(row: np.ndarray, f: int) -> np.ndarray:
    return np.tile(np.asarray(row, dtype=np.uint64), (f, 1))


def _pow2(k: np.ndarray) -> np.ndarray:
    """2^k mod 2^64 for integer k in [0, 63]."""
    return np.left_shift(np.uint64(1), np.asarray(k, dtype=np.uint64))


def _two_adic(x: np.ndarray) -> np.ndarray:
    """v(x): the number of trailing zero bits of each uint64 (64 for 0)."""
    low = x & (np.uint64(0) - x)
    return np.where(x == 0, 64, np.log2(np.maximum(low, np.uint64(1)).astype(np.float64)).astype(np.int64))


def _parity_kernel(y: np.ndarray) -> np.ndarray:
    r"""A non-empty set C of coordinates (as a boolean mask) with :math:`\sum_{c \in C} y_{ic}` of the same
    parity for every row i: a coordinate where all parities agree if there is one, else the first linear
    dependency over GF(2) among the columns of :math:`p_{ic} = (y_{ic} - y_{0c}) \bmod 2` (one exists among
    any h columns, since p has h - 1 non-zero rows)."""
    parity = (y & np.uint64(1)).astype(bool)
    p = parity[1:] ^ parity[0]
    mask = np.zeros(y.shape[1], dtype=bool)
    agree = np.flatnonzero(~p.any(axis=0))
    if agree.size:
        mask[agree[0]] = True
        return mask
    basis: dict[int, tuple[int, int]] = {}
    for c in range(y.shape[1]):
        v, comb = int(sum(1 << i for i in np.flatnonzero(p[:, c]).tolist())), 1 << c
        while v and (v.bit_length() - 1) in basis:
            bv, bc = basis[v.bit_length() - 1]
            v, comb = v ^ bv, comb ^ bc
        if not v:
            mask[[i for i in range(c + 1) if comb >> i & 1]] = True
            return mask
        basis[v.bit_length() - 1] = (v, comb)
    raise ValueError(f"no coordinate set of equal parity across the {y.shape[0]} honest rows (d = {y.shape[1]})")


def zero_wrap(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Zero wrap: every Byzantine row is :math:`x = E(\mu) + \sum_c 2^{k_c} e_c`, far from the honest rows,
    with every squared distance to them equal, in Z_2^64, to that of E(\mu).

    For a row y, :math:`\lVert x - y\rVert^2 - \lVert E(\mu) - y\rVert^2 = \sum_c 2^{k_c+1}(E(\mu)_c - y_c)
    + 2^{2k_c}`, which is 0 mod 2^64 when :math:`k_c \ge 32` and :math:`2^{k_c+1}(E(\mu)_c - y_c) \equiv 0`,
    i.e. :math:`k_c \ge 63 - v_c` with :math:`v_c` the 2-adic valuation of :math:`E(\mu)_c - y_{ic}` over all
    honest i. So :math:`k_c = \max(32, 63 - v_c)`: 2^32 (:math:`2^{32-F}`, 4096 real units at F = 20) on a
    coordinate where the honest rows agree, as in the README's ring-overflow example, up to 2^63 on the
    others. S1 saw the row at the honest centre, so distance-based rules kept it while every coordinate
    is at least :math:`2^{32-F}` away. In the aggregate the offset meets the weight's encoding
    :math:`\omega = \mathrm{round}(2^{32} w)`: :math:`2^{k_c}\omega` survives mod 2^64 unless
    :math:`\omega` has :math:`64 - k_c` trailing zero bits, so Multi-Krum's 1/m or the mean's 1/n moved
    the agreeing coordinates by hundreds to thousands, while Krum's weight 1 (:math:`\omega = 2^{32}`)
    cancels every offset and returns E(\mu).
    """
    h, o, y = _ring_inputs(honest, own, frac_bits)
    if not h.shape[0]:
        return np.zeros(o.shape, dtype=np.uint64)
    base = ring.encode_unchecked(h.mean(axis=0), frac_bits)
    v = _two_adic(np.bitwise_or.reduce(base - y, axis=0))
    return _rows_of(base + _pow2(np.maximum(32, 63 - np.minimum(v, 63))), o.shape[0])


def high_bits(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              *, scale: float = 10.0) -> np.ndarray:
    r"""High bits: every Byzantine row is :math:`x = E(t) + 2^{62}\,1_C`, target :math:`t = -s\mu` (norm
    capped at :math:`2^{30-F}`), C a coordinate set of equal parity across the honest rows.

    With :math:`b_i = E(t) - y_i`: :math:`\lVert x - y_i\rVert^2 = \lVert b_i\rVert^2 + 2^{63}\sum_{c\in C}
    b_{ic} + 2^{124}|C| \equiv \lVert b_i\rVert^2 + 2^{63}` mod 2^64 once :math:`\sum_C b_{ic}` is odd for
    every i (``_parity_kernel`` finds C, one unit of E(t) on C fixes the parity). As
    :math:`\lVert b_i\rVert^2 < 2^{63}`, every squared distance to an honest row reads negative, so Krum
    scored the row lowest and chose it with weight 1, encoded as 2^32; then :math:`2^{32}x \equiv
    2^{32}E(t)` (:math:`2^{94} \equiv 0`) and the revealed aggregate was t exactly (:math:`|E(t)_c| <
    2^{31}`). The same negative distances moved Multi-Krum and geomed. With s > 0 the target is gradient
    ascent on the honest mean.
    """
    h, o, y = _ring_inputs(honest, own, frac_bits)
    if not h.shape[0]:
        return np.zeros(o.shape, dtype=np.uint64)
    t = -float(scale) * h.mean(axis=0)
    cap = 2.0 ** (30 - frac_bits)
    length = float(np.linalg.norm(t))
    target = ring.encode_unchecked(t * min(1.0, cap / length) if length > 0 else t, frac_bits)
    chosen = _parity_kernel(y)
    first = int(np.flatnonzero(chosen)[0])
    if not (int(np.sum(target[chosen] - y[0, chosen])) & 1):
        target[first] += np.uint64(1)
    return _rows_of(target + np.where(chosen, np.uint64(1 << 62), np.uint64(0)), o.shape[0])


NORM_WRAP_RADIUS = math.sqrt(3.0) * 2.0**31


def norm_wrap(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Norm wrap: every Byzantine row is :math:`x = \mathrm{round}(-r\,\mu/\lVert\mu\rVert)` in scaled units,
    :math:`r = \sqrt 3\cdot 2^{31}` (:math:`\sqrt3\cdot 2^{31-F}`, about 3547 real units at F = 20).

    :math:`\lVert x\rVert^2 \approx 3\cdot 2^{62}` lies in :math:`[2^{63}, 2^{64})`, the upper half of the
    ring, so the squared norm computed mod 2^64 reads negative (about :math:`-2^{62}`): a negative norm,
    NaN after the square root of norm-clip and cclip. Its squared distances to the honest rows differ
    from :math:`\lVert x\rVert^2` by at most :math:`2r\cdot 2^{27} + 2^{54} < 2^{61}`, so they read
    negative too and Krum chose it. The true row points against the honest mean, thousands away.
    """
    h, o = _rows(honest, own)
    mu = h.mean(axis=0) if h.shape[0] else np.zeros(o.shape[1])
    length = float(np.linalg.norm(mu))
    direction = mu / length if length > 0 else np.full(o.shape[1], 1.0 / math.sqrt(max(o.shape[1], 1)))
    row = np.rint(-NORM_WRAP_RADIUS * direction).astype(np.int64).view(np.uint64)
    return _rows_of(row, o.shape[0])


def random_ring(honest: Any, own: Any, rng: np.random.Generator, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Random ring words: every Byzantine coordinate is uniform in Z_2^64.

    The ring analogue of the Gaussian attack of Blanchard et al. (NeurIPS 2017): the true vector has
    coordinates of order 2^62 (real :math:`2^{62-F}`), while its squared distances and norm mod 2^64 are
    essentially uniform, so about half of them read negative and the rest anywhere in the ring.
    """
    _, o = _rows(honest, own)
    return rng.integers(0, np.iinfo(np.uint64).max, size=o.shape, dtype=np.uint64, endpoint=True)


RING_MIX = ("high-bits", "zero-wrap", "norm-wrap", "random-ring")


def ring_overflow(honest: Any, own: Any, rng: np.random.Generator,
                  frac_bits: int = ring.DEFAULT_FRAC_BITS) -> np.ndarray:
    r"""Ring overflow, the four ring attacks at once: Byzantine row j is the row of
    ``RING_MIX[(j + r) mod 4]`` (high-bits, zero-wrap, norm-wrap, random-ring) with r uniform in {0..3}
    each round.

    With f >= 4 every round carries all four constructions and over the rounds every Byzantine worker
    sends each of them (with f < 4, a random subset each round). Before the validity check each one
    alone fooled S1: negative distances that won Krum's choice (high-bits, norm-wrap, most random-ring
    rows) or distances of a row at the honest centre although thousands away (zero-wrap).
    """
    _, o = _rows(honest, own)
    out = np.empty(o.shape, dtype=np.uint64)
    shift = int(rng.integers(len(RING_MIX)))
    for k, name in enumerate(RING_MIX):
        rows = [j for j in range(o.shape[0]) if (j + shift) % len(RING_MIX) == k]
        if rows:
            out[rows] = RING_ATTACKS[name](honest, o[rows], rng, frac_bits)
    return out


ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "none": none,
    "sign-flip": sign_flip,
    "label-flip": label_flip,
    "gaussian": gaussian,
    "ipm": ipm,
    "alie": alie,
    "mimic": mimic,
    "zero": zero,
    "large-norm": large_norm,
}

RING_ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "zero-wrap": zero_wrap,
    "high-bits": high_bits,
    "norm-wrap": norm_wrap,
    "random-ring": random_ring,
    "ring-overflow": ring_overflow,
}

_LABEL_FLIPPING = frozenset({"label-flip"})


def flips_labels(name: str) -> bool:
    """True if attack ``name`` poisons the Byzantine workers' labels before they train."""
    return name in _LABEL_FLIPPING


def is_ring_attack(name: str) -> bool:
    """True if attack ``name`` returns uint64 ring rows (called with ``frac_bits``, sent as ``ring_rows``)."""
    return name in RING_ATTACKS


def attack_options(name: str) -> dict[str, Any]:
    """The keyword options of attack ``name`` and their defaults."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def make_attack(name: str, **options: Any) -> Attack | RingAttack:
    """Bind ``options`` to attack ``name``; ValueError on an unknown name or option."""
    fn = _lookup(name)
    allowed = attack_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for attack {name!r}; allowed: {sorted(allowed) or 'none'}"
        )
    return functools.partial(fn, **options) if options else fn


def _lookup(name: str) -> Callable[..., np.ndarray]:
    try:
        return ATTACKS[name] if name in ATTACKS else RING_ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; allowed: {', '.join([*ATTACKS, *RING_ATTACKS])}") from None
