"""A deployment across Linux network namespaces with token-bucket shaped links (bench/netns.py,
bench/netns_bench.py): the round gives the in-process result bit for bit, its bytes cross the links they
should at no more than their rate, and nothing the test made is left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import deployments
import numpy as np
import pytest

import secrobust

from .helpers import assert_same_result, oracle

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import netns
import netns_bench

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(netns.missing_tools() is not None,
                       reason=f"network namespaces with tc shaping: {netns.missing_tools()}"),
]

N, D, F = 5, 50_000, 1
SLOW = netns.Profile("test", worker_mbit=40, server_mbit=200, s0s1_mbit=8)
"""S0<->S1 at 1 MB/s: the 5 rows of E (2 MB) take at least ~1.7 s beyond the bucket's 256 KiB burst."""


def test_round_across_namespaces_equals_in_process_and_leaves_nothing(tmp_path):
    x = np.random.default_rng(7).normal(size=(N, D)) / np.sqrt(D)
    x[0] *= -5.0
    parties = ["S0", "S1", "dealer", "operator", *(f"w{i}" for i in range(N))]
    links = netns.Links(parties, SLOW)
    with links:
        links.enter("operator")
        try:
            with netns_bench.NetnsDeployment(N, links, tmp_path, deployments.test_options(workers_per_process=1)) as dep:
                assert dep.addresses["S1"].startswith(links.addresses["S1"] + ":")
                _, want = oracle(dep, x, "krum", F)
                before = links.counters()
                tick = time.monotonic()
                got = dep.aggregate(x, "krum", F)
                seconds = time.monotonic() - tick
                crossed = netns_bench.diff(links.counters(), before)
            assert all(not c.alive for c in dep.children.values())
        finally:
            links.leave()
    assert_same_result(got, want)
    assert np.array_equal(got.aggregate, secrobust.plain_aggregate(x, "krum", F).aggregate)

    rows_of_e = N * 8 * D
    assert crossed["S0-S1"]["down"] >= rows_of_e, "E did not cross the S0<->S1 link"
    assert crossed["S0"]["down"] < rows_of_e / 2, "E went over S0's access link instead of the S0<->S1 link"
    assert crossed["S1"]["down"] >= rows_of_e, "the uploads did not cross S1's access link"
    for i in range(N):
        assert crossed[f"w{i}"]["up"] >= 8 * D
    burst = 256 * 1024
    assert seconds >= (crossed["S0-S1"]["down"] - burst) / (SLOW.s0s1_mbit * 1e6 / 8)

    assert links.remaining() == []
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert links.tag not in left
