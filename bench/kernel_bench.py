"""Exact Z_2^64 matrix products on this CPU: the ring kernel against NumPy, torch and float64 BLAS on limbs.

Times A @ B.T for uint64 A, B of shape (n, k) with every candidate, checks that each result equals NumPy's
wrapping product, and prints CPU seconds (of the whole process: robust to other load on a shared machine)
and wall seconds, median and best over the repeats, with the multiply-adds per CPU second. Candidates:
  numpy matmul / einsum       NumPy's own wrapping uint64 loops (not BLAS);
  einsum tiles                the ring kernel before the compiled one: einsum over 8192-column blocks;
  kernel.matmul_t / gram      the ring kernel (Numba-compiled 4 x 4 tiles), one thread and all threads;
  torch int64 mm              if torch is installed (its int64 mm wraps the same way);
  float64 limbs               ``limb_product``: each word as three signed limbs, six float64 BLAS products;
  float64 dgemm (not exact)   BLAS on floats of the same shape, for scale: what any limb split pays per product.
Run (BLAS's kernel, from threadpoolctl, is printed first):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/kernel_bench.py [--n 50] [--k 400000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from secrobust.primitives import kernel

LIMB_BITS = 22
LIMB_COLUMNS = 2048


def limbs(x: np.ndarray) -> list[np.ndarray]:
    """Signed limbs l0, l1, l2 of each word w (float64): w = l0 + 2^22 l1 + 2^44 l2 mod 2^64 with l0, l1 in
    [-2^21, 2^21) and l2 in [-2^19, 2^19) (the bits above 2^64 that the signed top limb drops are 0 mod 2^64)."""
    out, rest = [], x
    for bits in (LIMB_BITS, LIMB_BITS, 64 - 2 * LIMB_BITS):
        half = np.uint64(1 << (bits - 1))
        low = ((rest + half) & np.uint64((1 << bits) - 1)).view(np.int64) - np.int64(half)
        out.append(low.astype(np.float64))
        rest = (rest - low.view(np.uint64)) >> np.uint64(LIMB_BITS)
    return out


def limb_product(a: np.ndarray, b: np.ndarray, columns: int = LIMB_COLUMNS) -> np.ndarray:
    """a @ b.T mod 2^64 from float64 BLAS: with limbs as in ``limbs``, a_i b_j = sum over s of 2^(22 s) times
    sum_{p + q = s} l_p m_q, and s >= 3 vanishes mod 2^64 (66 bits and up), so six limb products suffice.

    Exactness: every limb product has |l_p m_q| <= 2^21 * 2^21 = 2^42, so any partial sum of a dot product over
    ``columns`` <= 2^11 columns is an integer of magnitude <= 2^11 * 2^42 = 2^53, which float64 holds exactly
    whatever order BLAS sums in (and with or without FMA). Each product of a column block is therefore exact,
    converted to int64 and combined in uint64, wrapping. ``main`` checks this at the limit: every limb at its
    extreme -2^21 (-2^19 for the top one) over exactly 2^11 columns."""
    if columns > 1 << 11:
        raise ValueError("more than 2^11 columns per block can leave float64's 53 bits")
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.uint64)
    for c in range(0, a.shape[1], columns):
        la, lb = limbs(a[:, c:c + columns]), limbs(b[:, c:c + columns])

        def dot(p: int, q: int) -> np.ndarray:
            return (la[p] @ lb[q].T).astype(np.int64).view(np.uint64)

        out += dot(0, 0)
        out += (dot(0, 1) + dot(1, 0)) << np.uint64(LIMB_BITS)
        out += (dot(0, 2) + dot(1, 1) + dot(2, 0)) << np.uint64(2 * LIMB_BITS)
    return out


def einsum_tiles(a: np.ndarray, b: np.ndarray, block: int = 8192) -> np.ndarray:
    """The ring kernel's product before the compiled tiles (one thread): NumPy's einsum per column block."""
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.uint64)
    for c in range(0, a.shape[1], block):
        out += np.einsum("ik,jk->ij", a[:, c:c + block], b[:, c:c + block])
    return out


def candidates(a: np.ndarray, b: np.ndarray) -> dict:
    af, bf = a.astype(np.float64), b.astype(np.float64)
    out = {
        "numpy matmul (uint64), 1 thread": (1, lambda: np.matmul(a, b.T)),
        "numpy einsum (uint64), 1 thread": (1, lambda: np.einsum("ik,jk->ij", a, b)),
        "einsum tiles (previous kernel), 1 thread": (1, lambda: einsum_tiles(a, b)),
        "kernel.matmul_t, 1 thread": (1, lambda: kernel.matmul_t(a, b)),
        "kernel.matmul_t, all threads": (None, lambda: kernel.matmul_t(a, b)),
        "kernel.gram (A A^T), 1 thread": (1, lambda: kernel.gram(a)),
        "kernel.gram (A A^T), all threads": (None, lambda: kernel.gram(a)),
        "float64 limbs (6 dgemm), 1 thread": (1, lambda: limb_product(a, b)),
        "float64 limbs (6 dgemm), all threads": (None, lambda: limb_product(a, b)),
        "float64 dgemm, not exact, 1 thread": (1, lambda: af @ bf.T),
        "float64 dgemm, not exact, all threads": (None, lambda: af @ bf.T),
    }
    try:
        import torch
    except ImportError:
        return out
    ta, tb = torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64))
    out[f"torch {torch.__version__} int64 mm, 1 thread"] = (1, lambda: torch.mm(ta, tb.T).numpy().view(np.uint64))
    out[f"torch {torch.__version__} int64 mm, all threads"] = (None, lambda: torch.mm(ta, tb.T).numpy().view(np.uint64))
    return out


def run(threads: int | None, fn):
    """fn() with the ring kernel, BLAS and torch on ``threads`` (None: every CPU): (CPU s, wall s, result)."""
    count = threads or kernel.default_threads()
    kernel.set_threads(count)
    try:
        import torch

        torch.set_num_threads(count)
    except ImportError:
        pass
    with threadpool_limits(count):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        return time.process_time() - c0, time.perf_counter() - w0, out


def limit_check() -> bool:
    """limb_product at its bound: every limb at its most negative value over exactly 2^11 columns."""
    word = np.uint64((-(1 << 21) - (1 << 43) - (1 << 63)) % 2**64)
    assert [float(v[0, 0]) for v in limbs(np.full((1, 1), word))] == [-2.0**21, -2.0**21, -2.0**19]
    a = np.full((3, LIMB_COLUMNS), word, dtype=np.uint64)
    b = a.copy()
    b[1] = np.uint64(2**64 - 1)
    return bool(np.array_equal(limb_product(a, b), np.matmul(a, b.T)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--k", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    blas = [(i["internal_api"], i.get("architecture"), i.get("version")) for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"# {args.n} x {args.k} by {args.k} x {args.n} in Z_2^64; numpy {np.__version__}, {platform.machine()}, "
          f"{kernel.default_threads()} CPUs; BLAS {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print(f"# limb product exact at its bound (limbs -2^21, -2^21, -2^19 over 2^11 columns): {limit_check()}")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, size=(args.n, args.k), dtype=np.uint64)
    b = rng.integers(0, 2**64, size=(args.n, args.k), dtype=np.uint64)
    ref_ab, ref_aa = kernel.matmul_t(a, b), kernel.gram(a)  # also compiles the kernel before any timing
    assert np.array_equal(ref_ab[:3, :3], np.matmul(a[:3], b[:3].T))
    cands = candidates(a, b)
    times: dict[str, list] = {name: [] for name in cands}
    exact: dict[str, bool] = {}
    for _ in range(args.repeat):  # candidates interleaved, so a change of load hits them all alike
        for name, (threads, fn) in cands.items():
            cpu, wall, out = run(threads, fn)
            times[name].append((cpu, wall))
            if name not in exact:
                exact[name] = bool(np.array_equal(out, ref_aa if "gram" in name else ref_ab))
    macs = args.n * args.n * args.k
    print(f"# best and median of {args.repeat}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'candidate':45s} {'CPU s best':>10} {'CPU s med':>9} {'wall best':>9} {'wall med':>8} "
          f"{'MAC/CPU-s':>9}  exact")
    for name, t in times.items():
        cpu, wall = np.array(t).T
        work = macs / 2 if "gram" in name else macs
        print(f"{name:45s} {cpu.min():10.3f} {np.median(cpu):9.3f} {wall.min():9.3f} {np.median(wall):8.3f} "
              f"{work / cpu.min() / 1e9:8.2f}G  {exact[name] if 'not exact' not in name else '-'}", flush=True)


if __name__ == "__main__":
    main()
