"""The mean: w_i = 1/n. Not robust; its weights follow from n alone, so it opens nothing in any mode and has
no circuit on shares (every mode sums the shared updates with the public 1/n)."""

from __future__ import annotations

import numpy as np

from .spec import Rule, RuleSpec
from .view import Choice, View


def choose_mean(view: View, n: int, f: int) -> Choice:
    """The plain average: w_i = 1/n. Not robust; opens nothing."""
    return Choice(np.full(n, 1.0 / n))


RULES = (Rule(RuleSpec("mean", choose_mean, lambda _: (), lambda f: max(1, f + 1), "n >= f + 1"),
              public_weights=True),)
