"""A deployment started by hand from what ``secrobust init`` writes, as docs/deployment-setup.md says.

Every party is a process started with ``python -m secrobust.deploy <role> --config <its folder>/<name>.toml``;
the two operators run separately (S0's opens the round and saves the request, S1's opens that same
request); a worker whose update file has the wrong d (or NaN) tells both servers why it sits the round
out, and the reason reaches the operators' reports, and the error when the round fails for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

import secrobust
from secrobust.cli import app
from secrobust.deploy.config import load
from secrobust.deploy.local import SRC_DIR, free_ports
from secrobust.deploy.process import PARENT_ENV
from secrobust.pki.certs import party_dir, standard_parties, tls_name, worker_party

N = 6
D = 4


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env[PARENT_ENV] = str(os.getpid())
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    return env


def _start(root: Path, *argv: str) -> subprocess.Popen:
    log = open(root / f"{argv[0]}-{len(os.listdir(root))}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "secrobust.deploy", *argv], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"exited: {dead}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def _config(root: Path, party: str) -> str:
    return str(party_dir(root, party) / f"{tls_name(party)}.toml")


def _inputs(root: Path, round_id: int, x: np.ndarray, bad: dict[int, np.ndarray]) -> None:
    """Each worker's update where its own configuration says to look: <its folder>/inbox/round-<r>/<name>.npy."""
    for i in range(N):
        party = worker_party(i)
        folder = load(Path(_config(root, party))).inbox / f"round-{round_id}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{tls_name(party)}.npy", bad.get(i, x[i]))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("by-hand")
    ports = dict(zip(("S0", "S1", "dealer"), free_ports(3)))
    addresses = [a for name, p in ports.items() for a in (f"--{name.lower()}", f"127.0.0.1:{p}")]
    result = CliRunner().invoke(app, ["init", "--out", str(root), "--workers", str(N), "--local-keys", *addresses])
    assert result.exit_code == 0, result.output
    logs = root / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        for role, party in (("dealer", "dealer"), ("server", "S0"), ("server", "S1")):
            procs.append(_start(logs, role, "--config", _config(root, party),
                                "--port-file", str(logs / f"{party}.port")))
        for party in ("dealer", "S0", "S1"):
            _wait_for(logs / f"{party}.port", procs)
        configs = [a for i in range(N) for a in ("--config", _config(root, worker_party(i)))]
        procs.append(_start(logs, "worker", *configs, "--out", str(root / "aggregates"),
                            "--ready-file", str(logs / "workers.ready")))
        _wait_for(logs / "workers.ready", procs)
        yield root
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def test_init_writes_a_configuration_per_party_that_names_its_own_files(deployment):
    for party in standard_parties(N):
        cfg = load(Path(_config(deployment, party)))
        own = party_dir(deployment, party)
        assert cfg.party == party and {cfg.key.parent, *(p.parent for p in cfg.certs.values())} == {own}
        assert cfg.identity().party == party
    server = load(Path(_config(deployment, "S1")))
    assert server.state_dir == party_dir(deployment, "S1") / "state" and server.workers == tuple(range(N))


WINDOW = 60


def test_two_operators_run_a_round_by_hand_and_see_why_a_worker_declined(deployment):
    x = np.random.default_rng(0).normal(size=(N, D))
    _inputs(deployment, 0, x, {5: np.zeros(D - 1)})
    request = deployment / "round-0.json"
    logs = deployment / "logs"
    s0_side = subprocess.Popen([sys.executable, "-m", "secrobust.deploy", "round", "--config",
                                _config(deployment, "operator:S0"), "--rule", "krum", "--f", "1", "--d", str(D),
                                "--workers", f"0-{N - 1}", "--window", str(WINDOW), "--save-request", str(request)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        _wait_for(request, [s0_side])
        started = time.monotonic()
        s1_side = subprocess.run([sys.executable, "-m", "secrobust.deploy", "round", "--config",
                                  _config(deployment, "operator:S1"), "--request", str(request)],
                                 capture_output=True, env=_env(), text=True, timeout=120)
        s1_seconds = time.monotonic() - started
        out0, err0 = s0_side.communicate(timeout=120)
    finally:
        if s0_side.poll() is None:
            s0_side.kill()
    assert s0_side.returncode == 0 and s1_side.returncode == 0, (err0, s1_side.stderr, list(logs.iterdir()))
    # every worker either sent its share or declined, so S1 closed the intake without waiting out the window
    # (long, so that a loaded machine's slow process starts cannot pass for a window that ran out)
    assert s1_seconds < WINDOW, s1_seconds
    rep0, rep1 = json.loads(out0.strip().splitlines()[-1]), json.loads(s1_side.stdout.strip().splitlines()[-1])
    assert (rep0["party"], rep1["party"]) == ("S0", "S1") and rep0["round_id"] == rep1["round_id"] == 0
    want = secrobust.aggregate(x[:5], "krum", 1)
    assert rep0["participants"] == rep1["participants"] == [0, 1, 2, 3, 4]
    assert rep0["weights"] == rep1["weights"] == want.weights.tolist()
    for rep in (rep0, rep1):
        assert rep["declined"] == {"5": f"update has dimension {D - 1}, the round has d={D}"}
    assert "view" in rep1 and "view" not in rep0                      # S1's opened distances: S1's operator only
    got = np.load(deployment / "aggregates" / "worker-0" / "round-0.npy")
    assert np.array_equal(got, want.aggregate)


def test_a_round_that_fails_for_declining_workers_names_them_and_why(deployment):
    x = np.random.default_rng(1).normal(size=(N, D))
    nan = x[4].copy()
    nan[2] = np.nan
    _inputs(deployment, 1, x, {4: nan, 5: np.zeros(D + 1)})
    result = CliRunner().invoke(app, ["round", "--config", _config(deployment, "operator:S0"), "--config",
                                      _config(deployment, "operator:S1"), "--rule", "mean", "--d", str(D),
                                      "--workers", f"0-{N - 1}", "--window", "6"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "at least 5 participants" in message
    assert "worker 4 declined: encoder refused the update" in message and "NaN" in message
    assert f"worker 5 declined: update has dimension {D + 1}, the round has d={D}" in message
