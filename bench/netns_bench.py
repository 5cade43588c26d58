"""Warm deployment rounds across Linux network namespaces with rate-limited links, against each profile's link floor.

Every party runs as its own process in its own network namespace (``bench/netns.py``): S0, S1, the
dealer and each worker (one worker per process, so each has its own link), and the launcher plays both
operators from a namespace of its own. Each party's access link to a bridge, and a separate S0<->S1
link, is shaped by a token bucket in both directions (``tc tbf``; no added latency, netem is not
available). Profiles (Mbit/s, ``netns.PROFILES``):

* ``1g``: every link 1 Gbit/s;
* ``200m``: every link 200 Mbit/s;
* ``10g-100m``: S0<->S1 and the servers', dealer's and operators' access links 10 Gbit/s, each worker 100 Mbit/s;
* ``unshaped``: the same namespaces and links without any qdisc: the round time this machine's CPU allows.

Per round (the first is cold: it waits for the dealer's first triple; the others take a triple the
dealer made during the round before) the script records:

* ``round_s``: wall seconds of ``LocalDeployment.aggregate`` (open the round at both servers, the
  workers' uploads, secure Krum with the validity check, the operators' aggregate-share fetches);
* ``with_downloads_s``: until the last worker logged its rebuilt aggregate (its two 8d-byte aggregate
  shares downloaded); the next round starts only after that, so rounds do not overlap on the links;
* per link and direction, the bytes its token bucket passed (tc's qdisc counters: Ethernet frames with
  IP, TCP and TLS overhead) during the round and up to the last download, and the protocol's payload
  bytes per pair of parties (``result.stats.bytes_between``, the deployment's own accounting);
* the **link floor**: the largest, over links and directions, of (bytes that link passed during the
  round) / (its rate), i.e. the time the busiest link needs for what crossed it; and the ratio
  ``round_s / floor``. The same for the window that includes the downloads;
* the **CPU floor**: every CPU-second the machine spent from the round's start to its aggregate (``/proc/stat``:
  the parties, the kernel's network work, anyone else's) divided by its cores. On one machine no round can be
  shorter; where it exceeds the link floor, the profile measures this machine's CPU, not the links;
* CPU seconds per party (``/proc/<pid>/stat``), those of every other process on the machine during the
  round (``/proc/stat`` minus ours: other people's work), and the load average before and after.

The aggregate of every round is checked against ``secrobust.plain_aggregate`` (its plaintext twin).

Usage (root; a few minutes per profile at n = 50, d = 1e6 on 2 cores):
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/netns_bench.py --n 50 --d 1000000 --rounds 4 --src-rev HEAD \\
        --profiles 1g 200m 10g-100m --out bench/results/netns_bench.json
writes the JSON and a Markdown table beside it (``.md``). Every namespace, link and qdisc it made is
removed on success, failure, Ctrl-C and SIGTERM; ``--cleanup-stale`` removes those of an earlier run
that was SIGKILLed.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _run_committed_src() -> None:
    """With ``--src-rev REV``: export ``src/`` as committed at REV and run this script again on it, so a
    half-edited shared working tree never reaches the measurement (the deployment's children load the
    export too: ``LocalDeployment`` puts the package's own folder on their PYTHONPATH)."""
    argv = sys.argv[1:]
    if "--src-rev" not in argv:
        return
    i = argv.index("--src-rev")
    rev = argv[i + 1]
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = Path(tempfile.mkdtemp(prefix=f"netns-bench-src-{sha}-"))
    archive = subprocess.run(["git", "-C", str(root), "archive", sha, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = dict(os.environ, PYTHONPATH=str(dest / "src"), NETNS_BENCH_SRC_COMMIT=sha, NETNS_BENCH_SRC_DIR=str(dest))
    os.execve(sys.executable, [sys.executable, __file__, *argv[:i], *argv[i + 2:]], env)


if __name__ == "__main__":
    _run_committed_src()

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netns
from deploy_round_bench import updates

import secrobust
from secrobust.deploy.local import LocalDeployment, LocalOptions

UPLOAD_MIN_RATE = 1e6
"""S1's default ``upload_min_rate`` (``secrobust.deploy.config``)."""

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKER_CHILD = re.compile(r"^worker[-:](\d+)$")


def party_of(name: str) -> str:
    """The namespace party of a deployment child or a stats party name (``worker-3``, ``worker:3`` -> ``w3``)."""
    m = WORKER_CHILD.match(name)
    return f"w{m.group(1)}" if m else name


class NetnsDeployment(LocalDeployment):
    """A ``LocalDeployment`` whose parties run inside ``links``' namespaces, each reached at its address there.

    ``LocalDeployment`` writes every party's configuration with loopback addresses, then spawns the dealer,
    S0 and S1, then makes its operators from ``self.addresses``. Before the first spawn this class
    rewrites those addresses (in ``self.addresses`` and in every configuration file) to each party's
    namespace address, and it starts every child under ``ip netns exec``. The launcher itself must be
    inside ``links``' ``operator`` namespace (``Links.enter``)."""

    def __init__(self, n_workers: int, links: netns.Links, workdir: Path | None = None,
                 options: LocalOptions | None = None, upload_min_rate: float | None = None) -> None:
        super().__init__(n_workers, workdir, options)
        self.links = links
        self.upload_min_rate = upload_min_rate
        """S1's ``[timeouts] upload_min_rate`` (bytes/s a share upload must keep after its grace), if set."""
        self._moved = False

    def _move_addresses(self) -> None:
        moved = {}
        for name, addr in self.addresses.items():
            port = addr.rsplit(":", 1)[1]
            moved[addr] = f"{self.links.addresses[name]}:{port}"
        for path in self.cert_dir.rglob("*.toml"):
            text = path.read_text()
            new = text
            for old, addr in moved.items():
                new = new.replace(f'"{old}"', f'"{addr}"')
            if new != text:
                path.write_text(new)
        self.addresses = {name: moved[addr] for name, addr in self.addresses.items()}
        if self.upload_min_rate is not None:
            path = self.config_file("S1")
            path.write_text(path.read_text().replace("[timeouts]\n", f"[timeouts]\nupload_min_rate = {self.upload_min_rate:.1f}\n", 1))
        self._moved = True

    def _write_configs(self) -> None:
        """Loopback addresses again (a start that lost a port writes new ones): moved before the next spawn."""
        super()._write_configs()
        self._moved = False

    def _spawn(self, child: Any) -> None:
        """``LocalDeployment._spawn`` with ``ip netns exec <the party's namespace>`` in front."""
        if not self._moved:
            self._move_addresses()
        with open(child.log, "ab") as log:
            child.proc = subprocess.Popen(
                [*self.links.exec_prefix(party_of(child.name)), sys.executable, "-m", "secrobust.deploy", *child.argv],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                cwd=str(self.workdir), start_new_session=True)
        if child.name == "dealer" and self.options.dealer_nice:
            os.setpriority(os.PRIO_PROCESS, child.proc.pid, self.options.dealer_nice)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def diff(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {link: {way: after[link][way] - before[link][way] for way in after[link]} for link in after}


def payload_by_link(bytes_between: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """The deployment's own byte accounting (protocol payload per ordered pair of parties) mapped onto links."""
    out: dict[str, dict[str, int]] = {}

    def add(link: str, way: str, nbytes: int) -> None:
        out.setdefault(link, {"up": 0, "down": 0})[way] += nbytes

    for (src, dst), nbytes in bytes_between.items():
        a, b = party_of(src), party_of(dst)
        if {a, b} == {"S0", "S1"}:
            add("S0-S1", "up" if a == "S0" else "down", nbytes)
        else:
            add(a, "up", nbytes)
            add(b, "down", nbytes)
    return out


def worker_received(dep: LocalDeployment, round_id: int) -> dict[str, float]:
    """Per worker child: the log time at which it rebuilt round ``round_id``'s aggregate."""
    out = {}
    for name, child in dep.children.items():
        if not name.startswith("worker") or not child.log.exists():
            continue
        for line in child.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"aggregate-received"' in line:
                rec = json.loads(line)
                if rec.get("round") == round_id:
                    out[name] = float(rec["ts"])
    return out


def server_events(dep: LocalDeployment, round_id: int) -> dict[str, float | None]:
    """Log times of round ``round_id``: the first ``round-open`` at either server, the first and last share's
    arrival at S1, the first and last row of E sent by S1, and S1's ``round-done``."""
    found: dict[str, list[float]] = {"open": [], "last_upload": [], "last_row_of_e": [], "s1_done": []}
    first = ("first_upload", "first_row_of_e")
    for name in ("S0", "S1"):
        for line in dep.children[name].log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("round") != round_id:
                continue
            ev, phase = rec.get("event"), rec.get("phase")
            if ev == "round-open":
                found["open"].append(float(rec["ts"]))
            elif name == "S1" and ev == "received" and phase == "share-masked":
                found["last_upload"].append(float(rec["ts"]))
            elif name == "S1" and ev == "sent" and phase == "masked-open":
                found["last_row_of_e"].append(float(rec["ts"]))
            elif name == "S1" and ev == "round-done":
                found["s1_done"].append(float(rec["ts"]))
    out = {k: (min(v) if k == "open" else max(v)) if v else None for k, v in found.items()}
    for name, key in zip(first, ("last_upload", "last_row_of_e")):
        out[name] = min(found[key]) if found[key] else None
    return out


def upload_pace(profile: netns.Profile, n: int) -> float | None:
    """S1's upload pace for ``profile``: None (the default, 1 MB/s) when S1's access link gives each of
    its max(8, n // 2 + 1) concurrent uploads at least twice that, else half of each upload's share."""
    share = profile.server_mbit * 1e6 / 8 / max(8, n // 2 + 1)
    return None if share >= 2 * UPLOAD_MIN_RATE or share == 0 else share / 2


def run_profile(profile: netns.Profile, n: int, d: int, rounds: int, rule: str, f: int,
                workdir: Path | None, download_wait_s: float = 600.0) -> dict[str, Any]:
    """``rounds`` rounds over a deployment in namespaces shaped by ``profile``; one record per round."""
    parties = ["S0", "S1", "dealer", "operator", *(f"w{i}" for i in range(n))]
    pace = upload_pace(profile, n)
    out: dict[str, Any] = {"profile": profile.as_dict(), "n": n, "d": d, "rule": rule, "f": f,
                           "s1_upload_min_rate": pace or UPLOAD_MIN_RATE, "rounds": []}
    opts = LocalOptions(share_window_s=600.0, peer_timeout_s=300.0, connect_timeout_s=20.0, start_timeout_s=900.0,
                        workers_per_process=1, extra_env={"OPENBLAS_NUM_THREADS": "1"})
    with netns.Links(parties, profile) as links:
        out["addresses"] = {p: links.addresses[p] for p in ("S0", "S1", "dealer", "operator")}
        links.enter("operator")
        try:
            tick = time.monotonic()
            with NetnsDeployment(n, links, workdir, opts, upload_min_rate=pace) as dep:
                out["start_s"] = round(time.monotonic() - tick, 1)
                print(json.dumps({"profile": profile.name, "started_s": out["start_s"]}), flush=True)
                pids = {name: c.proc.pid for name, c in dep.children.items()}  # type: ignore[union-attr]
                for r in range(rounds):
                    out["rounds"].append(one_round(dep, links, profile, pids, r, n, d, rule, f, download_wait_s))
                    print(json.dumps({k: v for k, v in out["rounds"][-1].items()
                                      if k not in ("wire_bytes", "payload_bytes", "wire_bytes_with_downloads")}),
                          flush=True)
        finally:
            links.leave()
    out["namespaces_left"] = links.remaining()
    out["secaggplus_floor"] = secaggplus_floor(profile, n, d)
    return out


def equals_plaintext(res: Any, x: np.ndarray, rule: str, f: int) -> bool:
    """The round's aggregate is ``secrobust.plain_aggregate`` of the rows of the workers that took part
    (all of them, unless S1 dropped an upload that fell below its pace)."""
    rows = list(res.participants)
    want = secrobust.plain_aggregate(x[rows] if len(rows) < len(x) else x, rule, f)
    return bool(np.array_equal(res.aggregate, want.aggregate))


def one_round(dep: LocalDeployment, links: netns.Links, profile: netns.Profile, pids: dict[str, int], r: int,
              n: int, d: int, rule: str, f: int, download_wait_s: float) -> dict[str, Any]:
    x = updates(1000 + r, n, d, f)
    assert dep.operator is not None
    round_id = dep.operator.next_round_id()
    load0 = os.getloadavg()
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own0 = sum(os.times()[:2])
    busy0 = netns.machine_busy_seconds()
    c0 = links.counters()
    t0 = time.time()
    res = dep.aggregate(x, rule, f)
    t1 = time.time()
    busy_round = netns.machine_busy_seconds() - busy0
    c1 = links.counters()
    deadline = time.monotonic() + download_wait_s
    while True:
        got = worker_received(dep, round_id)
        if len(got) >= len(res.participants) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    c2 = links.counters()
    t2 = max([t1, *got.values()])
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    own = sum(os.times()[:2]) - own0
    busy = netns.machine_busy_seconds() - busy0
    wire = diff(c1, c0)
    wire_all = diff(c2, c0)
    payload = payload_by_link(dict(res.stats.bytes_between))
    floor = netns.busiest(wire, profile)
    floor_all = netns.busiest(wire_all, profile)
    pay = netns.busiest(payload, profile)
    ev = server_events(dep, round_id)
    opened = ev["open"] if ev["open"] is not None else t0
    return {
        "round": r, "round_id": round_id, "participants": len(res.participants),
        "equals_plaintext": equals_plaintext(res, x, rule, f),
        "dropped": sorted(set(range(n)) - set(res.participants)),
        "round_s": round(t1 - t0, 3), "open_to_result_s": round(t1 - opened, 3),
        "with_downloads_s": round(t2 - t0, 3), "workers_with_aggregate": len(got),
        "after_open_s": {k: None if v is None else round(v - opened, 3) for k, v in ev.items() if k != "open"},
        "floor": floor, "ratio": round((t1 - t0) / floor["floor_s"], 2) if floor["floor_s"] else None,
        "ratio_open_to_result": round((t1 - opened) / floor["floor_s"], 2) if floor["floor_s"] else None,
        "floor_with_downloads": floor_all,
        "ratio_with_downloads": round((t2 - t0) / floor_all["floor_s"], 2) if floor_all["floor_s"] else None,
        "payload_busiest": pay,
        "server_seconds": {k: {p: round(v, 3) for p, v in s.items()} for k, s in res.stats.server_seconds.items()},
        "cpu_s": {"S0": round(cpu.get("S0", 0.0), 2), "S1": round(cpu.get("S1", 0.0), 2),
                  "dealer": round(cpu.get("dealer", 0.0), 2),
                  "workers": round(sum(v for k, v in cpu.items() if k.startswith("worker")), 2),
                  "launcher": round(own, 2), "machine": round(busy, 2),
                  "others": round(busy - own - sum(cpu.values()), 2)},
        "machine_cpu_round_s": round(busy_round, 2),
        "cpu_floor_s": round(busy_round / (os.cpu_count() or 1), 3),
        "load_before": [round(v, 2) for v in load0], "load_after": [round(v, 2) for v in os.getloadavg()],
        "wire_bytes": wire, "wire_bytes_with_downloads": wire_all,
        "payload_bytes": payload,
    }


FLOWER_RESULT = BENCH / "results" / "flower_vs_secrobust.json"


def secaggplus_floor(profile: netns.Profile, n: int, d: int) -> dict[str, Any]:
    """Flower SecAgg+'s link floor for one round under ``profile``, with the SuperLink (ServerApp) on a
    server access link and each SuperNode on a worker link: payload bytes the ServerApp sent and received
    in a warm round of bench/flower_vs_secrobust.py at this (n, d) (its committed result; the parameters
    going out to the clients and their masked vectors coming back), split evenly over the n nodes."""
    sent = received = None
    source = "8nd each way (no Flower measurement at this n, d)"
    if FLOWER_RESULT.exists():
        for rec in json.loads(FLOWER_RESULT.read_text())["results"]:
            if rec.get("system") == "flower" and rec.get("n") == n and rec.get("d") == d and rec.get("rounds"):
                last = rec["rounds"][-1]["bytes"]
                sent, received = last["server_sent"], last["server_received"]
                source = f"{FLOWER_RESULT.relative_to(ROOT)} (Flower {rec.get('version')}, payload bytes)"
    if sent is None:
        sent = received = 8 * n * d
    links = {"superlink": {"down": received, "up": sent}, "supernode": {"down": sent / n, "up": received / n}}
    server_rate = profile.server_mbit * 1e6 / 8
    node_rate = profile.worker_mbit * 1e6 / 8
    times = {("superlink", way): b / server_rate for way, b in links["superlink"].items() if server_rate} | {
        ("supernode", way): b / node_rate for way, b in links["supernode"].items() if node_rate}
    if not times:
        return {"source": source, "bytes": links, "floor_s": None}
    (link, way), floor = max(times.items(), key=lambda kv: kv[1])
    return {"source": source, "bytes": links, "busiest": f"{link} {way}", "floor_s": round(floor, 3)}


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    rev = os.environ.get("NETNS_BENCH_SRC_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True,
                           check=False)
    src = Path(secrobust.__file__).resolve().parents[1]
    return {"secrobust_src": str(src), "src_is_working_tree": src == ROOT / "src",
            "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "commit": rev,
            "src_uncommitted_changes": bool(dirty.stdout.strip()),
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "tc": subprocess.run(["tc", "-V"], capture_output=True, text=True, check=False).stdout.strip(),
            "blas": blas_kernels(), "load_at_start": [round(v, 2) for v in os.getloadavg()],
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")}}


def blas_kernels() -> list[list[Any]]:
    """threadpoolctl's BLAS libraries in this process (the parties run with the same environment and one
    BLAS thread): [internal api, kernel, threads]."""
    from threadpoolctl import threadpool_info
    return sorted([i["internal_api"], i.get("architecture"), i["num_threads"]] for i in threadpool_info()
                  if i["user_api"] == "blas")


def required_floor(rnd: dict[str, Any], profile: netns.Profile) -> dict[str, Any]:
    """The round's link floor: the link direction that is busiest by the protocol's own byte accounting (so
    the workers' aggregate downloads, which may start before the operators finish, never pick it), with the
    bytes its token bucket passed during the round (frames with all overhead) over its rate."""
    pay = netns.busiest(rnd["payload_bytes"], profile)
    if not pay.get("link"):
        return {"floor_s": 0.0}
    wire = rnd["wire_bytes"][pay["link"]][pay["direction"]]
    rate = profile.rate_mbit(pay["link"])
    return {"link": pay["link"], "direction": pay["direction"], "bytes": wire, "payload_bytes": pay["bytes"],
            "rate_mbit": rate, "floor_s": wire / (rate * 1e6 / 8)}


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per profile: the warm rounds (all but the first) with their floors and ratios."""
    rows = []
    for prof in res["profiles"]:
        profile = netns.Profile(**prof["profile"])
        warm = prof["rounds"][1:] or prof["rounds"]
        by_time = sorted(warm, key=lambda r: r["open_to_result_s"])
        med = by_time[len(by_time) // 2]
        fl = required_floor(med, profile)
        rows.append({
            "profile": prof["profile"]["name"],
            "busiest": f"{fl['link']} {fl['direction']}" if fl.get("link") else "-",
            "bytes_mb": round(fl.get("bytes", 0) / 1e6, 1), "payload_mb": round(fl.get("payload_bytes", 0) / 1e6, 1),
            "rate_mbit": fl.get("rate_mbit"), "floor_s": round(fl["floor_s"], 2),
            "open_to_result_s": [r["open_to_result_s"] for r in by_time],
            "median_s": med["open_to_result_s"],
            "ratios": [round(r["open_to_result_s"] / fl["floor_s"], 2) for r in by_time] if fl["floor_s"] else [],
            "median_ratio": round(med["open_to_result_s"] / fl["floor_s"], 2) if fl["floor_s"] else None,
            "launcher_round_s": sorted(r["round_s"] for r in warm),
            "with_downloads_s": sorted(r["with_downloads_s"] for r in warm),
            "floor_with_downloads_s": round(med["floor_with_downloads"]["floor_s"], 2),
            "median_after_open_s": med["after_open_s"], "median_cpu_s": med["cpu_s"],
            "cpu_floor_s": [r.get("cpu_floor_s") for r in warm],
            "payload_floor": med["payload_busiest"], "secaggplus_floor": prof.get("secaggplus_floor"),
            "load_before": [r["load_before"][0] for r in warm],
            "all_equal_plaintext": all(r["equals_plaintext"] for r in prof["rounds"]),
        })
    return rows


def src_note(m: dict[str, Any]) -> str:
    if not m.get("src_is_working_tree", True):
        return " (src/ as committed, exported)"
    return " (src/ had uncommitted changes)" if m["src_uncommitted_changes"] else ""


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = summary(res)
    lines = [
        f"# Rounds across network namespaces with shaped links (n = {res['n']}, d = {res['d']}, {res['rule']}, f = {res['f']})",
        "",
        f"Command: `{res['command']}`",
        "",
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, kernel {m['kernel']}, Python {m['python']}, "
        f"commit {m['commit']}{src_note(m)}, {m['date_utc']}, load average {m.get('load_at_start')} at the start, "
        f"BLAS {m.get('blas')} (threadpoolctl), environment {m.get('env')}. "
        "Every party (dealer, S0, S1, each worker) is a process in its own namespace; all of them share this "
        "machine's cores."),
        "",
        ("Floor: the bytes the busiest link direction's token bucket passed during the round (tc qdisc counters: "
        "frames with IP/TCP/TLS overhead; payload MB by the deployment's own accounting in brackets) / its rate; "
        "busiest by the protocol's payload, so the workers' downloads of the aggregate never pick it. "
        "Round: from the round's opening at the servers to the aggregate "
        "at the operators (the launcher's time, which adds writing the workers' input files, is the next column). "
        "Warm: rounds after the first; ratio: median warm round / floor."),
        "",
        ("| profile | busiest link | MB (payload) | rate (Mbit/s) | floor (s) | warm rounds (s) | ratios (median) | launcher (s) "
        "| + workers' downloads (s) / floor | median round: first/last upload, first/last row of E, S1 done (s) "
        "| CPU s (S0/S1/workers/dealer; everything else, kernel included) | CPU floor (s) | load 1 min |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, a = row["median_cpu_s"], row["median_after_open_s"]
        lines.append(
            f"| {row['profile']} | {row['busiest']} | {row['bytes_mb']} ({row['payload_mb']}) | {row['rate_mbit'] or '-'} "
            f"| {row['floor_s']} | {', '.join(f'{t:.2f}' for t in row['open_to_result_s'])} | "
            f"{', '.join(f'{t:.2f}' for t in row['ratios']) or '-'} (**{row['median_ratio']}**) | "
            f"{', '.join(f'{t:.2f}' for t in row['launcher_round_s'])} | "
            f"{', '.join(f'{t:.2f}' for t in row['with_downloads_s'])} / {row['floor_with_downloads_s']} | "
            f"{a.get('first_upload')}/{a['last_upload']}, {a.get('first_row_of_e')}/{a['last_row_of_e']}, "
            f"{a['s1_done']} | "
            f"{c['S0']}/{c['S1']}/{c['workers']}/{c['dealer']}; {c.get('others', '?')} | "
            f"{', '.join('-' if v is None else f'{v:.2f}' for v in row.get('cpu_floor_s', [])) or '-'} | "
            f"{', '.join(f'{v:.1f}' for v in row['load_before'])} |")
    lines.append("")
    lines.append("Every round's aggregate equalled secrobust.plain_aggregate of its participants' updates: "
                 + ("yes." if all(r["all_equal_plaintext"] for r in rows) else "**NO**."))
    dropped = [(prof["profile"]["name"], r["round"], r["dropped"]) for prof in res["profiles"] for r in prof["rounds"]
               if r.get("dropped")]
    if dropped:
        lines.append("Uploads S1 cut for falling below its pace (profile, round, workers): "
                     + "; ".join(f"{p}, {r}, {w}" for p, r, w in dropped) + ".")
    lines += [
        "",
        "## Against Flower SecAgg+'s link floor (not run in namespaces)",
        "",
        ("Payload bytes only (no TLS/TCP/IP overhead) on both sides. secrobust: the deployment's own accounting "
        "(`stats.bytes_between`) of the median warm round, mapped onto the links; it leaves out the aggregate-share "
        "downloads (the operators' two of 8d bytes, which end the round, and the workers', which it does not wait "
        "for). SecAgg+: the "
        "SuperLink on a server access link and each SuperNode on a worker link, with the payload bytes the "
        "ServerApp sent (the parameters to each client) and received (the masked vectors) in a warm round of "
        "bench/flower_vs_secrobust.py."),
        "",
        "| profile | secrobust payload floor: busiest link, MB, s | SecAgg+ payload floor: busiest link, MB, s |",
        "|---|---|---|",
    ]
    for row in rows:
        pf, sf = row["payload_floor"], row["secaggplus_floor"] or {}
        if not pf.get("link") or not sf.get("busiest"):
            continue
        who, way = sf["busiest"].split()
        sbytes = sf["bytes"][who][way]
        lines.append(f"| {row['profile']} | {pf['link']} {pf['direction']}, {pf['bytes'] / 1e6:.1f}, {pf['floor_s']:.2f} "
                     f"| {sf['busiest']}, {sbytes / 1e6:.1f}, {sf['floor_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rule", default="krum")
    ap.add_argument("--f", type=int, default=10)
    ap.add_argument("--profiles", nargs="+", default=list(netns.PROFILES), choices=list(netns.PROFILES))
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here and the Markdown beside it")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the deployment's files (logs) here")
    ap.add_argument("--src-rev", default=None, help="measure src/ as committed at this git revision (exported to a "
                    "temporary folder), not the working tree")
    ap.add_argument("--render", type=Path, default=None, help="only write the Markdown of this JSON result beside it")
    ap.add_argument("--cleanup-stale", action="store_true",
                    help="only delete namespaces left by an earlier run of this script that was killed")
    args = ap.parse_args()
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return
    why = netns.missing_tools()
    if why:
        sys.exit(f"netns_bench: {why}")
    netns.guard_signals()
    if os.environ.get("NETNS_BENCH_SRC_DIR", "").startswith(tempfile.gettempdir()):
        atexit.register(shutil.rmtree, os.environ["NETNS_BENCH_SRC_DIR"], True)
    if args.cleanup_stale:
        for name in netns.stale_namespaces():
            subprocess.run(["ip", "netns", "del", name], check=False)
            print("deleted", name)
        return
    shown = [*sys.argv[1:], *(["--src-rev", os.environ["NETNS_BENCH_SRC_COMMIT"]]
                              if "NETNS_BENCH_SRC_COMMIT" in os.environ else [])]
    res: dict[str, Any] = {"command": "OPENBLAS_NUM_THREADS=1 .venv/bin/python " + shlex.join(["bench/netns_bench.py", *shown]),
                           "machine": machine(), "n": args.n, "d": args.d, "rule": args.rule, "f": args.f,
                           "profiles": []}
    for name in args.profiles:
        workdir = None if args.workdir is None else args.workdir / name
        res["profiles"].append(run_profile(netns.PROFILES[name], args.n, args.d, args.rounds, args.rule, args.f, workdir))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1) + "\n")
            args.out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
