"""Load test of the gRPC deployment: many workers, several rounds, everything over mutual TLS on loopback.

Starts a local deployment (dealer, S0, S1 as processes; the workers as ``--per-process`` worker
identities per OS process, each with its own certificate and channels), runs ``--rounds`` rounds of
``--rule`` on fresh (n, d) updates, and records per round: wall seconds, the servers' phase
timings, protocol bytes per role (as the in-process run counts them), wire bytes, aggregate-share
downloads, and whether the result equals the in-process run on the same updates (``--check``, which
also times the in-process run for the ratio).

Usage (the documented load test, about 5-10 minutes on 2 cores):
    .venv/bin/python bench/grpc_load.py --n 200 --d 100000 --rounds 3 --check
Results go to bench/results/grpc_load.json (and a Markdown table beside it).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from secrobust.deploy.local import LocalDeployment, LocalOptions, in_process_reference

RESULTS = Path(__file__).resolve().parent / "results"


def updates(seed: int, n: int, d: int, byzantine: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=d) + 0.5 * rng.normal(size=(n, d))) / np.sqrt(d)
    x[:byzantine] *= -4.0
    return x


def run(n: int, d: int, rounds: int, rule: str, f: int, per_process: int, check: bool,
        workdir: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "d": d, "rounds": rounds, "rule": rule, "f": f, "workers_per_process": per_process,
                           "machine": {"python": platform.python_version(), "platform": platform.platform(),
                                       "cpus": __import__("os").cpu_count()},
                           "rounds_detail": []}
    t0 = time.perf_counter()
    opts = LocalOptions(share_window_s=120.0, peer_timeout_s=300.0, connect_timeout_s=10.0, start_timeout_s=300.0,
                        workers_per_process=per_process)
    with LocalDeployment(n, workdir, opts) as dep:
        out["startup_seconds"] = round(time.perf_counter() - t0, 3)
        for r in range(rounds):
            x = updates(r, n, d, f)
            round_id = dep.operator.next_round_id()  # type: ignore[union-attr]
            tick = time.perf_counter()
            res = dep.aggregate(x, rule, f)
            wall = time.perf_counter() - tick
            row: dict[str, Any] = {
                "round": r, "wall_seconds": round(wall, 3), "participants": len(res.participants),
                "server_seconds": {k: {p: round(v, 3) for p, v in s.items()} for k, s in res.stats.server_seconds.items()},
                "bytes_by_role": res.stats.by_role(),
                "wire_bytes_received": res.stats.wire_bytes_received,
                "delivered_bytes_total": int(sum(res.stats.delivered_bytes.values())),
            }
            if check:
                tick = time.perf_counter()
                ref = in_process_reference(round_id, x, rule, f)   # bytes as the deployment counts them
                row["in_process_seconds"] = round(time.perf_counter() - tick, 3)
                row["ratio_to_in_process"] = round(wall / row["in_process_seconds"], 3)
                row["equal_to_in_process"] = bool(np.array_equal(res.aggregate, ref.aggregate)
                                                  and np.array_equal(res.weights, ref.weights))
                row["bytes_equal_to_in_process"] = res.stats.by_role() == ref.stats.by_role()
            out["rounds_detail"].append(row)
            print(json.dumps(row), flush=True)
    out["total_seconds"] = round(time.perf_counter() - t0, 3)
    out["launcher_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["children_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# gRPC load test: n={res['n']}, d={res['d']}, rule={res['rule']}, f={res['f']}", "",
             f"startup {res['startup_seconds']} s (certificates, {res['n']} workers in processes of "
             f"{res['workers_per_process']}); total {res['total_seconds']} s; largest child RSS "
             f"{res['children_max_rss_mb']} MB", "",
             "| round | wall s | in-process s | ratio | equal | S0 sent MB | S1 sent MB | workers sent MB | "
             "open s | share s | triple wait s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rounds_detail"]:
        b = r["bytes_by_role"]
        s1 = r["server_seconds"].get("S1", {})
        lines.append(f"| {r['round']} | {r['wall_seconds']} | {r.get('in_process_seconds', '')} | "
                     f"{r.get('ratio_to_in_process', '')} | {r.get('equal_to_in_process', '')} | "
                     f"{b.get('S0', {}).get('sent', 0) / 1e6:.1f} | {b.get('S1', {}).get('sent', 0) / 1e6:.1f} | "
                     f"{b.get('workers', {}).get('sent', 0) / 1e6:.1f} | {s1.get('open', 0)} | {s1.get('share', 0)} | "
                     f"{s1.get('offline', 0)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rule", default="krum")
    ap.add_argument("--f", type=int, default=20)
    ap.add_argument("--per-process", type=int, default=25, help="worker identities per worker process")
    ap.add_argument("--check", action="store_true", help="also run in process and compare")
    ap.add_argument("--out", type=Path, default=RESULTS / "grpc_load.json")
    args = ap.parse_args()
    res = run(args.n, args.d, args.rounds, args.rule, args.f, args.per_process, args.check)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
