"""Exact matrix products in Z_2^64 on uint64 arrays: compiled 4 x 4 tiles, multi-threaded, bounded memory.

uint64 multiplication and addition wrap mod 2^64, in NumPy and in the machine code alike, so every product
here is exact whatever the words are. The products are a Numba-compiled kernel (compiled on first use and
cached on disk; it releases the GIL): each 4 x 4 tile of the output sums four rows of a against four rows of
b over ``BLOCK_COLS`` columns at a time, the sixteen sums in registers, each row a contiguous 1-D view, so
LLVM vectorises the sum (vpmullq on AVX-512; on AVX2 it composes each 64-bit lane's product from 32-bit
multiplies; not measured here). A column range of
the operands is given to each thread, which sums its own n x m partial. ``gram`` computes the tiles on and
above the diagonal only.

Measured on this project's 2-core AMD EPYC VM (Zen 4, AVX-512), one thread, for a 50 x 4e5 by 4e5 x 50
product, in CPU seconds on a loaded machine (``bench/kernel_bench.py``, ``bench/results/kernel_bench.txt``):
this kernel 0.063 s, 16 * 10^9 multiply-adds per second; NumPy's wrapping einsum in 8192-column blocks (the
kernel before) 0.45 s, NumPy's matmul 0.67 s, torch 2.13's int64 mm 0.32 s; float64 BLAS's dgemm on the
same shape, not exact, 0.09 s, so a split of the words into limbs for float64 BLAS (22-bit limbs need six
limb products; 1.0 s measured) is slower.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

BLOCK_COLS = 2048
"""Columns per block: every row's block (a few hundred KB for 50 + 50 rows) stays in the core's L2 cache
while all tiles use it."""
TILE = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_threads = 0
_compiled: Callable | None = None
_compile_lock = threading.Lock()


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(count: int | None) -> None:
    """Threads the kernel uses from now on (None: every CPU this process may use)."""
    global _pool, _threads
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"threads must be a positive integer or None, got {count!r}")
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _threads = None, count or 0


def threads() -> int:
    return _threads or default_threads()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="ring-kernel")
        return _pool


def _check(*arrays: np.ndarray) -> None:
    for x in arrays:
        if not isinstance(x, np.ndarray) or x.dtype != np.uint64 or x.ndim != 2:
            raise ValueError(f"ring products take 2-D uint64 arrays, got {getattr(x, 'dtype', type(x))} "
                             f"of shape {getattr(x, 'shape', '?')}")


def _column_parts(k: int) -> list[tuple[int, int]]:
    """Split k columns into one contiguous range per thread, of equal width (each then goes block by block)."""
    parts = max(1, min(threads(), k // 256))
    edges = [k * p // parts for p in range(parts + 1)]
    return [(edges[p], edges[p + 1]) for p in range(parts) if edges[p] < edges[p + 1]]


def _sum_parts(work, k: int, shape: tuple[int, int]) -> np.ndarray:
    parts = _column_parts(k)
    if len(parts) <= 1:
        return work(0, k) if k else np.zeros(shape, dtype=np.uint64)
    return _sum(list(_executor().map(lambda p: work(*p), parts)))


def parallel_for(work: Callable[[int, int], object], total: int, step: int) -> list:
    """[work(a, b) for each range of ``step`` in [0, total)], in order, run on the kernel's threads."""
    ranges = [(a, min(a + step, total)) for a in range(0, total, step)]
    if min(threads(), len(ranges)) <= 1:
        return [work(a, b) for a, b in ranges]
    return list(_executor().map(lambda r: work(*r), ranges))


def parallel_sum(work: Callable[[int, int], np.ndarray], total: int, step: int) -> np.ndarray | None:
    """sum of work(a, b) over [0, total) cut into ranges of ``step``, the ranges spread over the kernel's
    threads (work must release the GIL to gain: NumPy and BLAS calls do). None if total is 0."""
    ranges = [(a, min(a + step, total)) for a in range(0, total, step)]
    parts = min(threads(), len(ranges))
    if parts <= 1:
        results = [work(a, b) for a, b in ranges]
    else:
        groups = [ranges[p::parts] for p in range(parts)]
        results = list(_executor().map(lambda g: _sum([work(a, b) for a, b in g]), groups))
    return _sum(results) if results else None


def _sum(arrays: list[np.ndarray]) -> np.ndarray:
    out = arrays[0]
    for a in arrays[1:]:
        out = out + a
    return out


def _tiles(a, rs_a, n, b, rs_b, m, out, k0, k1, block, upper):  # pragma: no cover - compiled by Numba
    """out[i, j] += sum_{k0 <= c < k1} a[i*rs_a + c] * b[j*rs_b + c] mod 2^64 (a, b: flat rows; b uint64, or
    int8 taken sign-extended to a word), in 4 x 4 tiles; with ``upper``, only tiles whose first column is at or right of their first row (out square).
    A tile's rows past n (columns past m) repeat the last row; their sums are not written."""
    zero = np.uint64(0)
    for c in range(k0, k1, block):
        ce = min(c + block, k1)
        w = ce - c
        for i in range(0, n, 4):
            i1, i2, i3 = min(i + 1, n - 1), min(i + 2, n - 1), min(i + 3, n - 1)
            a0 = a[i * rs_a + c:i * rs_a + ce]
            a1 = a[i1 * rs_a + c:i1 * rs_a + ce]
            a2 = a[i2 * rs_a + c:i2 * rs_a + ce]
            a3 = a[i3 * rs_a + c:i3 * rs_a + ce]
            for j in range(i if upper else 0, m, 4):
                j1, j2, j3 = min(j + 1, m - 1), min(j + 2, m - 1), min(j + 3, m - 1)
                b0 = b[j * rs_b + c:j * rs_b + ce]
                b1 = b[j1 * rs_b + c:j1 * rs_b + ce]
                b2 = b[j2 * rs_b + c:j2 * rs_b + ce]
                b3 = b[j3 * rs_b + c:j3 * rs_b + ce]
                s00 = zero; s01 = zero; s02 = zero; s03 = zero
                s10 = zero; s11 = zero; s12 = zero; s13 = zero
                s20 = zero; s21 = zero; s22 = zero; s23 = zero
                s30 = zero; s31 = zero; s32 = zero; s33 = zero
                for t in range(w):
                    y0 = np.uint64(b0[t]); y1 = np.uint64(b1[t]); y2 = np.uint64(b2[t]); y3 = np.uint64(b3[t])
                    x = a0[t]; s00 += x * y0; s01 += x * y1; s02 += x * y2; s03 += x * y3
                    x = a1[t]; s10 += x * y0; s11 += x * y1; s12 += x * y2; s13 += x * y3
                    x = a2[t]; s20 += x * y0; s21 += x * y1; s22 += x * y2; s23 += x * y3
                    x = a3[t]; s30 += x * y0; s31 += x * y1; s32 += x * y2; s33 += x * y3
                sums = ((s00, s01, s02, s03), (s10, s11, s12, s13), (s20, s21, s22, s23), (s30, s31, s32, s33))
                for r in range(4):
                    if i + r < n:
                        row = sums[r]
                        for q in range(4):
                            if j + q < m:
                                out[i + r, j + q] += row[q]


def _native() -> Callable:
    """The compiled tile kernel (Numba's first compile takes a few seconds; later processes load it from
    the on-disk cache beside this file, or Numba's per-user cache where that is not writable)."""
    global _compiled
    with _compile_lock:
        if _compiled is None:
            import numba

            _compiled = numba.njit(nogil=True, cache=True, boundscheck=False)(_tiles)
        return _compiled


def warm_up() -> None:
    """Load (or compile) the tile kernel for both operand types now: the first product of a process otherwise
    pays it (about 0.7 CPU-s and 1.2 s here, most of it importing Numba)."""
    a = np.ones((1, 1), dtype=np.uint64)
    _product(a, a, upper=False)
    _product(a, np.ones((1, 1), dtype=np.int8), upper=False)


def _flat_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """A 1-D contiguous view from x's first element to its last, and x's row stride in elements (rows of x
    are its elements [i * stride, i * stride + k)); x is copied only when its rows are not contiguous."""
    n, k = x.shape
    size = x.itemsize
    if n and k and (x.strides[1] != size and k > 1 or x.strides[0] < 0 or x.strides[0] % size):
        x = np.ascontiguousarray(x)
    stride = x.strides[0] // size if n > 1 else k
    return as_strided(x, shape=((n - 1) * stride + k,), strides=(size,), writeable=False), stride


def _product(a: np.ndarray, b: np.ndarray, upper: bool) -> np.ndarray:
    n, m, k = a.shape[0], b.shape[0], a.shape[1]
    if not (n and m and k):
        return np.zeros((n, m), dtype=np.uint64)
    fa, rs_a = _flat_rows(a)
    fb, rs_b = (fa, rs_a) if b is a else _flat_rows(b)
    tiles = _native()

    def work(start: int, stop: int) -> np.ndarray:
        out = np.zeros((n, m), dtype=np.uint64)
        tiles(fa, rs_a, n, fb, rs_b, m, out, start, stop, BLOCK_COLS, upper)
        return out

    return _sum_parts(work, k, (n, m))


def matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T mod 2^64 for a (n, k) and b (m, k)."""
    _check(a, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"ring product of shapes {a.shape} and {b.shape}.T")
    return _product(a, b, upper=False)


def matmul_t_int8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T mod 2^64 for uint64 a (n, k) and int8 b (m, k), each entry of b sign-extended to a word (-1 is
    2^64 - 1): the product by a small signed matrix (the validity check's projections) without widening it."""
    _check(a)
    if not isinstance(b, np.ndarray) or b.dtype != np.int8 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a product by an int8 matrix of {a.shape[1]} columns, got {getattr(b, 'dtype', type(b))} "
                         f"of shape {getattr(b, 'shape', '?')}")
    return _product(a, b, upper=False)


def gram(a: np.ndarray) -> np.ndarray:
    """a @ a.T mod 2^64: only the tiles on and above the diagonal are multiplied, the rest mirrored."""
    _check(a)
    out = _product(a, a, upper=True)
    lower = np.tril_indices(a.shape[0], -1)
    out[lower] = out.T[lower]
    return out


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products <a_i, b_i> mod 2^64 (NumPy's wrapping einsum: one pass over the rows, bound
    by memory rather than by multiplies)."""
    _check(a, b)
    if a.shape != b.shape:
        raise ValueError(f"row-wise products of shapes {a.shape} and {b.shape}")

    def work(start: int, stop: int) -> np.ndarray:
        return np.einsum("ij,ij->i", a[:, start:stop], b[:, start:stop])[:, None]

    return _sum_parts(work, a.shape[1], (a.shape[0], 1))[:, 0]
