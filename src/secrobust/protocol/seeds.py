"""Where each party's seeds come from in a run: fresh from ``secrets``, or derived from one master seed.

A master seed makes a whole run reproducible (tests, the training fidelity check); without one every
seed is fresh. Either way, protocol functions receive seeds as arguments and sample nothing.
"""

from __future__ import annotations

import hashlib

from ..gates.compare import AndTripleSeeds
from ..gates.dealer import TripleSeeds
from ..primitives import prg


class SeedSource:
    def __init__(self, master: bytes | int | None = None) -> None:
        if isinstance(master, int) and not isinstance(master, bool):
            if master < 0:
                raise ValueError("an integer seed must be non-negative")
            master = hashlib.sha256(b"secrobust/int-seed|" + str(master).encode()).digest()[: prg.SEED_BYTES]
        self._master = prg.check_seed(master) if master is not None else None

    @property
    def deterministic(self) -> bool:
        return self._master is not None

    def seed(self, *purpose: object) -> bytes:
        if self._master is None:
            return prg.fresh_seed()
        return prg.derive_seed(self._master, prg.label(*purpose))

    def share_master(self, round_id: int) -> bytes:
        """S0's seed for the workers' share keys in a round without a triple."""
        return self.seed("share-master", round_id)

    def triple(self, round_id: int) -> TripleSeeds:
        return TripleSeeds(self.seed("dealer", round_id, "a0"), self.seed("dealer", round_id, "a1"),
                           self.seed("dealer", round_id, "c0"),
                           *(AndTripleSeeds(self.seed("dealer", round_id, f"{what}0"), self.seed("dealer", round_id, f"{what}1"))
                             for what in ("and", "rule", "vector")))

    def validity(self, round_id: int, party: int) -> bytes:
        """A server's contribution to the joint seed of the round's validity projections."""
        return self.seed("validity", round_id, party)

    def triple_id(self, round_id: int) -> str:
        return f"r{round_id}-{self.seed('triple-id', round_id).hex()[:16]}"

    def noise(self, round_id: int, party: int) -> bytes:
        return self.seed("dp-noise", round_id, party)
