"""The input validity check's cost: the same round with and without it, in one process, same updates.

For each (rule, n, d): seconds per phase of the checked round, the check's own phase ("validity": the
seed exchange, the projections, the comparison rounds, and for the mean the masked opening that only the
check needs) against the rest of the online round (share, agree, open, distances, rule, aggregate),
the unchecked round's total, bytes sent per server in messages whose kind starts with "validity" against
the budget 16nd, and the dealer's bytes with and without the check.
Then the comparison block alone on m shared values ([x <_u c], the primitive a per-coordinate range check
would need for every one of the n d coordinates): seconds, AND words and bytes sent per party per value,
and what n d = 5e7 such comparisons would cost at that rate.
Usage: OPENBLAS_NUM_THREADS=1 python bench/validity_bench.py [--n 10 50] [--d 10000 100000 1000000]
       [--rules krum mean] [--repeat 3] [--compare 1048576]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import numpy as np

import secrobust
from secrobust.api import Cluster
from secrobust.circuits.validity import params
from secrobust.gates import arith, compare

ONLINE = ("share", "agree", "open", "distances", "rule", "aggregate")


def run(x: np.ndarray, rule: str, f: int, check: bool) -> tuple[float, secrobust.AggregateResult, dict]:
    by_kind: dict[tuple[str, str], int] = defaultdict(int)
    cluster = Cluster(tap=lambda sender, _r, kind, data: by_kind.__setitem__((sender, kind),
                                                                               by_kind[(sender, kind)] + len(data)))
    t0 = time.perf_counter()
    res = cluster.run_round(x, rule, f, check_inputs=check)
    return time.perf_counter() - t0, res, by_kind


def best(repeat: int, x: np.ndarray, rule: str, f: int, check: bool):
    out = None
    for _ in range(repeat):
        cur = run(x, rule, f, check)
        if out is None or cur[0] < out[0]:
            out = cur
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--d", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--rules", nargs="+", default=["krum", "mean"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compare", type=int, default=1 << 20, help="values for the comparison-block line (0: skip)")
    args = ap.parse_args()
    p = params()
    print(f"# secrobust {secrobust.__version__}, numpy {np.__version__}, {platform.machine()}, python "
          f"{platform.python_version()}; best of {args.repeat} (1 at n d >= 5e7); lambda = {p.projections}, "
          f"T = {p.window}, B = {p.bound}")
    print(f"{'rule':>6} {'n':>3} {'d':>8} {'checked s':>9} {'unchk s':>8} {'valid s':>8} {'rest s':>7} "
          f"{'valid/rest':>10} {'S0 valid MB':>11} {'S1 valid MB':>11} {'16nd MB':>8} {'dealer MB':>9} "
          f"{'dealer unchk MB':>15}  checked phases (s)")
    for rule in args.rules:
        for n in args.n:
            f = (n - 3) // 2 if n < 20 else n // 5
            for d in args.d:
                x = np.random.default_rng(0).standard_normal((n, d)) * (10.0 / np.sqrt(d))
                repeat = 1 if n * d >= 50_000_000 else args.repeat
                t_chk, res, kinds = best(repeat, x, rule, f, True)
                t_un, bare, _ = best(repeat, x, rule, f, False)
                sec = res.stats.seconds
                rest = sum(sec.get(k, 0.0) for k in ONLINE)
                vbytes = {s: sum(v for (snd, k), v in kinds.items() if snd == s and k.startswith("validity"))
                          for s in ("S0", "S1")}
                dealer = res.stats.by_role().get("dealer", {}).get("sent", 0)
                dealer_un = bare.stats.by_role().get("dealer", {}).get("sent", 0)
                phases = " ".join(f"{k}={v:.3f}" for k, v in sec.items())
                print(f"{rule:>6} {n:>3} {d:>8} {t_chk:>9.3f} {t_un:>8.3f} {sec['validity']:>8.3f} {rest:>7.3f} "
                      f"{sec['validity'] / rest:>10.2f} {vbytes['S0'] / 1e6:>11.3f} {vbytes['S1'] / 1e6:>11.3f} "
                      f"{16 * n * d / 1e6:>8.1f} {dealer / 1e6:>9.3f} {dealer_un / 1e6:>15.3f}  {phases}",
                      flush=True)
    if args.compare:
        compare_throughput(args.compare)


def compare_throughput(m: int) -> None:
    rng = np.random.default_rng(0)
    x0, x1 = (rng.integers(0, 2**64 - 1, size=m, dtype=np.uint64, endpoint=True) for _ in range(2))
    circuit = lambda p, src: compare.less_than_public(p, x0 if p == 0 else x1, 12345, src)  # noqa: E731
    words, rounds = arith.count_words(circuit)
    seeds = compare.AndTripleSeeds.fresh()
    t0 = time.perf_counter()
    c1 = compare.make_and_triple("bench", words, seeds)
    t_dealer = time.perf_counter() - t0
    sent = [0]
    src0 = compare.AndSource.for_party(0, "bench", words, seeds.s0)
    src1 = compare.AndSource.for_party(1, "bench", words, seeds.s1, c1)
    t0 = time.perf_counter()
    compare.run_pair(circuit(0, src0), circuit(1, src1), on_round=lambda a, b: sent.__setitem__(0, sent[0] + a.nbytes))
    t_online = time.perf_counter() - t0
    print(f"# comparison block, [x <_u c] on m = {m} shared values: {rounds} rounds, {words / m:.2f} AND words "
          f"({64 * words / m:.0f} gates) per value; online {t_online:.2f} s for both parties ({1e9 * t_online / m:.0f} "
          f"ns/value), dealer {t_dealer:.2f} s; sent per party {sent[0] / m:.1f} bytes/value; at that rate "
          f"n d = 5e7 values would take {t_online * 5e7 / m:.0f} s and {sent[0] * 5e7 / m / 1e9:.1f} GB per server "
          f"(+{8 * words * 5e7 / m / 1e9:.1f} GB from the dealer)")


if __name__ == "__main__":
    main()
