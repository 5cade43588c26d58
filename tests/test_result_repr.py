"""``AggregateResult``'s repr is one short line: rule, f, participants and shapes, never the arrays."""

from __future__ import annotations

import numpy as np

import secrobust


def test_the_repr_shows_shapes_not_values() -> None:
    x = np.random.default_rng(0).normal(size=(12, 3000)) * 0.01

    text = repr(secrobust.aggregate(x, "krum", 2))

    assert text == ("AggregateResult(rule='krum', f=2, reveal='distances', participants=12 of 12, rejected=[], "
                    "aggregate=float64(3000,), weights=float64(12,), distances=float64(12, 12), revealed=['distances'])")
    assert str(secrobust.aggregate(x, "mean", 0)).endswith("distances=None, revealed=[])")
    hidden = repr(secrobust.aggregate(x, "krum", 2, reveal="aggregate"))
    assert "reveal='aggregate', participants=12 of 12" in hidden and "weights=None, distances=None, revealed=[]" in hidden


def test_the_repr_names_rejected_workers() -> None:
    x = np.random.default_rng(1).normal(size=(8, 30))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[2] *= 3.0

    result = secrobust.aggregate(x, "mean", 0, norm_bound=1.0, over_bound="exclude")

    assert "participants=7 of 8, rejected=[2]," in repr(result)
