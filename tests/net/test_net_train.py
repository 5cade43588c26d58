"""Training over the deployment: the runner's secure aggregation injected as ``LocalDeployment.aggregate``
gives the history of the in-process engine, and ``secrobust demo/train --transport grpc`` runs a grid
over one deployment with the results of the in-process grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secrobust.deploy.local import LocalDeployment, LocalOptions

TINY = {
    "name": "tiny",
    "data": {"dataset": "digits"},
    "model": {"name": "logreg"},
    "train": {"workers": 7, "rounds": 5, "batch_size": 16, "lr": 0.5, "eval_every": 1},
    "grid": {"rules": ["mean", "krum", "geomed"], "attacks": ["alie"], "f": [1], "seeds": [0],
             "secure": [True, False]},
    "rule_options": {"geomed": {"iterations": 3}},
}


def test_a_short_training_run_over_grpc_matches_the_in_process_run(tmp_path):
    pytest.importorskip("torch")
    from secrobust.train import runner
    from secrobust.train.config import parse_config

    specs = parse_config({**TINY, "train": {**TINY["train"], "rounds": 3}}).runs()
    secure = next(s for s in specs if s.secure and s.rule == "krum")
    plain = next(s for s in specs if not s.secure and s.rule == "krum")
    want = runner.run(secure)
    calls: list[int] = []
    with LocalDeployment(secure.train.workers, tmp_path, LocalOptions(workers_per_process=4)) as dep:
        def over_grpc(updates, rule, f, **kw):
            calls.append(dep.operator.next_round_id())
            return dep.aggregate(updates, rule, f, **kw)

        got = runner.run(secure, secure_aggregate=over_grpc)
        rounds_run = [s["last_round"] for s in dep.operator.status().values()]
        got_plain = runner.run(plain, secure_aggregate=over_grpc)
    assert calls == [0, 1, 2] and rounds_run == [2, 2]          # every round crossed the deployment
    assert got.history == want.history
    assert np.array_equal(got.weights, want.weights)
    assert len(calls) == 3 and got_plain.history == runner.run(plain).history  # plaintext stays plaintext


def test_a_sampled_run_over_grpc_sends_only_the_cohort_and_matches_the_in_process_run(tmp_path):
    """Client sampling over the deployment: each round only the k sampled rows cross it (workers 0..k-1 of the
    deployment stand in for the cohort; the others get no input and send nothing), and the run equals the
    in-process one. With DP the servers' noise comes from their own keystreams, so only the noise-free parts
    (cohorts, epsilon, the mean's public weights) are compared there."""
    pytest.importorskip("torch")
    from secrobust.train import runner
    from secrobust.train.config import parse_config

    base = {**TINY, "train": {**TINY["train"], "workers": 10, "rounds": 4, "sample_rate": 0.6},
            "grid": {**TINY["grid"], "rules": ["krum"], "secure": [True]}}
    plain_sampled = parse_config(base).runs()[0]
    private = parse_config({**base, "grid": {**base["grid"], "rules": ["mean"]},
                            "dp": {"clip": 1.0, "epsilon": 8.0}}).runs()[0]
    sizes: list[int] = []
    with LocalDeployment(10, tmp_path, LocalOptions(workers_per_process=5)) as dep:
        def over_grpc(updates, rule, f, **kw):
            sizes.append(len(updates))
            return dep.aggregate(updates, rule, f, **kw)

        got = runner.run(plain_sampled, secure_aggregate=over_grpc)
        got_dp = runner.run(private, secure_aggregate=over_grpc)
    want, want_dp = runner.run(plain_sampled), runner.run(private)
    assert got.history == want.history and np.array_equal(got.weights, want.weights)
    assert np.array_equal(got.cohort_sizes, want.cohort_sizes) and len(set(got.cohort_sizes.tolist())) > 1
    assert sizes[: len(got.cohort_sizes)] == [k for k in got.cohort_sizes.tolist() if k >= 5]  # smaller: skipped
    assert got_dp.epsilon == want_dp.epsilon and got_dp.epsilon == pytest.approx(8.0, abs=0.05)
    assert np.array_equal(got_dp.weights, want_dp.weights)


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return {r["run_id"]: r for r in map(json.loads, lines)}


def test_demo_with_transport_grpc_writes_the_results_of_the_in_process_demo(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from secrobust.cli import app
    from secrobust.train import config

    monkeypatch.setattr(config, "demo_config", lambda: config.parse_config(TINY))
    runner = CliRunner()
    args = ["demo", "--rounds", "2", "--no-progress"]
    local = runner.invoke(app, [*args, "--out", str(tmp_path / "local")])
    remote = runner.invoke(app, [*args, "--out", str(tmp_path / "grpc"), "--transport", "grpc"])
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    assert "gRPC deployment up" in remote.output and "gRPC deployment" not in local.output
    assert "6 secure rounds over gRPC" in remote.output                  # 3 secure runs x 2 rounds, no plain one
    want, got = _records(tmp_path / "local"), _records(tmp_path / "grpc")
    assert set(got) == set(want) and len(got) == 6
    for run_id, rec in want.items():
        for key in ("final_accuracy", "history", "weights_sha256", "byzantine", "byzantine_weight"):
            assert got[run_id][key] == rec[key], (rec["rule"], rec["secure"], key)


def test_an_unknown_transport_is_refused_before_anything_runs(tmp_path):
    from typer.testing import CliRunner

    from secrobust.cli import app

    result = CliRunner().invoke(app, ["demo", "--transport", "carrier-pigeon", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--transport must be one of inprocess, grpc" in result.output
    assert not (tmp_path / "results.jsonl").exists()
