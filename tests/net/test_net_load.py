"""The load test (excluded from the default run): 200 workers, d = 1e5, 3 rounds over the gRPC
deployment, each round equal to the in-process run. Run it with

    .venv/bin/python -m pytest -m load tests/net/test_net_load.py -p no:xdist -s

It writes bench/results/grpc_load.json and grpc_load.md (the numbers quoted in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.load
def test_200_workers_d_1e5_three_rounds_equal_the_in_process_run():
    out = ROOT / "bench" / "results" / "grpc_load.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "grpc_load.py"), "--n", "200", "--d", "100000",
                    "--rounds", "3", "--check", "--out", str(out)], check=True, timeout=3600)
    res = json.loads(out.read_text())
    assert len(res["rounds_detail"]) == 3
    for row in res["rounds_detail"]:
        assert row["participants"] == 200
        assert row["equal_to_in_process"] and row["bytes_equal_to_in_process"]
