"""Reveal modes: what a round opens besides the aggregate, each rule's default mode, and the circuit a mode runs.

``reveal="distances"`` (default): S1 opens the rule's view (distances or norms) and runs the rule itself.
``reveal="weights"``: the view stays shared; the rule runs in 2PC and only the weights are opened.
``reveal="aggregate"``: the weights stay shared too; only the aggregate is opened.
A rule on shares is a circuit from each server's share of the view to its ring share of the weights
(n,) and of the center weight, both at scale 2^W (W = ``ring.WEIGHT_FRAC_BITS``), so that the
aggregate sum_i w_i x_i + w_v v lands at the scale of the public-weight path (``spec.SecureRule``).
"""

from __future__ import annotations

from typing import Any

from .registry import circuit_on_shares, entry, rule_names, rules_on_shares
from .spec import SecureRule

MODES = ("distances", "weights", "aggregate")
DEFAULT_MODE = "distances"

PUBLIC_WEIGHTS: tuple[str, ...] = tuple(r for r in rule_names() if entry(r).public_weights)
"""Rules whose weights follow from n alone: they open nothing in any mode."""

ONLY_ON_SHARES: frozenset[str] = frozenset(r for r in rule_names() if entry(r).only_on_shares)
"""Rules with no opened-view form (coordinate-wise rules need the updates themselves)."""


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"reveal must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return mode


def secure_rule(name: str, mode: str, options: dict[str, Any] | None = None) -> SecureRule | None:
    """The rule's circuit for a leakage-free mode (None for ``"distances"``); a clear error if it has none."""
    check_mode(mode)
    rule = circuit_on_shares(name)
    if rule is not None and mode not in rule.modes and (mode != DEFAULT_MODE or name in ONLY_ON_SHARES):
        raise ValueError(f"rule {name!r} runs only with reveal={' or '.join(repr(m) for m in rule.modes)} (it runs "
                         f"on shares{'' if name not in ONLY_ON_SHARES else ' only'}); got reveal={mode!r}")
    if mode == DEFAULT_MODE or name in PUBLIC_WEIGHTS:
        return None
    if rule is None:
        on_shares = ", ".join(r for r in rules_on_shares() if mode in circuit_on_shares(r).modes) or "none"
        raise ValueError(f"rule {name!r} runs only with reveal='distances' (S1 opens its view); rules with "
                         f"reveal={mode!r}: {on_shares}")
    unknown = sorted(set(options or {}) - set(rule.options))
    if unknown:
        raise ValueError(f"rule {name!r} with reveal={mode!r} does not take option(s) {unknown}; it takes: "
                         f"{', '.join(rule.options) or 'none'}{rule.limits}")
    return rule


def check_checked(rule: SecureRule | None, check_inputs: bool) -> None:
    """A rule on shares needs the input validity check: every circuit's range (docs/ranges.md) holds only for
    accepted inputs, so without the check a ring element could take a comparison past its width."""
    if rule is not None and not check_inputs:
        raise ValueError(f"rule {rule.name!r} on shares assumes the input validity check's range (docs/ranges.md): "
                         "check_inputs=False is allowed only with reveal='distances'")


def default_mode(name: str) -> str:
    """A rule's default reveal mode: the only one it has (coordinate-wise rules: "aggregate"), else "distances"."""
    return "aggregate" if name in ONLY_ON_SHARES else DEFAULT_MODE


def split_label(label: str) -> tuple[str, str]:
    """"krum@aggregate" -> ("krum", "aggregate"); a bare rule name runs with the default mode."""
    rule, sep, mode = str(label).partition("@")
    if sep and mode not in MODES:
        raise ValueError(f"{label!r}: the mode after '@' must be one of {', '.join(MODES)}")
    return rule, mode if sep else DEFAULT_MODE


def secure_rules() -> tuple[str, ...]:
    """The rules with a circuit on shares."""
    return rules_on_shares()
