"""The ``secrobust demo`` and ``secrobust train`` commands (added to the main CLI by ``register``).

Importing this module needs only typer and rich, so the commands always show in ``--help``; if
the train extras (torch, scikit-learn, matplotlib, opacus) are missing they say so and exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

Out = Annotated[Path, typer.Option("--out", help="Output directory.")]
Rounds = Annotated[int | None, typer.Option("--rounds", help="Override the number of rounds.")]
Fresh = Annotated[bool, typer.Option("--fresh", help="Rerun runs already in DIR/results.jsonl.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
ConfigFile = Annotated[
    Path, typer.Option("--config", exists=True, dir_okay=False, help="Experiment TOML file.")
]
OutOrDefault = Annotated[
    Path | None, typer.Option("--out", help="Output directory (default: runs/NAME, NAME from the config).")
]


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``train`` to ``app``."""

    @app.command()
    def demo(
        out: Out = Path("out/demo"), rounds: Rounds = None, fresh: Fresh = False, progress: Progress = True
    ) -> None:
        """Robust federated training under attack, the default grid: 20 workers of which 4 are
        Byzantine, on scikit-learn's digits; mean, Krum, Multi-Krum and geometric median, secure
        and plaintext, under no attack and six attacks, 2 seeds. Writes DIR/results.jsonl,
        DIR/summary.json and PNG plots, and prints the final accuracy table."""

        def load() -> Any:
            from secrobust.train.config import demo_config

            return demo_config()

        _run(load, lambda cfg: out, rounds, fresh, progress)

    @app.command()
    def train(
        config: ConfigFile,
        out: OutOrDefault = None,
        rounds: Rounds = None,
        fresh: Fresh = False,
        progress: Progress = True,
    ) -> None:
        """Run every point of a TOML grid (rules x attacks x f x seeds x secure); runs already in
        DIR/results.jsonl are skipped, so an interrupted grid resumes."""

        def load() -> Any:
            from secrobust.train.config import load_config

            return load_config(config)

        _run(load, lambda cfg: out or Path("runs") / cfg.name, rounds, fresh, progress)


def _run(
    load: Callable[[], Any], out_dir: Callable[[Any], Path], rounds: int | None, fresh: bool, progress: bool
) -> None:
    console = Console() if Console().is_terminal else Console(width=160)
    try:
        import torch

        from secrobust.train.experiment import run_grid
    except ImportError as err:
        hint = "training needs the train extras (pip install 'secrobust\\[train]')"
        console.print(f"[red]error:[/] {hint}: {escape(str(err))}")
        raise typer.Exit(2) from err
    try:
        cfg = load()
        if rounds is not None:
            cfg = cfg.replace(train={"rounds": rounds})
        torch.set_num_threads(1)
        summary = run_grid(cfg, out_dir(cfg), resume=not fresh, console=console, progress=progress)
    except (ValueError, OSError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from err
    console.print(f"{summary['runs']} runs, {summary['seconds']:.0f} s")
