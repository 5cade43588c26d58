"""The command line: the quick start's aggregate command on a generated example and on a file."""

import numpy as np
from typer.testing import CliRunner

from secrobust.cli import app

runner = CliRunner()


def test_aggregate_on_a_file_writes_the_result(tmp_path):
    updates = tmp_path / "u.npy"
    out = tmp_path / "r.npz"
    assert runner.invoke(app, ["example", "--out", str(updates), "--n", "12", "--d", "300", "--byzantine", "2"]).exit_code == 0
    result = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "multi-krum", "--f", "2",
                                 "--out", str(out), "-o", "m=5"])
    assert result.exit_code == 0, result.output
    assert "bytes per party" in result.output and "S1 learned: distances" in result.output
    saved = np.load(out)
    assert saved["weights"][:2].tolist() == [0, 0] and np.isclose(saved["weights"].sum(), 1.0)
    assert saved["aggregate"].shape == (300,) and saved["distances"].shape == (12, 12)


def test_aggregate_reports_bad_parameters_without_a_traceback():
    result = runner.invoke(app, ["aggregate", "--rule", "krum", "--f", "9", "--example-d", "50"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: rule 'krum' needs n >= 2f + 3") and result.stderr.count("\n") == 1


def test_aggregate_defaults_to_a_generated_example():
    result = runner.invoke(app, ["aggregate", "--rule", "geomed", "--f", "4", "--example-d", "200"])
    assert result.exit_code == 0, result.output
    assert "generated 20 x 200 updates" in result.output


def test_aggregate_takes_the_validity_options(tmp_path):
    x = np.random.default_rng(1).normal(size=(8, 30))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[2] *= 3.0
    updates = tmp_path / "u.npy"
    np.save(updates, x)
    result = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "mean", "--norm-bound", "1.0",
                                 "--over-bound", "exclude"])
    assert result.exit_code == 0, result.output
    assert "rejected worker 2: failed the input validity check" in result.output
    clipped = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "mean", "--norm-bound", "1.0",
                                  "--over-bound", "clip"])
    assert clipped.exit_code == 0 and "rejected" not in clipped.output
    error = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "mean", "--norm-bound", "1.0",
                                "--over-bound", "error"])
    assert error.exit_code == 2 and error.stderr.startswith("error: 1 update(s) above the bound 1 at frac_bits=20: 2 (3)")
    unchecked = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "mean", "--no-check-inputs"])
    assert unchecked.exit_code == 0 and "rejected" not in unchecked.output and "validity" not in unchecked.output
    bad = runner.invoke(app, ["aggregate", "--updates", str(updates), "--norm-bound", "-1"])
    assert bad.exit_code == 2 and bad.stderr == "error: norm_bound must be a positive finite number, got -1.0\n"
