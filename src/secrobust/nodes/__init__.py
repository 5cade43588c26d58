"""Parties as objects: protocol steps plus what a party keeps across rounds (its triple ledger)."""

from .parties import DealerNode, ServerNode

__all__ = ["DealerNode", "ServerNode"]
