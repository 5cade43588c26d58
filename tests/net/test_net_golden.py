"""The in-process transcript is the deployment's, message for message (issue 19, step 3): golden cases run
through a LocalDeployment whose listening parties tap every message (``transport.grpc.tap``), compared with
the seeded in-process round of the same id. Concurrent messages have no order on a network, so the two
flows are compared as multisets of (sender, recipient, kind, size): same messages, same sizes, same
counts; SHA-256s differ (the deployment's keys, masks and triples are fresh). The results equal the frozen
golden ones (tests/golden/transcripts.json, round 0, whose DP noise the deployment's test seed gives)."""

from __future__ import annotations

import json

import golden
import pytest
from deployments import running

from secrobust.deploy.local import LocalDeployment

FROZEN = json.loads(golden.PATH.read_text())
FAST = ["krum@distances", "cclip@distances+dp", "norm-clip@weights", "mda@aggregate"]
"""One case per reveal mode, with DP noise and a center among them."""
SLOW = sorted(set(golden.CASES) - set(FAST))
"""The others (the dropout case waits out the share window: its worker never reaches S1)."""


@pytest.fixture(scope="module")
def tapped(tmp_path_factory):
    tap_dir = tmp_path_factory.mktemp("tap")
    for dep in running(LocalDeployment, 8, tmp_path_factory.mktemp("dep"), **golden.deployment_overrides(tap_dir)):
        yield dep, tap_dir


def _check(tapped, name: str) -> None:
    dep, tap_dir = tapped
    got = golden.record_deployment(dep, tap_dir, name)
    want = golden.record(name, got["round"])
    assert golden.flow(got) == golden.flow(want)
    assert got["bytes"] == want["bytes"]
    frozen = FROZEN[name]
    for key in ("aggregate", "weights", "center_weight", "participants", "rejected"):
        assert got[key] == frozen[key], key


@pytest.mark.parametrize("name", FAST)
def test_the_in_process_flow_is_the_deployments(tapped, name):
    _check(tapped, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_the_in_process_flow_is_the_deployments_in_every_golden_case(tapped, name):
    _check(tapped, name)


def test_the_comparison_sees_a_missing_row_of_e(tapped):
    """The flows differ when one message is missing: the check can fail."""
    dep, tap_dir = tapped
    got = golden.record_deployment(dep, tap_dir, "mean@distances")
    flow = golden.flow(got)
    rows = [m for m in flow if m[2] == "validity-masked-open"]
    assert len(rows) == 8 and all(m[:2] == ("S1", "S0") for m in rows)
    flow.remove(rows[0])
    assert flow != golden.flow(golden.record("mean@distances", got["round"]))
