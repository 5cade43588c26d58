"""The ``secrobust demo`` and ``secrobust train`` commands (added to the main CLI by ``register``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``train`` to ``app``."""

    @app.command()
    def demo(
        out: Path = typer.Option(Path("out/demo"), "--out", help="Output directory."),
        rounds: Optional[int] = typer.Option(None, "--rounds", help="Override the number of rounds."),
        fresh: bool = typer.Option(False, "--fresh", help="Ignore finished runs in DIR/results.jsonl."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Robust federated training under attack: the default grid (20 workers, 4 Byzantine;
        mean, Krum, Multi-Krum, geometric median; secure and plaintext) on scikit-learn's digits."""
        from secrobust.train.config import demo_config

        _run(demo_config(), out, rounds, fresh, progress)

    @app.command()
    def train(
        config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="Experiment TOML file."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output directory [default: runs/<name>]."),
        rounds: Optional[int] = typer.Option(None, "--rounds", help="Override the number of rounds."),
        fresh: bool = typer.Option(False, "--fresh", help="Ignore finished runs in DIR/results.jsonl."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Run every point of a TOML grid (rules x attacks x f x seeds x secure); finished runs are
        skipped on resume."""
        from secrobust.train.config import load_config

        cfg = load_config(config)
        _run(cfg, out or Path("runs") / cfg.name, rounds, fresh, progress)


def _run(cfg: object, out: Path, rounds: Optional[int], fresh: bool, progress: bool) -> None:
    import torch

    from secrobust.train.config import ExperimentConfig
    from secrobust.train.experiment import run_grid

    assert isinstance(cfg, ExperimentConfig)
    if rounds is not None:
        cfg = cfg.replace(train={"rounds": rounds})
    torch.set_num_threads(1)
    console = Console()
    summary = run_grid(cfg, out, resume=not fresh, console=console, progress=progress)
    console.print(f"{summary['runs']} runs in {summary['seconds']:.0f} s")
