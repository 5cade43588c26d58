"""The names ``rules.secure`` held before each rule moved into its family file, for the modules being
rewritten now (api.py, protocol/server.py, deploy/server/): reveal modes are in ``rules.modes``, circuit
sizes in ``rules.sizing``, the view's range in ``rules.view``, ``SecureRule`` in ``rules.spec``, and each
rule's circuit entry in its family file (``rules.registry``). New code imports from those."""

from __future__ import annotations

from types import MappingProxyType

from .modes import (  # noqa: F401
    DEFAULT_MODE,
    MODES,
    ONLY_ON_SHARES,
    PUBLIC_WEIGHTS,
    check_checked,
    check_mode,
    default_mode,
    secure_rule,
    secure_rules,
    split_label,
)
from .registry import circuit_on_shares, rules_on_shares
from .sizing import budget, rounds  # noqa: F401
from .spec import SecureRule  # noqa: F401
from .view import dmax_for, view_range  # noqa: F401

_SECURE = MappingProxyType({name: circuit_on_shares(name) for name in rules_on_shares()})
"""Read-only: tests/net/test_net_reveal.py still reads it (``registry.circuit_on_shares`` is the lookup)."""
