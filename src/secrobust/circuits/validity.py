"""Input validity: every accepted worker's vector has L2 norm at most B, whatever ring elements it sent.

A worker's vector x in Z_2^64^d is read through its signed representative x~ in [-2^63, 2^63)^d.
B is the honest encoder's bound (``ring.SCALED_NORM_BOUND`` = 2^27 in scaled units, 2^(27-F) real).
Both checks run on shares and open one bit per worker (accept or reject):

1. Norm: N = sum_c x_c^2 mod 2^64 (from the Gram shares the round computes anyway) must satisfy N <= B^2
   as an unsigned integer. If ||x~||^2 < 2^64 the ring value is exact, so N <= B^2 iff ||x~|| <= B.
   A vector passes wrongly only if ||x~||^2 wrapped, i.e. ||x~|| >= 2^32.
2. Wrap-around (after PINE, Rothblum, Omri, Chen, Talwar 2023, redone for Z_2^64): lambda public
   projections r_j in {-1, 0, 1}^d, P(0) = 1/2, P(+-1) = 1/4, drawn jointly by both servers after every
   share is fixed; each s_j = <r_j, x> mod 2^64 must lie in [-T, T].

Soundness (a vector with ||x~|| > B passes with probability at most 2^-SECURITY_BITS): it must have
||x~|| >= 2^32 (else check 1 rejects it). Per projection:
 (a) if some |x~_c| > 2T: fix every r except r_c, with partial sum s'. s' and s' +- x_c cannot both lie in
     [-T, T] (x_c would lie in [-2T, 2T]); s' + x_c and s' - x_c may (2^63 is its own negative), so the
     window is hit with probability at most 1/2 either way;
 (b) otherwise |<r, x~>| <= 2Td < 2^63, so s_j is the integer <r, x~>, with E s^2 = ||x~||^2 / 2 and
     E s^4 <= 3 (E s^2)^2; Paley-Zygmund gives P(|s| > T) >= (1 - theta)^2 / 3, theta = 2T^2 / 2^64.
So each projection passes with probability at most p = max(1/2, 1 - (1 - theta)^2 / 3) and lambda
independent projections with p^lambda <= 2^-SECURITY_BITS.
Completeness (an honest vector, ||x~|| <= B, fails with probability at most 2^-SECURITY_BITS): check 1 is
exact; r is sub-Gaussian with variance proxy 1/2 (E e^{tr} = cosh^2(t/2) <= e^{t^2/4}), so
P(|<r, x~>| > T) <= 2 exp(-T^2 / B^2) and T = B sqrt(ln(2 lambda) + SECURITY_BITS ln 2).
What is opened: the accept bit per worker; projections, norms and comparison bits stay shared.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ..gates import arith, compare
from ..gates.compare import Party, Source
from ..primitives import kernel, prg, ring

SECURITY_BITS = 40
PROJECT_COLUMNS = 1 << 16
"""Columns of R made at a time: lambda bytes each, so a block of R is about 5 MB."""
REASON = ("failed the input validity check: its shares do not reconstruct to a vector of L2 norm at most B "
          "(norm above the bound, or a ring wrap-around)")
VIEW_REASON = ("an opened norm, or a distance to another dropped worker, lies outside [0, 2^(62-2F)]: proof that "
               "it or that worker sent a malformed input")


@dataclass(frozen=True)
class Params:
    """The check's public parameters, in scaled (integer) units."""

    bound: int
    projections: int
    window: int
    security_bits: int
    pass_probability: float

    @property
    def bound_sq(self) -> int:
        return self.bound * self.bound

    def max_dimension(self) -> int:
        """Largest d for which case (b) of the soundness argument holds: 2 T d < 2^63."""
        return (2**63 - 1) // (2 * self.window)


@functools.lru_cache(maxsize=None)
def params(security_bits: int = SECURITY_BITS, bound: int = int(ring.SCALED_NORM_BOUND)) -> Params:
    """lambda and T for soundness and completeness errors of 2^-security_bits (see the module docstring)."""
    lam = 1
    for _ in range(100):
        window = math.ceil(bound * math.sqrt(math.log(2 * lam) + security_bits * math.log(2)))
        theta = 2.0 * window**2 / 2.0**64
        if theta >= 1:
            raise ValueError(f"bound {bound} is too large for a wrap-around check below 2^32")
        p = max(0.5, 1.0 - (1.0 - theta) ** 2 / 3.0)
        need = math.ceil(security_bits / -math.log2(p))
        if need == lam:
            return Params(bound, lam, window, security_bits, p)
        lam = need
    raise RuntimeError("validity parameters did not converge")


def check_dimension(d: int, p: Params | None = None) -> None:
    p = p or params()
    if d > p.max_dimension():
        raise ValueError(f"d = {d} is above {p.max_dimension()}, the largest dimension for which the input "
                         "validity check is sound (2 T d < 2^63)")


def scaled_bound(norm_bound: float | None, frac_bits: int, d: int) -> int:
    """The norm check's bound in scaled units: B = 2^27 by default, or a tighter public bound C (real units)
    as ceil(C 2^F + sqrt(d)/2): an honest worker that clips to C stays within it after rounding.

    A tighter bound is what DP needs against malicious workers: every accepted contribution then has norm
    at most C + sqrt(d)/2^(F+1), whatever a worker sends. The projections keep their parameters."""
    if norm_bound is None:
        return params().bound
    if isinstance(norm_bound, bool) or not isinstance(norm_bound, (int, float, np.floating, np.integer)) \
            or not np.isfinite(norm_bound) or norm_bound <= 0:
        raise ValueError(f"norm_bound must be a positive finite number, got {norm_bound!r}")
    scaled = math.ceil(float(norm_bound) * 2.0**frac_bits + math.sqrt(d) / 2.0)
    if scaled > params().bound:
        raise ValueError(f"norm_bound {norm_bound:g} is above the encoder's range {ring.max_norm(frac_bits, d):.6g} "
                         f"at frac_bits={frac_bits}, d={d}")
    return scaled


def check_flag(check_inputs: object, d: int) -> bool:
    """``check_inputs`` must be a bool; with the check on, d must be one the check is sound for."""
    if not isinstance(check_inputs, bool):
        raise ValueError(f"check_inputs must be True or False, got {check_inputs!r}")
    if check_inputs:
        check_dimension(d)
    return check_inputs


def joint_seed(round_id: int, seed0: bytes, seed1: bytes) -> bytes:
    """The projections' seed: both servers' fresh contributions, fixed after every share arrived."""
    h = hashlib.sha256(b"secrobust/validity|" + str(round_id).encode() + b"|" + prg.check_seed(seed0)
                       + prg.check_seed(seed1))
    return h.digest()[: prg.SEED_BYTES]


def _byte_table() -> np.ndarray:
    """Each keystream byte holds four entries, two bits (z, s) each: r = z (1 - 2 s). Row q of the table is
    entry q of every byte value (4 x 256 int8), so a row of the projection matrix is one gather."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").reshape(256, 4, 2)
    z, s = bits[..., 0].astype(np.int8), bits[..., 1].astype(np.int8)
    return np.ascontiguousarray((z - 2 * (z & s)).T)


_TABLE = _byte_table()


def _padded(lam: int) -> int:
    return -(-lam // 4) * 4


def projection_columns(seed: bytes, lam: int, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of the lambda x d projection matrix, int8 in {-1, 0, 1}, one contiguous row per
    projection.

    The keystream is column-major: column c takes bytes [c L/4, (c+1) L/4) (L = lambda rounded up to a
    multiple of 4), so any column range is one keystream read; P(0) = 1/2, P(+1) = P(-1) = 1/4."""
    per, width = _padded(lam) // 4, stop - start
    raw = np.frombuffer(prg.keystream(seed, "validity-projection", width * per, start * per), dtype=np.uint8)
    entries = np.take(_TABLE, np.ascontiguousarray(raw.reshape(width, per).T), axis=1)  # [q, b, c]: row 4b + q
    return np.ascontiguousarray(entries.transpose(1, 0, 2).reshape(4 * per, width)[:lam])


def project(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """x @ r.T in Z_2^64 for uint64 x (n, w) and int8 r in {-1, 0, 1} (lam, w), exactly: the ring kernel with
    each entry of r sign-extended to a word (-1 is 2^64 - 1)."""
    return kernel.matmul_t_int8(x, r)


def project_columns(x: np.ndarray, seed: bytes, lam: int, start: int) -> np.ndarray:
    """x @ R[:, start:start + w].T in Z_2^64 for a column chunk x (n, w), making R block by block (each block's
    product on the ring kernel's threads)."""
    out = np.zeros((x.shape[0], lam), dtype=np.uint64)
    for a in range(0, x.shape[1], PROJECT_COLUMNS):
        b = min(a + PROJECT_COLUMNS, x.shape[1])
        out += project(x[:, a:b], projection_columns(seed, lam, start + a, start + b))
    return out


def check_circuit(party: int, proj: np.ndarray, norm: np.ndarray, p: Params, src: Source,
                  bound: int | None = None) -> Party:
    """One server's side of the check for n workers: shares of the projections (n, lambda) and of the
    squared norms (n,) -> the public accept flags (n,).

    [s_ij + T <_u 2T + 1] for every projection and [N_i <_u b^2 + 1] (b = ``bound``, B by default),
    AND-reduced per worker, then opened.
    The comparisons run on the (lambda + 1) n values packed densely; their XOR-shared result bits are then
    laid out again locally (one plane row per check) for the AND across each worker's checks."""
    n = norm.shape[0]
    rows = p.projections + 1
    values = np.empty((rows, n), dtype=np.uint64)
    values[: p.projections] = proj.T
    if party == 0:
        values[: p.projections] += np.uint64(p.window)
    values[p.projections] = norm
    limits = np.full((rows, n), 2 * p.window + 1, dtype=np.uint64)
    limits[p.projections] = np.uint64((p.bound if bound is None else bound) ** 2 + 1)
    lt = yield from compare.less_than_public(party, values.ravel(), limits.ravel(), src)
    per_check = compare.plane_bits(lt, rows * n).reshape(rows, n)
    ok = yield from compare.and_reduce(party, np.stack([compare.bits_plane(r) for r in per_check]), src)
    return (yield from compare.open_plane(party, ok, n))


@functools.lru_cache(maxsize=256)
def _cost(n: int, p: Params) -> tuple[int, int]:
    zeros_p, zeros_n = np.zeros((n, p.projections), dtype=np.uint64), np.zeros(n, dtype=np.uint64)
    return arith.count_words(lambda party, src: check_circuit(party, zeros_p, zeros_n, p, src))


def and_words(n: int, p: Params | None = None) -> int:
    """Bit-triple words the check needs for n workers (its gates depend on n only)."""
    return _cost(n, p or params())[0]


def rounds(n: int, p: Params | None = None) -> int:
    """Messages each server sends in the check's comparisons (15 at the defaults, whatever n is)."""
    return _cost(n, p or params())[1]


def norm_share(party: int, gram_diag: np.ndarray, x_dot_v: np.ndarray | None, v: np.ndarray | None) -> np.ndarray:
    """Share of ||x_i||^2 from the share of ||x_i - v||^2 (the Gram diagonal) and of <x_i, v>:
    ||x||^2 = ||x - v||^2 + 2 <x, v> - ||v||^2, all in Z_2^64."""
    if v is None:
        return gram_diag
    out = gram_diag + np.uint64(2) * x_dot_v
    if party == 0:
        out = out - np.dot(v, v)
    return out


def plain_accept(encoded: np.ndarray, seed: bytes, p: Params | None = None, bound: int | None = None) -> np.ndarray:
    """The plaintext twin: the same decision on the reconstructed ring vectors with the same projections."""
    p = p or params()
    x = np.asarray(encoded, dtype=np.uint64)
    n, d = x.shape
    norms = np.einsum("ij,ij->i", x, x)
    proj = project_columns(x, seed, p.projections, 0)
    in_window = (proj + np.uint64(p.window)) < np.uint64(2 * p.window + 1)
    return in_window.all(axis=1) & (norms <= np.uint64((p.bound if bound is None else bound) ** 2))


def view_out_of_range(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """Opened squared distances/norms (decoded at 2^(2F)) outside [0, 2^(62-2F)], or not finite."""
    v = np.asarray(values, dtype=np.float64)
    return ~np.isfinite(v) | (v < 0) | (v > 2.0 ** (62 - 2 * frac_bits))
