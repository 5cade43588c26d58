"""Exact Z_2^64 matrix products: the ring kernel against NumPy and torch, in one process.

Times A @ B.T for uint64 A, B of shape (n, k) with every candidate, checks each result equals NumPy's
wrapping product, and prints seconds and the ratio to NumPy's matmul. torch is timed if it is installed
(its int64 mm wraps the same way). Run with BLAS on one thread:
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python bench/kernel_bench.py [--n 50] [--k 400000]
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
from aggregate_bench import best_of  # bench/ is on the path when this runs as a script

from secrobust.primitives import kernel


def candidates(a: np.ndarray, b: np.ndarray) -> dict:
    out = {
        "numpy matmul": lambda: np.matmul(a, b.T),
        "numpy einsum (unblocked)": lambda: np.einsum("ik,jk->ij", a, b),
        "kernel.matmul_t, 1 thread": lambda: _threads(1, kernel.matmul_t, a, b),
        "kernel.matmul_t, all threads": lambda: _threads(None, kernel.matmul_t, a, b),
        "kernel.gram (A A^T), 1 thread": lambda: _threads(1, kernel.gram, a),
        "kernel.gram (A A^T), all threads": lambda: _threads(None, kernel.gram, a),
    }
    try:
        import torch
    except ImportError:
        return out
    ta, tb = torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64))

    def torch_mm(block: int | None, threads: int) -> np.ndarray:
        torch.set_num_threads(threads)
        if block is None:
            return torch.mm(ta, tb.T).numpy().view(np.uint64)
        acc = torch.zeros((a.shape[0], b.shape[0]), dtype=torch.int64)
        for c in range(0, a.shape[1], block):
            acc += torch.mm(ta[:, c:c + block], tb[:, c:c + block].T)
        return acc.numpy().view(np.uint64)

    out[f"torch {torch.__version__} int64 mm, 1 thread"] = lambda: torch_mm(None, 1)
    out[f"torch {torch.__version__} int64 mm, all threads"] = lambda: torch_mm(None, kernel.default_threads())
    out[f"torch {torch.__version__} int64 mm, 8192-column blocks"] = lambda: torch_mm(8192, 1)
    return out


def _threads(count, fn, *args):
    kernel.set_threads(count)
    try:
        return fn(*args)
    finally:
        kernel.set_threads(None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--k", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, size=(args.n, args.k), dtype=np.uint64)
    b = rng.integers(0, 2**64, size=(args.n, args.k), dtype=np.uint64)
    print(f"# {args.n} x {args.k} by {args.k} x {args.n} in Z_2^64; numpy {np.__version__}, {platform.machine()}, "
          f"{kernel.default_threads()} CPUs; best of {args.repeat}")
    ref_ab, ref_aa = np.matmul(a, b.T), np.matmul(a, a.T)
    base = None
    for name, fn in candidates(a, b).items():
        seconds, out = best_of(args.repeat, fn)
        ok = np.array_equal(out, ref_aa if "gram" in name else ref_ab)
        base = base or seconds
        print(f"{name:45s} {seconds:8.3f} s  {seconds / base:6.2f}x numpy matmul  exact={ok}", flush=True)


if __name__ == "__main__":
    main()
