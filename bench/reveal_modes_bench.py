"""Cost of each reveal mode, in one process: seconds per phase, bytes per party and dealer bytes.

For each (n, d, rule), the three modes run on the same updates, one after the other, best of --repeat
(the round's total wall time decides which run is kept); the ratio is against reveal="distances" from
the same process. Dealer bytes are what the dealer sends (its explicit correction words; seeds are tiny).
With --coordinatewise N.. the coordinate-wise rules (reveal="aggregate" only) run at those n instead,
against reveal="distances" Krum and plaintext NumPy on the same updates (for bulyan NumPy does the trimmed
mean only, without the Krum selection).
Usage: OPENBLAS_NUM_THREADS=1 python bench/reveal_modes_bench.py [--n 10 50] [--d 1000 10000 100000 1000000]
       [--rules krum multi-krum] [--repeat 3] [--out bench/results/reveal_modes_bench.txt]
       OPENBLAS_NUM_THREADS=1 python bench/reveal_modes_bench.py --coordinatewise 10 20 --d 1000 10000 100000
       --repeat 2 --out bench/results/coordinatewise_round_bench.txt
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import secrobust
from secrobust.rules import sizing
from secrobust.rules.view import dmax_for

MODES = ("distances", "weights", "aggregate")


def updates(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * (0.5 / np.sqrt(d))
    x[: n // 5] += 3.0 / np.sqrt(d)
    return x


PLAIN = {"median": lambda x, f: np.median(x, axis=0),
         "trimmed-mean": lambda x, f: np.sort(x, axis=0)[f:len(x) - f].mean(axis=0),
         "bulyan": lambda x, f: np.sort(x, axis=0)[f:len(x) - f].mean(axis=0)}


def run(x: np.ndarray, rule: str, f: int, mode: str, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = secrobust.aggregate(x, rule, f, reveal=mode, min_participants=2)
        wall = time.perf_counter() - t0
        if best is None or wall < best["wall"]:
            roles = res.stats.by_role()
            best = {"wall": wall, "phases": {k: round(v, 4) for k, v in res.stats.seconds.items()},
                    "servers_bytes": res.stats.servers_bytes(),
                    "s0_sent": roles["S0"]["sent"], "s1_sent": roles["S1"]["sent"],
                    "dealer_bytes": roles["dealer"]["sent"], "aggregate": res.aggregate}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--d", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6])
    ap.add_argument("--rules", nargs="+", default=["krum", "multi-krum"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--coordinatewise", type=int, nargs="*", default=None, metavar="N")
    args = ap.parse_args()
    lines = [f"# {' '.join(['python'] + sys.argv)}", f"# {platform.platform()}, {platform.processor() or ''}"]
    records = []
    if args.coordinatewise:
        coordinatewise(args, lines, records)
        args.n = []
    for n in args.n:
        f = n // 5
        for d in (int(v) for v in args.d):
            x = updates(n, d)
            for rule in args.rules:
                base = None
                for mode in MODES:
                    r = run(x, rule, f, mode, args.repeat)
                    if base is None:
                        base = r
                    same = np.array_equal(r["aggregate"], base["aggregate"])
                    rounds = sizing.rounds(rule, n, f, {}, dmax_for(2**27)) if mode != "distances" else 0
                    line = (f"n={n:3d} d={d:8d} {rule:10s} {mode:9s} {r['wall']:8.3f} s  x{r['wall'] / base['wall']:.2f}"
                            f"  rule {r['phases'].get('rule', 0):.3f} s  aggregate {r['phases'].get('aggregate', 0):.3f} s"
                            f"  offline {r['phases'].get('offline', 0):.3f} s  S0->S1+S1->S0 {r['servers_bytes'] / 1e6:9.3f} MB"
                            f"  dealer {r['dealer_bytes'] / 1e6:8.3f} MB  rule rounds {rounds}  same aggregate {same}")
                    print(line, flush=True)
                    lines.append(line)
                    records.append({"n": n, "d": d, "rule": rule, "mode": mode,
                                    **{k: v for k, v in r.items() if k != "aggregate"}, "ratio": r["wall"] / base["wall"]})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))


def coordinatewise(args: argparse.Namespace, lines: list[str], records: list[dict]) -> None:
    """Each coordinate-wise rule through the whole round, against default-mode Krum and NumPy."""
    for n in args.coordinatewise:
        for d in (int(v) for v in args.d):
            x = updates(n, d)
            f = (n - 3) // 4
            base = run(x, "krum", f, "distances", args.repeat)
            for rule in PLAIN:
                r = run(x, rule, f, "aggregate", args.repeat)
                t0 = time.perf_counter()
                PLAIN[rule](x, f)
                numpy_s = time.perf_counter() - t0
                line = (f"n={n:3d} d={d:8d} f={f} {rule:12s} {r['wall']:8.3f} s  x{r['wall'] / base['wall']:.1f} vs krum "
                        f"distances ({base['wall']:.3f} s), numpy {numpy_s:.4f} s  rule {r['phases'].get('rule', 0):.3f} s"
                        f"  offline {r['phases'].get('offline', 0):.3f} s  S0<->S1 {r['servers_bytes'] / 1e6:9.1f} MB"
                        f"  dealer {r['dealer_bytes'] / 1e6:8.1f} MB")
                print(line, flush=True)
                lines.append(line)
                records.append({"n": n, "d": d, "f": f, "rule": rule, "mode": "aggregate", "numpy_s": numpy_s,
                                **{k: v for k, v in r.items() if k != "aggregate"}, "krum_distances_s": base["wall"]})


if __name__ == "__main__":
    main()
