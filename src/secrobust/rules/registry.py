"""The rule registry: names, what each rule reveals, parameter checks, and its choice function."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from .view import Choice, View


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


def option_floor(rule: str, options: Mapping[str, Any]) -> int:
    """Participants the rule's own options need: multi-krum averages m workers, so a round left with fewer
    (after dropouts and rejections) cannot run and aborts like any too-small cohort."""
    m = options.get("m") if rule == "multi-krum" else None
    return m if isinstance(m, int) and not isinstance(m, bool) and m >= 2 else 0


def with_cohort(spec: RuleSpec, min_participants: int | None, options: Mapping[str, Any]) -> RuleSpec:
    """``spec`` with the servers' minimum cohort (None: none) and the floor its options set, whichever is
    larger; the one place every path (secure round, twin, deployment) sets a round's minimum."""
    floor = option_floor(spec.name, options)
    if floor > (min_participants or 1):
        return replace(spec, cohort=floor, cohort_reason=f"{spec.name}'s m = {floor}")
    return spec if min_participants is None else with_min_cohort(spec, min_participants)


_REGISTRY: dict[str, RuleSpec] = {}


def register(spec: RuleSpec) -> RuleSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_rule(name: str) -> RuleSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def rule_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


PRE_KEYS = ("pre", "s")
"""Options that name a pre-aggregation step (``rules.pre``): bound into the spec, not passed to the rule."""


def apply(spec: RuleSpec, view: View, n: int, f: int, options: dict[str, Any]) -> Choice:
    options = {k: v for k, v in options.items() if k not in PRE_KEYS}
    spec.validate(n, f, options)
    return spec.choose(view, n, f, **options)
