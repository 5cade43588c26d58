"""``aggregate_grpc``: a fresh deployment for one call, the in-process result, and no process left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import secrobust
from secrobust.deploy.local import aggregate_grpc

from .helpers import assert_same_result, in_process


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_one_call_gives_the_in_process_result_and_stops_every_party(tmp_path):
    x = np.random.default_rng(3).normal(size=(5, 64))
    got = aggregate_grpc(x, "geomed", 1, workdir=tmp_path)
    assert_same_result(got, in_process(0, x, "geomed", 1))
    assert np.array_equal(got.aggregate, secrobust.aggregate(x, "geomed", 1).aggregate)
    assert _processes_mentioning(str(tmp_path)) == []


def test_cli_aggregate_over_grpc_prints_what_the_in_process_run_prints(tmp_path):
    from typer.testing import CliRunner

    from secrobust.cli import app

    updates = tmp_path / "u.npy"
    np.save(updates, np.random.default_rng(4).normal(size=(9, 40)))
    args = ["aggregate", "--updates", str(updates), "--rule", "multi-krum", "--f", "2", "--seed", "1"]
    local = CliRunner().invoke(app, args)
    remote = CliRunner().invoke(app, [*args, "--transport", "grpc"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    pick = lambda out: [ln for ln in out.splitlines() if ln.startswith(("weights:", "revealed aggregate"))]  # noqa: E731
    assert pick(remote.output) == pick(local.output) and len(pick(local.output)) == 2
