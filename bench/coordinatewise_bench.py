"""Coordinate-wise rules on shares (median, trimmed mean, Bulyan): cost of ``coordinatewise.run_coordinatewise``.

Both parties and the dealer's expansion run in this process, one after the other (each round: party 0's step,
then party 1's), so the seconds are the two servers' CPU time added, on one core. For each (rule, n, d, f):
seconds (best of --repeat, with its split: dry-run sizing, dealing, running), the material (AND words, daBits,
product triples; the dealer's bytes to S1 = Budget.bytes_to_s1(), S0 gets a seed), the bytes each party sends
(the sum of the arrays it yields), the rounds of the circuit on all d coordinates at once (Bulyan: its choice's
rounds + the coordinates') and as run here in chunks of --chunk columns, the comparators per coordinate, the
process's peak memory (each configuration runs in its own process) and whether the result equals the twin.
Inputs: n rows of L2 norm 0.9 B (B = validity.params().bound), random directions, random additive shares;
Bulyan's distance shares from the exact distances. f: median 0 (f only sets the minimum n), trimmed mean n // 5,
Bulyan the largest its n allows ((n - 3) // 4).
Usage: OPENBLAS_NUM_THREADS=1 python bench/coordinatewise_bench.py [--n 10 20] [--d 1000 10000 100000]
       [--rules median trimmed-mean bulyan] [--repeat 3] [--chunk 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

import numpy as np

import secrobust
from secrobust.circuits import coordinatewise as CW
from secrobust.circuits import validity
from secrobust.gates import compare


def default_f(rule: str, n: int) -> int:
    return {"median": 0, "trimmed-mean": n // 5, "bulyan": CW.max_f("bulyan", n)}[rule]


def one(rule: str, n: int, d: int, f: int, repeat: int, chunk: int) -> dict:
    rng = np.random.default_rng(n * d)
    bound = validity.params().bound
    v = rng.normal(size=(n, d))
    v *= 0.9 * bound / np.linalg.norm(v, axis=1, keepdims=True)
    enc = np.trunc(v).astype(np.int64).view(np.uint64)
    del v
    x0 = rng.integers(0, 2**64 - 1, size=enc.shape, dtype=np.uint64, endpoint=True)
    x1 = enc - x0
    dist = CW.squared_distances(enc)
    d0 = rng.integers(0, 2**64 - 1, size=dist.shape, dtype=np.uint64, endpoint=True)
    d1 = dist - d0
    best = None
    for _ in range(repeat):
        a, b, cost = CW.run_coordinatewise(x0, x1, rule, f, compare.AndTripleSeeds.fresh(), bound, d0, d1,
                                           chunk=chunk)
        if best is None or cost.seconds < best[1].seconds:
            best = (a + b, cost)
    out, cost = best
    width = 2 * f if rule == "bulyan" else (f if rule == "trimmed-mean" else (n - 1) // 2)
    hi = n - width if rule != "median" else n // 2 + 1
    return {"rule": rule, "n": n, "d": d, "f": f, "seconds": cost.seconds, "phases": cost.phases,
            "and_words": cost.budget.and_words, "dabits": cost.budget.dabits, "mults": cost.budget.mults,
            "dealer_bytes": cost.budget.bytes_to_s1(), "sent": cost.sent, "rounds": cost.rounds,
            "rounds_run": cost.rounds_run, "choice_rounds": cost.choice_rounds,
            "comparators": CW.plan(n, width, hi).comparators,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "twin": bool((out == CW.plain_coordinatewise(enc, rule, f, bound)).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--d", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--rules", nargs="+", default=list(CW.COORDINATEWISE_RULES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=1 << 14)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        rule, n, d, f = json.loads(args.one)
        print(json.dumps(one(rule, n, d, f, args.repeat, args.chunk)))
        return
    print(f"# secrobust {secrobust.__version__}, numpy {np.__version__}, {platform.machine()}, python "
          f"{platform.python_version()}; best of {args.repeat}; chunks of {args.chunk} columns; "
          f"B = {validity.params().bound}")
    print(f"{'rule':>12} {'n':>3} {'d':>7} {'f':>2} {'seconds':>8} {'size/deal/run s':>17} {'cmp/coord':>9} "
          f"{'AND words':>10} {'daBits':>9} {'mults':>9} {'dealer MB':>9} {'sent MB/party':>13} {'rounds':>6} "
          f"{'(choice)':>8} {'run rounds':>10} {'peak MB':>7} twin")
    for n in args.n:
        for d in args.d:
            for rule in args.rules:
                f = default_f(rule, n)
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps([rule, n, d, f]),
                                       "--repeat", str(args.repeat), "--chunk", str(args.chunk)],
                                      capture_output=True, text=True, env=os.environ, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                ph = r["phases"]
                split = f"{ph['size']:.2f}/{ph['deal']:.2f}/{ph['run']:.2f}"
                print(f"{rule:>12} {n:>3} {d:>7} {f:>2} {r['seconds']:>8.2f} {split:>17} {r['comparators']:>9} "
                      f"{r['and_words']:>10} {r['dabits']:>9} {r['mults']:>9} {r['dealer_bytes'] / 1e6:>9.1f} "
                      f"{r['sent'][0] / 1e6:>13.1f} {r['rounds']:>6} {r['choice_rounds']:>8} {r['rounds_run']:>10} "
                      f"{r['peak_mb']:>7.0f} {'ok' if r['twin'] else 'DIFFERS'}", flush=True)
                assert r["sent"][0] == r["sent"][1]


if __name__ == "__main__":
    main()
