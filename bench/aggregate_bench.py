"""Secure vs plaintext Krum, in one process: seconds, ratios and bytes per party.

Baselines, measured in the same process on the same updates:
  float  - plaintext Krum in float64 (BLAS Gram matrix, scores, weighted sum): what a server with no
           privacy would run;
  oracle - ``secrobust.plain_aggregate``: the same rule on the same fixed-point encodings with exact
           ring arithmetic (no protocol), the test oracle.
Usage: python bench/aggregate_bench.py [--n 10 50] [--d 10000 100000 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import secrobust
from secrobust.rules.selection import krum_scores


def float_krum(x: np.ndarray, f: int) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * (x @ x.T), 0)
    w = np.zeros(len(x))
    w[np.argmin(krum_scores(d, f))] = 1.0
    return w @ x


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--d", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"# secrobust {secrobust.__version__}, numpy {np.__version__}, {platform.machine()}, "
          f"python {platform.python_version()}; best of {args.repeat}")
    header = (f"{'n':>4} {'d':>9} {'f':>3} {'float s':>9} {'oracle s':>9} {'secure s':>9} {'x float':>8} "
              f"{'x oracle':>8} {'S0 sent MB':>10} {'S1 sent MB':>10} {'S1 recv MB':>10} {'worker MB':>9} "
              f"{'dealer MB':>9} {'8nd MB':>8}  secure phases (s)")
    print(header)
    for n in args.n:
        f = (n - 3) // 2 if n < 20 else n // 5
        for d in args.d:
            x = np.random.default_rng(0).standard_normal((n, d)) * 1e-3
            repeat = 1 if n * d >= 50_000_000 else args.repeat
            t_float, _ = best_of(repeat, lambda x=x, f=f: float_krum(x, f))
            t_oracle, _ = best_of(repeat, lambda x=x, f=f: secrobust.plain_aggregate(x, "krum", f))
            t_secure, res = best_of(repeat, lambda x=x, f=f: secrobust.aggregate(x, "krum", f))
            roles = res.stats.by_role()
            mb = lambda v: v / 1e6  # noqa: E731
            phases = " ".join(f"{k}={v:.2f}" for k, v in res.stats.seconds.items())
            print(f"{n:>4} {d:>9} {f:>3} {t_float:>9.3f} {t_oracle:>9.3f} {t_secure:>9.3f} "
                  f"{t_secure / t_float:>8.1f} {t_secure / t_oracle:>8.1f} {mb(roles['S0']['sent']):>10.2f} "
                  f"{mb(roles['S1']['sent']):>10.2f} {mb(roles['S1']['received']):>10.2f} "
                  f"{mb(roles['workers']['sent']) / n:>9.3f} {mb(roles['dealer']['sent']):>9.3f} "
                  f"{mb(8 * n * d):>8.2f}  {phases}", flush=True)


if __name__ == "__main__":
    main()
