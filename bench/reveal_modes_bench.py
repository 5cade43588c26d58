"""Cost of each reveal mode, in one process: seconds per phase, bytes per party and dealer bytes.

For each (n, d, rule), the three modes run on the same updates, one after the other, best of --repeat
(the round's total wall time decides which run is kept); the ratio is against reveal="distances" from
the same process. Dealer bytes are what the dealer sends (its explicit correction words; seeds are tiny).
Usage: OPENBLAS_NUM_THREADS=1 python bench/reveal_modes_bench.py [--n 10 50] [--d 1000 10000 100000 1000000]
       [--rules krum multi-krum] [--repeat 3] [--out bench/results/reveal_modes_bench.txt]
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
from secrobust.rules import secure

MODES = ("distances", "weights", "aggregate")


def updates(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * (0.5 / np.sqrt(d))
    x[: n // 5] += 3.0 / np.sqrt(d)
    return x


def run(x: np.ndarray, rule: str, f: int, mode: str, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = secrobust.aggregate(x, rule, f, reveal=mode)
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
    args = ap.parse_args()
    lines = [f"# {' '.join(['python'] + sys.argv)}", f"# {platform.platform()}, {platform.processor() or ''}"]
    records = []
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
                    rounds = secure.rounds(rule, n, f, {}, secure.dmax_for(2**27)) if mode != "distances" else 0
                    line = (f"n={n:3d} d={d:8d} {rule:10s} {mode:9s} {r['wall']:8.3f} s  x{r['wall'] / base['wall']:.2f}"
                            f"  rule {r['phases'].get('rule', 0):.3f} s  aggregate {r['phases'].get('aggregate', 0):.3f} s"
                            f"  offline {r['phases'].get('offline', 0):.3f} s  S0->S1+S1->S0 {r['servers_bytes'] / 1e6:9.3f} MB"
                            f"  dealer {r['dealer_bytes'] / 1e6:8.3f} MB  rule rounds {rounds}  same aggregate {same}")
                    print(line, flush=True)
                    lines.append(line)
                    records.append({"n": n, "d": d, "rule": rule, "mode": mode,
                                    **{k: v for k, v in r.items() if k != "aggregate"}, "ratio": r["wall"] / base["wall"]})
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
