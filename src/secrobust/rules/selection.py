"""Rules that select workers by their pairwise distances: Krum, Multi-Krum, minimum-diameter averaging."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from .registry import RuleSpec, register
from .view import DISTANCES, Choice, View


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """score_i = sum of the n - f - 2 smallest ||x_i - x_j||^2 over j != i (Blanchard et al. 2017)."""
    n = distances.shape[0]
    k = n - f - 2
    others = np.where(np.eye(n, dtype=bool), np.inf, distances)
    return np.sort(others, axis=1)[:, :k].sum(axis=1)


def _best(scores: np.ndarray, m: int) -> np.ndarray:
    return np.argsort(scores, kind="stable")[:m]


def choose_krum(view: View, n: int, f: int) -> Choice:
    """Krum: weight 1 on argmin_i score_i; ties go to the lower index."""
    w = np.zeros(n)
    w[_best(krum_scores(view.need(DISTANCES), f), 1)] = 1.0
    return Choice(w)


def choose_multi_krum(view: View, n: int, f: int, m: int | None = None) -> Choice:
    """Multi-Krum: average of the m best Krum scores (default m = n - f); ties go to lower indices."""
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ValueError(f"multi-krum needs 1 <= m <= n = {n}, got m={m!r}")
    w = np.zeros(n)
    w[_best(krum_scores(view.need(DISTANCES), f), int(m))] = 1.0 / m
    return Choice(w)


def choose_mda(view: View, n: int, f: int, max_subsets: int = 2_000_000) -> Choice:
    """Minimum-diameter averaging (El Mhamdi et al. 2018): average of the n - f workers whose set has the
    smallest diameter max_{i,j in S} ||x_i - x_j||^2; exact search over the C(n, f) subsets, ties to the
    lexicographically first subset."""
    distances = view.need(DISTANCES)
    count = math.comb(n, f)
    if count > max_subsets:
        raise ValueError(f"mda would search C({n}, {f}) = {count} subsets, more than max_subsets={max_subsets}; "
                         "raise max_subsets or use krum/geomed")
    best, best_diam = None, np.inf
    for removed in combinations(range(n), f):
        keep = np.setdiff1d(np.arange(n), removed)
        diam = distances[np.ix_(keep, keep)].max() if len(keep) else 0.0
        if diam < best_diam:
            best, best_diam = keep, diam
    w = np.zeros(n)
    w[best] = 1.0 / (n - f)
    return Choice(w)


def _distances_only(_: dict) -> tuple[str, ...]:
    return (DISTANCES,)


register(RuleSpec("krum", choose_krum, _distances_only, lambda f: 2 * f + 3, "n >= 2f + 3"))
register(RuleSpec("multi-krum", choose_multi_krum, _distances_only, lambda f: 2 * f + 3, "n >= 2f + 3"))
register(RuleSpec("mda", choose_mda, _distances_only, lambda f: 2 * f + 1, "n >= 2f + 1"))
