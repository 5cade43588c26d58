"""One networked secrobust round against one Flower 1.42.0 SecAgg+ round, back to back, in one run.

For each d in --d, the script runs, one after the other on the same machine:

* **secrobust**: ``LocalDeployment`` (dealer, S0, S1 and the workers as OS processes, mutual TLS on
  loopback), ``--rounds`` rounds of Krum with f = --f on the same (n, d) updates. Per round: wall
  seconds of ``dep.aggregate`` (it includes the launcher writing each worker's update file and the
  operator fetching the aggregate shares), the servers' phase timings, protocol bytes per party, and
  the peak RSS (VmHWM, reset through /proc/<pid>/clear_refs before each round) of the S0, S1 and
  dealer processes, with S0/S1's peak against their n x d uint64 share matrix (8nd bytes).
* **Flower 1.42.0 SecAgg+**: ``SecAggPlusWorkflow`` (num_shares=3, reconstruction_threshold=2 as in
  Flower's examples/flower-secure-aggregation) inside ``DefaultWorkflow`` with FedAvg, n clients
  running ``secaggplus_mod``, each returning a fixed random vector of d parameters (no training), on
  Flower's Simulation Engine (``flwr.simulation.run_simulation``, Ray backend). The timed unit is one
  fit round: the four SecAgg+ stages plus FedAvg's ``aggregate_fit``; the time to start Ray and the
  virtual SuperNodes is not in it. The server side (in-memory SuperLink state + ServerApp) lives in one
  process, whose VmHWM is reset and read per round the same way.

Flower is never a dependency of the project: its part runs as a subprocess of this same file in its own
venv (bench/.venv-flower, git-ignored), created on first use with ``pip install "flwr[simulation]==1.42.0"
numpy``. The secrobust part runs in the interpreter that runs this script (the project's .venv).

Usage (about 5 minutes on an idle 2-core machine; bench/FLOWER.md has the details):
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python bench/flower_vs_secrobust.py \\
        --n 50 --d 100000 1000000 --rounds 4 --secrobust-rev HEAD
Prints a Markdown table and writes it to bench/results/flower_vs_secrobust.md (raw numbers beside it
in flower_vs_secrobust.json). ``--skip-flower`` / ``--skip-secrobust`` run one side only. Before each
system's run the script waits (``--wait-idle``) for an idle machine, and every round records the CPU
seconds other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread caps)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FLOWER_VENV = BENCH / ".venv-flower"
FLOWER_VERSION = "1.42.0"
FLOWER_REQUIREMENTS = (f"flwr[simulation]=={FLOWER_VERSION}", "numpy")
RESULTS = BENCH / "results" / "flower_vs_secrobust.md"
NUM_SHARES = 3  # examples/flower-secure-aggregation: num-shares = 3
RECONSTRUCTION_THRESHOLD = 2  # ... reconstruction-threshold = 2
MB = 1e6


# ---------------------------------------------------------------- shared by both sides


def client_update(i: int, d: int, f: int, seed: int = 0) -> np.ndarray:
    """Client i's fixed update: a common direction plus its own noise; the first f clients flip and scale it."""
    common = np.random.default_rng([seed, 0]).standard_normal(d)
    x = (common + 0.5 * np.random.default_rng([seed, 1, i]).standard_normal(d)) / np.sqrt(d)
    return -4.0 * x if i < f else x


def reset_peak_rss(pid: int | str) -> bool:
    """Reset the peak RSS (VmHWM) of a process to its current RSS; False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_bytes(pid: int | str, field: str) -> int:
    """A memory field of /proc/<pid>/status in bytes: VmHWM (peak RSS since start or the last reset), VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def peak_rss_bytes(pid: int | str) -> int:
    """VmHWM: the peak RSS since the process started or since ``reset_peak_rss``."""
    return status_bytes(pid, "VmHWM")


class ForeignCpu:
    """CPU seconds used by processes outside this process's tree, sampled every ``interval`` s in a thread.

    On a 2-core machine shared with other work, a round's time means little if something else ran
    during it; every round records this count so a disturbed round is visible in the report."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.root = os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.seconds = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ForeignCpu":
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        procs: dict[int, tuple[int, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        mine, todo = set(), [self.root, 2]  # this process's tree, and kernel threads (loopback work)
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo.extend(children.get(pid, ()))
        for pid, (_, cpu) in procs.items():
            if pid in mine:
                continue
            if not first:  # a process first seen now started since the last sample: count all of it
                self.seconds += cpu - self._last.get(pid, 0.0)
            self._last[pid] = cpu
        self._last = {pid: cpu for pid, cpu in self._last.items() if pid in procs}


def wait_idle(max_s: float, window_s: float = 5.0, windows: int = 3, idle: float = 0.9) -> float:
    """Wait until the machine was at least ``idle`` idle for ``windows`` windows in a row (at most
    ``max_s``; 0 = do not wait). Returns the seconds waited."""
    def busy_idle() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(v), v[3] + v[4]

    t0 = time.monotonic()
    quiet = 0
    while quiet < windows and time.monotonic() - t0 < max_s:
        total0, idle0 = busy_idle()
        time.sleep(window_s)
        total1, idle1 = busy_idle()
        quiet = quiet + 1 if (idle1 - idle0) >= idle * max(1, total1 - total0) else 0
    return time.monotonic() - t0


def summarize(seconds: list[float]) -> dict[str, float | None]:
    """Round 1 (cold) and the best / median of the rounds after it (warm)."""
    warm = seconds[1:]
    return {"round1": seconds[0] if seconds else None,
            "warm_best": min(warm) if warm else None,
            "warm_median": statistics.median(warm) if warm else None}


# ---------------------------------------------------------------- secrobust side (project venv)


def use_secrobust_rev(rev: str | None, tmp: Path) -> str:
    """Make ``import secrobust`` (here and in LocalDeployment's children) load src/ of git revision
    ``rev``, exported to ``tmp``; None keeps the working tree. Returns a label of what is measured."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], check=True, capture_output=True, text=True).stdout.strip()

    if rev is None:
        dirty = " + uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
        return f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}"
    if "secrobust" in sys.modules:
        raise RuntimeError("secrobust was imported before --secrobust-rev took effect")
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    sys.path.insert(0, str(tmp / "src"))  # LocalDeployment puts its own src/ first in its children's PYTHONPATH
    return f"commit {commit[:12]} (git archive)"


def run_secrobust(n: int, d: int, rounds: int, f: int, per_process: int) -> dict[str, Any]:
    """``rounds`` Krum rounds over a LocalDeployment; per round wall s, server phases, bytes, peak RSS."""
    import secrobust
    from secrobust.deploy.local import LocalDeployment, LocalOptions

    x = np.stack([client_update(i, d, f) for i in range(n)])
    opts = LocalOptions(share_window_s=300.0, peer_timeout_s=600.0, connect_timeout_s=10.0, start_timeout_s=600.0,
                        workers_per_process=per_process)
    out: dict[str, Any] = {"system": "secrobust", "version": getattr(secrobust, "__version__", "?"), "n": n, "d": d,
                           "f": f, "rule": "krum", "workers_per_process": per_process, "rounds": []}
    t0 = time.perf_counter()
    with ForeignCpu() as cpu, LocalDeployment(n, options=opts) as dep:
        out["startup_seconds"] = time.perf_counter() - t0
        pids = {name: dep.children[name].proc.pid for name in ("S0", "S1", "dealer")}
        for r in range(rounds):
            out["rounds"].append(secrobust_round(dep, x, f, pids, cpu))
            print(f"  secrobust d={d} round {r + 1}: {out['rounds'][-1]['wall_seconds']:.2f} s", flush=True)
    return out


def secrobust_round(dep: Any, x: np.ndarray, f: int, pids: dict[str, int], cpu: ForeignCpu) -> dict[str, Any]:
    """One timed round, with the peak RSS of each server process during it, checked against the
    plaintext twin (same encoded inputs, exact ring arithmetic, no protocol)."""
    import secrobust

    rss_reset = all(reset_peak_rss(pid) for pid in pids.values())
    rss_before = {name: status_bytes(pid, "VmRSS") for name, pid in pids.items()}
    foreign = cpu.seconds
    tick = time.perf_counter()
    res = dep.aggregate(x, "krum", f)
    wall = time.perf_counter() - tick
    foreign = cpu.seconds - foreign
    peak = {name: peak_rss_bytes(pid) for name, pid in pids.items()}  # before the next triple's prefetch lands
    stats = res.stats
    n = x.shape[0]
    twin = secrobust.plain_aggregate(x, "krum", f)  # after the round's timing; not in the servers' RSS
    by_role = stats.by_role()
    return {"wall_seconds": wall, "foreign_cpu_seconds": foreign,
            "participants": len(res.participants),
            "server_seconds": {k: dict(v) for k, v in getattr(stats, "server_seconds", {}).items()},
            "bytes": {"S0": by_role.get("S0", {}), "S1": by_role.get("S1", {}), "dealer": by_role.get("dealer", {}),
                      "per_worker": {k: v / n for k, v in by_role.get("workers", {}).items()}},
            "peak_rss": peak, "rss_before": rss_before, "peak_rss_per_round": rss_reset,
            "equal_to_plaintext_twin": bool(np.array_equal(res.aggregate, twin.aggregate)
                                            and np.array_equal(res.weights, twin.weights))}


# ---------------------------------------------------------------- Flower side (bench/.venv-flower)


def ensure_flower_python(python: Path | None) -> Path:
    """The interpreter of the Flower venv, creating the venv and installing flwr there if needed."""
    if python is not None:
        return python
    py = FLOWER_VENV / "bin" / "python"
    probe = [str(py), "-c", f"import flwr, sys; sys.exit(flwr.__version__ != {FLOWER_VERSION!r})"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating {FLOWER_VENV} with {' '.join(FLOWER_REQUIREMENTS)} ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(FLOWER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *FLOWER_REQUIREMENTS], check=True)
    subprocess.run(probe, check=True)
    return py


def run_flower(python: Path, n: int, d: int, rounds: int, f: int, dtype: str, client_cpus: float,
               timeout_s: float) -> dict[str, Any]:
    """The Flower part as a subprocess of this file in the Flower venv; its JSON report."""
    with tempfile.TemporaryDirectory(prefix="flower-bench-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [str(python), str(Path(__file__).resolve()), "--flower-worker", "--n", str(n), "--d", str(d),
               "--rounds", str(rounds), "--f", str(f), "--flower-dtype", dtype,
               "--flower-client-cpus", str(client_cpus), "--report", str(report)]
        env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_DEDUP_LOGS="0", PYTHONWARNINGS="ignore")
        log = Path(tmp) / "flower.log"
        with open(log, "wb") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s)
        if proc.returncode != 0 or not report.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"the Flower run failed (exit {proc.returncode}):\n{tail}")
        return json.loads(report.read_text())


def content_nbytes(content: Any) -> int:
    """Payload bytes of a Flower RecordDict: array data plus config values (protobuf framing not counted)."""
    total = 0
    for rec in content.array_records.values():
        total += sum(len(arr.data) for arr in rec.values())
    for rec in content.config_records.values():
        for value in rec.values():
            for v in (value if isinstance(value, list) else [value]):
                total += len(v) if isinstance(v, (bytes, str)) else 8
    for rec in content.metric_records.values():
        total += 8 * sum(len(v) if isinstance(v, list) else 1 for v in rec.values())
    return total


class CountingGrid:
    """A Grid that counts the payload bytes the ServerApp sends to and receives from the nodes."""

    def __init__(self, grid: Any, counters: dict[str, int]) -> None:
        self._grid = grid
        self._counters = counters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        self._counters["server_sent"] += sum(content_nbytes(m.content) for m in messages)
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        self._counters["server_received"] += sum(content_nbytes(m.content) for m in replies if m.has_content())
        return replies


def flower_apps(n: int, d: int, rounds: int, dtype: str, update_dir: Path, report: dict[str, Any],
                cpu: ForeignCpu, report_path: Path | None = None) -> tuple[Any, Any]:
    """The ServerApp (SecAgg+ fit workflow, timed per round into ``report``, and written to ``report_path``
    after each round when given: a deployed ServerApp runs in a process of Flower's) and the ClientApp (a
    fixed vector, secaggplus_mod)."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class TimedSecAggPlus(SecAggPlusWorkflow):
        """SecAggPlusWorkflow that records, per fit round, wall seconds, stage seconds, bytes and peak RSS."""

        def __call__(self, grid: Any, context: Any) -> None:
            counters = {"server_sent": 0, "server_received": 0}
            stages: dict[str, float] = {}
            rss_reset = reset_peak_rss("self")
            rss_before = {"server": status_bytes("self", "VmRSS")}
            foreign = cpu.seconds
            start_unix = time.time()
            tick = time.perf_counter()
            self._stage_seconds = stages
            super().__call__(CountingGrid(grid, counters), context)
            wall = time.perf_counter() - tick
            records = report["rounds"]
            records.append({"wall_seconds": wall, "start_unix": start_unix, "end_unix": time.time(),
                            "stage_seconds": stages, "bytes": counters,
                            "peak_rss": {"server": peak_rss_bytes("self")}, "rss_before": rss_before,
                            "peak_rss_per_round": rss_reset, "foreign_cpu_seconds": cpu.seconds - foreign,
                            "max_abs_error": mean_error(context, n, update_dir)})
            print(f"  flower d={d} round {len(records)}: {wall:.2f} s", flush=True)
            if report_path is not None:
                report_path.write_text(json.dumps(report))

        def _timed(self, name: str, stage: Callable[..., bool], *args: Any) -> bool:
            tick = time.perf_counter()
            try:
                return stage(*args)
            finally:
                self._stage_seconds[name] = time.perf_counter() - tick

        def setup_stage(self, *args: Any) -> bool:
            return self._timed("setup", super().setup_stage, *args)

        def share_keys_stage(self, *args: Any) -> bool:
            return self._timed("share_keys", super().share_keys_stage, *args)

        def collect_masked_vectors_stage(self, *args: Any) -> bool:
            return self._timed("collect_masked_vectors", super().collect_masked_vectors_stage, *args)

        def unmask_stage(self, *args: Any) -> bool:  # includes FedAvg.aggregate_fit
            return self._timed("unmask_and_aggregate", super().unmask_stage, *args)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        report["warm_up_seconds"] = warm_up(grid, n)
        strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0,
                          initial_parameters=ndarrays_to_parameters([np.zeros(d, dtype=dtype)]))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        # max_weight=1 with num_examples=1: weights quantized exactly (Flower's default is 1000).
        fit = TimedSecAggPlus(num_shares=NUM_SHARES, reconstruction_threshold=RECONSTRUCTION_THRESHOLD, max_weight=1.0)
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    class FixedClient(NumPyClient):
        def __init__(self, i: int) -> None:
            self.i = i

        def get_parameters(self, config: Any) -> Any:  # the warm-up message
            return []

        def fit(self, parameters: Any, config: Any) -> Any:
            return [np.load(update_dir / f"client-{self.i}.npy")], 1, {}

    def client_fn(context: Context) -> Any:
        return FixedClient(int(context.node_config["partition-id"])).to_client()

    return server, ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def mean_error(context: Any, n: int, update_dir: Path) -> float:
    """Largest deviation of the round's aggregate from the plain mean of the clients' vectors (after the
    round's timing and peak RSS are read): the SecAgg+ round really aggregated."""
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    got = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
    total = np.zeros(got.shape, dtype=np.float64)
    for i in range(n):
        total += np.load(update_dir / f"client-{i}.npy")
    return float(np.max(np.abs(got - total / n)))


def warm_up(grid: Any, n: int) -> float:
    """Before round 1: wait for the n SuperNodes and reach every ClientApp once (a get_parameters
    message), so that Ray's start and the actors' first import are not counted in the cold round;
    secrobust's deployment likewise waits until every worker reached both servers."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Message
    from flwr.common import GetParametersIns
    from flwr.common.constant import MessageTypeLegacy

    tick = time.perf_counter()
    while len(list(grid.get_node_ids())) < n:
        time.sleep(0.1)
    content = compat.getparametersins_to_recorddict(GetParametersIns({}))
    msgs = [Message(content=content, dst_node_id=nid, message_type=MessageTypeLegacy.GET_PARAMETERS, group_id="warm-up")
            for nid in grid.get_node_ids()]
    replies = list(grid.send_and_receive(msgs))
    failed = [m.error for m in replies if m.has_error()]
    if len(replies) != n or failed:
        raise RuntimeError(f"warm-up: {len(replies)} replies of {n}, errors {failed[:3]}")
    return time.perf_counter() - tick


def flower_worker(args: argparse.Namespace) -> None:
    """Entry point inside the Flower venv: run the simulation and write the JSON report."""
    import flwr
    from flwr.simulation import run_simulation

    d = args.d[0]
    report: dict[str, Any] = {"system": "flower", "version": flwr.__version__, "n": args.n, "d": d,
                              "dtype": args.flower_dtype, "mode": "Simulation Engine (run_simulation, Ray backend)",
                              "client_cpus": args.flower_client_cpus, "num_shares": NUM_SHARES,
                              "reconstruction_threshold": RECONSTRUCTION_THRESHOLD, "rounds": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flower-updates-") as tmp:
        update_dir = Path(tmp)
        for i in range(args.n):
            np.save(update_dir / f"client-{i}.npy", client_update(i, d, args.f).astype(args.flower_dtype))
        backend = {"client_resources": {"num_cpus": args.flower_client_cpus, "num_gpus": 0.0},
                   "init_args": {"num_cpus": os.cpu_count(), "include_dashboard": False, "logging_level": "ERROR"}}
        with ForeignCpu() as cpu:
            server, client = flower_apps(args.n, d, args.rounds, args.flower_dtype, update_dir, report, cpu)
            run_simulation(server_app=server, client_app=client, num_supernodes=args.n, backend_config=backend)
    if len(report["rounds"]) != args.rounds:
        raise SystemExit(f"expected {args.rounds} fit rounds, recorded {len(report['rounds'])}")
    report["total_seconds"] = time.perf_counter() - t0
    Path(args.report).write_text(json.dumps(report))


# ---------------------------------------------------------------- report


def row_summary(res: dict[str, Any]) -> dict[str, Any]:
    """Timing summary, bytes of a warm round (the last) and the largest per-round peak RSS of each server."""
    rounds = res["rounds"]
    out = summarize([r["wall_seconds"] for r in rounds])
    out["peak_rss"] = {name: max(r["peak_rss"][name] for r in rounds) for name in rounds[0]["peak_rss"]}
    out["rss_before"] = {name: min(r["rss_before"][name] for r in rounds) for name in rounds[0]["rss_before"]}
    out["bytes"] = rounds[-1]["bytes"]
    return out


def phases_line(res: dict[str, Any]) -> str:
    """Median per phase over the warm rounds (S0 and S1 for secrobust; the server's stages for Flower)."""
    rounds = res["rounds"][1:] or res["rounds"]
    if res["system"] == "flower":
        names = rounds[0]["stage_seconds"]
        return ", ".join(f"{k} {statistics.median(r['stage_seconds'][k] for r in rounds):.2f}" for k in names)
    parts = []
    for server in ("S0", "S1"):
        names = rounds[0]["server_seconds"].get(server, {})
        vals = ", ".join(f"{k} {statistics.median(r['server_seconds'][server].get(k, 0.0) for r in rounds):.2f}"
                         for k in names)
        parts.append(f"{server}: {vals}")
    return "; ".join(parts)


def bytes_cell(res: dict[str, Any]) -> str:
    b = row_summary(res)["bytes"]
    if res["system"] == "flower":
        n = res["n"]
        return (f"server sent {b['server_sent'] / MB:.1f} / recv {b['server_received'] / MB:.1f}; "
                f"per client sent {b['server_received'] / n / MB:.2f} / recv {b['server_sent'] / n / MB:.2f}")
    s0, s1, w, dl = b["S0"], b["S1"], b["per_worker"], b["dealer"]
    return (f"S0 sent {s0.get('sent', 0) / MB:.1f} / recv {s0.get('received', 0) / MB:.1f}; "
            f"S1 sent {s1.get('sent', 0) / MB:.1f} / recv {s1.get('received', 0) / MB:.1f}; "
            f"dealer sent {dl.get('sent', 0) / MB:.1f}; per worker sent {w.get('sent', 0) / MB:.2f}")


def rss_cell(res: dict[str, Any]) -> str:
    """Largest per-round peak RSS of each server process (its RSS before the round in brackets); for
    secrobust's S0/S1 also the peak over the n x d uint64 share matrix."""
    s = row_summary(res)
    share_matrix = 8 * res["n"] * res["d"]
    cells = []
    for name, peak in s["peak_rss"].items():
        ratio = f", {peak / share_matrix:.2f}x" if name in ("S0", "S1") else ""
        cells.append(f"{name} {peak / MB:.0f} MB (before {s['rss_before'][name] / MB:.0f}{ratio})")
    return "; ".join(cells)


def check_cell(res: dict[str, Any]) -> str:
    """Did every round compute what it should: secrobust = its plaintext twin, Flower ~ the plain mean."""
    if res["system"] == "flower":
        return f"max abs(aggregate - mean) {max(r['max_abs_error'] for r in res['rounds']):.1e}"
    ok = all(r["equal_to_plaintext_twin"] for r in res["rounds"])
    return "= plaintext twin" if ok else "DIFFERS from plaintext twin"


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def d_label(d: int) -> str:
    """100000 -> 1e5."""
    return f"{d:.0e}".replace("e+0", "e").replace("e+", "e")


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The whole report: setup, the comparison table, then per-system detail."""
    lines = ["# secrobust (networked Krum) vs Flower 1.42.0 SecAgg+ (FedAvg), one round", "",
             f"- command: `{meta['command']}`", f"- date: {meta['date']}", f"- machine: {meta['machine']}",
             f"- versions: {meta['versions']}; secrobust code measured: {meta['secrobust_src']}",
             f"- n = {meta['n']} clients/workers, rounds per system = {meta['rounds']} (round 1 = cold, "
             f"warm = rounds 2..{meta['rounds']}), secrobust: krum, f = {meta['f']}, "
             f"{meta['per_process']} worker(s) per process; Flower: {meta['flower_mode']}", "",
             "## Wall seconds per round", "",
             "| d | secrobust round 1 | secrobust warm best / median | Flower round 1 | Flower warm best / median "
             "| ratio secrobust/Flower, warm median | ratio, round 1 |",
             "|---|---|---|---|---|---|---|"]
    by_d: dict[int, dict[str, dict[str, Any]]] = {}
    for res in results:
        by_d.setdefault(res["d"], {})[res["system"]] = res
    for d, pair in sorted(by_d.items()):
        s = row_summary(pair["secrobust"]) if "secrobust" in pair else {}
        fl = row_summary(pair["flower"]) if "flower" in pair else {}
        ratio = (fmt(s["warm_median"] / fl["warm_median"]) if s.get("warm_median") and fl.get("warm_median") else "-")
        ratio1 = fmt(s["round1"] / fl["round1"]) if s.get("round1") and fl.get("round1") else "-"
        lines.append(f"| {d_label(d)} | {fmt(s.get('round1'))} | {fmt(s.get('warm_best'))} / {fmt(s.get('warm_median'))} "
                     f"| {fmt(fl.get('round1'))} | {fmt(fl.get('warm_best'))} / {fmt(fl.get('warm_median'))} "
                     f"| {ratio} | {ratio1} |")
    lines += ["", "## Per system", "",
              "| d | system | every round, s | peak RSS in a round (RSS before it; peak / 8nd) | bytes in a warm round (MB) "
              "| phases, warm median s | check | CPU s used by other processes in each round |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        every = ", ".join(f"{r['wall_seconds']:.2f}" for r in res["rounds"])
        foreign = ", ".join(f"{r['foreign_cpu_seconds']:.1f}" for r in res["rounds"])
        foreign += f" (attempt kept: least disturbed of {res['attempts']})" if res.get("attempts", 1) > 1 else ""
        lines.append(f"| {d_label(res['d'])} | {res['system']} | {every} | {rss_cell(res)} | {bytes_cell(res)} "
                     f"| {phases_line(res)} | {check_cell(res)} | {foreign} |")
    lines += ["", *meta["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "Notes:",
    "- secrobust wall time is `LocalDeployment.aggregate` in the launcher: encoding check, writing each worker's "
    "update file, opening the round at S0/S1, the workers' sharing over mutual TLS, the servers' secure Krum, "
    "and fetching the two aggregate shares. Round 1 also waits for the dealer's first triple; later rounds use "
    "the triple prefetched during the round before. After each round (outside its time) the script checks the "
    "result (secrobust against its plaintext twin, Flower against the plain mean), which leaves a few seconds "
    "between rounds, as local training would.",
    "- Flower wall time is one `SecAggPlusWorkflow` call (setup, share keys, collect masked vectors - the "
    "clients' `fit` runs here and loads its fixed vector from a .npy file -, unmask, and FedAvg's "
    "`aggregate_fit`), measured inside the ServerApp; Ray start-up, SuperNode registration and parameter "
    "initialisation are outside it. In the Simulation Engine the clients are Ray actors (one per "
    "`--flower-client-cpus` of the 2 cores) and messages go through the in-memory SuperLink state, not "
    "over gRPC/TLS. The server polls for replies every 0.1 s (InMemoryGrid's pull interval). Flower's round "
    "includes sending the global model (d parameters) to every client at its start.",
    "- The protocols differ in what they compute: SecAgg+ (3 shares per client, threshold 2) reveals only "
    "the sum to a single server and trusts clients' inputs; secrobust computes Krum (a robust rule, with the "
    "input validity check) between two non-colluding servers.",
    "- Flower bytes are payload bytes of the messages the ServerApp sends/receives (array data and config "
    "values, no protobuf framing); secrobust bytes are protocol message bytes as the servers count them.",
    "- Peak RSS: VmHWM of the process, reset (`echo 5 > /proc/<pid>/clear_refs`) before each round, the "
    "largest over the rounds. Flower's number is the one process holding the SuperLink state and the ServerApp.",
]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--n", type=int, default=50, help="clients / workers")
    ap.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6], help="parameters per update (one run per d)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per system and d (round 1 is reported as cold)")
    ap.add_argument("--f", type=int, default=10, help="Krum's f (secrobust); the first f updates are outliers")
    ap.add_argument("--per-process", type=int, default=25,
                    help="secrobust worker identities per worker process (25: two worker processes, as Flower's "
                         "50 clients run in two Ray actors)")
    ap.add_argument("--secrobust-rev", default=None,
                    help="measure secrobust's src/ at this git revision (exported to a temp dir) "
                         "instead of the working tree")
    ap.add_argument("--flower-python", type=Path, default=None,
                    help="interpreter with flwr 1.42.0 (default: bench/.venv-flower, created if missing)")
    ap.add_argument("--flower-dtype", choices=("float32", "float64"), default="float64",
                    help="dtype of each Flower client's vector (secrobust takes float64)")
    ap.add_argument("--flower-client-cpus", type=float, default=1.0,
                    help="Ray CPUs per ClientApp actor (1 = two actors on 2 cores)")
    ap.add_argument("--flower-timeout", type=float, default=1800.0, help="seconds before the Flower run is killed")
    ap.add_argument("--wait-idle", type=float, default=600.0,
                    help="before each system's run, wait up to this many seconds for an idle machine (0: don't)")
    ap.add_argument("--max-foreign-cpu", type=float, default=1.0,
                    help="run a system again if other processes used more CPU seconds than this in one round")
    ap.add_argument("--retries", type=int, default=3, help="at most this many such repeats per system and d")
    ap.add_argument("--skip-secrobust", action="store_true")
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--flower-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.d = [int(d) for d in args.d]
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (round 1 is reported apart from the warm rounds)")
    return args


def measured(run: Callable[[], dict[str, Any]], wait_s: float, max_foreign: float, retries: int) -> dict[str, Any]:
    """``run()``'s result, started once the machine is idle (waiting at most ``wait_s``), and run again (at
    most ``retries`` times) while other processes used more than ``max_foreign`` CPU seconds in one of its
    rounds. Keeps the least disturbed attempt; the others' round times stay in ``discarded_attempts``."""
    attempts = []
    for _ in range(1 + retries):
        waited = wait_idle(wait_s) if wait_s > 0 else 0.0
        load = os.getloadavg()[0]
        res = run()
        res.update(waited_idle_seconds=round(waited, 1), load_1min_before=round(load, 2))
        attempts.append(res)
        print(f"  {res['system']} d={res['d']}: rounds " + ", ".join(f"{r['wall_seconds']:.2f}" for r in res["rounds"])
              + " s", flush=True)
        worst = max(r["foreign_cpu_seconds"] for r in res["rounds"])
        if worst <= max_foreign:
            break
        print(f"  other processes used {worst:.1f} CPU s during a round (more than {max_foreign:g})", flush=True)
    best = min(attempts, key=lambda a: sum(r["foreign_cpu_seconds"] for r in a["rounds"]))
    best["attempts"] = len(attempts)
    best["discarded_attempts"] = [{"wall_seconds": [r["wall_seconds"] for r in a["rounds"]],
                                   "foreign_cpu_seconds": [r["foreign_cpu_seconds"] for r in a["rounds"]]}
                                  for a in attempts if a is not best]
    return best


def machine_line() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.platform()}"


def versions(results: list[dict[str, Any]]) -> str:
    parts = [f"Python {platform.python_version()}", f"numpy {np.__version__}"]
    for res in results:
        label = f"{res['system']} {res['version']}"
        if label not in parts:
            parts.append(label)
    return ", ".join(parts)


def main() -> None:
    args = parse_args()
    if args.flower_worker:
        flower_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="secrobust-src-") as tmp:
        run_all(args, Path(tmp))


def run_all(args: argparse.Namespace, tmp: Path) -> None:
    """Both systems for every d, one after the other; then the report."""
    flower_py = None if args.skip_flower else ensure_flower_python(args.flower_python)
    secrobust_src = "not run" if args.skip_secrobust else use_secrobust_rev(args.secrobust_rev, tmp)
    results: list[dict[str, Any]] = []
    for d in args.d:
        if not args.skip_secrobust:
            print(f"secrobust: n={args.n} d={d} krum f={args.f}", flush=True)
            results.append(measured(lambda: run_secrobust(args.n, d, args.rounds, args.f, args.per_process),
                                    args.wait_idle, args.max_foreign_cpu, args.retries))
        if flower_py is not None:
            print(f"flower {FLOWER_VERSION} SecAgg+: n={args.n} d={d}", flush=True)
            results.append(measured(lambda: run_flower(flower_py, args.n, d, args.rounds, args.f, args.flower_dtype,
                                                       args.flower_client_cpus, args.flower_timeout),
                                    args.wait_idle, args.max_foreign_cpu, args.retries))
    flower_mode = next((f"{r['mode']}, {r['dtype']} vectors, {r['client_cpus']:g} CPU per client actor, "
                        f"num_shares={r['num_shares']}, reconstruction_threshold={r['reconstruction_threshold']}"
                        for r in results if r["system"] == "flower"), "not run")
    meta = {"command": shlex.join([Path(sys.executable).relative_to(ROOT).as_posix()
                                   if Path(sys.executable).is_relative_to(ROOT) else sys.executable,
                                   Path(__file__).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]]),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_line(),
            "versions": versions(results), "n": args.n, "rounds": args.rounds, "f": args.f,
            "per_process": args.per_process, "flower_mode": flower_mode, "secrobust_src": secrobust_src, "notes": NOTES}
    text = markdown(results, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
