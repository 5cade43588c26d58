"""Krum and Multi-Krum (Blanchard et al. 2017): select the workers whose n - f - 2 nearest squared distances
sum least. On the opened distances S1 chooses them here; on shares ``circuits.selection.krum_circuit``
chooses them and only the weights (or the aggregate) open. Both need n >= 2f + 3."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..circuits import selection as S
from ..gates import arith
from ..gates.compare import Party
from ..primitives import ring
from .spec import Rule, RuleSpec, SecureRule, chosen_over
from .view import DISTANCES, Choice, View

_U = np.uint64


def krum_scores(distances: np.ndarray, f: int, power: float = 1) -> np.ndarray:
    """score_i = sum of the n - f - 2 smallest (||x_i - x_j||^2)^power over j != i: power 1 is Blanchard et al.
    2017; the bucketing paper's code squares its squared distances once more (power 2). The same neighbours
    either way; their sum weighs far ones more under power 2."""
    n = distances.shape[0]
    k = n - f - 2
    others = np.where(np.eye(n, dtype=bool), np.inf, distances)
    nearest = np.sort(others, axis=1)[:, :k]
    return (nearest if power == 1 else nearest ** float(power)).sum(axis=1)


def _power(power: Any) -> float:
    if isinstance(power, bool) or not isinstance(power, (int, float, np.integer, np.floating)) \
            or not np.isfinite(power) or power <= 0:
        raise ValueError(f"krum power must be a positive number (1: sum of squared distances), got {power!r}")
    return power


def _best(scores: np.ndarray, m: int) -> np.ndarray:
    return np.argsort(scores, kind="stable")[:m]


def _multi_krum_m(n: int, f: int, options: dict[str, Any], default_all: bool) -> int:
    """m from the options (default n - f, or 1 for Krum); ValueError unless 1 <= m <= n."""
    m = options.get("m")
    m = (n - f if default_all else 1) if m is None else m
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ValueError(f"multi-krum needs 1 <= m <= n = {n}, got m={m!r}")
    return int(m)


def choose_krum(view: View, n: int, f: int, power: float = 1) -> Choice:
    """Krum: weight 1 on argmin_i score_i; ties go to the lower index. ``power`` on the opened distances only."""
    w = np.zeros(n)
    w[_best(krum_scores(view.need(DISTANCES), f, _power(power)), 1)] = 1.0
    return Choice(w)


def choose_multi_krum(view: View, n: int, f: int, m: int | None = None, power: float = 1) -> Choice:
    """Multi-Krum: average of the m best Krum scores (default m = n - f); ties go to lower indices."""
    m = _multi_krum_m(n, f, {"m": m}, True)
    w = np.zeros(n)
    w[_best(krum_scores(view.need(DISTANCES), f, _power(power)), m)] = 1.0 / m
    return Choice(w)


def _distances_only(_: dict) -> tuple[str, ...]:
    return (DISTANCES,)


# On shares: the chosen set's indicator times 1/m, at scale 2^W.

def _on_shares(default_all: bool):
    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Material,
                **_: Any) -> Party:
        m = _multi_krum_m(n, f, options, default_all)
        plane = yield from S.krum_circuit(party, view[DISTANCES], f, m, dmax, src)
        chosen = yield from arith.to_ring(party, plane, n, src)
        return chosen * ring.encode_weights(np.array([1.0 / m]))[0], _U(0)

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        m = _multi_krum_m(n, f, options, default_all)
        chosen = S.plain_krum_chosen(view[DISTANCES], f, m).astype(_U)
        return chosen * ring.encode_weights(np.array([1.0 / m]))[0], _U(0)

    return circuit, plain


RULES = (
    Rule(RuleSpec("krum", choose_krum, _distances_only, lambda f: 2 * f + 3, "n >= 2f + 3"),
         SecureRule("krum", (DISTANCES,), *_on_shares(False),
                    limits=" (scores are exact; n - f - 2 must stay below 2^63 / (2b)^2, b the norm bound)",
                    exact=chosen_over(lambda n, f, o: 1))),
    Rule(RuleSpec("multi-krum", choose_multi_krum, _distances_only, lambda f: 2 * f + 3, "n >= 2f + 3",
                  cohort_option="m"),
         SecureRule("multi-krum", (DISTANCES,), *_on_shares(True), options=("m",),
                    exact=chosen_over(lambda n, f, o: _multi_krum_m(n, f, o, True)))),
)
