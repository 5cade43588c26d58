"""Per-rule sensitivity (secrobust.privacy): the table, the refusals, and the bound checked against the engine.

Each check zeroes one worker's row (the adjacency of docs/privacy.md) in many random and adversarial
configurations and asserts that the engine's plaintext aggregate moves by at most the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

import secrobust
from secrobust.privacy import (
    NoSensitivityBound,
    rule_sensitivity,
    sensitivity,
    sampled_term_bound,
    sum_form,
)

C = 1.0
SLACK = 1e-5  # fixed-point encoding of the rows and weights (F = 20: about 1e-6 per coordinate)


def test_the_table() -> None:
    assert sensitivity("mean", 20, 2.0) == pytest.approx(0.1)
    assert sensitivity("norm-clip", 20, 2.0, tau=0.5) == pytest.approx(0.025)
    assert sensitivity("norm-clip", 20, 2.0, tau=5.0) == pytest.approx(0.1)
    assert sensitivity("cclip", 20, 2.0, tau=0.5) == pytest.approx(0.05)
    assert sensitivity("cclip", 20, 2.0, tau=3.0) == pytest.approx(0.1)
    assert sensitivity("trimmed-mean", 20, 2.0, f=4) == pytest.approx(2.0 / 12)
    assert sensitivity("median", 20, 2.0) == pytest.approx(2.0)
    for rule in ("krum", "multi-krum", "mda", "geomed"):
        assert sensitivity(rule, 20, 2.0, f=4) == pytest.approx(4.0)
    assert sensitivity("bulyan", 20, 2.0, f=3) == pytest.approx(4.0 * math.sqrt(14 / 8))
    assert sensitivity("mean", 20, 2.0, pre="nnm") == pytest.approx(4.0)
    assert rule_sensitivity("norm-clip", 10, 1.0, options={"tau": 0.2, "iterations": 1}) == pytest.approx(0.02)
    # on shares the clip factors are within 2^-25 relative: the bound is taken a hair larger
    assert sensitivity("norm-clip", 10, 1.0, tau=0.2, reveal="aggregate") == pytest.approx(0.02, rel=1e-6)
    assert sensitivity("norm-clip", 10, 1.0, tau=0.2, reveal="aggregate") > 0.02


@pytest.mark.parametrize(("rule", "kwargs", "why"), [
    ("norm-clip", {}, "median norm"),
    ("cclip", {}, "median distance"),
    ("cclip", {"tau": 1.0, "iterations": 3}, "iterations = 3"),
    ("cclip", {"tau": 1.0, "pre": "nnm"}, "simplex"),
    ("trimmed-mean", {"f": 5}, "n - 2f = 0"),
    ("bulyan", {"f": 3}, "n - 4f = -2"),
    ("no-such-rule", {}, "unknown rule"),
])
def test_a_rule_without_a_bound_is_refused_naming_those_with_one(rule: str, kwargs: dict, why: str) -> None:
    with pytest.raises(NoSensitivityBound, match=why) as info:
        sensitivity(rule, 10, 1.0, **kwargs)
    message = str(info.value)
    assert "norm-clip with a public tau" in message and "cclip with a public tau and iterations = 1" in message
    assert isinstance(info.value, ValueError)


def test_only_fixed_denominator_sums_keep_the_sampled_gaussian_form() -> None:
    assert sum_form("mean") and sum_form("norm-clip", options={"tau": 1.0})
    assert not sum_form("norm-clip") and not sum_form("mean", pre="nnm")
    assert sum_form("cclip", options={"tau": 1.0})  # v + (1/n) sum clip_tau(x_i - v): one term per worker
    assert not sum_form("cclip") and not sum_form("cclip", options={"tau": 1.0, "iterations": 2})
    assert sampled_term_bound("mean", 2.0) == 2.0 and sampled_term_bound("norm-clip", 2.0, options={"tau": 0.5}) == 0.5
    assert sampled_term_bound("cclip", 2.0, options={"tau": 3.0}) == 3.0  # tau, whatever C: add/remove, not 2 tau
    with pytest.raises(NoSensitivityBound, match="fixed-denominator"):
        sampled_term_bound("krum", 1.0)
    assert not sum_form("trimmed-mean") and not sum_form("krum")


def _rows(rng: np.random.Generator, n: int, d: int, kind: str) -> np.ndarray:
    if kind == "random":
        x = rng.normal(size=(n, d))
        return x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(0, C, size=(n, 1))
    if kind == "clusters":  # two tight clusters at +-C e1: one row can tip which one a selection rule picks
        x = np.zeros((n, d))
        x[:, 0] = np.where(np.arange(n) % 2 == 0, C, -C)
        x[:, 1:] = rng.normal(scale=1e-3, size=(n, d - 1))
        return x / np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True) / C)
    x = rng.normal(size=(n, d))  # "sphere": every row at norm C (all clipped)
    return x / np.linalg.norm(x, axis=1, keepdims=True) * C


def _moved(rule: str, x: np.ndarray, t: int, f: int, options: dict) -> float:
    def agg(rows: np.ndarray) -> np.ndarray:
        return secrobust.plain_aggregate(rows, rule=rule, f=f, norm_bound=C, **options).aggregate

    zeroed = x.copy()
    zeroed[t] = 0.0
    return float(np.linalg.norm(agg(x) - agg(zeroed)))


CASES = [
    ("mean", {}, 0),
    ("norm-clip", {"tau": 0.3}, 0),
    ("norm-clip", {"tau": 3.0}, 0),
    ("cclip", {"tau": 0.3}, 0),
    ("cclip", {"tau": 0.05}, 0),
    ("trimmed-mean", {}, 2),
    ("median", {}, 2),
    ("krum", {}, 2),
    ("multi-krum", {}, 2),
    ("mda", {}, 2),
    ("geomed", {}, 2),
    ("bulyan", {}, 1),
    ("mean", {"pre": "nnm"}, 2),
    ("norm-clip", {"tau": 0.3, "pre": "bucketing"}, 1),
]


@pytest.mark.parametrize(("rule", "options", "f"), CASES)
def test_zeroing_one_row_moves_the_engines_aggregate_by_at_most_the_bound(rule: str, options: dict, f: int) -> None:
    rng = np.random.default_rng(22)
    n, d = 11, 6
    opts = dict(options)
    pre = opts.get("pre")
    worst = 0.0
    for trial in range(40):
        kind = ("random", "clusters", "sphere")[trial % 3]
        x = _rows(rng, n, d, kind)
        t = int(rng.integers(n))
        if kind == "clusters" and trial % 2:
            x[t] = 0.0
            x[t, 0] = C if rng.random() < 0.5 else -C
        if rule == "cclip":  # a public center anywhere, up to 3C away
            opts["center"] = rng.normal(size=d) * rng.uniform(0, 3 * C) / math.sqrt(d)
        if pre == "bucketing":
            opts["insecure_test_seed"] = trial
        bound = sensitivity(rule, n, C, f=f, tau=options.get("tau"), pre=pre)
        moved = _moved(rule, x, t, f, opts)
        assert moved <= bound + SLACK, (kind, trial, moved, bound)
        worst = max(worst, moved / bound)
    assert worst > (0.01 if pre else 0.05)  # the check is not vacuous


def test_the_2c_bound_of_selection_rules_is_nearly_tight() -> None:
    # Krum on two clusters at +-C e1, the target tipping the balance: the aggregate jumps by nearly 2C
    n, d = 9, 4
    x = np.zeros((n, d))
    x[:4, 0], x[4:, 0] = C, -C  # four at +C, five at -C, the target (row 8) among them: Krum picks -C e1;
    moved = _moved("krum", x, 8, 2, {})  # zeroed, the scores tie and the lowest index (+C e1) wins
    assert moved > 1.9 * C
    assert sensitivity("krum", n, C, f=2) == 2 * C


def test_the_mean_attains_its_bound_and_a_rejected_row_shrinks_the_denominator() -> None:
    n, d = 8, 5
    x = _rows(np.random.default_rng(1), n, d, "sphere")
    assert _moved("mean", x, 3, 0, {}) == pytest.approx(C / n, abs=SLACK)
    # one Byzantine row over the bound is rejected: the engine divides by n - 1, so the calibration must use
    # a lower bound on the aggregated count (n - f), not n
    bad = x.copy()
    bad[0] *= 5.0
    zeroed = bad.copy()
    zeroed[3] = 0.0
    a = secrobust.plain_aggregate(bad, rule="mean", f=1, norm_bound=C, unchecked=(0,))
    b = secrobust.plain_aggregate(zeroed, rule="mean", f=1, norm_bound=C, unchecked=(0,))
    assert list(a.rejected) == [0]
    moved = float(np.linalg.norm(a.aggregate - b.aggregate))
    assert moved == pytest.approx(C / (n - 1), abs=SLACK)
    assert moved > sensitivity("mean", n, C) + 10 * SLACK
    assert moved <= sensitivity("mean", n - 1, C) + SLACK
