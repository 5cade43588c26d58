"""Secure vs plaintext Krum, in one process: seconds per phase, ratios and bytes per party, and a plot.

Baselines, measured in the same process on the same updates, with the same threads as the secure run
(BLAS and the ring kernel both on --threads):
  float  - plaintext Krum in float64 (BLAS Gram matrix, scores, weighted sum): what a server with no
           privacy would run;
  oracle - ``secrobust.plain_aggregate``: the same rule on the same fixed-point encodings with exact
           ring arithmetic (no protocol), the test oracle.
The secure round is split as issue 8 measures it: "online" is everything but the dealer's offline phase
and the input validity phase (encoding, shares, the opening and Gram products, distances, rule,
aggregate); "round" is all of it.
Usage: python bench/aggregate_bench.py [--n 10 50 200] [--d 10000 100000 1000000] [--extra 10x10000000]
       [--repeat 3] [--threads 2] [--plot bench/results/aggregate_bench.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import secrobust
from secrobust.primitives import kernel
from secrobust.rules.krum import krum_scores


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


def krum_f(n: int) -> int:
    return (n - 3) // 2 if n < 20 else n // 5


def measure(n: int, d: int, repeat: int) -> dict:
    f = krum_f(n)
    x = np.random.default_rng(0).standard_normal((n, d)) * (1.0 / np.sqrt(d))
    if n * d >= 50_000_000:
        repeat = 1
    t_float, _ = best_of(repeat, lambda: float_krum(x, f))
    t_oracle, _ = best_of(repeat, lambda: secrobust.plain_aggregate(x, "krum", f))
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = secrobust.aggregate(x, "krum", f)
        runs.append((time.perf_counter() - t0, res))
    total, res = min(runs, key=lambda r: r[0])
    phases = dict(res.stats.seconds)
    online = total - phases.get("offline", 0.0) - phases.get("validity", 0.0)
    roles = res.stats.by_role()
    between = res.stats.servers_bytes()
    return {"n": n, "d": d, "f": f, "float_s": t_float, "oracle_s": t_oracle, "round_s": total, "online_s": online,
            "online_x_float": online / t_float, "round_x_float": total / t_float, "phases": phases,
            "bytes": roles, "between_servers": between, "8nd": 8 * n * d}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for panel, key, other, axis_of in ((ax1, "n", "d", lambda r: r["n"] * r["d"]), (ax2, "d", "n", lambda r: r["n"])):
        for k, value in enumerate(sorted({r[key] for r in rows})):
            sub = sorted((r for r in rows if r[key] == value), key=axis_of)
            xs = [axis_of(r) for r in sub]
            color = f"C{k}"
            panel.loglog(xs, [r["round_s"] for r in sub], "^-", color=color, label=f"secure round, {key}={value:g}")
            panel.loglog(xs, [r["online_s"] for r in sub], "s:", color=color, label=f"secure online, {key}={value:g}")
            panel.loglog(xs, [r["float_s"] for r in sub], "o--", color=color, label=f"plaintext float, {key}={value:g}")
        panel.set_ylabel("seconds")
        panel.legend(fontsize=6)
    ax1.set_xlabel("n · d")
    ax1.set_title("Krum: time against n·d (one colour per n)")
    ax2.set_xlabel("n")
    ax2.set_title("Krum: time against n (one colour per d)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--d", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--extra", nargs="*", default=["10x10000000"], help="more n x d points, e.g. 10x10000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=kernel.default_threads())
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    kernel.set_threads(args.threads)
    points = [(n, d) for n in args.n for d in args.d] + [tuple(int(v) for v in e.split("x")) for e in args.extra]
    print(f"# secrobust {secrobust.__version__}, numpy {np.__version__}, {platform.machine()}, python "
          f"{platform.python_version()}; {args.threads} threads for BLAS and the ring kernel; best of {args.repeat} "
          "(one run when n·d >= 5e7)")
    print(f"{'n':>4} {'d':>9} {'float s':>8} {'oracle s':>8} {'online s':>8} {'round s':>8} {'online/fl':>9} "
          f"{'round/fl':>8} {'S0<->S1 MB':>10} {'8nd MB':>8} {'worker MB':>9} {'dealer MB':>9}  phases (s)")
    rows = []
    with threadpool_limits(args.threads):
        for n, d in points:
            r = measure(n, d, args.repeat)
            rows.append(r)
            b = r["bytes"]
            phases = " ".join(f"{k}={v:.2f}" for k, v in r["phases"].items())
            print(f"{n:>4} {d:>9} {r['float_s']:>8.3f} {r['oracle_s']:>8.3f} {r['online_s']:>8.3f} {r['round_s']:>8.3f} "
                  f"{r['online_x_float']:>9.1f} {r['round_x_float']:>8.1f} {r['between_servers'] / 1e6:>10.2f} "
                  f"{r['8nd'] / 1e6:>8.2f} {b['workers']['sent'] / n / 1e6:>9.3f} {b['dealer']['sent'] / 1e6:>9.3f}  "
                  f"{phases}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
