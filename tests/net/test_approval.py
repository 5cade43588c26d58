"""Split operators (issue 21): S1's approval service, as operator:S1, opens at S1 only what S1's policy allows.

The attacker is whoever holds operator:S0's key alone (the Flower operator, or S0's organisation): it asks
for a cohort of 2 to difference out a worker, turns the input check off, names a worker S1 does not
know, floods rounds, replays an approved request under another round id, or skips the service and calls
S1 directly with operator:S0's certificate. Each is refused and S1 never opens the round. The policy's
rules are tested alone first (no processes), then against real S0, S1, dealer and worker processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import secrobust
from secrobust.deploy.approval import (
    APPROVAL_PARTY,
    ApprovalConfig,
    Approvals,
    ApprovalService,
    Policy,
    PolicyRefused,
    load,
    policy_toml,
)
from secrobust.deploy.config import load as load_config
from secrobust.deploy.local import LocalDeployment
from secrobust.deploy.operator import Operator
from secrobust.deploy.rounds import RoundRequest, fresh_triple_id
from secrobust.pki.certs import operator_party
from secrobust.transport.grpc import PeerClient, RemoteRejected
from tests.deployments import running

N = 6
D = 40
POLICY = Policy(rules=("krum", "multi-krum"), min_cohort=5, workers=tuple(range(N)), max_rounds=3,
                per_seconds=3600.0, test_seeds=True)
DP_POLICY = replace(POLICY, min_dp_noise_std=0.01)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _request(round_id: int, workers=tuple(range(N)), **kw) -> RoundRequest:
    kw.setdefault("min_participants", 5)
    kw.setdefault("triple_id", fresh_triple_id(round_id))
    return RoundRequest(round_id=round_id, worker_ids=tuple(workers), d=D, rule=kw.pop("rule", "krum"),
                        f=kw.pop("f", 1), **kw)


# the policy alone


@pytest.mark.parametrize("change, why", [
    ({"workers": (0, 1), "rule": "mean", "f": 0, "min_participants": 2},
     "cohort of 2 workers is below the policy's minimum of 5"),
    ({"min_participants": 2}, "min_participants is 2; it must be at least the policy's minimum cohort 5"),
    ({"min_participants": None}, "min_participants is None"),
    ({"check_inputs": False}, "input validity check must be on"),
    ({"workers": (0, 1, 2, 3, 4, 99)}, r"workers \[99\] are not among"),
    ({"rule": "mean", "f": 0}, "rule 'mean' is not allowed"),
    ({"share_window_s": 4000.0}, "share window of 4000 s is above"),
    ({"dp_noise_std": 0.001}, "DP noise std 0.001 is below the policy's minimum of 0.01"),
])
def test_each_request_outside_the_policy_is_refused_with_its_reason(change, why):
    approvals = Approvals(DP_POLICY, Clock())
    with pytest.raises(PolicyRefused, match=why):
        approvals.approve(3, _request(3, **change).to_json())
    assert approvals.last_round == -1 and not approvals.times     # a refusal uses up nothing
    assert approvals.approve(3, _request(3, dp_noise_std=0.01).to_json()).round_id == 3


def test_replays_and_floods_are_refused():
    clock = Clock()
    approvals = Approvals(replace(POLICY, max_rounds=2, per_seconds=60.0, min_interval_s=5.0), clock)
    first = _request(4)
    approvals.approve(4, first.to_json())
    with pytest.raises(PolicyRefused, match="call is for round 9 but the request is round 4's"):
        approvals.approve(9, first.to_json())
    with pytest.raises(PolicyRefused, match="not above round 4"):
        approvals.approve(4, first.to_json())
    with pytest.raises(PolicyRefused, match="already ran an approved round"):       # same request, new round id
        approvals.approve(5, replace(first, round_id=5).to_json())
    with pytest.raises(PolicyRefused, match="approved 1.0 s ago; the policy asks 5 s"):
        clock.t += 1.0
        approvals.approve(5, _request(5).to_json())
    clock.t += 5.0
    approvals.approve(6, _request(6).to_json())
    clock.t += 10.0
    with pytest.raises(PolicyRefused, match="rate: 2 rounds were approved in the last 60 s"):
        approvals.approve(7, _request(7).to_json())
    clock.t += 50.0                             # the first approval leaves the window
    assert approvals.approve(7, _request(7).to_json()).round_id == 7


def test_policy_file_is_checked_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="rules is required"):
        Policy.from_mapping({})
    with pytest.raises(ValueError, match="unknown \\[policy\\] keys \\['min_cohrt'\\]"):
        Policy.from_mapping({"rules": ["krum"], "min_cohrt": 3})
    with pytest.raises(ValueError, match="krumm"):
        Policy.from_mapping({"rules": ["krumm"]})
    with pytest.raises(TypeError, match="check_inputs is true or false"):
        Policy.from_mapping({"rules": ["krum"], "check_inputs": "yes"})
    assert Policy.from_mapping({"rules": ["krum"]}, (0, 1, 2)).workers == (0, 1, 2)    # S1's admission list
    import tomllib
    assert Policy.from_mapping(tomllib.loads(policy_toml(POLICY))["policy"]) == POLICY
    assert Policy.from_mapping(tomllib.loads(policy_toml(DP_POLICY))["policy"]) == DP_POLICY


# against the processes


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    yield from running(LocalDeployment, N, tmp_path_factory.mktemp("approval"))


def _service(dep: LocalDeployment, policy: Policy) -> ApprovalService:
    cfg = ApprovalConfig(load_config(dep.config_file(APPROVAL_PARTY)), "127.0.0.1:0", policy)
    service = ApprovalService(cfg)
    service.start()
    return service


def _split(dep: LocalDeployment, service: ApprovalService) -> Operator:
    return Operator([dep.identity(operator_party(0))], dep.addresses["S0"], None, dep.addresses["dealer"],
                    connect_timeout=2.0, approval=f"127.0.0.1:{service.port}")


def _s1_last(dep: LocalDeployment) -> int:
    return int(dep.operator.clients["S1"].control("status")["last_round"])


def test_requests_outside_s1s_policy_never_reach_s1(dep):
    service = _service(dep, POLICY)
    op = _split(dep, service)
    try:
        before = _s1_last(dep)
        attacks = {
            "cohort of 2 workers is below": {"workers": (0, 1), "rule": "mean", "f": 0, "min_participants": 2},
            "input validity check must be on": {"check_inputs": False},
            r"workers \[7\] are not among": {"workers": (0, 1, 2, 3, 7)},
            "rule 'mean' is not allowed": {"rule": "mean", "f": 0},
        }
        for why, change in attacks.items():
            statuses = op.status()
            req = op.with_triples(_request(op.next_round_id(statuses), **change), statuses)
            # straight to the service: S0's own configuration (which may allow anything) is not S1's defence
            with pytest.raises(RemoteRejected, match=f"S1's policy refuses round {req.round_id}: .*{why}") as err:
                op.clients["S1"].control("open-round", req.round_id, req.to_json())
            assert err.value.code == "not-permitted"
            assert _s1_last(dep) == before
        # through the Operator, as the strategy opens rounds: S0 opens, the service refuses, S0's round is aborted
        statuses = op.status()
        req = op.with_triples(_request(op.next_round_id(statuses), check_inputs=False), statuses)
        with pytest.raises(RemoteRejected, match="S1's policy refuses .*input validity check"):
            op.open_round(req)
        rep = dep.operator.clients["S0"].control("report", req.round_id, {"wait_s": 10.0}, timeout=30.0)
        assert rep["status"] == "aborted" and "S1 did not open it" in rep["reason"]
        # operator:S0's certificate straight to S1, and S0 itself: S1 opens rounds for operator:S1 only
        req = _request(op.next_round_id())
        direct = PeerClient(dep.identity(operator_party(0)), "S1", dep.addresses["S1"], connect_timeout=2.0)
        as_s0 = PeerClient(dep.identity("S0"), "S1", dep.addresses["S1"], connect_timeout=2.0)
        try:
            with pytest.raises(RemoteRejected) as err:
                direct.control("open-round", req.round_id, req.to_json())
            assert err.value.code == "unknown-party"
            with pytest.raises(RemoteRejected) as err:
                as_s0.control("open-round", req.round_id, req.to_json())
            assert err.value.code == "not-permitted"
        finally:
            direct.close()
            as_s0.close()
        # nobody but operator:S0 is served by the approval service
        worker = PeerClient(dep.identity("worker:0"), APPROVAL_PARTY, f"127.0.0.1:{service.port}", connect_timeout=2.0)
        try:
            with pytest.raises(RemoteRejected) as err:
                worker.control("status")
            assert err.value.code == "unknown-party"
        finally:
            worker.close()
        assert _s1_last(dep) == before
    finally:
        op.close()
        service.stop()


def test_a_permitted_round_runs_end_to_end_then_replays_and_floods_are_refused(dep):
    service = _service(dep, replace(POLICY, max_rounds=1))
    op = _split(dep, service)
    both = dep.operator
    x = np.random.default_rng(5).normal(size=(N, D))
    x[0] *= -40.0
    try:
        dep.operator = op               # the launcher's rounds, opened by operator:S0 and the approval service
        got = dep.aggregate(x, "krum", 1, insecure_test_seed=9, min_participants=5)
    finally:
        dep.operator = both
    want = secrobust.aggregate(x, "krum", 1, insecure_test_seed=9)
    assert np.array_equal(got.aggregate, want.aggregate) and np.array_equal(got.weights, want.weights)
    assert got.weights[0] == 0.0
    assert got.distances is None and want.distances is not None     # S1's view stays with S1's organisation
    approved = service.handler.approvals.rounds
    rid, req = next(reversed(approved.items()))
    assert _s1_last(dep) == rid
    assert "view" not in op.reports(rid, 0.0)["S1"]
    raw = PeerClient(dep.identity(operator_party(0)), APPROVAL_PARTY, f"127.0.0.1:{service.port}", connect_timeout=2.0)
    try:
        with pytest.raises(RemoteRejected, match="not above round"):
            raw.control("open-round", rid, req.to_json())
        later = replace(req, round_id=rid + 5, prefetch=())
        with pytest.raises(RemoteRejected, match="already ran an approved round"):
            raw.control("open-round", rid + 5, later.to_json())
        fresh = replace(later, triple_id=fresh_triple_id(rid + 5))
        with pytest.raises(RemoteRejected, match="rate: 1 rounds were approved"):
            raw.control("open-round", rid + 5, fresh.to_json())
        with pytest.raises(RemoteRejected, match="was not approved here"):
            raw.control("report", rid - 1, {"wait_s": 0})
    finally:
        raw.close()
        op.close()
        service.stop()
    assert _s1_last(dep) == rid


def test_the_service_file(tmp_path: Path, dep):
    path = tmp_path / "approval.toml"
    op_file = dep.config_file(APPROVAL_PARTY)
    path.write_text(f'operator = "{op_file}"\nlisten = "127.0.0.1:0"\n\n[policy]\nrules = ["krum"]\n')
    cfg = load(path)
    assert cfg.policy.min_cohort == 5 and cfg.policy.check_inputs and not cfg.policy.test_seeds
    assert cfg.policy.workers is None           # this operator file lists no workers: S1's admission decides
    path.write_text(f'operator = "{dep.config_file(operator_party(0))}"\nlisten = "127.0.0.1:0"\n[policy]\n'
                    'rules = ["krum"]\n')
    with pytest.raises(ValueError, match="acts as operator:S1"):
        load(path)


def test_the_round_command_runs_a_whole_round_through_the_service(dep, tmp_path):
    """``secrobust round --config operator-s0.toml`` whose file names the service: S0's operator alone runs the
    round, S1's half approved by S1's policy; a request the policy refuses is the command's one-line error."""
    import subprocess
    import sys

    from secrobust.deploy.config import to_toml

    service = _service(dep, replace(POLICY, test_seeds=False))
    folder = dep.party_dir(operator_party(0))
    cfg = load_config(dep.config_file(operator_party(0)))
    split_file = folder / "operator-s0-split.toml"
    split_file.write_text(to_toml(replace(cfg, peers={**cfg.peers, APPROVAL_PARTY: f"127.0.0.1:{service.port}"}),
                                  relative_to=folder))
    x = np.random.default_rng(11).normal(size=(N, D))
    x[1] *= -10.0                   # within the encoder's range at the command's default F

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "secrobust.deploy", "round", "--config", str(split_file),
                               "--d", str(D), "--workers", f"0-{N - 1}", "--window", "20", *argv],
                              capture_output=True, text=True, timeout=300, check=False)

    try:
        refused = cli("--rule", "mean", "--f", "0", "--min-participants", "5")
        assert refused.returncode == 2 and "S1's policy refuses round" in refused.stderr, refused.stderr
        assert "rule 'mean' is not allowed" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        rid = dep.operator.next_round_id()
        inbox = dep.updates_dir / f"round-{rid}"
        inbox.mkdir(parents=True, exist_ok=True)
        for i in range(N):
            np.save(inbox / f"worker-{i}.npy", x[i])
        out = tmp_path / "round.npz"
        done = cli("--rule", "krum", "--f", "1", "--min-participants", "5", "--out", str(out))
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        want = secrobust.aggregate(x, "krum", 1)
        assert printed["round_id"] == rid and printed["weights"] == want.weights.tolist() and not printed["declined"]
        assert np.array_equal(np.load(out)["aggregate"], want.aggregate)
    finally:
        service.stop()


def test_a_different_request_at_s0_than_the_one_s1_approved_aborts_at_both(dep):
    """The Flower operator opens at S0 a cohort S1's policy would refuse and sends the service an approvable
    one for the same round id: the servers compare the requests' digests before any share is used, so the
    round aborts at both (no share key is handed out)."""
    service = _service(dep, POLICY)
    op = _split(dep, service)
    try:
        statuses = op.status()
        approvable = op.with_triples(_request(op.next_round_id(statuses)), statuses)
        smaller = replace(approvable, worker_ids=(0, 1, 2, 3, 4), f=0, prefetch=(),
                          triple_id=fresh_triple_id(approvable.round_id))     # a pooled triple has n = 6
        op.clients["S0"].control("open-round", smaller.round_id, smaller.to_json())
        op.clients["S1"].control("open-round", approvable.round_id, approvable.to_json())
        reps = {name: dep.operator.clients[name].control("report", approvable.round_id, {"wait_s": 60.0},
                                                          timeout=90.0) for name in ("S0", "S1")}
        assert all(rep["status"] == "aborted" for rep in reps.values()), reps
        assert all("the servers hold different requests" in rep["reason"] for rep in reps.values()), reps
    finally:
        op.close()
        service.stop()


def test_the_dealer_obeys_no_operators_shutdown(dep):
    """The attack: whoever holds operator:S0's key (the Flower operator) asks the dealer, a third party both
    organisations depend on, to shut down, which would stop every round S1's organisation approves until the
    dealer's host restarts it. The dealer refuses it from either operator (its own host stops it, by signal)
    and still makes triples: a round runs afterwards. S1's approval service has no such command either."""
    statuses = []
    for name in (operator_party(0), operator_party(1)):
        client = PeerClient(dep.identity(name), "dealer", dep.addresses["dealer"], connect_timeout=2.0)
        try:
            with pytest.raises(RemoteRejected) as err:
                client.control("shutdown")
            assert err.value.code == "not-permitted"
            statuses.append(client.control("status"))
        finally:
            client.close()
    assert all(st["party"] == "dealer" for st in statuses)
    service = _service(dep, POLICY)         # nor can it stop S1's approval service
    raw = PeerClient(dep.identity(operator_party(0)), APPROVAL_PARTY, f"127.0.0.1:{service.port}", connect_timeout=2.0)
    try:
        with pytest.raises(RemoteRejected) as err:
            raw.control("shutdown")
        assert err.value.code == "bad-request" and not service.handler.shutdown_requested.is_set()
    finally:
        raw.close()
        service.stop()
    x = np.random.default_rng(13).normal(size=(N, D))
    got = dep.aggregate(x, "krum", 1, insecure_test_seed=4, min_participants=5)
    assert np.array_equal(got.aggregate, secrobust.aggregate(x, "krum", 1, insecure_test_seed=4).aggregate)
