"""The ``demo`` and ``train`` commands, through the project's CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import secrobust.train.config as config_module
from secrobust.cli import app

runner = CliRunner()

TINY = """
name = "tiny"
[train]
rounds = 2
eval_every = 1
[grid]
rules = ["mean", "multi-krum"]
attacks = ["ipm"]
secure = [true, false]
"""


def test_train_runs_a_grid_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)

    result = runner.invoke(
        app, ["train", "--config", str(path), "--out", str(tmp_path / "o"), "--no-progress"]
    )

    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert {(r["rule"], r["secure"]) for r in summary["final_accuracy"]} == {
        ("mean", True),
        ("mean", False),
        ("multi-krum", True),
        ("multi-krum", False),
    }
    assert "multi-krum" in result.output and "4 runs" in result.output


def test_train_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace("rounds = 2", "roundz = 2"))

    result = runner.invoke(app, ["train", "--config", str(path), "--no-progress"])

    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --config {path}: unknown key(s) ['roundz'] in [train]; allowed: ")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--transport", "pigeon"], "--transport must be one of inprocess, grpc, got 'pigeon'"),
    (["--config", "{tmp}/none.toml"], "--config: {tmp}/none.toml does not exist"),
    (["--config", "{tmp}"], "--config: {tmp} is a directory, not a TOML file"),
    (["--out", "{tmp}/tiny.toml"], "--out: {tmp}/tiny.toml exists and is not a directory"),
])
def test_train_errors_are_one_line_on_stderr(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    argv = ["train", "--config", str(tmp_path / "tiny.toml"), "--no-progress", *args]

    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in argv])

    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {message.format(tmp=tmp_path)}\n"


def test_demo_writes_results_summary_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = config_module.demo_config()
    reduced = shipped.replace(
        grid={"rules": ["mean", "krum"], "attacks": ["sign-flip", "alie"], "seeds": [0]}
    )
    monkeypatch.setattr(config_module, "demo_config", lambda: reduced)

    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--rounds", "2", "--no-progress"])

    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["workers"] == 20 and summary["rounds"] == 2 and summary["runs"] == 8
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 8
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "accuracy_alie_f4.png",
        "accuracy_sign-flip_f4.png",
        "table_f4.png",
    ]
    assert "final test accuracy" in result.output


def test_a_grid_with_dp_noise_and_no_opacus_names_the_dp_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opacus", None)       # as if the dp extra were not installed
    path = tmp_path / "dp.toml"
    path.write_text(TINY + "[dp]\nclip = 1.0\nnoise_multiplier = 1.0\n")

    result = runner.invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "o"), "--no-progress"])

    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == ("error: differential privacy's accounting needs Opacus, the dp extra: "
                             "pip install 'secrobust[dp]'\n")
    assert not (tmp_path / "o" / "results.jsonl").exists()
