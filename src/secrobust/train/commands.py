"""The ``secrobust demo`` and ``secrobust train`` commands (added to the main CLI by ``register``).

Importing this module needs only typer and rich, so the commands always show in ``--help``; if
the train extra (torch, scikit-learn, matplotlib) is missing, or the dp extra (opacus) for a grid with DP
noise, they say so and exit 2.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from secrobust.cli_io import check_file, check_output_dir, fail

Out = Annotated[Path, typer.Option("--out", help="Output directory.")]
Rounds = Annotated[int | None, typer.Option("--rounds", help="Override the number of rounds.")]
Fresh = Annotated[bool, typer.Option("--fresh", help="Rerun runs already in DIR/results.jsonl.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
ConfigFile = Annotated[Path, typer.Option("--config", help="Experiment TOML file.")]
Transport = Annotated[
    str,
    typer.Option(
        "--transport",
        help="Where the secure runs aggregate: inprocess (secrobust.aggregate, every party in this process) "
        "or grpc (one local deployment for the whole grid: dealer, S0, S1 and the workers as separate OS "
        "processes on 127.0.0.1 with mutual TLS). Plaintext runs are the same either way.",
    ),
]
TRANSPORTS = ("inprocess", "grpc")
DEFAULT_JOBS = max(1, min(2, os.cpu_count() or 1))
Jobs = Annotated[
    int,
    typer.Option("--jobs", help="Runs at once, each in its own process with torch on one thread (default: up to "
                 "2 cores). The grpc transport runs one at a time."),
]
WORKERS_PER_PROCESS = 5
OutOrDefault = Annotated[
    Path | None, typer.Option("--out", help="Output directory (default: runs/NAME, NAME from the config).")
]


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``train`` to ``app``."""

    @app.command()
    def demo(
        out: Out = Path("out/demo"),
        rounds: Rounds = None,
        fresh: Fresh = False,
        progress: Progress = True,
        transport: Transport = "inprocess",
        jobs: Jobs = DEFAULT_JOBS,
    ) -> None:
        """Robust federated training under attack: the default grid on scikit-learn's digits.

        20 workers of which 4 are Byzantine; mean, Krum, Multi-Krum and geometric median, secure
        and plaintext, under no attack, six attacks from the literature and ring-overflow (exact
        ring elements that wrapped the old protocol's distances), 2 seeds. Writes DIR/results.jsonl,
        DIR/summary.json and PNG plots, and prints the final accuracy table. Then the differential-privacy
        rows (mean and cclip with noise calibrated to a target epsilon, plaintext) into DIR/dp."""

        def load() -> Any:
            from secrobust.train.config import demo_config

            return demo_config()

        def load_dp() -> Any:
            from secrobust.train.config import demo_dp_config

            return demo_dp_config()

        _run(load, lambda cfg: out, rounds, fresh, progress, transport, jobs)
        _run(load_dp, lambda cfg: out / "dp", rounds, fresh, progress, transport, jobs)

    @app.command()
    def train(
        config: ConfigFile,
        out: OutOrDefault = None,
        rounds: Rounds = None,
        fresh: Fresh = False,
        progress: Progress = True,
        transport: Transport = "inprocess",
        jobs: Jobs = DEFAULT_JOBS,
    ) -> None:
        """Run every point of a TOML grid (rules x attacks x f x seeds x secure).

        Runs already in DIR/results.jsonl are skipped, so an interrupted grid resumes."""

        def load() -> Any:
            from secrobust.train.config import load_config

            check_file(config, "--config", "a TOML file")
            try:
                return load_config(config)
            except ValueError as exc:
                raise ValueError(f"--config {config}: {exc}") from None

        _run(load, lambda cfg: out or Path("runs") / cfg.name, rounds, fresh, progress, transport, jobs)


def _run(
    load: Callable[[], Any],
    out_dir: Callable[[Any], Path],
    rounds: int | None,
    fresh: bool,
    progress: bool,
    transport: str = "inprocess",
    jobs: int = 1,
) -> None:
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        _run_grid_command(load, out_dir, rounds, fresh, progress, transport, jobs)
    except KeyboardInterrupt as stop:
        # Ctrl-C (or SIGTERM, e.g. from `timeout`): the grid has already ended its worker processes and kept
        # every finished run. One line, no traceback; a further Ctrl-C while we exit is ignored.
        if main_thread:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        kept = getattr(stop, "kept", None)
        if kept is None:
            kept = _kept_runs(load, out_dir)
        print(f"stopped; {kept} runs kept; rerun to resume", file=sys.stderr, flush=True)
        # Every run kept is on disk and no worker is left. The exit handlers run (multiprocessing's release its
        # semaphores); the interpreter's teardown of torch, about a second on its own, is skipped.
        atexit._run_exitfuncs()
        _stop_resource_tracker()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143 if terminated else 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_resource_tracker() -> None:
    """End multiprocessing's resource tracker (started with --jobs' pool) and reap it, rather than leave it to
    notice our exit a moment later (``_stop`` is CPython's own, present since 3.8; skipped where absent)."""
    from multiprocessing import resource_tracker

    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if stop is not None:
        try:
            stop()
        except OSError:
            pass


def _kept_runs(load: Callable[[], Any], out_dir: Callable[[Any], Path]) -> int:
    """Runs in the output directory's results.jsonl, for a Ctrl-C that came before the grid started."""
    try:
        from secrobust.train.experiment import RESULTS, read_results

        return len(read_results(out_dir(load()) / RESULTS))
    except (ImportError, OSError, ValueError):
        return 0


def _run_grid_command(
    load: Callable[[], Any],
    out_dir: Callable[[Any], Path],
    rounds: int | None,
    fresh: bool,
    progress: bool,
    transport: str,
    jobs: int,
) -> None:
    console = Console() if Console().is_terminal else Console(width=160)
    if transport not in TRANSPORTS:
        fail(f"--transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if jobs < 1:
        fail(f"--jobs must be a positive integer, got {jobs}")
    if transport != "inprocess":
        jobs = 1
    try:
        import torch

        from secrobust.train.experiment import run_grid
    except ImportError as err:
        fail(f"training needs the train extras (pip install 'secrobust[train]'): {err}")
    from secrobust.errors import ProtocolError

    try:
        cfg = load()
        if rounds is not None:
            cfg = cfg.replace(train={"rounds": rounds})
        check_output_dir(out_dir(cfg))
        if any(s.dp.noisy for s in cfg.runs()) and find_spec("opacus") is None:
            raise ValueError("differential privacy's accounting needs Opacus, the dp extra: pip install 'secrobust[dp]'")
        torch.set_num_threads(1)
        with _secure_aggregate(transport, cfg, console) as secure_aggregate:
            summary = run_grid(
                cfg,
                out_dir(cfg),
                resume=not fresh,
                console=console,
                progress=progress,
                secure_aggregate=secure_aggregate,
                jobs=jobs,
            )
    except ProtocolError as err:
        fail(f"a secure round over {transport} failed: {err}")
    except (ValueError, OSError, RuntimeError) as err:
        fail(err)
    console.print(f"{summary['runs']} runs, {summary['seconds']:.0f} s")


class _DeploymentAggregate:
    """``LocalDeployment.aggregate`` of one deployment for the whole grid, started at the first secure
    round (a resumed grid whose secure runs are all done starts no process) and stopped by ``close``."""

    def __init__(self, workers: int, console: Console) -> None:
        self.workers = workers
        self.console = console
        self.dep: Any = None
        self.rounds = 0

    def __call__(self, updates: Any, rule: str, f: int, **kwargs: Any) -> Any:
        if self.dep is None:
            from secrobust.deploy.local import LocalDeployment, LocalOptions

            dep = LocalDeployment(self.workers, options=LocalOptions(workers_per_process=WORKERS_PER_PROCESS))
            dep.start()
            self.dep = dep
            self.console.print(
                f"gRPC deployment up in {dep.workdir}: dealer, S0, S1 and {self.workers} workers in "
                f"{len(dep.children) - 3} processes, mutual TLS on 127.0.0.1"
            )
        result = self.dep.aggregate(updates, rule, f, **kwargs)
        self.rounds += 1
        return result

    def close(self) -> None:
        if self.dep is not None:
            self.dep.stop()
            self.dep = None
            self.console.print(f"{self.rounds} secure rounds over gRPC; the deployment is stopped")


@contextmanager
def _secure_aggregate(transport: str, cfg: Any, console: Console) -> Iterator[Any]:
    """None (``secrobust.aggregate`` in process) or the aggregate of a local gRPC deployment, torn down
    when the grid ends, fails or is interrupted."""
    if transport == "inprocess":
        yield None
        return
    workers = max((s.train.workers for s in cfg.runs() if s.secure), default=0)
    if workers == 0:
        yield None
        return
    agg = _DeploymentAggregate(workers, console)
    try:
        yield agg
    finally:
        agg.close()
