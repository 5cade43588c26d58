"""Split operators in Flower (issue 21): the ServerApp holds operator:S0's key only and asks S1's approval
service for S1's half of every round. Against real S0, S1 and dealer processes, with the ServerApp and the
ClientApps in this process (``run_inprocess``); the launcher test starts the service from the folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flower_apps import run_strategy, stepping_client, wait_ready
from flwr.app import ArrayRecord, Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from secrobust.deploy import approval
from secrobust.deploy.approval import APPROVAL_FILE, Approvals, ApprovalService, Policy
from secrobust.deploy.local import LocalOptions
from secrobust.deploy.operator import Operator
from secrobust.flower import FlowerServers, SecRobust, run_inprocess
from secrobust.flower.strategy import SecRobustError, operator_files
from secrobust.pki.certs import operator_party
from tests.flower.test_flower_launch import _alive, free_ports, provision

N = 6
D = 12
BYZ = 0
POLICY = Policy(rules=("krum", "multi-krum"), min_cohort=5, max_rounds=100, test_seeds=False)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """FlowerServers with S1's approval service beside it; operator:S0's file names the service."""
    srv = FlowerServers(N, tmp_path_factory.mktemp("split"),
                        LocalOptions(share_window_s=20.0, peer_timeout_s=15.0, connect_timeout_s=2.0))
    with srv:
        port = free_ports(1)[0]
        path = approval.provision(srv.cert_dir, f"127.0.0.1:{port}", POLICY)
        service = ApprovalService(approval.load(path))
        service.start()
        try:
            yield srv, service
        finally:
            service.stop()


def _client(srv: FlowerServers, on_train=None) -> ClientApp:
    return stepping_client(srv, D, BYZ, on_train=on_train)


def _run(srv: FlowerServers, rounds: int = 2, on_train=None, **run_config):
    strategy = SecRobust.from_run_config({"secrobust-dir": str(srv.cert_dir), "rule": "krum", "f": 1,
                                          "reveal": "weights", **run_config}, fraction_evaluate=0.0)
    return strategy, run_strategy(strategy, _client(srv, on_train), N, rounds, D)


def test_the_serverapp_holds_operator_s0_only_and_s1_runs_what_its_policy_allows(split):
    srv, service = split
    assert [p.name for p in operator_files(srv.cert_dir)] == ["operator-s0.toml"]
    strategy, result = _run(srv)
    for r in (1, 2):
        weights = strategy.round_metrics[r]["secrobust-weights"]
        assert weights[BYZ] == 0.0 and sum(weights) == pytest.approx(1.0)
    assert not np.array_equal(result.arrays.to_numpy_ndarrays()[0], np.zeros(D))
    approved = service.handler.approvals.rounds
    assert [rec.round_id for rec in strategy.history] == list(approved)[-2:]
    assert all(req.min_participants == POLICY.min_cohort and req.check_inputs for req in approved.values())
    s = SecRobust.from_run_config({"secrobust-dir": str(srv.cert_dir)})
    try:
        assert s.operator.relayed == {"S1"}
        assert {c.identity.party for c in s.operator.clients.values()} == {operator_party(0)}
    finally:
        s.close()


def test_settings_s1s_policy_refuses_stop_the_run_before_any_node_trains(split):
    srv, _ = split
    trained = []
    with pytest.raises(SecRobustError, match=r"S1's approval policy does not allow rule 'mean' \(it allows krum, "
                       r"multi-krum\); check-inputs = false \(it requires the input validity check\)"):
        _run(srv, rule="mean", f=0, reveal="distances", on_train=trained.append, **{"check-inputs": False})
    assert trained == []


def test_an_f_the_policys_workers_cannot_meet_stops_at_once(split, tmp_path):
    """operator:S0's file as 'secrobust init' writes it lists no workers; with split operators the workers a
    round may name are then S1's policy's (here S1's admission list, 6): f = 2 needs 7, so start says so at
    once instead of waiting node-wait-s for a seventh SuperNode."""
    import shutil
    import tomllib

    from secrobust.deploy.config import load as load_config, to_toml

    srv, _ = split
    folder = tmp_path / "operator-s0"
    shutil.copytree(srv.cert_dir / "operator-s0", folder)
    cfg = load_config(folder / "operator-s0.toml")
    (folder / "operator-s0.toml").write_text(to_toml(replace(cfg, workers=()), relative_to=folder))
    assert "admission" not in tomllib.loads((folder / "operator-s0.toml").read_text())
    strategy = SecRobust.from_run_config({"secrobust-dir": str(tmp_path), "rule": "krum", "f": 2,
                                          "node-wait-s": 60.0}, fraction_evaluate=0.0)
    trained = []
    t0 = time.monotonic()
    with pytest.raises(SecRobustError, match=r"f=2 .*\(7 participants\), but the servers admit only 6 workers"):
        run_strategy(strategy, _client(srv, trained.append), N, 1, D)
    assert time.monotonic() - t0 < 30.0 and trained == []


def test_a_round_s1s_policy_refuses_is_a_run_error_naming_the_policy(split):
    srv, service = split
    handler = service.handler
    kept = handler.approvals
    handler.approvals = Approvals(replace(POLICY, max_rounds=1), kept.clock, last_round=kept.last_round)
    try:
        with pytest.raises(SecRobustError, match=r"server round 2 failed: .*S1's policy refuses round \d+: rate: "
                           r"1 rounds were approved"):
            _run(srv)
    finally:
        handler.approvals = kept


def test_flower_servers_starts_s1s_approval_service(tmp_path):
    folder = tmp_path / "dep"
    provision(folder, 5)
    port = free_ports(1)[0]
    done = subprocess.run([sys.executable, "-m", "secrobust.cli", "flower-approval", "--dir", str(folder),
                           "--listen", f"127.0.0.1:{port}", "--rules", "krum,multi-krum", "--max-rounds", "10"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    cfg = approval.load(folder / "operator-s1" / APPROVAL_FILE)
    assert cfg.policy.rules == ("krum", "multi-krum") and cfg.policy.max_rounds == 10
    assert cfg.policy.workers == tuple(range(5)) and cfg.policy.check_inputs
    assert [p.name for p in operator_files(folder)] == ["operator-s0.toml"]
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "secrobust.flower.servers", "--dir", str(folder),
                             "--ready-file", str(ready)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    pids: list[int] = []
    try:
        info = wait_ready(proc, ready)
        assert set(info["parties"]) == {"dealer", "S0", "S1", "approval"}
        pids = [p["pid"] for p in info["parties"].values()]
        s = SecRobust.from_run_config({"secrobust-dir": str(folder), "f": 1})
        try:
            assert isinstance(s.operator, Operator) and s.operator.relayed == {"S1"}
            st = s.operator.status()
            assert st["S1"]["policy"]["rules"] == ["krum", "multi-krum"]
        finally:
            s.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_flower_servers_split_operators_for_simulations(tmp_path):
    """FlowerServers(split_operators=True): the simulations' ServerApp holds operator:S0's key alone too."""
    with FlowerServers(N, tmp_path / "sim", LocalOptions(share_window_s=20.0, peer_timeout_s=15.0,
                                                          connect_timeout_s=2.0), split_operators=True) as srv:
        assert [p.name for p in srv.operator_configs()] == ["operator-s0.toml"]
        assert "approval" in srv.server_pids()
        strategy = SecRobust(srv.operator_configs(), "krum", 1, reveal="weights", fraction_evaluate=0.0)
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(D)]), num_rounds=1)

        try:
            run_inprocess(server, _client(srv), N)
            assert strategy.operator.relayed == {"S1"}
        finally:
            strategy.close()
        assert strategy.round_metrics[1]["secrobust-weights"][BYZ] == 0.0
    assert all(not c.alive for c in srv.children.values())
