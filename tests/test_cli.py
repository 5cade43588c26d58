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
    assert "needs n >= 2f + 3" in result.output


def test_aggregate_defaults_to_a_generated_example():
    result = runner.invoke(app, ["aggregate", "--rule", "geomed", "--f", "4", "--example-d", "200"])
    assert result.exit_code == 0, result.output
    assert "generated 20 x 200 updates" in result.output


def test_aggregate_refuses_an_unknown_transport():
    result = runner.invoke(app, ["aggregate", "--transport", "carrier-pigeon", "--example-d", "50"])
    assert result.exit_code == 2
    assert "--transport must be inprocess or grpc" in result.output
