"""Geometric median by smoothed Weiszfeld iterations, run on distances alone (RFA, Pillutla et al. 2022).

The estimate z = sum_j b_j x_j stays shared; because sum b = 1, ||x_i - z||^2 follows from the
opened squared distances (see ``distances_to_affine``), so no extra opening is needed per iteration.
It has no circuit on shares: it runs with reveal="distances" only. Started from z = 0 (``start="zero"``, as
the reference code of RFA and of the bucketing paper does) it opens the squared norms as well: the first
step's ||x_i - 0|| are not affine in the distances.
"""

from __future__ import annotations

import numpy as np

from .spec import Rule, RuleSpec
from .view import DISTANCES, NORMS, Choice, View, distances_to_affine


def choose_geomed(view: View, n: int, f: int, iterations: int = 100, tol: float = 1e-7, nu: float = 1e-9,
                  start: str = "mean") -> Choice:
    """b <- (1 / max(nu, ||x_i - z||)) normalised, until the objective sum_i ||x_i - z|| changes by at most tol
    relative, or after ``iterations`` steps. ``start``: "mean" (z = the mean, b = 1/n) or "zero" (z = 0, as
    RFA's reference code starts; the first step's distances are the norms, so the rule opens them too). From
    0 an update at or near 0 gets weight up to 1/nu in the first step and can hold the estimate there: use it
    with a nu on the scale of the honest norms (RFA's 0.1; tests/test_differential.py shows the attack)."""
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"geomed iterations must be a positive integer, got {iterations!r}")
    if not (tol >= 0 and nu > 0):
        raise ValueError(f"geomed needs tol >= 0 and nu > 0, got tol={tol}, nu={nu}")
    check_start(start)
    distances = view.need(DISTANCES)
    beta = np.full(n, 1.0 / n)
    from_zero = start == "zero"
    to_z = view.need(NORMS) if from_zero else distances_to_affine(distances, beta)
    objective = np.sqrt(to_z).sum()
    for step in range(int(iterations)):
        inv = 1.0 / np.maximum(nu, np.sqrt(to_z))
        beta = inv / inv.sum()
        to_z = distances_to_affine(distances, beta)
        new_objective = np.sqrt(to_z).sum()
        converged = abs(objective - new_objective) <= tol * max(new_objective, np.finfo(float).tiny)
        if converged and not (from_zero and step == 0):     # 0 is no estimate: its objective is not comparable
            break
        objective = new_objective
    return Choice(beta)


STARTS = ("mean", "zero")


def check_start(start: object) -> None:
    if not isinstance(start, str) or start not in STARTS:
        raise ValueError(f"geomed start is one of {', '.join(map(repr, STARTS))}, got {start!r}")


def _reveals(options: dict) -> tuple[str, ...]:
    start = options.get("start", "mean")
    check_start(start)
    return (DISTANCES, NORMS) if start == "zero" else (DISTANCES,)


RULES = (Rule(RuleSpec("geomed", choose_geomed, _reveals, lambda f: 2 * f + 1, "n >= 2f + 1")),)
