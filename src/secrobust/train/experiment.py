"""A grid of runs with resume: results as JSON lines, a summary, plots and a printed table.

Layout of an output directory::

    results.jsonl   one JSON object per finished run (appended as each run ends)
    summary.json    final accuracy per (rule, attack, f, secure), mean and std over seeds
    config.json     the resolved configuration
    accuracy_<attack>_f<f>.png, table_f<f>.png

A run whose ``run_id`` (hash of its full spec) is already in results.jsonl is skipped, so an
interrupted grid resumes where it stopped and a changed setting reruns only what it changes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from secrobust.train.config import ExperimentConfig, RunSpec
from secrobust.train.data import Dataset, load_dataset
from secrobust.train.runner import SecureAggregate, engine_aggregate, harness_bucket_size, run

RESULTS = "results.jsonl"
SUMMARY = "summary.json"


def validate(specs: Iterable[RunSpec]) -> None:
    """Ask the engine, on a tiny input, whether every (rule, f, options) of the grid is allowed.

    Catches an unknown rule, a misspelled option or an f too large for n before any training;
    the engine's ValueError is re-raised with the run it came from.
    """
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps(
            [spec.rule, spec.f, spec.train.workers, spec.rule_options], sort_keys=True, default=str
        )
        if key in seen:
            continue
        seen.add(key)
        options = dict(spec.rule_options)
        if spec.reveal != "distances":
            options["reveal"] = spec.reveal
        if harness_bucket_size(spec) is not None:  # the harness averages the buckets; the rule sees bucket means
            options.pop("s", None)
        elif spec.pre is not None:
            options["pre"] = spec.pre
        if spec.base_rule == "cclip":
            options["center"] = np.zeros(2)
        try:
            engine_aggregate(np.zeros((spec.train.workers, 2)), spec.base_rule, spec.f, secure=False, **options)
        except ValueError as err:
            raise ValueError(f"rule {spec.rule!r} with f={spec.f}, n={spec.train.workers}: {err}") from err


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Records of results.jsonl by run_id; a line cut short by an interrupted write is ignored
    (``run_grid`` rewrites the file without it before appending)."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["run_id"]] = record
    return records


def run_grid(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    console: Console | None = None,
    progress: bool = True,
    plots: bool = True,
    secure_aggregate: SecureAggregate | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every spec of ``config`` not already in ``out_dir/results.jsonl``; write the summary,
    the plots and print the table. Returns the summary.

    ``jobs`` > 1 runs that many specs at once, each in its own process with torch on one thread (every run
    is a pure function of its spec, so the records are those of a serial grid, in completion order on disk);
    a shared ``secure_aggregate`` (one deployment) needs ``jobs=1``.

    ``secure_aggregate`` is handed to every secure run (see ``runner.run``): by default the secure runs
    call ``secrobust.aggregate`` in this process; ``secrobust demo --transport grpc`` passes the
    ``aggregate`` of one ``LocalDeployment`` shared by the whole grid. Plaintext runs never use it.

    Ctrl-C (KeyboardInterrupt) stops the grid at once and raises ``GridInterrupted`` (a KeyboardInterrupt)
    saying how many runs are kept; a run in flight is lost, a finished one never is."""
    from secrobust.train.plots import plot_all

    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = config.runs()
    validate(specs)
    results_path = out / RESULTS
    if not resume and results_path.exists():
        results_path.unlink()
    done = read_results(results_path)
    if results_path.exists():
        results_path.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in done.values()))
    todo = [s for s in specs if s.run_id not in done]
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    if len(todo) < len(specs):
        console.print(f"resuming: {len(specs) - len(todo)} of {len(specs)} runs already in {results_path}")

    started = time.perf_counter()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs > 1 and secure_aggregate is not None:
        raise ValueError("a grid over one shared deployment runs one job at a time (jobs=1)")
    report = _Report(console, progress, total_runs=len(specs), done_runs=len(specs) - len(todo),
                     rounds=sum(s.train.rounds for s in todo))

    def keep(spec: RunSpec, record: dict[str, Any]) -> None:
        with results_path.open("a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")
        done[record["run_id"]] = record
        report.finished(spec, record)

    try:
        with report.bars:
            if jobs > 1 and len(todo) > 1:
                _run_parallel(todo, jobs, keep, report.round)
            else:
                _run_serial(todo, keep, report, secure_aggregate)
    except KeyboardInterrupt:
        kept = read_results(results_path)      # what is on disk, a record written just now included
        raise GridInterrupted(sum(1 for s in specs if s.run_id in kept), len(specs)) from None

    records = [done[s.run_id] for s in specs]
    summary = summarize(config, records)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    for table in accuracy_tables(summary):
        console.print(table)
    for line in rejection_notes(summary):
        console.print(line, highlight=False, soft_wrap=True)
    if plots:
        paths = plot_all(records, summary, out)
        console.print(f"wrote {out / RESULTS}, {out / SUMMARY} and {len(paths)} plots in {out}")
    return summary


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped ``run_grid``: ``kept`` of the grid's ``total`` runs are in results.jsonl and
    a rerun resumes after them. No run is still going: the worker processes of ``jobs`` > 1 are ended."""

    def __init__(self, kept: int, total: int) -> None:
        super().__init__(f"stopped; {kept} runs kept; rerun to resume")
        self.kept = kept
        self.total = total


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (in the main thread): a process started inside inherits the ignored
    signal, so Python never installs its KeyboardInterrupt handler there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Report:
    """What the grid shows while it runs. On a terminal: a bar of runs and a bar of all the rounds still to
    train (every job's rounds count). Elsewhere (piped, a log file): one line per finished run, as it ends.
    Nothing with ``progress=False``."""

    def __init__(self, console: Console, progress: bool, *, total_runs: int, done_runs: int, rounds: int) -> None:
        self.console = console
        self.total_runs = total_runs
        self.done_runs = done_runs
        self.lines = progress and not console.is_terminal
        self.bars = Progress(
            TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=not progress or self.lines, transient=False,
        )
        self.runs_task = self.bars.add_task("runs", total=total_runs, completed=done_runs)
        self.rounds_task = self.bars.add_task("rounds", total=max(rounds, 1))
        self._rounds: dict[int, int] = {}          # key of a run in flight -> rounds it has trained

    def running(self, label: str) -> None:
        self.bars.update(self.rounds_task, description=f"rounds ({label})")

    def round(self, key: int, t: int) -> None:
        """Run ``key`` has trained ``t`` rounds."""
        advance = t - self._rounds.get(key, 0)
        if advance > 0:
            self._rounds[key] = t
            self.bars.advance(self.rounds_task, advance)

    def finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        self.round(id(spec), spec.train.rounds)     # a diverged run stops early: its rounds count as done
        self.done_runs += 1
        self.bars.advance(self.runs_task)
        if self.lines:
            self.console.print(
                f"run {self.done_runs}/{self.total_runs}: {_label(spec)}: final accuracy "
                f"{100 * record['final_accuracy']:.1f}% ({record['seconds']:.1f} s)",
                highlight=False, soft_wrap=True,
            )


def _label(spec: RunSpec) -> str:
    return f"{spec.rule} / {spec.attack} / f {spec.f} / {'secure' if spec.secure else 'plain'} / seed {spec.seed}"


def _run_serial(
    todo: list[RunSpec], keep: Callable[[RunSpec, dict[str, Any]], None], report: _Report,
    secure_aggregate: SecureAggregate | None,
) -> None:
    datasets: dict[tuple[Any, ...], Dataset] = {}
    for spec in todo:
        key = (spec.data.dataset, spec.data_seed, spec.data.test_fraction, spec.data.fallback)
        if key not in datasets:
            datasets[key] = load_dataset(
                spec.data.dataset,
                seed=spec.data_seed,
                test_fraction=spec.data.test_fraction,
                fallback=None if spec.data.fallback == "none" else spec.data.fallback,
            )
        report.running(_label(spec))
        result = run(
            spec,
            dataset=datasets[key],
            on_round=partial(report.round, id(spec)),
            secure_aggregate=secure_aggregate,
        )
        keep(spec, result.record())


_progress_queue: Any = None


def _init_worker(queue: Any) -> None:
    """Worker start-up: rounds are reported on ``queue``; SIGINT is the parent's to handle (ignored here)."""
    global _progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _progress_queue = queue


def _run_one(key: int, spec: RunSpec) -> dict[str, Any]:
    """One run in a worker process: its own dataset copy, torch on one thread, its rounds sent to the parent."""
    import torch

    torch.set_num_threads(1)
    dataset = load_dataset(spec.data.dataset, seed=spec.data_seed, test_fraction=spec.data.test_fraction,
                           fallback=None if spec.data.fallback == "none" else spec.data.fallback)
    queue = _progress_queue

    def on_round(t: int) -> None:
        if queue is not None:
            queue.put((key, t))

    return run(spec, dataset=dataset, on_round=on_round).record()


HEAP_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
"""glibc's heap for a run process: a round's (n x d) matrices come from the heap and go back to it, not from fresh
mmap'd pages that the kernel zeroes and faults in one 4 KiB page at a time (exp2, n = 25, d = 1.2M: 51 -> 31 s
for 12 rounds, system CPU 43 -> 6 s, peak RSS 3.0 -> 3.7 GB; results identical). Ignored off glibc."""


@contextmanager
def _heap_tuned() -> Iterator[None]:
    """HEAP_TUNABLES in the environment of the processes started in the block, unless GLIBC_TUNABLES is set."""
    if "GLIBC_TUNABLES" in os.environ:
        yield
        return
    os.environ["GLIBC_TUNABLES"] = HEAP_TUNABLES
    try:
        yield
    finally:
        os.environ.pop("GLIBC_TUNABLES", None)


def _run_parallel(
    specs: list[RunSpec], jobs: int, keep: Callable[[RunSpec, dict[str, Any]], None],
    on_round: Callable[[int, int], None],
) -> None:
    """Run ``specs``, ``jobs`` processes at a time (spawned: no state shared with torch), handing each record to
    ``keep`` as it finishes. The workers ignore SIGINT; if anything stops the parent (Ctrl-C), they are killed
    at once and the runs they had in flight are lost (a rerun redoes them)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(queue,))
    try:
        with _sigint_ignored(), _heap_tuned():  # the workers start inside: they inherit both from the first byte
            futures = {pool.submit(_run_one, id(spec), spec): spec for spec in specs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, on_round)
            for future in finished:
                keep(futures[future], future.result())
    except BaseException:
        _kill_workers(pool)
        raise
    finally:
        queue.close()
    pool.shutdown(wait=True)


def _drain(queue: Any, on_round: Callable[[int, int], None]) -> None:
    while True:
        try:
            key, t = queue.get_nowait()
        except Empty:
            return
        on_round(key, t)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """End every worker process of ``pool`` now (SIGKILL: torch may be deep in a kernel) and reap them."""
    with _sigint_ignored():
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=10)
        pool.shutdown(wait=True, cancel_futures=True)


def summarize(config: ExperimentConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Final accuracy per (rule, attack, f, secure): mean and sample std over seeds, and friends
    (Byzantine weight, workers rejected by the input validity check per round, honest ones among them)."""
    groups: dict[tuple[str, str, int, bool, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["rule"], r["attack"], r["f"], r["secure"], _target(r))].append(r)
    rows = []
    for (rule, attack, f, secure, target), rs in groups.items():
        acc = np.array([r["final_accuracy"] for r in rs])
        eps = [r["epsilon"] for r in rs if r["epsilon"] is not None]
        rows.append(
            {
                "rule": rule,
                "attack": attack,
                "f": f,
                "secure": secure,
                "final_accuracy": float(acc.mean()),
                "final_accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                "runs": int(acc.size),
                "byzantine_weight": _mean_known([r["byzantine_weight"] for r in rs]),
                "rejected_per_round": float(np.mean([r.get("rejected_total", 0) / r["rounds"] for r in rs])),
                "rejected_honest": int(sum(r.get("rejected_honest", 0) for r in rs)),
                "diverged": int(sum(r["diverged"] for r in rs)),
                "epsilon": max(eps) if eps else None,
                "epsilon_server": max(es) if (es := [r["epsilon_server"] for r in rs
                                                     if r.get("epsilon_server") is not None]) else None,
                "target_epsilon": target,
                "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
            }
        )
    datasets = sorted({r["dataset"] for r in records})
    return {
        "name": config.name,
        "dataset": datasets[0] if len(datasets) == 1 else datasets,
        "model": config.model.name,
        "workers": config.train.workers,
        "rounds": config.train.rounds,
        "delta": config.dp.delta if config.dp.enabled else None,
        "rules": list(config.grid.rules),
        "attacks": list(config.grid.attacks),
        "epsilons": list(config.grid.epsilon),
        "runs": len(records),
        "run_seconds": round(float(sum(r["seconds"] for r in records)), 1),
        "final_accuracy": rows,
    }


def accuracy_tables(summary: dict[str, Any]) -> list[Table]:
    """One rich table per f: rows rule x {secure, plain}, columns attacks, cells final accuracy %
    (mean over seeds; the standard deviations are in summary.json)."""
    rows = summary["final_accuracy"]
    tables = []
    for f in sorted({r["f"] for r in rows}):
        cell = {(r["rule"], r.get("target_epsilon", 0.0), r["secure"], r["attack"]): r for r in rows if r["f"] == f}
        seeds = sorted({r["runs"] for r in rows if r["f"] == f})
        over = f", mean of {seeds[0]} seeds" if seeds == [seeds[0]] and seeds[0] > 1 else ""
        title = (
            f"final test accuracy (%), {summary['dataset']}, {summary['workers']} workers, "
            f"{f} Byzantine, {summary['rounds']} rounds{over}"
        )
        if summary.get("epsilons") and summary.get("delta"):
            title += f"; DP: epsilon against an observer at δ = {summary['delta']:g}"
        table = Table(title=title)
        table.add_column("rule")
        table.add_column("mode")
        for attack in summary["attacks"]:
            table.add_column(attack, justify="right")
        for rule in summary["rules"]:
            for target in summary.get("epsilons") or [0.0]:
                for secure in (True, False):
                    if not any(key[:3] == (rule, target, secure) for key in cell):
                        continue
                    values = [_fmt(cell.get((rule, target, secure, a))) for a in summary["attacks"]]
                    label = rule if not summary.get("epsilons") else f"{rule}, {_epsilon_label(target)}"
                    table.add_row(label, "secure" if secure else "plain", *values)
        tables.append(table)
    return tables


def rejection_notes(summary: dict[str, Any]) -> list[str]:
    """One line per (f, attack) whose workers the input validity check rejected: the range over
    (rule, mode) of the workers rejected per round (one number when they agree), the largest weight given to Byzantine rows, and
    how many honest workers were rejected."""
    rows = summary["final_accuracy"]
    lines = []
    for f in sorted({r["f"] for r in rows}):
        for attack in summary["attacks"]:
            chosen = [r for r in rows if r["f"] == f and r["attack"] == attack]
            rejected = [r.get("rejected_per_round", 0.0) for r in chosen]
            if chosen and max(rejected) > 0:
                low, high = _count(min(rejected)), _count(max(rejected))
                many = f"{low}-{high} workers" if low != high else f"{low} worker{'' if high == '1' else 's'}"
                lines.append(
                    f"input validity check, f = {f}, {attack}: {many} "
                    f"rejected per round, Byzantine weight at most {_max_known(chosen)}, "
                    f"{sum(r.get('rejected_honest', 0) for r in chosen)} honest workers rejected"
                )
    return lines


def _target(record: dict[str, Any]) -> float:
    """The run's target epsilon (``dp.epsilon``; 0 for a run without one)."""
    return float(record.get("spec", {}).get("dp", {}).get("epsilon", 0.0) or 0.0)


def _epsilon_label(target: float) -> str:
    return "no noise" if target == 0 else f"ε = {target:g}"


def _count(x: float) -> str:
    """A mean count of workers: "4" when whole, else to two decimals without trailing zeros ("3.5")."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _mean_known(values: list[float | None]) -> float | None:
    """Mean of the values that were revealed (reveal="aggregate" runs have no weights), or None."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _max_known(rows: list[dict[str, Any]]) -> str:
    known = [r["byzantine_weight"] for r in rows if r["byzantine_weight"] is not None]
    return f"{max(known):.3f}" if known else "unrevealed"


def _fmt(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{100 * row['final_accuracy']:.1f}"
