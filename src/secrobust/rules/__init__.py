"""Robust rules: plaintext references (the test oracle) and the choice functions S1 runs.

Each rule is defined whole in its family's file (mean.py, krum.py, mda.py, geomed.py, clipping.py,
coordinatewise.py), which ``registry.FAMILIES`` lists. Each public function takes (n, d) updates and f and
returns the public weights (n,) that the rule chooses on the fixed-point encodings of the updates;
``secrobust.aggregate`` must return exactly these weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .plain import plain_run
from .registry import get_rule, rule_names
from .spec import RuleSpec
from .view import Choice, View

RULES = rule_names()


def weights(updates: Any, rule: str, f: int, **options: Any) -> np.ndarray:
    """Plaintext weights of any rule by name."""
    return plain_run(updates, rule, f, **options).choice.weights


def mean(updates: Any, f: int = 0, **options: Any) -> np.ndarray:
    """w_i = 1/n."""
    return weights(updates, "mean", f, **options)


def krum(updates: Any, f: int, **options: Any) -> np.ndarray:
    """One-hot on argmin_i of the sum of the n-f-2 smallest squared distances from x_i (needs n >= 2f+3)."""
    return weights(updates, "krum", f, **options)


def multi_krum(updates: Any, f: int, m: int | None = None, **options: Any) -> np.ndarray:
    """1/m on the m best Krum scores, m = n - f by default."""
    return weights(updates, "multi-krum", f, m=m, **options)


def geomed(updates: Any, f: int, **options: Any) -> np.ndarray:
    """Smoothed Weiszfeld weights of the geometric median (options: iterations, tol, nu, start)."""
    return weights(updates, "geomed", f, **options)


def mda(updates: Any, f: int, **options: Any) -> np.ndarray:
    """1/(n-f) on the n - f updates of smallest diameter."""
    return weights(updates, "mda", f, **options)


def norm_clip(updates: Any, f: int, **options: Any) -> np.ndarray:
    """min(1, tau/||x_i||)/n (option tau, default the median norm)."""
    return weights(updates, "norm-clip", f, **options)


def cclip(updates: Any, f: int, **options: Any) -> np.ndarray:
    """Centered-clipping weights on the x_i (options center, tau, iterations); the center's weight is
    1 - sum(w) for one iteration, see ``secrobust.plain_aggregate`` for the full aggregate."""
    return weights(updates, "cclip", f, **options)


__all__ = ["RULES", "Choice", "RuleSpec", "View", "cclip", "geomed", "get_rule", "krum", "mda", "mean",
           "multi_krum", "norm_clip", "weights"]
