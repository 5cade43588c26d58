"""A round's public parameters, checked once, in one order, for the secure round and its plaintext twin.

Both paths build a ``RoundParams`` before anything else, so an input that is refused is refused by both,
with the same first error (tests/test_fuzz_twin.py). The order: the rule and its minimum cohort, F, the
updates' shape, the center and the pre-aggregation step, the reveal mode (and the rule's options on
shares), the rule's n and f, the DP noise, the input check flag (rules on shares need it), the norm bound,
then the simulated Byzantine rows.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .circuits import validity
from .primitives import ring
from .protocol.server import RoundPlan, check_noise_std
from .rules import modes
from .rules.cohort import check_min_participants, with_cohort
from .rules.plain import split_options
from .rules.pre import PreStep, check_pre_mode, split_pre, with_pre
from .rules.registry import get_rule
from .rules.spec import RuleSpec, SecureRule
from .scale import Scale
from .scale import resolve as resolve_scale
from .updates import as_matrix, check_ring_rows, check_unchecked

API_KEYWORDS = ("frac_bits", "insecure_test_seed", "dp_noise_std", "unchecked", "ring_rows", "drop", "chunk_bytes",
                "check_inputs", "norm_bound", "min_participants", "reveal", "over_bound", "center", "pre", "s")
"""Every keyword a round call takes besides rule options: the pool for "did you mean"."""


def _check_keywords(rule: str, options: Mapping[str, Any]) -> None:
    """An unknown keyword gets a did-you-mean over every keyword of the call (the rule's options included)."""
    known = set(get_rule(rule).options()) | {"center", "pre", "s"}
    unknown = sorted(set(options) - known)
    if not unknown:
        return
    pool = sorted(known | set(API_KEYWORDS))
    hints = []
    for word in unknown:
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
        hints.append(f"{word!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    close = [h for h in hints if "did you mean" in h]
    raise ValueError(f"rule {rule!r} got unknown option(s) {unknown}; allowed: "
                     f"{', '.join(get_rule(rule).options()) or 'none'}" + (f" ({'; '.join(close)})" if close else ""))


class LikelyTransposed(UserWarning):
    """More workers than coordinates: often a (d, n) array passed as (n, d). A caller that knows its shape
    (the training harness, whose tiny models can have d < n) filters this class."""


def _warn_transposed(n: int, d: int) -> None:
    if n > d:
        warnings.warn(f"updates have shape ({n}, {d}): {n} workers of dimension {d}. Rows are workers; if you "
                      "passed (d, n), pass updates.T", LikelyTransposed, stacklevel=4)


@dataclass(frozen=True, eq=False)
class RoundParams:
    """One round's validated public parameters: what both servers, the twin and every entry point agree on
    before any data moves. ``spec`` is the rule with its minimum cohort, before any pre-aggregation
    (``spec_with_pre`` adds it with the round's bucketing seed)."""

    rule: str
    f: int
    n: int
    d: int
    spec: RuleSpec
    options: dict[str, Any]
    """The rule's own options (no center, no pre)."""
    pre: PreStep | None
    reveal: str
    on_shares: SecureRule | None
    frac_bits: int
    bound: int
    """The validity check's norm bound in scaled units (``validity.scaled_bound``)."""
    norm_bound: float | None
    dp_noise_std: float
    check_inputs: bool
    center: Any
    """cclip's public center as given (real units), or None."""

    def spec_with_pre(self, seed: bytes | None) -> RuleSpec:
        return with_pre(self.spec, self.pre, seed)

    def plan(self, round_id: int, worker_ids: tuple[int, ...], needs: tuple[str, ...], center: np.ndarray | None,
             triple_id: str | None, chunk_bytes: int) -> RoundPlan:
        """The protocol's plan of round ``round_id`` with these parameters (both servers and the in-process run
        derive the same one): ``needs`` is what the rule (after pre-aggregation) opens, ``center`` the encoded
        public center."""
        return RoundPlan.build(round_id, worker_ids, self.d, self.frac_bits, needs, center, triple_id, chunk_bytes,
                               self.check_inputs, self.bound, self.reveal, self.on_shares, self.f, self.options)

    @classmethod
    def build(cls, rule: str, f: int, n: int, d: int, *, frac_bits: int, reveal: str | None,
              norm_bound: float | None, min_participants: int, dp_noise_std: float, check_inputs: bool,
              options: Mapping[str, Any] | None = None) -> "RoundParams":
        """Every check of a round's public parameters, in the one order all entry points share; ValueError
        (or TypeError) with the first problem found. ``reveal`` None is the rule's default mode."""
        check_min_participants(min_participants)
        spec = with_cohort(get_rule(rule), min_participants, options or {})
        ring.check_frac_bits(frac_bits)
        _check_keywords(rule, options or {})
        reveal = modes.default_mode(rule) if reveal is None else reveal
        center, rule_options = split_options(rule, dict(options or {}))
        step, rule_options = split_pre(rule_options)
        check_pre_mode(step, reveal)
        stepped = with_pre(spec, step)
        stepped.validate(n, f, rule_options)
        stepped.reveals(rule_options)                       # a rule checks the options its view depends on
        on_shares = modes.secure_rule(rule, reveal, rule_options)
        check_noise_std(dp_noise_std, frac_bits)
        checked = validity.check_flag(check_inputs, d)
        modes.check_checked(on_shares, checked)
        bound = validity.scaled_bound(norm_bound, frac_bits, d)
        return cls(rule, f, n, d, spec, rule_options, step, reveal, on_shares, frac_bits, bound, norm_bound,
                   float(dp_noise_std), checked, center)

    @classmethod
    def check(cls, updates: Any, rule: str, f: int, *, frac_bits: int | None, reveal: str | None,
              norm_bound: float | None, min_participants: int, dp_noise_std: float, check_inputs: bool,
              unchecked: Any = (), ring_rows: Mapping[int, Any] | None = None,
              options: Mapping[str, Any] | None = None, over_bound: str = "exclude") -> "Inputs":
        """The round's parameters for these updates (``frac_bits`` None derives F from the bound or the data:
        ``scale.resolve``) and the updates as they will be sent (``Inputs``)."""
        get_rule(rule)
        if frac_bits is not None:
            ring.check_frac_bits(frac_bits)
        x = as_matrix(updates)
        n, d = x.shape
        _warn_transposed(n, d)
        rows = check_ring_rows(ring_rows, n, d)
        byz = check_unchecked(unchecked, n)
        honest = np.array([i not in byz and i not in rows for i in range(n)], dtype=bool)
        scale, x, excluded = resolve_scale(x, honest, frac_bits, norm_bound, over_bound)
        if excluded and not (isinstance(check_inputs, bool) and check_inputs):
            raise ValueError(f"over_bound='exclude' rejects updates {sorted(excluded)} through the input validity "
                             "check, which check_inputs=False turns off: use over_bound='clip' or 'error'")
        params = cls.build(rule, f, n, d, frac_bits=scale.frac_bits, reveal=reveal, norm_bound=norm_bound,
                           min_participants=min_participants, dp_noise_std=dp_noise_std, check_inputs=check_inputs,
                           options=options)
        return Inputs(params, x, byz | frozenset(excluded), rows, scale, excluded)


@dataclass(frozen=True, eq=False)
class Inputs:
    """A round's checked parameters and the updates it will send (in process, or written to the workers)."""

    params: RoundParams
    x: np.ndarray
    unchecked: frozenset[int]
    """Rows that bypass the honest encoder: simulated Byzantine workers, and honest rows excluded as over
    the bound (the validity check then rejects them)."""
    ring_rows: dict[int, np.ndarray]
    scale: Scale
    excluded: dict[int, str]
    """Honest rows above the bound under over_bound='exclude', with their reason."""
