"""The rule registry: names, what each rule reveals, parameter checks, and its choice function."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from .view import Choice, View


@dataclass(frozen=True)
class RuleSpec:
    """A distance-based rule: ``choose(view, n, f, **options) -> Choice`` is what S1 runs."""

    name: str
    choose: Callable[..., Choice]
    reveals: Callable[[dict], tuple[str, ...]]
    min_n: Callable[[int], int]
    requirement: str

    def options(self) -> tuple[str, ...]:
        params = inspect.signature(self.choose).parameters
        return tuple(p for p in params if p not in ("view", "n", "f"))

    def validate(self, n: int, f: int, options: dict[str, Any]) -> None:
        """Raise ValueError, saying what is allowed, for bad f, too small n or unknown options."""
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f must be a non-negative integer, got {f!r}")
        if n < self.min_n(f):
            raise ValueError(f"rule {self.name!r} needs {self.requirement}; got n={n}, f={f} "
                             f"(n must be at least {self.min_n(f)})")
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            allowed = ", ".join(self.options()) or "none"
            raise ValueError(f"rule {self.name!r} got unknown option(s) {unknown}; allowed: {allowed}")


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


def apply(spec: RuleSpec, view: View, n: int, f: int, options: dict[str, Any]) -> Choice:
    spec.validate(n, f, options)
    return spec.choose(view, n, f, **options)
