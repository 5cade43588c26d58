"""Geometric median by smoothed Weiszfeld iterations, run on distances alone (RFA, Pillutla et al. 2022).

The estimate z = sum_j b_j x_j stays shared; because sum b = 1, ||x_i - z||^2 follows from the
opened squared distances (see ``distances_to_affine``), so no extra opening is needed per iteration.
It has no circuit on shares: it runs with reveal="distances" only.
"""

from __future__ import annotations

import numpy as np

from .spec import Rule, RuleSpec
from .view import DISTANCES, Choice, View, distances_to_affine


def choose_geomed(view: View, n: int, f: int, iterations: int = 100, tol: float = 1e-7, nu: float = 1e-9) -> Choice:
    """b <- (1 / max(nu, ||x_i - z||)) normalised, from b = 1/n, until the objective sum_i ||x_i - z||
    changes by at most tol relative, or after ``iterations`` steps."""
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"geomed iterations must be a positive integer, got {iterations!r}")
    if not (tol >= 0 and nu > 0):
        raise ValueError(f"geomed needs tol >= 0 and nu > 0, got tol={tol}, nu={nu}")
    distances = view.need(DISTANCES)
    beta = np.full(n, 1.0 / n)
    objective = np.sqrt(distances_to_affine(distances, beta)).sum()
    for _ in range(int(iterations)):
        inv = 1.0 / np.maximum(nu, np.sqrt(distances_to_affine(distances, beta)))
        beta = inv / inv.sum()
        new_objective = np.sqrt(distances_to_affine(distances, beta)).sum()
        if abs(objective - new_objective) <= tol * max(new_objective, np.finfo(float).tiny):
            break
        objective = new_objective
    return Choice(beta)


RULES = (Rule(RuleSpec("geomed", choose_geomed, lambda _: (DISTANCES,), lambda f: 2 * f + 1, "n >= 2f + 1")),)
