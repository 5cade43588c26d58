"""A round's minimum cohort: the servers' default, its check, and a rule's spec that needs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .spec import RuleSpec

DEFAULT_MIN_PARTICIPANTS = 5
"""The smallest cohort a round aggregates over by default: a round over one worker reveals its update."""


def check_min_participants(m: Any) -> int:
    """m itself if it is an integer >= 2 (with one participant the aggregate is that worker's update)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"min_participants must be an integer >= 2 (a round over one worker reveals its update), "
                         f"got {m!r}")
    return m


def with_min_cohort(spec: RuleSpec, m: int) -> RuleSpec:
    """``spec`` that also needs at least m participants, wherever the servers count them: when the
    participants are fixed (after dropouts), after the input validity check, and before the rule runs."""
    return replace(spec, cohort=check_min_participants(m))


def option_floor(spec: RuleSpec, options: Mapping[str, Any]) -> int:
    """Participants the rule's own options need (``RuleSpec.cohort_option``): multi-krum averages m workers,
    so a round left with fewer (after dropouts and rejections) cannot run and aborts like any too-small cohort."""
    m = options.get(spec.cohort_option) if spec.cohort_option is not None else None
    return m if isinstance(m, int) and not isinstance(m, bool) and m >= 2 else 0


def with_cohort(spec: RuleSpec, min_participants: int | None, options: Mapping[str, Any]) -> RuleSpec:
    """``spec`` with the servers' minimum cohort (None: none) and the floor its options set, whichever is
    larger; the one place every path (secure round, twin, deployment) sets a round's minimum."""
    floor = option_floor(spec, options)
    if floor > (min_participants or 1):
        return replace(spec, cohort=floor, cohort_reason=f"{spec.name}'s {spec.cohort_option} = {floor}")
    return spec if min_participants is None else with_min_cohort(spec, min_participants)
