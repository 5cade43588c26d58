"""Every command error is one line ``error: ...`` on stderr with exit code 2, found before any work starts."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from secrobust.cli import app

runner = CliRunner()


def _fails_with(result: Result, message: str) -> None:
    """The command exited 2, printed nothing on stdout, and ``error: <message>`` as its only stderr line."""
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n"
    assert result.stdout == ""


def _updates(tmp_path: Path, n: int = 8, d: int = 20) -> Path:
    path = tmp_path / "u.npy"
    np.save(path, np.random.default_rng(0).normal(size=(n, d)) * 0.1)
    return path


def _bad_file(tmp_path: Path, kind: str) -> Path:
    """A file (or folder) that is not a numeric (n, d) .npy file, as a new user might pass one."""
    path = tmp_path / f"bad-{kind}"
    if kind == "directory":
        path.mkdir()
    elif kind == "csv":
        path.write_text("a,b\n1,2\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npz":
        with path.open("wb") as fh:
            np.savez(fh, x=np.zeros((3, 3)))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(np.zeros((3, 3))))
    elif kind == "object":
        with path.open("wb") as fh:
            np.save(fh, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "text-dtype":
        with path.open("wb") as fh:
            np.save(fh, np.array([["a", "b"]]))
    elif kind == "vector":
        with path.open("wb") as fh:
            np.save(fh, np.zeros(5))
    elif kind == "truncated":
        with path.open("wb") as fh:
            np.save(fh, np.zeros((8, 20)))
        path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize(("kind", "problem"), [
    ("missing", "does not exist"),
    ("directory", "is a directory, not a .npy file"),
    ("csv", "is not a .npy file (no NumPy header; a CSV or text file must be converted with "
            "numpy.save(path, array))"),
    ("empty", "is empty, not a .npy file"),
    ("npz", "is an .npz archive (or a torch.save file: name it .pt); save a single array with numpy.save(path, array)"),
    ("pickle", "is not a .npy file (no NumPy header; a CSV or text file must be converted with "
               "numpy.save(path, array))"),
    ("object", "holds a pickled object array; save a numeric array (pickles are never loaded)"),
    ("text-dtype", "has dtype <U1; need real numbers (float or int)"),
    ("vector", "has shape (5,); need a matrix (n, d), one row per worker, with n, d >= 1"),
    ("truncated", "is not a readable .npy file: Failed to read all data for array. Expected (8, 20) = 160 "
                  "elements, could only read 9 elements. (file seems not fully written?)"),
])
def test_aggregate_names_what_is_wrong_with_the_updates_file(tmp_path: Path, kind: str, problem: str) -> None:
    path = _bad_file(tmp_path, kind)

    result = runner.invoke(app, ["aggregate", "--updates", str(path)])

    _fails_with(result, f"--updates: {path} {problem}")


def test_engine_errors_go_to_stderr_as_one_line(tmp_path: Path) -> None:
    updates = str(_updates(tmp_path))

    bad_f = runner.invoke(app, ["aggregate", "--updates", updates, "--rule", "krum", "--f", "5"])
    bad_rule = runner.invoke(app, ["aggregate", "--updates", updates, "--rule", "medoid"])
    bad_option = runner.invoke(app, ["aggregate", "--updates", updates, "-o", "m"])

    assert bad_f.exit_code == 2 and bad_f.stdout == ""
    assert bad_f.stderr.startswith("error: rule 'krum' needs n >= 2f + 3") and bad_f.stderr.count("\n") == 1
    _fails_with(bad_rule, "unknown rule 'medoid'; choose one of mean, norm-clip, cclip, krum, multi-krum, mda, geomed, "
                          "median, trimmed-mean, bulyan")
    _fails_with(bad_option, "--option is key=value, got 'm'")


def test_nan_in_an_unchecked_row_is_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(8, 20)) * 0.1
    x[3, 4] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, x)

    result = runner.invoke(app, ["aggregate", "--updates", str(path), "--rule", "mean", "-o", "unchecked=[3]"])

    _fails_with(result, "update 3 contains NaN (entry 4); an unchecked update must be finite "
                        "(NaN and inf are no ring elements)")


@pytest.mark.parametrize(("make", "problem"), [
    (lambda tmp: tmp / "no-such-folder" / "r.npz", "folder {parent} does not exist"),
    (lambda tmp: tmp, "{path} is a directory; give a file path"),
])
def test_out_is_checked_before_the_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, problem) -> None:
    updates = _updates(tmp_path)
    out = make(tmp_path)
    monkeypatch.setattr("secrobust.api.aggregate", _must_not_run)

    result = runner.invoke(app, ["aggregate", "--updates", str(updates), "--out", str(out)])

    _fails_with(result, "--out: " + problem.format(path=out, parent=out.parent))


def test_out_is_written_to_exactly_the_path_printed(tmp_path: Path) -> None:
    updates = _updates(tmp_path)
    out = tmp_path / "R.txt"

    result = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "mean", "--out", str(out)])

    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith(f"wrote {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.txt", "u.npy"]
    assert set(np.load(out)) == {"aggregate", "weights"}


def test_example_writes_exactly_the_given_path(tmp_path: Path) -> None:
    out = tmp_path / "updates"

    result = runner.invoke(app, ["example", "--out", str(out), "--n", "3", "--d", "4", "--byzantine", "1"])

    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["updates"] and np.load(out).shape == (3, 4)


@pytest.mark.parametrize(("args", "message"), [
    (["--d", "0"], "--d must be at least 1, got 0"),
    (["--d", "-3"], "--d must be at least 1, got -3"),
    (["--n", "0"], "--n must be at least 1, got 0"),
    (["--n", "3", "--byzantine", "5"], "--byzantine must be in 0..2 (fewer than n=3), got 5"),
    (["--n", "3", "--byzantine", "3"], "--byzantine must be in 0..2 (fewer than n=3), got 3"),
    (["--byzantine", "-1"], "--byzantine must be in 0..19 (fewer than n=20), got -1"),
    (["--seed", "-1"], "--seed must be non-negative, got -1"),
])
def test_example_validates_its_sizes(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["example", "--out", str(tmp_path / "u.npy"), *args])

    _fails_with(result, message)
    assert not (tmp_path / "u.npy").exists()


def test_example_checks_out_before_generating(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "u.npy"

    result = runner.invoke(app, ["example", "--out", str(out), "--d", "5"])

    _fails_with(result, f"--out: folder {out.parent} does not exist")


def test_aggregate_validates_the_generated_example() -> None:
    result = runner.invoke(app, ["aggregate", "--example-d", "0"])

    _fails_with(result, "--example-d must be at least 1, got 0")


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("no round (and no deployment process) may start on bad input")


@pytest.mark.parametrize(("args", "message"), [
    (["--rule", "krum", "--f", "5"], "rule 'krum' needs n >= 2f + 3; got n=8, f=5 (n must be at least 13)"),
    (["--rule", "nope"], "unknown rule 'nope'; choose one of mean, norm-clip, cclip, krum, multi-krum, mda, geomed, "
                         "median, trimmed-mean, bulyan"),
    (["--rule", "krum", "-o", "m=3"], "rule 'krum' got unknown option(s) ['m']; allowed: power"),
    (["--norm-bound", "-1"], "norm_bound must be a positive finite number, got -1.0"),
    (["--frac-bits", "40"], "frac_bits must be an integer in [0, 28], got 40"),
    (["--rule", "mean", "-o", "unchecked=[9]"], "unchecked worker indices [9] are outside 0..7"),
])
def test_grpc_inputs_are_validated_before_any_process_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setattr("secrobust.deploy.local.LocalDeployment", _must_not_run)
    updates = _updates(tmp_path)

    result = runner.invoke(app, ["aggregate", "--updates", str(updates), "--transport", "grpc", *args])

    _fails_with(result, message)


def test_grpc_refuses_a_bad_updates_file_before_any_process_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("secrobust.deploy.local.LocalDeployment", _must_not_run)

    result = runner.invoke(app, ["aggregate", "--updates", str(tmp_path / "none.npy"), "--transport", "grpc"])

    _fails_with(result, f"--updates: {tmp_path / 'none.npy'} does not exist")


def test_unknown_transport_is_one_line_on_stderr() -> None:
    result = runner.invoke(app, ["aggregate", "--transport", "carrier-pigeon"])

    _fails_with(result, "--transport must be inprocess or grpc, got 'carrier-pigeon'")


def _one_line_error(result: Result) -> None:
    """Exit code 2, nothing on stdout, one ``error: ...`` line on stderr (whatever the message)."""
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_deployment_commands_report_bad_input_on_one_line(tmp_path: Path) -> None:
    vector = tmp_path / "v.npy"
    np.save(vector, np.zeros(4))

    _fails_with(runner.invoke(app, ["server", "--party", "2"]), "--party is 0 or 1")
    _one_line_error(runner.invoke(app, ["server", "--party", "0", "--listen", "127.0.0.1:0"]))
    _one_line_error(runner.invoke(app, ["dealer"]))
    _fails_with(runner.invoke(app, ["worker", "--id", "0", "--update", str(tmp_path / "x.npy")]),
                f"--update: {tmp_path / 'x.npy'} does not exist")
    _fails_with(runner.invoke(app, ["worker", "--id", "0", "--update", str(tmp_path)]),
                f"--update: {tmp_path} is a directory, not a .npy file")
    _fails_with(runner.invoke(app, ["worker", "--id", "0", "--update", str(vector), "--out", str(vector)]),
                f"--out: {vector} exists and is not a directory")
    _fails_with(runner.invoke(app, ["worker", "--ids", "a-b", "--update", str(vector)]),
                "--ids must look like '0-24' or '0,3,7' (distinct ids >= 0), got 'a-b': "
                "invalid literal for int() with base 10: 'a'")


def test_grpc_servers_get_the_cohort_and_the_test_seed_flag_of_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake(updates: np.ndarray, rule: str, f: int, *, options: object, **kwargs: object) -> None:
        seen.update(options=options, **kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("secrobust.deploy.local.aggregate_grpc", fake)
    updates = _updates(tmp_path, n=4)

    result = runner.invoke(app, ["aggregate", "--updates", str(updates), "--rule", "mean", "--transport", "grpc",
                                 "--seed", "3", "-o", "min_participants=3"])

    _fails_with(result, "stop here")
    assert seen["options"].min_participants == 3 and seen["options"].insecure_test_seeds is True
    assert seen["insecure_test_seed"] == 3 and seen["min_participants"] == 3


@pytest.mark.parametrize("argv,message", [
    (["aggregate", "--f", "x"], "error: secrobust aggregate: Invalid value for '--f'"),
    (["aggregate", "--bogus"], "error: secrobust aggregate: No such option"),
    (["example"], "error: secrobust example: Missing option '--out'."),
    (["nosuchcmd"], "error: secrobust: No such command 'nosuchcmd'."),
])
def test_the_entry_point_turns_typers_usage_errors_into_one_line(argv, message, capsys):
    from secrobust.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(message) and err.count("\n") == 1


def test_the_entry_point_passes_help_and_success_through(capsys, tmp_path):
    from secrobust.cli import main

    with pytest.raises(SystemExit) as info:
        main(["example", "--help"])
    assert info.value.code == 0 and "--byzantine" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["example", "--n", "6", "--d", "3", "--out", str(tmp_path / "u.npy")])
    assert info.value.code == 0 and (tmp_path / "u.npy").exists()
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 0 and "Usage" in capsys.readouterr().out
