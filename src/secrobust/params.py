"""A round's public parameters, checked once, in one order, for the secure round and its plaintext twin.

Both paths build a ``RoundParams`` before anything else, so an input that is refused is refused by both,
with the same first error (tests/test_fuzz_twin.py). The order: the rule and its minimum cohort, F, the
updates' shape, the center and the pre-aggregation step, the reveal mode (and the rule's options on
shares), the rule's n and f, the DP noise, the input check flag (rules on shares need it), the norm bound,
then the simulated Byzantine rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import ring, validity
from .protocol.server import check_noise_std
from .rules import secure
from .rules.plain import split_options
from .rules.pre import PreStep, check_pre_mode, split_pre, with_pre
from .rules.registry import RuleSpec, get_rule, with_min_cohort
from .updates import as_matrix, check_ring_rows, check_unchecked


@dataclass(frozen=True, eq=False)
class RoundParams:
    """One round's validated parameters. ``spec`` is the rule with its minimum cohort, before any
    pre-aggregation (``spec_with_pre`` adds it with the round's bucketing seed)."""

    rule: str
    f: int
    spec: RuleSpec
    options: dict[str, Any]
    """The rule's own options (no center, no pre)."""
    pre: PreStep | None
    reveal: str
    on_shares: secure.SecureRule | None
    frac_bits: int
    bound: int
    """The validity check's norm bound in scaled units (``validity.scaled_bound``)."""
    norm_bound: float | None
    dp_noise_std: float
    check_inputs: bool
    center: Any
    """cclip's public center as given (real units), or None."""
    x: np.ndarray
    unchecked: frozenset[int]
    ring_rows: dict[int, np.ndarray]

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]

    def spec_with_pre(self, seed: bytes | None) -> RuleSpec:
        return with_pre(self.spec, self.pre, seed)

    @classmethod
    def check(cls, updates: Any, rule: str, f: int, *, frac_bits: int, reveal: str, norm_bound: float | None,
              min_participants: int, dp_noise_std: float, check_inputs: bool, unchecked: Any = (),
              ring_rows: Mapping[int, Any] | None = None, options: Mapping[str, Any] | None = None) -> "RoundParams":
        """Every check of a round's parameters, in the one order both paths share; ValueError (or TypeError)
        with the first problem found."""
        spec = with_min_cohort(get_rule(rule), min_participants)
        ring.check_frac_bits(frac_bits)
        x = as_matrix(updates)
        n, d = x.shape
        center, rule_options = split_options(rule, dict(options or {}))
        step, rule_options = split_pre(rule_options)
        check_pre_mode(step, reveal)
        with_pre(spec, step).validate(n, f, rule_options)
        on_shares = secure.secure_rule(rule, reveal, rule_options)
        check_noise_std(dp_noise_std, frac_bits)
        checked = validity.check_flag(check_inputs, d)
        secure.check_checked(on_shares, checked)
        bound = validity.scaled_bound(norm_bound, frac_bits, d)
        rows = check_ring_rows(ring_rows, n, d)
        byz = check_unchecked(unchecked, n)
        return cls(rule, f, spec, rule_options, step, reveal, on_shares, frac_bits, bound, norm_bound,
                   float(dp_noise_std), checked, center, x, byz, rows)
