"""The plaintext oracle: the same rule on the same fixed-point-encoded updates, with no protocol.

Distances and norms are computed exactly in Z_2^64 from the encodings and decoded like the secure
path decodes them, so secure and plaintext weights agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..circuits import validity
from ..primitives import kernel, prg, ring
from ..updates import (
    as_matrix,
    check_ring_rows,
    check_unchecked,
    encode_center,
    encode_updates,
)
from .cohort import with_cohort
from .possible import choose_possible, effective_f, require_passed
from .pre import split_pre, with_pre
from .registry import entry, get_rule
from .view import DISTANCES, Choice, View, view_words


@dataclass(frozen=True, eq=False)
class PlainRun:
    """``choice`` and ``view`` are over ``participants`` (the workers that passed the validity check)."""

    choice: Choice | None
    view: View
    encoded: np.ndarray
    center: np.ndarray | None
    participants: tuple[int, ...] = ()
    rejected: dict[int, str] = field(default_factory=dict)


def view_from_gram(h: np.ndarray, reveal: tuple[str, ...], frac_bits: int) -> View:
    """Decode the view from (a matrix whose symmetrisation is) the Gram matrix of X - v, in the ring."""
    return View(**{k: ring.decode(v, 2 * frac_bits) for k, v in view_words(h, reveal).items()})


def plain_view(encoded: np.ndarray, reveal: tuple[str, ...], frac_bits: int,
               center: np.ndarray | None = None) -> View:
    if not reveal:
        return View()
    y = encoded - center if center is not None else encoded
    h = kernel.gram(y) if DISTANCES in reveal else kernel.rowdot(y, y)
    return view_from_gram(h, reveal, frac_bits)


def split_options(rule: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The public center is a protocol input, not a rule option; only a rule that ``takes_center`` (cclip) has it."""
    options = dict(options)
    known = entry(rule)
    center = options.pop("center", None) if known is not None and known.takes_center else None
    return center, options


def plain_run(updates: Any, rule: str, f: int, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              unchecked: Any = (), ring_rows: Any = None, check_inputs: bool = False,
              validity_seed: bytes | None = None, norm_bound: float | None = None,
              min_participants: int | None = None, rule_on_view: bool = True, pre_seed: bytes | None = None,
              **options: Any) -> PlainRun:
    """The rule on the encodings of the workers that pass the validity check (with ``check_inputs``: the
    projections of ``validity_seed`` and the bound ``norm_bound``, real units), with S1's range filter of
    the opened view, like the servers; ``min_participants`` adds the servers' minimum cohort.
    ``rule_on_view=False`` stops before the rule (its twin on shares runs on the ring view instead);
    ``pre=``/``s=`` in ``options`` mix the updates first (``rules.pre``; bucketing draws from ``pre_seed``)."""
    spec = with_cohort(get_rule(rule), min_participants, options)
    x = as_matrix(updates)
    n, d = x.shape
    center_value, rule_options = split_options(rule, options)
    step, rule_options = split_pre(rule_options)
    spec = with_pre(spec, step, pre_seed if pre_seed is not None else prg.fresh_seed())
    spec.validate(n, f, rule_options)
    bound = validity.scaled_bound(norm_bound, frac_bits, d)
    encoded = encode_updates(x, frac_bits, check_unchecked(unchecked, n), check_ring_rows(ring_rows, n, d))
    center = encode_center(center_value, d, frac_bits) if center_value is not None else None
    ok = np.ones(n, dtype=bool)
    if validity.check_flag(check_inputs, d):
        if validity_seed is None:
            raise ValueError("checking the inputs needs the projections' seed")
        ok = validity.plain_accept(encoded, validity_seed, bound=bound)
    rejected = {i: validity.REASON for i in np.flatnonzero(~ok).tolist()}
    participants = tuple(np.flatnonzero(ok).tolist())
    require_passed(spec, len(participants), f, rejected)
    view = plain_view(encoded[list(participants)], spec.reveals(rule_options), frac_bits, center)
    if not rule_on_view:
        return PlainRun(None, view, encoded, center, participants, rejected)
    choice, dropped = choose_possible(spec, view, len(participants), effective_f(f, rejected), frac_bits, rule_options)
    rejected.update({participants[i]: validity.VIEW_REASON for i in dropped})
    return PlainRun(choice, view, encoded, center, participants, rejected)
