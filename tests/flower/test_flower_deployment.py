"""The real thing (issue 21): Flower 1.42's Deployment Engine on 127.0.0.1 with secrobust's servers.

One ``flower-superlink`` with TLS and SuperNode authentication, five ``flower-supernode`` processes
(each its own ``$FLWR_HOME``, its Flower node key registered and pinned to its worker by ``secrobust
flower-nodes``, the command line that wrote), ``secrobust flower-servers`` (dealer, S0, S1 and S1's
approval service from a folder ``secrobust init --local-keys`` made and ``secrobust flower-approval``
split: the ServerApp holds operator:S0's key only; mutual TLS between them and with every worker), and
``flwr run`` of the numpy app in ``flwr_app/`` through a connection in ``$FLWR_HOME/config.toml``:

* a 2-round Krum run with worker 0 Byzantine ends ``finished:completed``, worker 0 has weight 0 in both
  rounds, the model changed, and the rounds' lines reach ``flwr log``;
* a run with an f the five nodes cannot meet ends ``finished:failed`` with the strategy's error, and so
  does a run with a rule S1's policy does not allow;
* the same 3-round run with one message per node and round (``one-message``) instead of two, timed;
* a registered node that brings another worker's secrobust key (a stolen key) is refused as that worker:
  its reply is dropped, and with four usable replies for Krum's five the run ends as an error naming it.

Flower's TLS certificates come from ``secrobust flower-tls``'s CA (Flower's links need TLS for SuperNode
authentication; secrobust's links keep their own mutual TLS).
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``: the numpy app is a fixture that runs in this venv; the
runtime install (``uv sync`` from PyPI and a folder with secrobust's wheel) is checked on the example by
``test_flower_example.py`` and docs/flower.md's walk-through, not here, where it would add a wheel build and
the network to every run. Readiness is waited on, never slept for: the servers' ready file, the
SuperLink's port, and the strategy's own check that the rule's five nodes are connected (``node-wait-s``).
Every process started here, and every process they started, is killed at the end, even on failure.
Slow (about 7 minutes on a loaded 2-core machine): ``-m slow``.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from tests.flower.test_flower_launch import free_ports, provision

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
APP = Path(__file__).resolve().parent / "flwr_app"
NODES = 5
BYZANTINE = 0           # worker 0 (partition id 0) sends -20 x its honest step
RUN_TIMEOUT_S = 900.0


def flower_tls(out: Path) -> dict[str, Path]:
    """Flower's TLS files for 127.0.0.1 as ``secrobust flower-tls`` makes them (Flower's links, not secrobust's)."""
    from secrobust.flower.tls import flower_tls as make

    return make(out, ["127.0.0.1"], days=2)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        out.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return out


def _tree(pid: int) -> list[int]:
    """pid and every process below it, now."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class Processes:
    """What the test starts; ``kill_all`` ends each of them and everything they started."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: set[int] = set()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed below, once the child has it
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env or self.env, cwd=str(self.root), start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def note(self) -> None:
        """Remember every descendant alive now (Flower's SuperExec and app processes leave the group)."""
        for proc in self.procs.values():
            self.seen.update(_tree(proc.pid))

    def log(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill_all(self) -> None:
        self.note()
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.note()
        for pid in self.seen:
            for kill in (lambda p=pid: os.killpg(p, signal.SIGKILL), lambda p=pid: os.kill(p, signal.SIGKILL)):
                try:
                    if pid != os.getpid() and pid != os.getpgrp():
                        kill()
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def _wait(what: str, ok, timeout: float, procs: Processes, names: tuple[str, ...]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        for name in names:
            if procs.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited while waiting for {what}:\n{procs.log(name)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(procs.log(n) for n in names))
        time.sleep(0.2)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    if not (BIN / "flower-superlink").exists() or not (BIN / "flower-supernode").exists():
        pytest.skip("flwr's flower-superlink / flower-supernode are not in this venv")
    root = tmp_path_factory.mktemp("flower-deployment")
    sec = root / "secrobust"
    provision(sec, NODES)
    link, approval, *runtime = free_ports(2 + NODES)
    res = subprocess.run([str(BIN / "secrobust"), "flower-approval", "--dir", str(sec), "--listen",
                          f"127.0.0.1:{approval}", "--rules", "krum,multi-krum"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    env = dict(os.environ)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",    # flower-superexec must be on PATH
                "FLWR_HOME": str(root / "flwr"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"})
    (root / "flwr").mkdir()
    tls = flower_tls(root / "flower-tls")
    (root / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "ci"\n\n[superlink.ci]\naddress = "127.0.0.1:{link}"\n'
        f'root-certificates = "{tls["ca"]}"\n')
    procs = Processes(root, env)
    try:
        ready = root / "servers.ready"
        procs.start("servers", [str(BIN / "secrobust"), "flower-servers", "--dir", str(sec), "--ready-file",
                                str(ready), "--start-timeout", "300"])
        procs.start("superlink", [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(tls["ca"]),
                                  "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
                                  "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(link)])
        _wait("the SuperLink's port", lambda: _listening(link), 300, procs, ("superlink",))
        # each worker's Flower node key, registered at the SuperLink and pinned to the worker
        res = subprocess.run([str(BIN / "secrobust"), "flower-nodes", "--dir", str(sec), "--connection", "ci",
                              "--superlink", f"127.0.0.1:{link}", "--workers", f"0-{NODES - 1}",
                              "--root-certificates", str(tls["ca"]), "--node-config", f"num-partitions={NODES}"],
                             env=env, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        pins = json.loads((sec / "node-workers.json").read_text())
        assert sorted(pins.values()) == list(range(NODES))
        for i in range(NODES):
            line = (sec / f"worker-{i}" / "flower-supernode.txt").read_text()
            argv = shlex.split(line)
            assert argv[0] == "flower-supernode" and "--auth-supernode-private-key" in argv
            procs.start(f"node-{i}", [str(BIN / argv[0]), *argv[1:], "--port", str(runtime[i])],
                        env={**env, "FLWR_HOME": str(root / f"flwr-node-{i}")})
        _wait("secrobust's servers", ready.exists, 300, procs, ("servers",))
        yield {"root": root, "env": env, "sec": sec, "procs": procs, "link": link, "runtime": runtime, "tls": tls}
    finally:
        procs.kill_all()
    leftover = [p for p in procs.seen if Path(f"/proc/{p}").exists()
                and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"]
    assert not leftover, f"processes left running: {leftover}"


def _flwr(dep, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], env=dep["env"], cwd=str(dep["root"]), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _run(dep, overrides: str) -> str:
    res = _flwr(dep, "run", str(APP), "ci", "--format", "json", "--run-config",
                f"secrobust-dir='{dep['sec']}' {overrides}")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["success"], out
    dep["procs"].note()
    return str(out["run-id"])


def _finished(dep, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        res = _flwr(dep, "ls", "ci", "--run-id", run_id, "--format", "json", timeout=120)
        if res.returncode == 0:
            runs = json.loads(res.stdout).get("runs", [])
            if runs and str(runs[0]["status"]).startswith("finished"):
                return runs[0]
        dep["procs"].note()
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {res.stdout}{res.stderr}\n" + \
            dep["procs"].log("superlink")
        time.sleep(2.0)


def test_flwr_run_completes_and_the_byzantine_node_gets_weight_0(deployment):
    summary = deployment["root"] / "summary.json"
    run_id = _run(deployment, f"num-server-rounds=2 f=1 byzantine=1 node-wait-s=600.0 summary-file='{summary}'")
    run = _finished(deployment, run_id)
    assert run["status"] == "finished:completed", run
    got = json.loads(summary.read_text())
    assert [r["server_round"] for r in got["rounds"]] == [1, 2]
    for rnd in got["rounds"]:
        assert rnd["error"] is None and rnd["workers"] == list(range(NODES))
        assert rnd["weights"][BYZANTINE] == 0.0 and sum(rnd["weights"]) == pytest.approx(1.0)
    initial, final = got["initial"], got["final"]
    assert final != initial and all(v > 0.5 for v in final)     # the honest nodes' direction, not -20x
    logs = _flwr(deployment, "log", run_id, "ci", "--show", timeout=120)
    assert "secrobust: server round 2" in logs.stdout + logs.stderr
    assert "S1's rounds approved by S1's approval service" in logs.stdout + logs.stderr
    approved = [json.loads(line) for line in (deployment["sec"] / "logs" / "approval.log").read_text().splitlines()
                if '"round-approved"' in line]
    assert [a["round"] for a in approved][-2:] == [r["round_id"] for r in got["rounds"]]


def test_one_message_per_node_and_round_under_process_per_message(deployment):
    """The same 3-round run with two messages per node and round, then with one (the round opened before
    training: each node pays one ClientApp cold start per round instead of two); both give the Byzantine
    node weight 0, and the wall time of rounds 2 and 3 is measured (printed, and kept in one-message.json)."""
    times = {}
    for mode in ("false", "true"):
        summary = deployment["root"] / f"summary-one-message-{mode}.json"
        run = _finished(deployment, _run(deployment, f"num-server-rounds=3 f=1 byzantine=1 node-wait-s=600.0 "
                                                     f"one-message={mode} summary-file='{summary}'"))
        assert run["status"] == "finished:completed", run
        got = json.loads(summary.read_text())
        assert all(r["error"] is None and r["weights"][BYZANTINE] == 0.0 for r in got["rounds"])
        assert all(("share" in r["seconds"]) == (mode == "false") for r in got["rounds"])
        ends = got["round_ends"]
        times[mode] = [round(b - a, 2) for a, b in itertools.pairwise(ends)]
    out = {"two_messages_s": times["false"], "one_message_s": times["true"], "nodes": NODES,
           "load_average": os.getloadavg()}
    (deployment["root"] / "one-message.json").write_text(json.dumps(out))
    print("one message per node and round:", json.dumps(out))


def test_flwr_run_with_an_f_the_nodes_cannot_meet_ends_as_an_error(deployment):
    run_id = _run(deployment, "num-server-rounds=2 f=2 node-wait-s=5.0")
    run = _finished(deployment, run_id)
    assert run["status"] == "finished:failed", run
    assert "f=2" in run["status-details"] and "7 participants" in run["status-details"], run


def test_flwr_run_with_a_rule_s1s_policy_refuses_ends_as_an_error(deployment):
    run = _finished(deployment, _run(deployment, "num-server-rounds=1 rule='mean' f=0 node-wait-s=5.0"))
    assert run["status"] == "finished:failed", run
    assert "S1's approval policy does not allow rule 'mean'" in run["status-details"], run


def test_a_registered_node_with_another_workers_key_is_refused(deployment):
    """Node 4 (authenticated by its own Flower key) runs with worker 3's secrobust files, as a thief of
    worker 3's key would: node 4 is pinned to worker 4, so its reply is dropped, not counted as worker 3."""
    procs, sec = deployment["procs"], deployment["sec"]
    procs.note()
    node = procs.procs["node-4"]
    os.killpg(node.pid, signal.SIGTERM)
    node.wait(timeout=60)
    argv = shlex.split((sec / "worker-4" / "flower-supernode.txt").read_text())
    stolen = str(sec / "worker-3" / "worker-3.toml")
    argv[argv.index("--node-config") + 1] = f"partition-id=4 secrobust-worker-config='{stolen}' num-partitions={NODES}"
    procs.start("node-4-stolen", [str(BIN / argv[0]), *argv[1:], "--port", str(deployment["runtime"][4])],
                env={**deployment["env"], "FLWR_HOME": str(deployment["root"] / "flwr-node-4b")})
    node4 = next(int(n) for n, w in json.loads((sec / "node-workers.json").read_text()).items() if w == 4)
    run = _finished(deployment, _run(deployment, "num-server-rounds=1 f=1 byzantine=0 node-wait-s=600.0"))
    assert run["status"] == "finished:failed", run
    details = run["status-details"]
    assert f"node {node4} is provisioned as worker 4, its binding proves worker 3" in details, details
    assert "only 4 of the 5 nodes" in details, details
