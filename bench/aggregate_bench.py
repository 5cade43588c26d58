"""Secure vs plaintext Krum, in one process: seconds per phase, ratios and bytes per party, and a plot.

Baselines, measured in the same process on the same updates, with the same threads as the secure run
(BLAS and the ring kernel both on --threads), interleaved with the secure runs so that load on a shared
machine hits both alike:
  float  - the fastest plaintext float Krum we could write with NumPy/BLAS (``FLOAT_KRUM``), what a server
           with no privacy would run: the Gram matrix x x^T (BLAS syrk), squared norms from its diagonal,
           partition instead of sort, and the chosen row copied out (no weighted sum over all rows). Each
           variant is timed; the fastest by median CPU time is the baseline, and it must choose the worker
           the float64 variant chooses;
  oracle - ``secrobust.plain_aggregate``: the same rule on the same fixed-point encodings with exact
           ring arithmetic (no protocol), the test oracle.
The secure round is timed two ways, interleaved: "fresh", ``secrobust.aggregate`` (a new Cluster each call;
its servers' n x d matrices are those the previous call kept, ``api.KEEP_BYTES``, so the first call of a
shape, reported on its own line, maps new memory whose pages fault in; ``--keep-bytes 0`` makes every call
do so), and "warm", a round of one ``api.Cluster`` kept across the runs, after one untimed round (a caller
that keeps its Cluster: the servers' matrices stay mapped). The secure round is split as issue 8 measures it: "online" is everything but the dealer's offline phase
and the input validity phase (encoding, shares, the opening and Gram products, distances, rule,
aggregate); "round" is all of it. Each is given in wall seconds and in CPU seconds of the process (all
threads; the phases' CPU time is read alongside their wall time), median over --repeat runs; the ratios
are of medians. Run with OpenBLAS's own CPU detection, and read its kernel from the header:
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/aggregate_bench.py [--n 10 50 200]
      [--d 10000 100000 1000000] [--extra 10x10000000] [--repeat 5] [--threads 2] [--plot bench/results/aggregate_bench.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

import secrobust
from secrobust import api
from secrobust.primitives import kernel


def _krum_choice(g: np.ndarray, f: int) -> int:
    """argmin_i of the sum of the n - f - 2 smallest squared distances to the others, from the Gram matrix."""
    sq = np.diagonal(g)
    dist = sq[:, None] + sq[None, :] - 2.0 * g
    np.fill_diagonal(dist, np.inf)
    k = len(g) - f - 2
    return int(np.argmin(np.partition(dist, k - 1, axis=1)[:, :k].sum(axis=1)))


def krum_f64(x: np.ndarray, f: int) -> np.ndarray:
    return x[_krum_choice(x @ x.T, f)].copy()


def krum_f32(x: np.ndarray, f: int) -> np.ndarray:
    x32 = x.astype(np.float32)
    return x[_krum_choice((x32 @ x32.T).astype(np.float64), f)].copy()


def krum_textbook(x: np.ndarray, f: int) -> np.ndarray:
    """The bench's baseline before issue 23: norms in their own pass, a full sort, a weighted sum over all rows."""
    sq = np.einsum("ij,ij->i", x, x)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * (x @ x.T), 0)
    np.fill_diagonal(d, np.inf)
    w = np.zeros(len(x))
    w[np.argmin(np.sort(d, axis=1)[:, :len(x) - f - 2].sum(axis=1))] = 1.0
    return w @ x


FLOAT_KRUM = {"float64 syrk": krum_f64, "float32 syrk (cast included)": krum_f32, "textbook float64": krum_textbook}


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def krum_f(n: int) -> int:
    return (n - 3) // 2 if n < 20 else n // 5


_CPU: dict[str, float] = defaultdict(float)
_wall_phase = api._phase


@contextmanager
def _phase_with_cpu(stats, name):
    """api's phase timer, also summing the process's CPU seconds per phase into _CPU."""
    c0 = time.process_time()
    try:
        with _wall_phase(stats, name):
            yield
    finally:
        _CPU[name] += time.process_time() - c0


def timed(fn) -> tuple[float, float, object]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def secure_run(fn) -> tuple[dict, object]:
    """One secure round: wall and CPU seconds, online (less the offline and validity phases), the phases,
    and the kernel-mode part of the CPU (page faults, mostly) with the minor faults."""
    _CPU.clear()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu, res = timed(fn)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    phases = dict(res.stats.seconds)
    off = ("offline", "validity")
    return {"round_s": wall, "round_cpu": cpu, "phases": phases, "phases_cpu": dict(_CPU),
            "online_s": wall - sum(phases.get(k, 0.0) for k in off),
            "online_cpu": cpu - sum(_CPU.get(k, 0.0) for k in off),
            "sys_cpu": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt}, res


def measure(n: int, d: int, repeat: int) -> dict:
    f = krum_f(n)
    x = np.random.default_rng(0).standard_normal((n, d)) * (1.0 / np.sqrt(d))
    if n * d > 100_000_000:
        repeat = 1
    want = _krum_choice(x @ x.T, f)
    for name, fn in FLOAT_KRUM.items():
        if not np.array_equal(fn(x, f), x[want]):
            raise AssertionError(f"{name} chose another worker than float64 Krum")
    base: dict[str, list] = {name: [] for name in FLOAT_KRUM}
    runs, warm_runs = [], []
    api._phase = _phase_with_cpu
    try:
        cluster = api.Cluster()
        cluster.run_round(x, "krum", f)  # the warm runs' first round, not timed
        for _ in range(repeat):
            for name, fn in FLOAT_KRUM.items():
                base[name].append(timed(lambda: fn(x, f))[:2])
            run, res = secure_run(lambda: secrobust.aggregate(x, "krum", f))
            runs.append(run)
            warm_runs.append(secure_run(lambda: cluster.run_round(x, "krum", f))[0])
        del cluster
    finally:
        api._phase = _wall_phase
    t_oracle, _ = best_of(1, lambda: secrobust.plain_aggregate(x, "krum", f))
    med = {name: np.median(np.array(t), axis=0) for name, t in base.items()}
    fastest = min(med, key=lambda name: med[name][1])
    float_s, float_cpu = med[fastest]
    keys = ("round_s", "round_cpu", "online_s", "online_cpu", "sys_cpu")
    pick = {k: float(np.median([r[k] for r in runs])) for k in keys}
    warm = {k: float(np.median([r[k] for r in warm_runs])) for k in keys}
    roles = res.stats.by_role()
    first = {k: float(runs[0][k]) for k in keys}
    first.update(online_x_float_cpu=first["online_cpu"] / float_cpu, round_x_float_cpu=first["round_cpu"] / float_cpu)
    return {"first_call": first, "n": n, "d": d, "f": f, "repeat": repeat, "float_kernel": fastest, "float_s": float(float_s),
            "float_cpu": float(float_cpu), "float_variants": {k: [float(v) for v in m] for k, m in med.items()},
            "oracle_s": t_oracle, **pick,
            "online_x_float": pick["online_s"] / float_s, "round_x_float": pick["round_s"] / float_s,
            "online_x_float_cpu": pick["online_cpu"] / float_cpu, "round_x_float_cpu": pick["round_cpu"] / float_cpu,
            "warm": {**warm, "online_x_float_cpu": warm["online_cpu"] / float_cpu,
                     "round_x_float_cpu": warm["round_cpu"] / float_cpu, "online_x_float": warm["online_s"] / float_s,
                     "round_x_float": warm["round_s"] / float_s, "phases_cpu": warm_runs[-1]["phases_cpu"],
                     "runs": warm_runs},
            "phases": runs[-1]["phases"], "phases_cpu": runs[-1]["phases_cpu"], "runs": runs, "bytes": roles,
            "between_servers": res.stats.servers_bytes(), "8nd": 8 * n * d}


def profile(n: int, d: int, top: int) -> None:
    """One warm secure round (the second of one ``api.Cluster``) under cProfile with the process's CPU time as
    its clock: a function's cumulative time is the CPU that every thread spent while it was on the main
    thread's stack (the kernel's threads included)."""
    import cProfile
    import pstats

    x = np.random.default_rng(0).standard_normal((n, d)) * (1.0 / np.sqrt(d))
    cluster = api.Cluster()
    cluster.run_round(x, "krum", krum_f(n))
    prof = cProfile.Profile(time.process_time)
    prof.runcall(cluster.run_round, x, "krum", krum_f(n))
    print(f"# profile of one warm secure round (the second of one api.Cluster), n={n} d={d}, CPU seconds")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


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
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=kernel.default_threads())
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the points, profile one more secure round of the last point (cProfile on process CPU "
                         "time, all threads) and print its N largest functions by cumulative time")
    ap.add_argument("--keep-bytes", type=int, default=None,
                    help="api.KEEP_BYTES for the fresh calls (0: aggregate() keeps no matrices between calls)")
    args = ap.parse_args()
    kernel.set_threads(args.threads)
    if args.keep_bytes is not None:
        api.KEEP_BYTES = args.keep_bytes
    points = [(n, d) for n in args.n for d in args.d] + [tuple(int(v) for v in e.split("x")) for e in args.extra]
    rows = []
    with threadpool_limits(args.threads):
        blas = sorted({(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
                       if i["user_api"] == "blas"})
        print(f"# secrobust {secrobust.__version__}, numpy {np.__version__}, {platform.machine()}, python "
              f"{platform.python_version()}; {args.threads} threads for BLAS and the ring kernel; BLAS {blas}; "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; api.KEEP_BYTES={getattr(api, 'KEEP_BYTES', None)}; "
              f"median of {args.repeat} "
              f"(one run when n·d > 1e8); load average {os.getloadavg()[0]:.1f} at the start")
        print(f"{'n':>4} {'d':>9} {'float s':>8} {'oracle s':>8} {'online s':>8} {'round s':>8} {'float CPU':>9} "
              f"{'onl. CPU':>8} {'rnd CPU':>8} {'online/fl':>9} "
              f"{'round/fl':>8} {'on/fl CPU':>9} {'rd/fl CPU':>9} {'S0<->S1 MB':>10} {'8nd MB':>8} {'worker MB':>9} "
              f"{'dealer MB':>9} {'W onl CPU':>9} {'W rnd CPU':>9} {'W on/fl':>7} {'W rd/fl':>7} {'sys F/W':>9}  baseline "
              f"(variants: wall/CPU s); phases of the last fresh run (wall/CPU s); of the last warm run (CPU s)")
        secrobust.aggregate(np.zeros((5, 64)), "krum", 1)  # loads (or compiles) the ring kernel before any timing
        for n, d in points:
            r = measure(n, d, args.repeat)
            rows.append(r)
            b = r["bytes"]
            phases = " ".join(f"{k}={v:.2f}/{r['phases_cpu'].get(k, 0.0):.2f}" for k, v in r["phases"].items())
            w = r["warm"]
            warm_phases = " ".join(f"{k}={v:.2f}" for k, v in w["phases_cpu"].items())
            variants = ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in r["float_variants"].items())
            print(f"{n:>4} {d:>9} {r['float_s']:>8.3f} {r['oracle_s']:>8.3f} {r['online_s']:>8.3f} {r['round_s']:>8.3f} "
                  f"{r['float_cpu']:>9.3f} {r['online_cpu']:>8.3f} {r['round_cpu']:>8.3f} "
                  f"{r['online_x_float']:>9.1f} {r['round_x_float']:>8.1f} {r['online_x_float_cpu']:>9.1f} "
                  f"{r['round_x_float_cpu']:>9.1f} {r['between_servers'] / 1e6:>10.2f} "
                  f"{r['8nd'] / 1e6:>8.2f} {b['workers']['sent'] / n / 1e6:>9.3f} {b['dealer']['sent'] / 1e6:>9.3f} "
                  f"{w['online_cpu']:>9.3f} {w['round_cpu']:>9.3f} {w['online_x_float_cpu']:>7.1f} "
                  f"{w['round_x_float_cpu']:>7.1f} {r['sys_cpu']:>4.2f}/{w['sys_cpu']:<4.2f}  "
                  f"{r['float_kernel']} ({variants}); {phases}; warm: {warm_phases}", flush=True)
            fc = r["first_call"]
            print(f"# n={n} d={d}: the first fresh call (no kept matrices of this shape yet): online "
                  f"{fc['online_cpu']:.3f} CPU-s ({fc['online_x_float_cpu']:.1f}x), round {fc['round_cpu']:.3f} "
                  f"({fc['round_x_float_cpu']:.1f}x), kernel-mode {fc['sys_cpu']:.2f}", flush=True)
        if args.profile:
            profile(*points[-1], args.profile)
        print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
