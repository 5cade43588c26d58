"""The coordinate-wise rules' registry entries: median, trimmed mean, Bulyan.

They need every coordinate of every update, which no view S1 could open holds, so they run only on
shares with ``reveal="aggregate"`` (``rules.secure``, ``secrobust.circuits.coordinatewise``); their choice function
here is never called by a round and says so.
"""

from __future__ import annotations

from ..circuits import coordinatewise
from .registry import RuleSpec, register
from .view import DISTANCES, Choice, View


def _on_shares_only(name: str):
    def choose(view: View, n: int, f: int) -> Choice:
        raise ValueError(f"rule {name!r} is coordinate-wise: it runs only on shares, with reveal='aggregate'")
    return choose


for _name in coordinatewise.COORDINATEWISE_RULES:
    register(RuleSpec(_name, _on_shares_only(_name), (lambda _: (DISTANCES,)) if _name == "bulyan" else (lambda _: ()),
                      (lambda f, r=_name: coordinatewise.min_participants(r, f)),
                      "n >= 4f + 3" if _name == "bulyan" else "n >= 2f + 1"))
