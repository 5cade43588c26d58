"""What a rule family declares: ``RuleSpec`` (the rule on the opened view), ``SecureRule`` (its circuit on
shares) and ``Rule``, the registry's entry that joins them. Each family file (``rules.mean``, ``rules.krum``,
...) builds its ``Rule`` values from these; ``rules.registry`` lists the families.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..gates import arith
from ..gates.compare import Party
from ..primitives import ring
from .view import Choice, View

_U = np.uint64

PRE_KEYS = ("pre", "s")
"""Options that name a pre-aggregation step (``rules.pre``): bound into the spec, not passed to the rule."""


@dataclass(frozen=True)
class RuleSpec:
    """A distance-based rule: ``choose(view, n, f, **options) -> Choice`` is what S1 runs."""

    name: str
    choose: Callable[..., Choice]
    reveals: Callable[[dict], tuple[str, ...]]
    min_n: Callable[[int], int]
    requirement: str
    cohort: int = 1
    """The servers' minimum number of participants (``with_min_cohort``), on top of the rule's own."""
    option_names: tuple[str, ...] | None = None
    """The options ``choose`` takes, when it is a wrapper whose signature does not say (``rules.pre``)."""
    cohort_reason: str = "min_participants"
    """What set ``cohort``: the servers' minimum, or an option of the rule (multi-krum's m)."""
    cohort_option: str | None = None
    """An option that counts the workers the rule averages (multi-krum's m): a cohort below it cannot run."""

    def minimum(self, f: int) -> int:
        """The fewest participants a round with this f may aggregate."""
        return max(self.min_n(f), self.cohort)

    def needs(self, f: int) -> str:
        """What ``minimum(f)`` asks for, in words."""
        if self.cohort > self.min_n(f):
            return f"at least {self.cohort} participants ({self.cohort_reason})"
        return self.requirement

    def options(self) -> tuple[str, ...]:
        if self.option_names is not None:
            return self.option_names
        params = inspect.signature(self.choose).parameters
        return tuple(p for p in params if p not in ("view", "n", "f"))

    def validate(self, n: int, f: int, options: dict[str, Any]) -> None:
        """Raise ValueError, saying what is allowed, for bad f, too small n or unknown options."""
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f must be a non-negative integer, got {f!r}")
        if n < self.minimum(f):
            raise ValueError(f"rule {self.name!r} needs {self.needs(f)}; got n={n}, f={f} "
                             f"(n must be at least {self.minimum(f)})")
        unknown = sorted(set(options) - set(self.options()) - set(PRE_KEYS))
        if unknown:
            allowed = ", ".join(self.options()) or "none"
            raise ValueError(f"rule {self.name!r} got unknown option(s) {unknown}; allowed: {allowed}")


def apply(spec: RuleSpec, view: View, n: int, f: int, options: dict[str, Any]) -> Choice:
    """The rule's choice on the view, after checking n, f and the options (pre-aggregation keys dropped)."""
    options = {k: v for k, v in options.items() if k not in PRE_KEYS}
    spec.validate(n, f, options)
    return spec.choose(view, n, f, **options)


@dataclass(frozen=True)
class SecureRule:
    """``circuit(party, view_shares, n, f, options, dmax, src, inputs=, d=)`` returns ring shares of
    (weights (n,), center weight ()) at scale 2^W, or with ``output="aggregate"`` this server's share (d,) of
    the aggregate at scale 2^(F+W) itself, reading its input share through ``inputs(start, stop)``.
    ``plain`` is its twin on the ring view (and, for an aggregate, the encoded rows ``rows=``); ``options``
    lists what it accepts; ``sizer(n, d, f, options, dmax) -> (Budget, rounds)`` replaces the dry run when
    the circuit's size depends on d."""

    name: str
    needs: tuple[str, ...]
    circuit: Callable[..., Party]
    plain: Callable[..., Any]
    options: tuple[str, ...] = ()
    limits: str = ""
    modes: tuple[str, ...] = ("weights", "aggregate")
    output: str = "weights"
    sizer: Callable[..., tuple[arith.Budget, int]] | None = None
    exact: Callable[[np.ndarray, int, int, dict], np.ndarray] | None = None
    """Opened ring weights (n + 1,) -> the exact public weights, for rules whose weights are a chosen set
    times 1/m (so ``reveal="weights"`` reports 1/m, not its 32-bit rounding; the sum uses the same ring value)."""

    def publish(self, opened: np.ndarray, n: int, f: int, options: dict) -> np.ndarray:
        """The public weights and center weight (n + 1,) from their opened ring values at scale 2^W."""
        if self.exact is not None:
            return self.exact(np.asarray(opened, dtype=_U), n, f, options)
        return ring.decode(np.asarray(opened, dtype=_U), ring.WEIGHT_FRAC_BITS)


def chosen_over(count: Callable[[int, int, dict], int]):
    """Exact weights of a rule that puts 1/count on each chosen worker (and nothing on the center)."""
    def exact(opened: np.ndarray, n: int, f: int, options: dict) -> np.ndarray:
        out = np.zeros(n + 1)
        out[:n] = (opened[:n] != 0) / count(n, f, options)
        return out
    return exact


@dataclass(frozen=True)
class Rule:
    """One rule, as its family file defines it: ``spec`` runs on the opened view (``reveal="distances"``
    and the plaintext twin), ``shares`` is its circuit on shares with its twin (None: it has none).
    ``public_weights``: its weights follow from n alone, so it opens nothing in any mode.
    ``only_on_shares``: it has no opened-view form (coordinate-wise rules need the updates themselves).
    ``takes_center``: its option ``center`` is the public center v, a protocol input rather than a rule option."""

    spec: RuleSpec
    shares: SecureRule | None = None
    public_weights: bool = False
    only_on_shares: bool = False
    takes_center: bool = False

    def __post_init__(self) -> None:
        if self.shares is not None and self.shares.name != self.spec.name:
            raise ValueError(f"rule {self.spec.name!r} has the circuit of {self.shares.name!r}")

    @property
    def name(self) -> str:
        return self.spec.name
