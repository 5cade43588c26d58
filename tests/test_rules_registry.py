"""The rule registry: one file defines each rule (its spec, its choice on the view, its circuit entry and
twin on shares), the registry lists every family module explicitly, and the listing orders the CLI's
pinned error lines show stay as they were."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import secrobust.rules as rules_pkg
from secrobust.rules import modes, registry, spec

ALL_RULES = ("mean", "norm-clip", "cclip", "krum", "multi-krum", "mda", "geomed", "median", "trimmed-mean", "bulyan")


def _rule_modules() -> dict[str, object]:
    return {name: importlib.import_module(f"secrobust.rules.{name}")
            for _, name, _ in pkgutil.iter_modules(rules_pkg.__path__)}


def test_every_module_with_rules_is_a_listed_family_and_every_family_defines_rules() -> None:
    with_rules = {m.__name__ for m in _rule_modules().values() if hasattr(m, "RULES")}
    assert with_rules == {f.__name__ for f in registry.FAMILIES}
    assert all(f.RULES for f in registry.FAMILIES)


@pytest.mark.parametrize("family", registry.FAMILIES, ids=lambda f: f.__name__.rsplit(".", 1)[-1])
def test_a_rule_and_its_pieces_are_defined_in_its_family_file(family) -> None:
    for rule in family.RULES:
        assert isinstance(rule, spec.Rule)
        assert registry.entry(rule.name) is rule
        assert rule.spec.choose.__module__ == family.__name__, rule.name
        if rule.shares is not None:
            assert rule.shares.circuit.__module__ == family.__name__, rule.name
            assert rule.shares.plain.__module__ == family.__name__, rule.name


def test_the_registry_lists_the_rules_in_the_order_the_cli_names_them() -> None:
    assert registry.rule_names() == ALL_RULES == rules_pkg.RULES
    assert registry.rules_on_shares() == ("krum", "multi-krum", "mda", "norm-clip", "cclip", "median", "trimmed-mean",
                                          "bulyan")


def test_the_shares_listing_holds_exactly_the_families_with_a_circuit() -> None:
    with_circuit = {f.__name__ for f in registry.FAMILIES if any(r.shares is not None for r in f.RULES)}
    assert {f.__name__ for f in registry.SHARES_LISTING} == with_circuit
    assert len(registry.SHARES_LISTING) == len(set(registry.SHARES_LISTING))


def test_flags_derived_from_the_entries() -> None:
    assert modes.PUBLIC_WEIGHTS == ("mean",)
    assert modes.ONLY_ON_SHARES == {"median", "trimmed-mean", "bulyan"}
    assert [modes.default_mode(r) for r in ALL_RULES] == ["distances"] * 7 + ["aggregate"] * 3
    assert [r for r in ALL_RULES if registry.entry(r).takes_center] == ["cclip"]


def test_unknown_names_have_no_entry_and_the_old_error() -> None:
    assert registry.entry("medoid") is None and registry.circuit_on_shares("medoid") is None
    with pytest.raises(ValueError, match="unknown rule 'medoid'; choose one of mean, norm-clip, cclip, krum"):
        registry.get_rule("medoid")


def test_a_rule_defined_twice_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(registry, "FAMILIES", registry.FAMILIES + (registry.FAMILIES[0],))
    with pytest.raises(ValueError, match="rule 'mean' is defined twice"):
        registry._build()
