"""Minimum-diameter averaging (El Mhamdi et al. 2018): 1/(n - f) on the n - f workers whose set has the
smallest diameter. On the opened distances S1 searches the C(n, f) subsets here; on shares
``circuits.selection.mda_circuit`` does the same search and only the weights (or the aggregate) open."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np

from ..circuits import selection as S
from ..gates import arith
from ..gates.compare import Party
from ..primitives import ring
from .spec import Rule, RuleSpec, SecureRule, chosen_over
from .view import DISTANCES, Choice, View

_U = np.uint64


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


def _circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Material,
             **_: Any) -> Party:
    member = yield from S.mda_circuit(party, view[DISTANCES], f, dmax, src)
    return member * ring.encode_weights(np.array([1.0 / (n - f)]))[0], _U(0)


def _plain(view: dict, n: int, f: int, options: dict, dmax: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
    S.check_mda_size(n, f)
    member = S.plain_mda_members(view[DISTANCES], f).astype(_U)
    return member * ring.encode_weights(np.array([1.0 / (n - f)]))[0], _U(0)


RULES = (
    Rule(RuleSpec("mda", choose_mda, lambda _: (DISTANCES,), lambda f: 2 * f + 1, "n >= 2f + 1"),
         SecureRule("mda", (DISTANCES,), _circuit, _plain,
                    limits=" (exact search over all C(n, f) subsets: small n only)",
                    exact=chosen_over(lambda n, f, o: n - f))),
)
