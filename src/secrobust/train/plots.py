"""PNG plots of a grid: accuracy against round per rule for each attack, and the final table.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_all(records: list[dict[str, Any]], summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``accuracy_<attack>_f<f>.png`` for every (attack, f) and ``table_f<f>.png`` for every f."""
    out = Path(out_dir)
    paths = []
    for attack, f in sorted({(r["attack"], r["f"]) for r in records}):
        chosen = [r for r in records if r["attack"] == attack and r["f"] == f]
        paths.append(
            plot_accuracy(chosen, out / f"accuracy_{attack}_f{f}.png", title=f"attack: {attack}, f = {f}")
        )
    for f in sorted({r["f"] for r in summary["final_accuracy"]}):
        paths.append(plot_table(summary, f, out / f"table_f{f}.png"))
    return paths


def plot_accuracy(records: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Test accuracy against round, one line per (rule, secure), averaged over seeds.

    Secure runs are solid, plaintext runs dashed and drawn thinner on top, so a perfect overlap
    (what the engine promises) shows as a dashed line inside a solid one.
    """
    curves: dict[tuple[str, bool], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for r in records:
        rounds = np.array([h["round"] for h in r["history"]])
        acc = np.array([h["accuracy"] for h in r["history"]])
        curves[(r["rule"], r["secure"])].append((rounds, acc))
    rules = list(dict.fromkeys(rule for rule, _ in curves))
    colours = {rule: f"C{i}" for i, rule in enumerate(rules)}
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (rule, secure), runs in sorted(curves.items(), key=lambda kv: (rules.index(kv[0][0]), not kv[0][1])):
        rounds = runs[0][0]
        acc = np.mean([a for _, a in runs if len(a) == len(rounds)], axis=0)
        ax.plot(
            rounds,
            100 * acc,
            color=colours[rule],
            linestyle="-" if secure else "--",
            linewidth=2.2 if secure else 1.2,
            label=f"{rule} ({'secure' if secure else 'plain'})",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=110)
    return path


def plot_table(summary: dict[str, Any], f: int, path: Path) -> Path:
    """Heat map of final accuracy: rows rule x mode, columns attacks, numbers in the cells."""
    rows = [r for r in summary["final_accuracy"] if r["f"] == f]
    attacks = [a for a in summary["attacks"] if any(r["attack"] == a for r in rows)]
    labels = []
    grid = []
    for rule in summary["rules"]:
        for secure in (True, False):
            cells = {
                r["attack"]: r["final_accuracy"] for r in rows if r["rule"] == rule and r["secure"] == secure
            }
            if cells:
                labels.append(f"{rule} ({'secure' if secure else 'plain'})")
                grid.append([100 * cells.get(a, np.nan) for a in attacks])
    values = np.array(grid)
    fig = Figure(figsize=(1.0 * len(attacks) + 2.8, 0.38 * len(labels) + 1.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"final test accuracy (%), f = {f}")
    fig.savefig(path, dpi=110)
    return path
