"""Grids: JSON-lines results, resume, summary, plots, the printed table, early validation."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from secrobust.train import experiment
from secrobust.train.config import ExperimentConfig
from secrobust.train.experiment import read_results, run_grid


def _grid(small_config: Callable[..., ExperimentConfig], **grid: Any) -> ExperimentConfig:
    return small_config(
        train={"rounds": 3, "eval_every": 1},
        grid={"rules": ["mean", "krum"], "attacks": ["sign-flip"], "seeds": [0, 1], **grid},
        attack_options={"sign-flip": {"scale": 8.0}},
    )


def _quiet() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def _forbid_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no run should start")

    monkeypatch.setattr(experiment, "run", fail)


def test_grid_writes_results_summary_plots_and_prints_the_table(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    console, printed = _quiet()

    summary = run_grid(_grid(small_config), tmp_path, console=console, progress=False)

    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4 and len({r["run_id"] for r in records}) == 4
    assert [h["round"] for h in records[0]["history"]] == [0, 1, 2, 3]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["final_accuracy"] == summary["final_accuracy"]
    rows = {r["rule"]: r for r in summary["final_accuracy"]}
    assert set(rows) == {"mean", "krum"} and all(
        r["runs"] == 2 and r["secure"] is False for r in rows.values()
    )
    krum = [r["final_accuracy"] for r in records if r["rule"] == "krum"]
    assert rows["krum"]["final_accuracy"] == pytest.approx(np.mean(krum))
    assert rows["krum"]["final_accuracy_std"] == pytest.approx(np.std(krum, ddof=1))
    for name in ("accuracy_sign-flip_f4.png", "table_f4.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = printed.getvalue()
    assert "final test accuracy" in text and "krum" in text and "sign-flip" in text
    assert f"{100 * rows['krum']['final_accuracy']:.1f}" in text


def test_finished_runs_are_skipped_on_resume_and_changed_ones_rerun(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _grid(small_config, seeds=[0])
    first = run_grid(cfg, tmp_path, console=_quiet()[0], progress=False, plots=False)
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write('{"run_id": "interrupted wri')

    with monkeypatch.context() as m:
        _forbid_runs(m)
        again = run_grid(cfg, tmp_path, console=_quiet()[0], progress=False, plots=False)
    more = run_grid(
        _grid(small_config, seeds=[0, 1]), tmp_path, console=_quiet()[0], progress=False, plots=False
    )

    assert again["final_accuracy"] == first["final_accuracy"]
    assert len(read_results(tmp_path / "results.jsonl")) == 4
    assert all(r["runs"] == 2 for r in more["final_accuracy"])


@pytest.mark.parametrize(
    ("grid", "options", "message"),
    [
        ({"rules": ["krum"], "f": [9]}, {}, "needs n >= 2f"),
        ({"rules": ["median@weights"]}, {}, "median"),
        ({"rules": ["geomed"]}, {"geomed": {"iterashuns": 3}}, "iterashuns"),
    ],
)
def test_the_engine_rejects_bad_rules_before_any_training(
    small_config: Callable[..., ExperimentConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    grid: dict[str, Any],
    options: dict[str, Any],
    message: str,
) -> None:
    _forbid_runs(monkeypatch)
    cfg = small_config(grid=grid, rule_options=options)

    with pytest.raises(ValueError, match=message):
        run_grid(cfg, tmp_path, console=_quiet()[0], progress=False)


def test_a_rule_label_with_a_mode_trains_on_shares_and_hides_the_weights(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    # "krum@aggregate" runs secure Krum with reveal="aggregate": same model as Krum, weights never revealed
    config = small_config(train={"rounds": 3, "eval_every": 1},
                          grid={"rules": ["krum", "krum@aggregate", "multi-krum@weights"], "attacks": ["sign-flip"],
                                "seeds": [0], "secure": [True]},
                          attack_options={"sign-flip": {"scale": 8.0}})
    summary = run_grid(config, tmp_path, console=_quiet()[0], progress=False)
    records = {r["rule"]: r for r in read_results(tmp_path / "results.jsonl").values()}
    assert [h["accuracy"] for h in records["krum@aggregate"]["history"]] == \
        [h["accuracy"] for h in records["krum"]["history"]]
    assert records["krum@aggregate"]["byzantine_weight"] is None
    assert records["multi-krum@weights"]["byzantine_weight"] == 0.0
    rows = {r["rule"]: r for r in summary["final_accuracy"]}
    assert rows["krum@aggregate"]["byzantine_weight"] is None
    assert rows["krum@aggregate"]["final_accuracy"] == rows["krum"]["final_accuracy"]


def test_an_unknown_mode_in_a_rule_label_is_refused(small_config: Callable[..., ExperimentConfig]) -> None:
    with pytest.raises(ValueError, match="the mode after '@' must be one of"):
        small_config(grid={"rules": ["krum@everything"]})


def test_a_rule_label_with_a_pre_step_runs_it_before_the_rule(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    config = small_config(train={"rounds": 2, "eval_every": 1},
                          grid={"rules": ["krum+nnm", "mean+bucketing"], "attacks": ["sign-flip"], "seeds": [0],
                                "secure": [True, False]},
                          rule_options={"mean": {"s": 3}})
    run_grid(config, tmp_path, console=_quiet()[0], progress=False)
    records = list(read_results(tmp_path / "results.jsonl").values())
    assert {r["rule"] for r in records} == {"krum+nnm", "mean+bucketing"}
    by = {(r["rule"], r["secure"]): r for r in records}
    for rule in ("krum+nnm", "mean+bucketing"):
        assert by[(rule, True)]["weights_sha256"] == by[(rule, False)]["weights_sha256"]


def test_an_unknown_pre_step_in_a_rule_label_is_refused(small_config: Callable[..., ExperimentConfig]) -> None:
    with pytest.raises(ValueError, match="the step after '\\+' must be one of"):
        small_config(grid={"rules": ["krum+median"]})


def test_two_jobs_give_the_serial_records(small_config: Callable[..., ExperimentConfig], tmp_path: Path) -> None:
    config = _grid(small_config)
    run_grid(config, tmp_path / "serial", console=_quiet()[0], progress=False, plots=False)
    run_grid(config, tmp_path / "jobs", console=_quiet()[0], progress=False, plots=False, jobs=2)
    serial = read_results(tmp_path / "serial" / "results.jsonl")
    parallel = read_results(tmp_path / "jobs" / "results.jsonl")
    assert serial.keys() == parallel.keys()
    for run_id, record in serial.items():
        assert parallel[run_id]["weights_sha256"] == record["weights_sha256"]
        assert parallel[run_id]["history"] == record["history"]
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        run_grid(config, tmp_path / "bad", console=_quiet()[0], progress=False, jobs=0)


def test_piped_output_prints_a_line_per_finished_run_as_it_ends(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    console, printed = _quiet()             # not a terminal: what `secrobust train ... | tee log` gets
    assert not console.is_terminal
    seen: list[str] = []                    # what had been printed when each run started
    real_run = experiment.run

    def run(*args: Any, **kwargs: Any) -> Any:
        seen.append(printed.getvalue())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(experiment, "run", run)
    run_grid(_grid(small_config), tmp_path, console=console, progress=True, plots=False)
    seen.append(printed.getvalue().split("final test accuracy")[0])

    assert len(seen) == 5
    for k, text in enumerate(seen):
        assert [f"run {i}/4: " in text for i in range(1, 5)] == [i <= k for i in range(1, 5)]
    assert "run 1/4: mean / sign-flip / f 4 / plain / seed 0: final accuracy " in seen[1]
    drawn = [line for line in printed.getvalue().splitlines() if line.startswith(("runs ", "rounds"))]
    assert drawn == []                      # no progress bar drawn into a pipe


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_rounds_bar_counts_every_round_of_the_grid(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path, jobs: int
) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=True, color_system=None)

    run_grid(_grid(small_config), tmp_path, console=console, progress=True, plots=False, jobs=jobs)

    final = [line for line in buffer.getvalue().splitlines() if line.lstrip().startswith("rounds")]
    assert final and final[-1].split()[-2] == "12/12"        # 4 runs of 3 rounds, with 1 or 2 jobs


@pytest.mark.parametrize(("rejected", "expected"), [
    ([4.0, 4.0, 4.0], "4 workers rejected per round"),
    ([3.5, 4.0, 4.0], "3.5-4 workers rejected per round"),
    ([1.0, 1.0], "1 worker rejected per round"),
])
def test_the_rejection_footer_prints_a_count_not_a_range_of_equal_floats(
    rejected: list[float], expected: str
) -> None:
    rows = [{"f": 4, "attack": "ring-overflow", "rule": f"r{i}", "secure": True, "rejected_per_round": x,
             "byzantine_weight": 0.0, "rejected_honest": 0} for i, x in enumerate(rejected)]

    (line,) = experiment.rejection_notes({"final_accuracy": rows, "attacks": ["ring-overflow"]})

    assert f"ring-overflow: {expected}, Byzantine weight at most 0.000" in line


def test_run_processes_get_the_heap_tunables_unless_the_user_set_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    def child_sees() -> str:
        script = "import os; print(os.environ.get('GLIBC_TUNABLES', ''))"
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with experiment._heap_tuned():
        assert child_sees() == experiment.HEAP_TUNABLES
    assert "GLIBC_TUNABLES" not in experiment.os.environ
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    with experiment._heap_tuned():
        assert child_sees() == "glibc.malloc.arena_max=1"
    assert experiment.os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1"
