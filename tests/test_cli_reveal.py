"""``--reveal`` on ``secrobust aggregate`` (in process and over the gRPC transport) and on the deployment's
``round`` command: what is printed and saved per mode, and one-line errors (exit 2) before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import secrobust
from secrobust.cli import app

runner = CliRunner()


def _updates(tmp_path: Path, n: int = 8, d: int = 20) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=d) * 0.5 + 0.1 * rng.normal(size=(n, d))
    x[0] *= -3.0
    path = tmp_path / "u.npy"
    np.save(path, x)
    return path, x


def _one_line_error(result: Any, start: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {start}") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("reveal", ["distances", "weights", "aggregate"])
def test_each_mode_prints_what_was_learnt_and_saves_only_what_was_revealed(tmp_path, reveal):
    path, x = _updates(tmp_path)
    out = tmp_path / "r.npz"
    result = runner.invoke(app, ["aggregate", "--updates", str(path), "--rule", "multi-krum", "--f", "1", "-o", "m=3",
                                 "--seed", "5", "--reveal", reveal, "--out", str(out)])
    assert result.exit_code == 0, result.output
    want = secrobust.aggregate(x, "multi-krum", 1, m=3, insecure_test_seed=5, reveal=reveal)
    saved = np.load(out)
    assert np.array_equal(saved["aggregate"], want.aggregate)
    assert f"reveal={reveal}" in result.stdout
    if reveal == "distances":
        assert "S1 learned: distances" in result.stdout
        assert set(saved.files) == {"aggregate", "weights", "distances"}
    elif reveal == "weights":
        assert ("S1 learned: no distances or norms (the rule ran on shares); the servers learned the weights "
                "and the aggregate") in result.stdout
        assert set(saved.files) == {"aggregate", "weights"}
        assert np.array_equal(saved["weights"], want.weights)
    else:
        assert "weights: hidden" in result.stdout
        assert ("S1 learned: no distances or norms (the rule ran on shares); the servers learned only the "
                "aggregate, not the weights") in result.stdout
        assert set(saved.files) == {"aggregate"}


def test_the_mean_says_its_weights_follow_from_the_participants(tmp_path):
    path, _ = _updates(tmp_path)
    result = runner.invoke(app, ["aggregate", "--updates", str(path), "--rule", "mean", "--reveal", "aggregate"])
    assert result.exit_code == 0, result.output
    assert "(the mean's weights follow from the participants)" in result.stdout


@pytest.mark.parametrize("transport", ["inprocess", "grpc"])
def test_a_bad_mode_or_a_rule_without_a_circuit_is_one_line_before_any_work(tmp_path, transport, monkeypatch):
    def no_deployment(*args: object, **kwargs: object) -> None:
        raise AssertionError("the deployment must not start")

    monkeypatch.setattr("secrobust.deploy.local.aggregate_grpc", no_deployment)
    path, _ = _updates(tmp_path)
    base = ["aggregate", "--updates", str(path), "--transport", transport, "--f", "1"]
    _one_line_error(runner.invoke(app, [*base, "--reveal", "everything"]),
                    "--reveal: reveal must be one of 'distances', 'weights', 'aggregate', got 'everything'")
    _one_line_error(runner.invoke(app, [*base, "--rule", "geomed", "--reveal", "weights"]),
                    "--reveal: rule 'geomed' runs only with reveal='distances'")
    _one_line_error(runner.invoke(app, [*base, "--rule", "medoid", "--reveal", "weights"]), "unknown rule 'medoid'")
    # no example is generated either: the mode is checked before the inputs
    _one_line_error(runner.invoke(app, ["aggregate", "--reveal", "x", "--transport", transport]), "--reveal: reveal must")


def test_the_grpc_transport_passes_the_mode_through(tmp_path, monkeypatch):
    seen: dict[str, Any] = {}

    def fake(updates: np.ndarray, rule: str, f: int, *, options: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("secrobust.deploy.local.aggregate_grpc", fake)
    path, _ = _updates(tmp_path)
    result = runner.invoke(app, ["aggregate", "--updates", str(path), "--rule", "krum", "--f", "1", "--transport",
                                 "grpc", "--reveal", "aggregate"])
    _one_line_error(result, "stop here")
    assert seen["reveal"] == "aggregate"


def test_the_round_command_checks_the_mode_before_any_key_or_connection(tmp_path):
    made = runner.invoke(app, ["init", "--out", str(tmp_path), "--workers", "6"])
    assert made.exit_code == 0, made.output
    op0 = str(tmp_path / "operator-s0" / "operator-s0.toml")
    base = ["round", "--config", op0, "--d", "4", "--workers", "0-5", "--f", "1"]
    _one_line_error(runner.invoke(app, [*base, "--reveal", "everything"]),
                    "reveal must be one of 'distances', 'weights', 'aggregate', got 'everything'")
    _one_line_error(runner.invoke(app, [*base, "--rule", "geomed", "--reveal", "aggregate"]),
                    "rule 'geomed' runs only with reveal='distances'")
    good = runner.invoke(app, [*base, "--reveal", "aggregate"])      # valid: it gets as far as the missing key
    assert good.exit_code == 2 and "cannot read" in good.stderr
