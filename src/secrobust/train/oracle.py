r"""What a rule-aware attacker computes: a rule's float aggregate when the f Byzantine rows all equal
:math:`b(s) = a + s\,p`, as a function of the scale s, cheaply enough to search over s every round.

``RuleOracle(honest, a, p, f_rows, rule, f, options)`` precomputes once the Gram matrix K of the basis
:math:`B = [x_1; \dots; x_h; a; p; v]` (v the rule's public center, 0 unless cclip gets ``center``), an
(h + 3)^2 matrix, O(h^2 d). Every row the rule sees is a combination :math:`C B` of the basis (honest row i
is e_i, a Byzantine row :math:`e_a + s e_p`), so the view the rule server opens (squared distances, squared
norms to v) is read off :math:`C K C^T` in O(n^2 h) per scale, with no pass over the d coordinates. The
distance-based rules then run their own choice functions (``secrobust.rules``: the same code S1 runs, here on
float distances instead of the decoded ring view), and :math:`\lVert \mathrm{agg}(s) - \bar x_H\rVert^2 =
e^T K e` with e the aggregate's coefficients minus the honest mean's. The coordinate-wise rules (median,
trimmed mean, Bulyan) need the coordinates: the honest rows are sorted once per call, and a scale costs
O(h d) (where b(s) falls among them, then prefix sums).

What this is not: the engine's exact computation. It skips the fixed-point encoding (a difference of order
2^-F per coordinate), the input validity check (the attack caps its rows' norm itself, ``norm_bound``), the
servers' minimum cohort. A pre-aggregation step (``pre``/``s``) is applied as S1 applies it (``rules.pre``),
except that bucketing's permutation, S1's fresh randomness, is a fixed one here (``BUCKETING_SEED``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from secrobust.circuits import coordinatewise
from secrobust.rules.pre import split_pre, with_pre
from secrobust.rules.registry import get_rule
from secrobust.rules.spec import PRE_KEYS, apply
from secrobust.rules.view import DISTANCES, NORMS, View

BUCKETING_SEED = bytes(16)
"""The permutation the attacker assumes for pre='bucketing': S1 draws a fresh one each round, unknown to it."""

IGNORED_OPTIONS = ("reveal", "norm_bound", "center", *PRE_KEYS)
"""Run options that are not the rule's own: the oracle drops them (the center is read separately)."""


def rule_arguments(rule: str, options: dict[str, Any] | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """(the rule's own options, its public center or None) from a run's options."""
    options = dict(options or {})
    center = options.get("center") if rule == "cclip" else None
    own = {k: v for k, v in options.items() if k not in IGNORED_OPTIONS}
    return own, (None if center is None else np.asarray(center, dtype=np.float64))


class RuleOracle:
    """The rule's float aggregate and its distance to the honest mean with the Byzantine rows at a + s p."""

    def __init__(self, honest: np.ndarray, a: np.ndarray, p: np.ndarray, f_rows: int, rule: str, f: int,
                 options: dict[str, Any] | None = None) -> None:
        self.rule, self.f, self.f_rows = rule, int(f), int(f_rows)
        self.options, center = rule_arguments(rule, options)
        step, _ = split_pre({k: v for k, v in (options or {}).items() if k in PRE_KEYS})
        self.spec = with_pre(get_rule(rule), step, BUCKETING_SEED)
        self.honest = honest
        h, d = honest.shape
        self.h, self.n = h, h + self.f_rows
        self.spec.validate(self.n, self.f, self.options)
        self.coordinatewise = rule in coordinatewise.COORDINATEWISE_RULES
        v = np.zeros(d) if center is None else center
        if v.shape != (d,):
            raise ValueError(f"the rule's center has shape {v.shape}, expected ({d},)")
        basis = np.vstack([honest, a, p, v])
        self.a, self.p, self.v = a, p, v
        self.gram = basis @ basis.T
        k = h + 3
        self.ia, self.ip, self.iv = h, h + 1, h + 2
        base = np.zeros((self.n, k))
        base[np.arange(h), np.arange(h)] = 1.0
        base[h:, self.ia] = 1.0
        self.base = base
        self.step = np.zeros((self.n, k))
        self.step[h:, self.ip] = 1.0
        self.mean = np.zeros(k)
        self.mean[:h] = 1.0 / h
        self.reveals = self.spec.reveals(self.options)
        self._sorted: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def rows(self, s: float) -> np.ndarray:
        """The n rows (honest first, then the f Byzantine copies of a + s p)."""
        return np.vstack([self.honest, np.tile(self.a + s * self.p, (self.f_rows, 1))])

    def _view(self, c: np.ndarray) -> View:
        g = c @ self.gram @ c.T
        diag = np.diagonal(g)
        out: dict[str, np.ndarray] = {}
        if DISTANCES in self.reveals:
            out[DISTANCES] = np.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0)
        if NORMS in self.reveals:
            y = c.copy()
            y[:, self.iv] -= 1.0
            out[NORMS] = np.maximum(np.einsum("ij,jk,ik->i", y, self.gram, y), 0.0)
        return View(**out)

    def deviation(self, s: float) -> float:
        r""":math:`\lVert \mathrm{agg}(s) - \bar x_H\rVert`: how far the Byzantine rows at a + s p move the rule's
        output from the honest mean (the objective of ByzFL's optimal attacks)."""
        if self.coordinatewise:
            agg = self.aggregate(s)
            return float(np.linalg.norm(agg - self.honest.mean(axis=0)))
        c = self.base + s * self.step
        choice = apply(self.spec, self._view(c), self.n, self.f, self.options)
        e = np.asarray(choice.weights, dtype=np.float64) @ c - self.mean
        e[self.iv] += choice.center_weight
        return float(np.sqrt(max(e @ self.gram @ e, 0.0)))

    def aggregate(self, s: float) -> np.ndarray:
        """The rule's float aggregate (d,) with the Byzantine rows at a + s p."""
        if self.coordinatewise:
            return self._coordinatewise(s)
        c = self.base + s * self.step
        choice = apply(self.spec, self._view(c), self.n, self.f, self.options)
        return np.asarray(choice.weights, dtype=np.float64) @ self.rows(s) + choice.center_weight * self.v

    def _sorted_honest(self, chosen: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The chosen honest rows sorted per coordinate and their prefix sums (cached: few distinct sets)."""
        if chosen not in self._sorted:
            values = np.sort(self.honest[list(chosen)], axis=0)
            prefix = np.zeros((values.shape[0] + 1, values.shape[1]))
            np.cumsum(values, axis=0, out=prefix[1:])
            self._sorted[chosen] = values, prefix
        return self._sorted[chosen]

    def _coordinatewise(self, s: float) -> np.ndarray:
        """Median, trimmed mean or Bulyan without sorting the n rows again: the honest rows are sorted once, and
        the m Byzantine copies of b = a + s p only insert m equal values per coordinate (``merged_prefix``)."""
        b = self.a + s * self.p
        n, f = self.n, self.f
        honest, m = tuple(range(self.h)), self.f_rows
        if self.rule == "bulyan":
            choice = bulyan_choice(self._view(self.base + s * self.step).distances, f)
            honest, m = tuple(i for i in np.flatnonzero(choice).tolist() if i < self.h), int(choice[self.h:].sum())
        values, prefix = self._sorted_honest(honest)
        pos = (values < b).sum(axis=0)

        def total(t: int) -> np.ndarray:
            return merged_prefix(prefix, pos, b, m, t)
        if self.rule == "median":
            return (total(n // 2 + 1) - total((n - 1) // 2)) / (1 + (n + 1) % 2)
        if self.rule == "trimmed-mean":
            return (total(n - f) - total(f)) / (n - 2 * f)
        return (total(n - 3 * f) - total(f)) / (n - 4 * f)


def merged_prefix(prefix: np.ndarray, pos: np.ndarray, b: np.ndarray, m: int, t: int) -> np.ndarray:
    """Per coordinate, the sum of the t smallest of k sorted values (prefix sums ``prefix``, (k + 1, d)) and m
    copies of b, the copies sitting after the ``pos`` values below b."""
    k = prefix.shape[0] - 1
    before = np.minimum(t, pos)
    copies = np.clip(t - pos, 0, m)
    after = np.clip(t - m, pos, k)
    cols = np.arange(prefix.shape[1])
    return prefix[before, cols] + copies * b + prefix[after, cols] - prefix[pos, cols]


def bulyan_choice(dist: np.ndarray, f: int) -> np.ndarray:
    """Bulyan's iterated Krum on the squared distances: bool (n,) of the n - 2f chosen rows (ties to the lower
    index), as ``coordinatewise.plain_bulyan_choice`` on ring integers."""
    n = dist.shape[0]
    chosen = np.zeros(n, dtype=bool)
    for _ in range(n - 2 * f):
        rest = np.flatnonzero(~chosen)
        k = max(0, rest.size - f - 2)
        sub = dist[np.ix_(rest, rest)].copy()
        np.fill_diagonal(sub, np.inf)
        scores = np.sort(sub, axis=1)[:, :k].sum(axis=1)
        chosen[rest[int(np.argmin(scores))]] = True
    return chosen


def float_coordinatewise(x: np.ndarray, rule: str, f: int) -> np.ndarray:
    """Median, trimmed mean or Bulyan of the rows x (n, d) in float, as ``secrobust.circuits.coordinatewise`` defines
    them on ring integers (Bulyan: theta = n - 2f rows by iterated Krum, then the trimmed mean of their values
    dropping the f largest and f smallest)."""
    n = x.shape[0]
    if rule == "median":
        return np.median(x, axis=0)
    if rule == "trimmed-mean":
        return np.sort(x, axis=0)[f:n - f].mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    chosen = bulyan_choice(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0), f)
    return np.sort(x[chosen], axis=0)[f:n - 3 * f].mean(axis=0)
