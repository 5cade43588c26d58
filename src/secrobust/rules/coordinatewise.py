"""The coordinate-wise rules: median, trimmed mean, Bulyan (``circuits.coordinatewise``: sorting networks).

They need every coordinate of every update, which no view S1 could open holds, so they run only on
shares with ``reveal="aggregate"``: the circuit returns this server's share of the aggregate itself. Their
choice on the view is never called by a round and says so. Bulyan first selects n - 2f workers by
iterated Krum on the shared distances.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..circuits import coordinatewise as C
from ..gates import arith, compare
from ..gates.compare import Party
from .spec import Rule, RuleSpec, SecureRule
from .view import DISTANCES, Choice, View

_U = np.uint64

COORDINATE_CHUNK = 1 << 14
"""Columns sorted at a time: bounds the circuit's memory; every chunk takes fresh material in turn."""


def _on_shares_only(name: str):
    def choose(view: View, n: int, f: int) -> Choice:
        raise ValueError(f"rule {name!r} is coordinate-wise: it runs only on shares, with reveal='aggregate'")
    return choose


def _bound_of(dmax: int) -> int:
    return math.isqrt(dmax) // 2


def _on_shares(name: str) -> SecureRule:
    def circuit(party: int, view: dict, n: int, f: int, options: dict, dmax: int, src: arith.Material, *,
                inputs: Callable[[int, int], np.ndarray], d: int, **_: Any) -> Party:
        bound = _bound_of(dmax)
        chosen = None
        if name == "bulyan":
            chosen = yield from C.selection_circuit(party, view[DISTANCES], f, bound, src)
        out = np.empty(d, dtype=_U)
        for a in range(0, d, COORDINATE_CHUNK):
            b = min(d, a + COORDINATE_CHUNK)
            out[a:b] = yield from C.coordinatewise_circuit(party, inputs(a, b), name, f, bound, src, chosen=chosen)
        return out

    def plain(view: dict, n: int, f: int, options: dict, dmax: int, *, rows: np.ndarray, **_: Any) -> np.ndarray:
        return C.plain_coordinatewise(rows, name, f, _bound_of(dmax))

    def sizer(n: int, d: int, f: int, options: dict, dmax: int) -> tuple[arith.Budget, int]:
        bound = _bound_of(dmax)
        C.check_options(name, n, f, bound)
        return _cohort_envelope(name, n, f, d, bound)

    return SecureRule(name, (DISTANCES,) if name == "bulyan" else (), circuit, plain,
                      modes=("aggregate",), output="aggregate", sizer=sizer,
                      limits=" (coordinate-wise: sorting networks on the shares)")


def _envelope(a: arith.Budget, b: arith.Budget) -> arith.Budget:
    return arith.Budget(max(a.and_words, b.and_words), max(a.dabit_words, b.dabit_words), max(a.mults, b.mults))


@functools.lru_cache(maxsize=64)
def _cohort_envelope(name: str, n: int, f: int, d: int, bound: int) -> tuple[arith.Budget, int]:
    """The most material and rounds the rule's circuit takes over every cohort a round planned for (n, f) can
    end with: n' = n - dropouts - rejections workers with f' = f - rejections (rejections count against f).
    The pruned sorting networks are not monotone in n (trimmed-mean takes fewer AND words at n = 8 than at
    n = 7), so sizing for n alone let one dropout exhaust the dealer's material and abort the round."""
    total, most = arith.Budget(), 0
    for n2 in range(1, n + 1):
        for f2 in range(max(0, f - (n - n2)), f + 1):
            try:
                C.check_options(name, n2, f2, bound)
            except ValueError:
                continue
            b, r = _cohort_size(name, n2, f2, d, bound)
            total, most = _envelope(total, b), max(most, r)
    return total, most


def _cohort_size(name: str, n: int, f: int, d: int, bound: int) -> tuple[arith.Budget, int]:
    """Material and rounds of the whole circuit for one cohort (n, f) over d columns in chunks."""
    total, rounds_ = arith.Budget(), 0
    if name == "bulyan":
        zeros = np.zeros((n, n), dtype=_U)
        b, r = arith.budget_of(lambda p, s: C.selection_circuit(p, zeros, f, bound, s))
        total, rounds_ = total + b, rounds_ + r
    widths = [min(d, a + COORDINATE_CHUNK) - a for a in range(0, d, COORDINATE_CHUNK)]
    for w in sorted(set(widths)):
        b, r = _chunk_size_by_words(name, n, f, w, bound, name == "bulyan")
        k = widths.count(w)
        total = total + arith.Budget(b.and_words * k, b.dabit_words * k, b.mults * k)
        rounds_ += r * k
    return total, rounds_


def _chunk_size_by_words(name: str, n: int, f: int, w: int, bound: int, with_choice: bool) -> tuple[arith.Budget, int]:
    """``_chunk_size`` from dry runs of at most 64 columns: every gate packs its columns 64 to a bit word, so
    w = 64 q + r columns take q times the material of 64 plus that of r, in the same rounds (a unit test
    holds this against the full dry run)."""
    q, r = divmod(w, compare.WORD)
    total, rounds_ = arith.Budget(), 0
    if q:
        b, rounds_ = _chunk_size(name, n, f, compare.WORD, bound, with_choice)
        total = arith.Budget(b.and_words * q, b.dabit_words * q, b.mults * q)
    if r:
        b, rounds_ = _chunk_size(name, n, f, r, bound, with_choice)
        total = total + b
    return total, rounds_


@functools.lru_cache(maxsize=4096)
def _chunk_size(name: str, n: int, f: int, w: int, bound: int, with_choice: bool) -> tuple[arith.Budget, int]:
    x = np.zeros((n, w), dtype=_U)
    chosen = np.zeros(n, dtype=_U) if with_choice else None
    return arith.budget_of(lambda p, s: C.coordinatewise_circuit(p, x, name, f, bound, s, chosen=chosen))


RULES = tuple(
    Rule(RuleSpec(name, _on_shares_only(name), (lambda _: (DISTANCES,)) if name == "bulyan" else (lambda _: ()),
                  (lambda f, r=name: C.min_participants(r, f)), "n >= 4f + 3" if name == "bulyan" else "n >= 2f + 1"),
         _on_shares(name), only_on_shares=True)
    for name in C.COORDINATEWISE_RULES)
