"""The grid's plots, read from matplotlib's figure objects: labels, colour bar, and the legend of equal curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from secrobust.train import plots


def _record(rule: str, secure: bool, accuracy: list[float], attack: str = "ipm", f: int = 4) -> dict[str, Any]:
    return {"rule": rule, "secure": secure, "attack": attack, "f": f,
            "history": [{"round": r, "accuracy": a} for r, a in enumerate(accuracy)]}


SUMMARY = {
    "rules": ["mean", "krum"],
    "attacks": ["ipm", "alie"],
    "final_accuracy": [
        {"rule": "mean", "secure": True, "attack": "ipm", "f": 4, "final_accuracy": 0.7},
        {"rule": "mean", "secure": False, "attack": "ipm", "f": 4, "final_accuracy": 0.7},
        {"rule": "krum", "secure": True, "attack": "alie", "f": 4, "final_accuracy": 0.3},
        {"rule": "krum", "secure": False, "attack": "ipm", "f": 4, "final_accuracy": 0.9},
    ],
}


def test_the_heat_map_has_a_colour_bar_and_axis_labels() -> None:
    fig = plots.table_figure(SUMMARY, 4)

    heat, bar = fig.axes
    assert heat.get_xlabel() == "attack" and heat.get_ylabel() == "rule (mode)"
    assert bar.get_ylabel() == "final test accuracy (%)"
    assert heat.images[0].colorbar is not None and heat.images[0].get_clim() == (0, 100)
    assert [t.get_text() for t in heat.get_yticklabels()] == [
        "mean (secure)", "mean (plaintext)", "krum (secure)", "krum (plaintext)"]
    assert sorted(t.get_text() for t in heat.texts) == ["30.0", "70.0", "70.0", "90.0"]


def test_equal_secure_and_plaintext_curves_are_one_line_that_says_so() -> None:
    records = [_record("mean", True, [0.1, 0.5, 0.7]), _record("mean", False, [0.1, 0.5, 0.7]),
               _record("krum", True, [0.1, 0.4, 0.6]), _record("krum", False, [0.1, 0.45, 0.65])]

    ax = plots.accuracy_figure(records, title="attack: ipm, f = 4").axes[0]

    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["mean (secure = plaintext)", "krum (secure)", "krum (plaintext)"]
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "test accuracy (%)"
    mean, krum_secure, krum_plain = ax.get_lines()
    assert np.allclose(mean.get_ydata(), [10, 50, 70])
    assert krum_plain.get_marker() == "o" and krum_plain.get_linestyle() == "--"
    assert krum_secure.get_linestyle() == "-"


def test_curves_match_within_a_twentieth_of_a_point_only() -> None:
    rounds = np.arange(3)

    assert plots.curves_match((rounds, np.array([10.0, 50.0, 70.0])), (rounds, np.array([10.0, 50.04, 70.0])))
    assert not plots.curves_match((rounds, np.array([10.0, 50.0, 70.0])), (rounds, np.array([10.0, 50.2, 70.0])))
    assert not plots.curves_match((rounds, np.zeros(3)), (rounds + 1, np.zeros(3)))
    assert not plots.curves_match((rounds, np.zeros(3)), None)


def test_plot_all_writes_the_pngs(tmp_path: Path) -> None:
    records = [_record("mean", True, [0.1, 0.7]), _record("mean", False, [0.1, 0.7])]

    paths = plots.plot_all(records, SUMMARY, tmp_path)

    assert [p.name for p in paths] == ["accuracy_ipm_f4.png", "table_f4.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_rules_with_the_same_curve_share_one_line_that_names_them_all() -> None:
    # krum@aggregate trains exactly as krum (only who learns the weights differs): drawn second, in its own
    # colour, it used to hide krum's line completely
    same = [0.1, 0.4, 0.6]
    records = [_record("mean", True, [0.1, 0.5, 0.7]), _record("mean", False, [0.1, 0.5, 0.7]),
               _record("krum", True, same), _record("krum", False, same),
               _record("krum@aggregate", True, same), _record("krum@aggregate", False, same),
               _record("krum+nnm", True, [0.1, 0.3, 0.5])]

    ax = plots.accuracy_figure(records).axes[0]

    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["mean (secure = plaintext)", "krum = krum@aggregate (secure = plaintext)", "krum+nnm (secure)"]
    drawn = [tuple(line.get_ydata()) for line in ax.get_lines()]
    assert len(drawn) == len(set(drawn)) == 3          # no line lies on top of another
    colours = [line.get_color() for line in ax.get_lines()]
    assert len(set(colours)) == 3
