"""The dealer material and 2PC rounds a rule's circuit on shares takes, by a dry run on zero shares (or the
rule's own ``SecureRule.sizer`` when the size depends on d)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..gates import arith
from ..primitives import ring
from .registry import circuit_on_shares
from .view import DISTANCES

_U = np.uint64


@functools.lru_cache(maxsize=128)
def _budget(name: str, n: int, f: int, options: tuple, dmax: int, d: int | None,
            frac_bits: int) -> tuple[arith.Budget, int]:
    rule = circuit_on_shares(name)
    if rule is None:
        raise KeyError(name)
    if rule.sizer is not None:
        if d is None:
            raise ValueError(f"sizing rule {name!r} on shares needs the dimension d")
        return rule.sizer(n, d, f, dict(options), dmax)
    zeros = {k: np.zeros((n, n) if k == DISTANCES else n, dtype=_U) for k in rule.needs}
    return arith.budget_of(lambda p, s: rule.circuit(p, zeros, n, f, dict(options), dmax, s, frac_bits=frac_bits))


def budget(name: str, n: int, f: int, options: dict[str, Any], dmax: int, d: int | None = None,
           frac_bits: int = ring.DEFAULT_FRAC_BITS) -> arith.Budget:
    """The dealer material the rule's circuit takes for n workers (enough for any fewer, after dropouts);
    coordinate-wise rules also need d, clipping rules F (their public tau is scaled by 2^F)."""
    return _budget(name, n, f, tuple(sorted(options.items())), dmax, d, frac_bits)[0]


def rounds(name: str, n: int, f: int, options: dict[str, Any], dmax: int, d: int | None = None,
           frac_bits: int = ring.DEFAULT_FRAC_BITS) -> int:
    """The circuit's messages per server (its 2PC rounds)."""
    return _budget(name, n, f, tuple(sorted(options.items())), dmax, d, frac_bits)[1]
