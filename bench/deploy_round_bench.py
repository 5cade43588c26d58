"""One LocalDeployment round at a large size: wall seconds, each server's phases, and the servers' peak RSS.

Starts a local deployment (dealer, S0, S1 and the workers as processes, mutual TLS on loopback), runs
``--rounds`` rounds of ``--rule`` on fresh (n, d) updates with the same (n, d), so every round after the
first takes a triple prefetched during the round before (the first also waits for the dealer), and
records per round: the wall seconds of ``dep.aggregate``, each server's seconds per phase, the time
from the last worker upload landing at S1 to the round's end at S1 (``tail_s``: what pipelining
shortens), and VmHWM (peak resident set) of the S0 and S1 processes during that round (reset through
/proc/<pid>/clear_refs before it) against 8nd, the size of one server's n x d share matrix. Memory is in MiB
throughout (``vmhwm_mb`` is /proc's kB / 1024; the share matrix 8nd / 2^20).

Usage (a few minutes on 2 cores):
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/deploy_round_bench.py --n 50 --d 1000000 --rounds 3 --prefetch 0
With ``--prefetch 0`` the dealer makes each round's triple before its keys go out, so on one machine the
dealer's work (two n x n x d products) does not compete with the round's online phase; wall seconds then
include that offline wait, the phases and ``tail_s`` do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from secrobust.deploy.local import LocalDeployment, LocalOptions

RESULTS = Path(__file__).resolve().parent / "results"


def updates(seed: int, n: int, d: int, byzantine: int, on_disk: Path | None = None) -> np.ndarray:
    """Fresh (n, d) updates; with ``on_disk`` a file-backed np.memmap written row by row, so the launcher's
    n x d input is page cache (reclaimable), not its heap."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d)
    x = np.empty((n, d)) if on_disk is None else np.memmap(on_disk, dtype=np.float64, mode="w+", shape=(n, d))
    for i in range(n):
        row = x[i]
        row[:] = rng.standard_normal(d, dtype=np.float32)
        row *= 0.5
        row += base
        row /= np.sqrt(d)
        if i < byzantine:
            row *= -4.0
    if isinstance(x, np.memmap):
        x.flush()
    return x


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _log_events(dep: LocalDeployment, name: str, round_id: int) -> list[dict[str, Any]]:
    out = []
    for line in dep.children[name].log.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("round") == round_id:
                out.append(rec)
    return out


def run(n: int, d: int, rounds: int, rule: str, f: int, per_process: int,
        workdir: Path | None = None, prefetch: int = 1, malloc: str | None = None,
        input_on_disk: bool = False) -> dict[str, Any]:
    env = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    if malloc is not None:
        env["SECROBUST_MALLOC"] = malloc
    opts = LocalOptions(share_window_s=300.0, peer_timeout_s=300.0, connect_timeout_s=10.0, start_timeout_s=300.0,
                        workers_per_process=per_process, extra_env=env, prefetch=prefetch)
    out: dict[str, Any] = {"n": n, "d": d, "rule": rule, "f": f, "workers_per_process": per_process, "prefetch": prefetch,
                           "share_matrix_mib": round(8 * n * d / 2**20, 1), "env": env, "input_on_disk": input_on_disk,
                           "rounds_detail": []}
    with LocalDeployment(n, workdir, opts) as dep:
        pids = {name: dep.children[name].proc.pid for name in ("S0", "S1")}  # type: ignore[union-attr]
        every = {name: c.proc.pid for name, c in dep.children.items()}  # type: ignore[union-attr]
        out["idle_rss_mb"] = {name: round(_status_kb(pid, "VmRSS") / 1024, 1) for name, pid in pids.items()}
        print(json.dumps({"idle_rss_mb": out["idle_rss_mb"]}), flush=True)
        for r in range(rounds):
            x = updates(r, n, d, f, Path(dep.workdir) / "bench-input.f64" if input_on_disk else None)
            reset = {name: _reset_peak(pid) for name, pid in every.items()}
            round_id = dep.operator.next_round_id()  # type: ignore[union-attr]
            cpu0 = {name: _cpu_s(pid) for name, pid in every.items()}
            tick = time.perf_counter()
            res = dep.aggregate(x, rule, f)
            wall = time.perf_counter() - tick
            cpu = {name: _cpu_s(pid) - cpu0[name] for name, pid in every.items()}
            del x
            ev = _log_events(dep, "S1", round_id)
            uploads = [e["ts"] for e in ev if e["event"] == "received" and e.get("phase") == "share-masked"]
            done = [e["ts"] for e in ev if e["event"] == "round-done"]
            row = {
                "round": r, "wall_seconds": round(wall, 3), "participants": len(res.participants),
                "server_seconds": {k: {p: round(v, 3) for p, v in s.items()} for k, s in res.stats.server_seconds.items()},
                "tail_s": round(_ts(done[-1]) - _ts(max(uploads)), 3) if uploads and done else None,
                "vmhwm_mb": {name: round(_status_kb(pid, "VmHWM") / 1024, 1) for name, pid in pids.items()},
                "peak_reset": {name: reset[name] for name in pids},
                "others_vmhwm_mb": {
                    "dealer": round(_status_kb(every["dealer"], "VmHWM") / 1024, 1),
                    "worker_processes_max": round(max(_status_kb(p, "VmHWM") for k, p in every.items()
                                                      if k.startswith("worker")) / 1024, 1),
                    "worker_processes_sum": round(sum(_status_kb(p, "VmHWM") for k, p in every.items()
                                                      if k.startswith("worker")) / 1024, 1),
                    "launcher_maxrss_since_start": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
                "cpu_s": {"S0": round(cpu["S0"], 2), "S1": round(cpu["S1"], 2), "dealer": round(cpu["dealer"], 2),
                          "workers": round(sum(v for k, v in cpu.items() if k.startswith("worker")), 2)},
                "bytes_by_role": res.stats.by_role(),
            }
            row["vmhwm_over_share_matrix"] = {k: round(v / out["share_matrix_mib"], 2) for k, v in row["vmhwm_mb"].items()}
            out["rounds_detail"].append(row)
            print(json.dumps(row), flush=True)
    return out


def _ts(value: Any) -> float:
    """A log timestamp (ISO 8601 or seconds) as seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rule", default="krum")
    ap.add_argument("--f", type=int, default=5)
    ap.add_argument("--per-process", type=int, default=10, help="worker identities per worker process")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the deployment's files (logs) here")
    ap.add_argument("--malloc", default=None, help="the servers' glibc mallopt settings, e.g. 'arena_max=2' "
                    "('' for glibc's defaults; unset: secrobust.deploy.process.SERVER_MALLOC)")
    ap.add_argument("--prefetch", type=int, default=1, help="rounds ahead the dealer makes triples (0: each round "
                    "waits for its own, so the dealer's work never overlaps a round's online phase on a shared machine)")
    ap.add_argument("--input-on-disk", action="store_true", help="the launcher's n x d input as a file-backed "
                    "np.memmap in the workdir (for d = 10^7, where 4 GB of input would crowd the servers out)")
    args = ap.parse_args()
    res = run(args.n, args.d, args.rounds, args.rule, args.f, args.per_process, args.workdir, args.prefetch,
              args.malloc, args.input_on_disk)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
