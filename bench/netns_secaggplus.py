"""Flower 1.42 SecAgg+ rounds in Flower's deployment runtime across Linux network namespaces with rate-limited
links: the SuperLink in one namespace, each SuperNode in its own, shaped as ``bench/netns_bench.py`` shapes
secrobust's parties.

Setup, per profile (``netns.PROFILES``; the SuperLink sits on a server access link, each SuperNode on a worker
link):

* ``flower-superlink --insecure`` in namespace ``superlink`` (its SuperExec starts the ServerApp there);
* ``flower-supernode --insecure`` in each of ``w0`` ... ``w<n-1>``, with ``partition-id=i`` (each namespace has
  its own loopback, so every SuperNode keeps the default runtime port); its SuperExec starts a ClientApp
  process per message, as Flower 1.42's deployment runtime does;
* ``flwr run`` from the SuperLink's namespace submits the app: ``bench/flower_vs_secrobust.py``'s ServerApp
  (``SecAggPlusWorkflow``, num_shares 3, reconstruction threshold 2, in ``DefaultWorkflow`` with FedAvg) and
  ClientApp (``secaggplus_mod``, a fixed vector of d float64 per client, no training): the same apps as that
  script's Simulation Engine run.

Per round the ServerApp records its wall seconds (the four SecAgg+ stages and FedAvg's aggregation), its
payload bytes and the aggregate's largest error against the plain mean. Meanwhile this script samples, every
``--sample-s`` seconds, the token-bucket counters of the SuperLink's link and of w0's link (frames with all
overhead) and the machine's busy CPU (``/proc/stat``), and reports per round:

* the **link floor**: the busiest of those link directions' bytes during the round over its rate;
* the **CPU floor**: the machine's CPU-seconds during the round over its cores (no round on one machine can
  be shorter; where it exceeds the link floor, the profile measures this machine's CPU);
* how many ClientApp processes started during the round (a lower bound: one that starts and ends between two
  samples is not seen).

Link bytes and CPU are interpolated linearly between samples at the round's start and end.

Usage (root; the machine otherwise idle). Memory: at n = 50, d = 10^6 the 50 SuperNodes, their SuperExecs and
ClientApp processes filled this 24 GiB machine within 5 minutes (load average above 700) and the run was stopped;
n = 3 runs (2026-12-07). Watch `free` on the first run of a new size:
    .venv/bin/python bench/netns_secaggplus.py --n 50 --d 1000000 --rounds 4 --profiles 1g 200m 10g-100m \\
        --out bench/results/netns_secaggplus.json
Every namespace, link and process it made is removed on success, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import netns

BIN = Path(sys.executable).parent
PORT = 9092
"""The SuperLink's one HTTP port (Fleet, Control and Runtime APIs), reached by the SuperNodes over their links and
by ``flwr`` inside the SuperLink's namespace."""

APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "secaggplus-netns-bench"
version = "1.0.0"
description = "bench/netns_secaggplus.py: Flower SecAgg+ rounds of fixed vectors"
dependencies = ["numpy"]

[tool.hatch.build.targets.wheel]
packages = ["secagg_bench"]

[tool.flwr.app]
publisher = "secrobust"

[tool.flwr.app.components]
serverapp = "secagg_bench.app:server"
clientapp = "secagg_bench.app:client"

[tool.flwr.app.config]
num-server-rounds = 1
"""

APP_MODULE = '''"""The ServerApp and ClientApp of bench/flower_vs_secrobust.py, configured from the environment."""
import os
import sys
from pathlib import Path

sys.path.insert(0, os.environ["SECAGG_BENCH_DIR"])
import flower_vs_secrobust as F  # noqa: E402


class _NoForeignCpu:
    seconds = 0.0


_report = {"rounds": []}
_apps = F.flower_apps(int(os.environ["SECAGG_BENCH_N"]), int(os.environ["SECAGG_BENCH_D"]),
                               int(os.environ["SECAGG_BENCH_ROUNDS"]), "float64",
                               Path(os.environ["SECAGG_BENCH_UPDATES"]), _report, _NoForeignCpu(),
                               Path(os.environ["SECAGG_BENCH_REPORT"]))
server = _apps[0]
client = _apps[1]
'''


def write_app(folder: Path) -> Path:
    """The Flower app folder ``flwr run`` packages."""
    app = folder / "app"
    (app / "secagg_bench").mkdir(parents=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    (app / "secagg_bench" / "__init__.py").write_text("")
    (app / "secagg_bench" / "app.py").write_text(APP_MODULE)
    return app


class Sampler:
    """Samples (unix time, the watched links' counters, the machine's busy CPU-seconds, ClientApp pids) in a thread."""

    def __init__(self, links: netns.Links, watched: list[str], every_s: float) -> None:
        self.links, self.watched, self.every_s = links, watched, every_s
        self.samples: list[dict[str, Any]] = []
        self.clientapps: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) not in self.clientapps:
                try:
                    if b"flwr-clientapp" in Path(entry.path, "cmdline").read_bytes():
                        self.clientapps.add(int(entry.name))
                except OSError:
                    pass
        self.samples.append({"t": time.time(), "links": self.links.counters(self.watched), "busy_s": netns.machine_busy_seconds(),
                             "clientapps_seen": len(self.clientapps)})

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def around(self, start: float, end: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The last sample at or before ``start`` and the first at or after ``end``."""
        before = [s for s in self.samples if s["t"] <= start] or self.samples[:1]
        after = [s for s in self.samples if s["t"] >= end] or self.samples[-1:]
        return before[-1], after[0]

    def at(self, t: float) -> dict[str, Any]:
        """Link counters and busy CPU at time ``t``, linear between the samples on either side (the rounds run
        back to back, so the samples' own times would count a part of the next or previous round)."""
        lo, hi = self.around(t, t)
        w = 0.0 if hi["t"] == lo["t"] else min(1.0, max(0.0, (t - lo["t"]) / (hi["t"] - lo["t"])))
        return {"links": {link: {way: lo["links"][link][way] + w * (hi["links"][link][way] - lo["links"][link][way])
                                 for way in ways} for link, ways in lo["links"].items()},
                "busy_s": lo["busy_s"] + w * (hi["busy_s"] - lo["busy_s"])}


def wait_for(what: str, ok: Any, timeout_s: float, procs: dict[str, subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                   + (logs / f"{name}.log").read_text(errors="replace")[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)


def run_profile(profile: netns.Profile, n: int, d: int, rounds: int, work: Path, sample_s: float,
                timeout_s: float) -> dict[str, Any]:
    """One ``flwr run`` of ``rounds`` SecAgg+ rounds under ``profile``; its per-round measurements."""
    import flower_vs_secrobust as F

    work.mkdir(parents=True)
    updates = work / "updates"
    updates.mkdir()
    for i in range(n):
        np.save(updates / f"client-{i}.npy", F.client_update(i, d, 0))
    report = work / "report.json"
    app = write_app(work)
    home = work / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                      f'address = "127.0.0.1:{PORT}"\ninsecure = true\n')
    logs = work / "logs"
    logs.mkdir()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", FLWR_HOME=str(home),
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0", GRPC_VERBOSITY="ERROR",
               PYTHONUNBUFFERED="1", SECAGG_BENCH_DIR=str(BENCH), SECAGG_BENCH_N=str(n), SECAGG_BENCH_D=str(d),
               SECAGG_BENCH_ROUNDS=str(rounds), SECAGG_BENCH_UPDATES=str(updates), SECAGG_BENCH_REPORT=str(report))
    nodes = [f"w{i}" for i in range(n)]
    procs: dict[str, subprocess.Popen] = {}
    with netns.Links(["superlink", *nodes], profile) as links:
        def start(name: str, party: str, argv: list[str]) -> None:
            with open(logs / f"{name}.log", "wb") as log:
                procs[name] = subprocess.Popen([*links.exec_prefix(party), *argv], stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=env, cwd=str(work))

        t0 = time.monotonic()
        start("superlink", "superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "0.0.0.0",
                                                   "--port", str(PORT)])
        link_addr = links.addresses["superlink"]
        for i, node in enumerate(nodes):
            start(node, node, [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"{link_addr}:{PORT}",
                               "--node-config", f"partition-id={i} num-partitions={n}"])
        def superlink_log() -> str:
            return (logs / "superlink.log").read_text(errors="replace")
        wait_for("the SuperLink", lambda: "Uvicorn running" in superlink_log(), 120, procs, logs)
        wait_for(f"{n} SuperNodes", lambda: superlink_log().count("Fleet.ActivateNode") >= n, 300, procs, logs)
        with Sampler(links, ["superlink", "w0"], sample_s) as sampler:
            res = subprocess.run([*links.exec_prefix("superlink"), str(BIN / "flwr"), "run", str(app), "local",
                                  "--format", "json", "--run-config", f"num-server-rounds={rounds}"],
                                 env=env, cwd=str(work), capture_output=True, text=True, timeout=600, check=False)
            (logs / "flwr-run.log").write_text(res.stdout + res.stderr)
            try:
                submitted = json.loads(res.stdout).get("success")
            except ValueError:
                submitted = False
            if res.returncode != 0 or not submitted:
                raise RuntimeError(f"flwr run failed ({res.returncode}): {res.stdout[-1500:]}{res.stderr[-1500:]}")

            def done() -> bool:
                try:
                    return len(json.loads(report.read_text())["rounds"]) >= rounds
                except (OSError, ValueError, KeyError):
                    return False
            wait_for(f"{rounds} SecAgg+ rounds", done, timeout_s, procs, logs)
        setup_s = time.monotonic() - t0
        got = json.loads(report.read_text())
        out_rounds = []
        for r in got["rounds"]:
            before, after = sampler.around(r["start_unix"], r["end_unix"])
            first, last = sampler.at(r["start_unix"]), sampler.at(r["end_unix"])
            wire = {link: {way: round(last["links"][link][way] - first["links"][link][way]) for way in ways}
                    for link, ways in last["links"].items()}
            window = after["t"] - before["t"]
            floor = netns.busiest(wire, profile)
            cpu_floor = (last["busy_s"] - first["busy_s"]) / (os.cpu_count() or 1)
            out_rounds.append({"round_s": round(r["wall_seconds"], 3), "stage_s": {k: round(v, 3) for k, v in
                                                                                  r["stage_seconds"].items()},
                               "payload_bytes": r["bytes"], "wire_bytes": wire, "sample_window_s": round(window, 3),
                               "link_floor": floor, "round_over_link_floor": round(r["wall_seconds"] / floor["floor_s"], 2)
                               if floor["floor_s"] else None,
                               "cpu_floor_s": round(cpu_floor, 2),
                               "clientapp_processes": after["clientapps_seen"] - before["clientapps_seen"],
                               "max_abs_error": r["max_abs_error"]})
        left = links.remaining
    return {"profile": profile.as_dict(), "rounds": out_rounds, "warm_up_s": got.get("warm_up_seconds"),
            "wall_to_last_round_s": round(setup_s, 1), "namespaces_left": left()}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Flower {res['flower']} SecAgg+ in network namespaces, n = {res['n']}, d = {res['d']:,}", "",
             f"`{res['command']}`", "", f"{res['machine']}; {res['date_utc']}; load at start {res['load_at_start']}", "",
             ("| profile | round | round s | link floor s (busiest link) | round / link floor | CPU floor s | "
              "ClientApp processes | max error |"), "|---|---|---|---|---|---|---|---|"]
    for prof in res["profiles"]:
        for k, r in enumerate(prof["rounds"], start=1):
            f = r["link_floor"]
            lines.append(f"| {prof['profile']['name']} | {k}{' (cold)' if k == 1 else ''} | {r['round_s']:.2f} | "
                         f"{f['floor_s']:.2f} ({f.get('link')} {f.get('direction')}, {f.get('bytes', 0) / 1e6:.1f} MB) | "
                         f"{r['round_over_link_floor']} | {r['cpu_floor_s']:.2f} | {r['clientapp_processes']} | "
                         f"{r['max_abs_error']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--profiles", nargs="+", default=["1g", "200m", "10g-100m"], choices=list(netns.PROFILES))
    ap.add_argument("--sample-s", type=float, default=0.5, help="seconds between samples of the link counters")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a profile's rounds may take")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here and the Markdown beside it")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the apps, logs and reports here (default: a "
                    "temporary folder, removed at the end)")
    args = ap.parse_args()
    why = netns.missing_tools()
    if why:
        sys.exit(f"netns_secaggplus: {why}")
    if not (BIN / "flower-superlink").exists():
        sys.exit("netns_secaggplus: flower-superlink is not in this venv (bash scripts/setup.sh installs flwr)")
    netns.guard_signals()
    import flwr
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    res: dict[str, Any] = {"command": ".venv/bin/python " + shlex.join(["bench/netns_secaggplus.py", *sys.argv[1:]]),
                           "flower": flwr.__version__, "n": args.n, "d": args.d,
                           "machine": f"{os.cpu_count()} cores ({cpu})",
                           "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "load_at_start": [round(v, 2) for v in os.getloadavg()], "profiles": []}
    with tempfile.TemporaryDirectory(prefix="netns-secaggplus-") as tmp:
        base = args.workdir or Path(tmp)
        for name in args.profiles:
            print(f"{name}: n={args.n} d={args.d}", flush=True)
            res["profiles"].append(run_profile(netns.PROFILES[name], args.n, args.d, args.rounds, base / name,
                                               args.sample_s, args.timeout))
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(res, indent=1) + "\n")
                args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
