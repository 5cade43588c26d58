"""What S1 does around a rule: the f accounting for rejected workers and the range filter of the opened view.

A worker rejected by the input validity check is provably malformed (an honest one passes except with
probability 2^-40), so it counts against f. An opened norm or distance outside [0, 2^(62-2F)] is
impossible for accepted inputs and proves a malformed input too; the rule then runs on the workers whose
view is possible. The servers and the plaintext twin both go through these functions.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..circuits import validity
from ..errors import RoundAborted
from .spec import RuleSpec, apply
from .view import Choice, View


def effective_f(f: int, rejected: Mapping[int, str]) -> int:
    """f minus the workers already proven malformed, floored at 0."""
    return max(0, f - len(rejected))


def require_passed(spec: RuleSpec, n_passed: int, f: int, rejected: Mapping[int, str], where: str = "") -> None:
    """Abort (``RoundAborted``) if the n_passed workers that passed the check are too few for the rule."""
    f_eff = effective_f(f, rejected)
    if n_passed < spec.minimum(f_eff):
        raise RoundAborted(f"{where}{n_passed} workers passed the input validity check; rule {spec.name!r} needs "
                           f"{spec.needs(f_eff)} with f = {f_eff}")


def choose_possible(spec: RuleSpec, view: View, n: int, f: int, frac_bits: int, options: dict[str, Any],
                    where: str = "") -> tuple[Choice, list[int]]:
    """The rule's choice over n workers (weight 0 for the dropped ones) and the dropped positions: the rule
    runs on the workers with a possible view, with f less the workers proven malformed among the dropped."""
    keep, proven = impossible_view_filter(view, n, frac_bits, f)
    f_eff = max(0, f - proven)
    if len(keep) < spec.minimum(f_eff):
        raise RoundAborted(f"{where}only {len(keep)} workers have a possible view; rule {spec.name!r} needs "
                           f"{spec.needs(f_eff)}")
    sub = apply(spec, restrict_view(view, keep), len(keep), f_eff, options)
    weights = np.zeros(n)
    weights[keep] = sub.weights
    return Choice(weights, sub.center_weight), [i for i in range(n) if i not in set(keep)]


def impossible_view_filter(view: View, n: int, frac_bits: int, f: int) -> tuple[list[int], int]:
    """(positions S1 keeps, how many dropped workers are proven malformed), for at most f malformed workers.

    An opened norm or distance outside [0, 2^(62-2F)] proves a malformed input (the validity check makes it
    impossible except with probability 2^-40). A bad norm proves its worker malformed: it is dropped. A bad
    distance proves that one of its two workers is. A worker with more bad distances than the malformed
    workers left (f minus those proven) is itself malformed (an honest one has bad distances only to
    malformed ones): it is dropped alone. Otherwise both ends of a bad distance are dropped (never
    preferred) and count as one, so an honest worker can lose its weight but never lowers f wrongly."""
    keep = list(range(n))
    proven = 0
    if view.norms is not None:
        keep = [i for i in keep if not validity.view_out_of_range(view.norms[i], frac_bits)]
        proven = n - len(keep)
    if view.distances is not None:
        while keep:
            bad = validity.view_out_of_range(view.distances[np.ix_(keep, keep)], frac_bits)
            if not bad.any():
                break
            degree = bad.sum(axis=1)
            i = int(np.argmax(degree))
            pair = {i} if degree[i] > f - proven else {i, int(np.flatnonzero(bad[i])[0])}
            for pos in sorted(pair, reverse=True):
                keep.pop(pos)
            proven += 1
    return keep, proven


def restrict_view(view: View, keep: list[int]) -> View:
    idx = np.array(keep, dtype=np.int64)
    return View(distances=None if view.distances is None else view.distances[np.ix_(idx, idx)],
                norms=None if view.norms is None else view.norms[idx])
