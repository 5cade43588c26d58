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
from matplotlib.ticker import MaxNLocator


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


MATCH_TOLERANCE = 0.05
"""Largest gap in accuracy points at which a secure and a plaintext curve are drawn as one line (about a
tenth of a pixel on the 100-point axis)."""


def plot_accuracy(records: list[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Write ``accuracy_figure(records, title)`` to ``path`` as a PNG."""
    accuracy_figure(records, title=title).savefig(path, dpi=110)
    return path


def accuracy_figure(records: list[dict[str, Any]], *, title: str = "") -> Figure:
    """Test accuracy against round, one line per (rule, secure), averaged over seeds.

    Where a rule's secure and plaintext curves agree to ``MATCH_TOLERANCE`` (what the engine promises) they
    are one line labelled "secure = plaintext"; otherwise secure is solid and plaintext dashed with markers.
    Rules whose lines all agree (e.g. "krum" and "krum@aggregate", which differ only in who learns the weights)
    share one line labelled "krum = krum@aggregate", instead of the later one hiding the earlier.
    """
    curves = _mean_curves(records)
    rules = list(dict.fromkeys(rule for rule, _ in curves))
    groups: list[tuple[list[str], list[tuple[str, Curve]]]] = []
    for rule in rules:
        lines = _rule_lines(curves.get((rule, True)), curves.get((rule, False)))
        same = next((g for g in groups if _same_lines(g[1], lines)), None)
        if same is not None:
            same[0].append(rule)
        else:
            groups.append(([rule], lines))
    fig = Figure(figsize=(8.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (names, lines) in enumerate(groups):
        _plot_lines(ax, " = ".join(names), lines, f"C{i}")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


Curve = tuple[np.ndarray, np.ndarray]


def _mean_curves(records: list[dict[str, Any]]) -> dict[tuple[str, bool], Curve]:
    """(rule, secure) -> (rounds, accuracy in %), the mean over the seeds whose history has the first run's rounds."""
    runs: dict[tuple[str, bool], list[Curve]] = defaultdict(list)
    for r in records:
        rounds = np.array([h["round"] for h in r["history"]])
        acc = np.array([h["accuracy"] for h in r["history"]])
        runs[(_label(r["rule"], _target(r)), r["secure"])].append((rounds, acc))
    out = {}
    for key, group in runs.items():
        rounds = group[0][0]
        out[key] = (rounds, 100 * np.mean([a for x, a in group if np.array_equal(x, rounds)], axis=0))
    return out


def curves_match(a: Curve | None, b: Curve | None) -> bool:
    """Whether two curves have the same rounds and accuracies within ``MATCH_TOLERANCE`` points."""
    if a is None or b is None or not np.array_equal(a[0], b[0]):
        return False
    return bool(np.allclose(a[1], b[1], rtol=0.0, atol=MATCH_TOLERANCE))


def _rule_lines(secure: Curve | None, plain: Curve | None) -> list[tuple[str, Curve]]:
    """A rule's lines as (kind, curve): one "secure = plaintext" line when the two coincide, else each its own."""
    if curves_match(secure, plain):
        assert secure is not None
        return [("secure = plaintext", secure)]
    return [(kind, c) for kind, c in (("secure", secure), ("plaintext", plain)) if c is not None]


def _same_lines(a: list[tuple[str, Curve]], b: list[tuple[str, Curve]]) -> bool:
    return [k for k, _ in a] == [k for k, _ in b] and all(curves_match(x, y) for (_, x), (_, y) in zip(a, b))


def _plot_lines(ax: Any, name: str, lines: list[tuple[str, Curve]], colour: str) -> None:
    """One rule's (or group of equal rules') lines on ``ax``: secure solid, plaintext dashed with markers."""
    for kind, curve in lines:
        if kind == "plaintext":
            ax.plot(*curve, color=colour, linestyle="--", linewidth=1.2, marker="o", markersize=3,
                    markerfacecolor="none", label=f"{name} (plaintext)")
        else:
            ax.plot(*curve, color=colour, linestyle="-", linewidth=2.0, label=f"{name} ({kind})")


def plot_table(summary: dict[str, Any], f: int, path: Path) -> Path:
    """Write ``table_figure(summary, f)`` to ``path`` as a PNG."""
    table_figure(summary, f).savefig(path, dpi=110)
    return path


def table_figure(summary: dict[str, Any], f: int) -> Figure:
    """Heat map of final accuracy: rows rule x mode, columns attacks, numbers in the cells, a colour bar."""
    labels, attacks, values = _table_values(summary, f)
    fig = Figure(figsize=(1.0 * len(attacks) + 3.8, 0.38 * len(labels) + 1.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("attack")
    ax.set_ylabel("rule (mode)")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="final test accuracy (%)")
    ax.set_title(f"final test accuracy, f = {f}")
    return fig


def _table_values(summary: dict[str, Any], f: int) -> tuple[list[str], list[str], np.ndarray]:
    """Row labels (rule and mode), column attacks and the final accuracies in % (NaN where no run)."""
    rows = [r for r in summary["final_accuracy"] if r["f"] == f]
    attacks = [a for a in summary["attacks"] if any(r["attack"] == a for r in rows)]
    labels = []
    grid = []
    for rule in summary["rules"]:
        for target in summary.get("epsilons") or [0.0]:
            for secure in (True, False):
                cells = {
                    r["attack"]: r["final_accuracy"] for r in rows
                    if r["rule"] == rule and r["secure"] == secure and r.get("target_epsilon", 0.0) == target
                }
                if cells:
                    labels.append(f"{_label(rule, target)} ({'secure' if secure else 'plaintext'})")
                    grid.append([100 * cells.get(a, np.nan) for a in attacks])
    return labels, attacks, np.array(grid).reshape(len(labels), len(attacks))


def _target(record: dict[str, Any]) -> float:
    """A run's target epsilon (0 without one)."""
    return float(record.get("spec", {}).get("dp", {}).get("epsilon", 0.0) or 0.0)


def _label(rule: str, target: float) -> str:
    """The rule, and its target epsilon when it has one: runs of a grid over epsilons are separate lines."""
    return rule if not target else f"{rule}, ε = {target:g}"
