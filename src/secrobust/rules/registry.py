"""The one rule registry: every rule family, listed explicitly, and the lookups by name.

Each rule is defined whole in its family's file (``RULES``: its ``spec.Rule`` entries); this module only
lists the families. Nothing registers itself on import, so which rules exist never depends on import order.
"""

from __future__ import annotations

from . import clipping, coordinatewise, geomed, krum, mda, mean
from .spec import Rule, RuleSpec, SecureRule

FAMILIES = (mean, clipping, krum, mda, geomed, coordinatewise)
"""Every rule family, in the order ``rule_names`` lists the rules (the CLI's help and errors name them so)."""

SHARES_LISTING = (krum, mda, clipping, coordinatewise)
"""The families with a circuit on shares, in the order a refusal lists the rules on shares (the CLI's
pinned error lines hold both orders)."""


def _build() -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for family in FAMILIES:
        for rule in family.RULES:
            if rule.name in out:
                raise ValueError(f"rule {rule.name!r} is defined twice ({family.__name__})")
            out[rule.name] = rule
    return out


_REGISTRY: dict[str, Rule] = _build()


def entry(name: str) -> Rule | None:
    """The rule's whole entry (spec, circuit on shares, flags), None for an unknown name."""
    return _REGISTRY.get(name)


def get_rule(name: str) -> RuleSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name].spec


def rule_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def circuit_on_shares(name: str) -> SecureRule | None:
    """The rule's circuit on shares, None for a rule without one (or an unknown name)."""
    rule = _REGISTRY.get(name)
    return None if rule is None else rule.shares


def rules_on_shares() -> tuple[str, ...]:
    """The rules with a circuit on shares, in ``SHARES_LISTING`` order."""
    return tuple(rule.name for family in SHARES_LISTING for rule in family.RULES if rule.shares is not None)
