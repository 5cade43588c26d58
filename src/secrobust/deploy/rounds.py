"""What the operator asks both servers to run in one round, and how a server turns it into a RoundPlan.

A round request holds public parameters only: the round id, the expected worker ids, the dimension,
F, the rule with f and its options, the public center (cclip), whether the round runs the input
validity check (``check_inputs``, on by default: every rule then needs a triple, the mean a "diag"
one), the id of the triple this round uses, the triples to request ahead for the next rounds
(``prefetch``, see ``secrobust.deploy.pool``), the share deadline, a minimum cohort above the servers'
own, what the round reveals (``reveal``: "distances", "weights" or "aggregate", ``rules.modes``), and,
for tests only, a master seed from which the servers derive their DP-noise seeds exactly as
``secrobust.aggregate(insecure_test_seed=...)`` does (a server refuses it unless started with
``insecure_test_seeds``). It crosses the wire as the JSON argument of the ``open-round`` control command;
each server validates it with the rule registry before it opens the round, and the two servers compare
its ``digest`` before either uses a share.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..gates.dealer import DEFAULT_CHUNK_BYTES
from ..params import RoundParams
from ..primitives import prg, ring
from ..protocol.seeds import SeedSource
from ..protocol.server import RoundPlan
from ..rules import modes
from ..rules.cohort import check_min_participants, with_cohort
from ..rules.pre import check_pre_mode, split_pre, with_pre
from ..rules.registry import get_rule
from ..rules.spec import RuleSpec, SecureRule
from ..updates import encode_center

DEFAULT_SHARE_WINDOW_S = 30.0
MAX_PREFETCH = 4
MAX_TRIPLE_ID = 128


@dataclass(frozen=True)
class RoundRequest:
    """Public parameters of one round, identical at both servers."""

    round_id: int
    worker_ids: tuple[int, ...]
    d: int
    rule: str
    f: int = 0
    frac_bits: int = ring.DEFAULT_FRAC_BITS
    options: dict[str, Any] = field(default_factory=dict)
    center: list[float] | None = None
    triple_id: str | None = None
    share_window_s: float = DEFAULT_SHARE_WINDOW_S
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    dp_noise_std: float = 0.0
    test_seed: int | str | None = None
    seed_round: int = 0
    prefetch: tuple[tuple[int, str], ...] = ()
    check_inputs: bool = True
    norm_bound: float | None = None
    min_participants: int | None = None
    """A larger minimum cohort than the servers' configured ones (which a request cannot lower)."""
    reveal: str = modes.DEFAULT_MODE
    """What the round reveals besides the aggregate (``rules.modes.MODES``): with "weights" or "aggregate"
    the rule runs on shares between S0 and S1 (``rule-open`` messages) and S1 opens no view."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["worker_ids"] = list(self.worker_ids)
        out["prefetch"] = [{"round_id": r, "triple_id": t} for r, t in self.prefetch]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "RoundRequest":
        """Parse and type-check the open-round arguments; raises ValueError saying what is wrong."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown round parameters {unknown}")
        try:
            req = cls(
                round_id=_int(raw["round_id"], "round_id"),
                worker_ids=tuple(_int(w, "worker id") for w in raw["worker_ids"]),
                d=_int(raw["d"], "d"), rule=str(raw["rule"]), f=_int(raw.get("f", 0), "f"),
                frac_bits=_int(raw.get("frac_bits", ring.DEFAULT_FRAC_BITS), "frac_bits"),
                options=dict(raw.get("options") or {}),
                center=None if raw.get("center") is None else [float(v) for v in raw["center"]],
                triple_id=None if raw.get("triple_id") is None else str(raw["triple_id"]),
                share_window_s=float(raw.get("share_window_s", DEFAULT_SHARE_WINDOW_S)),
                chunk_bytes=_int(raw.get("chunk_bytes", DEFAULT_CHUNK_BYTES), "chunk_bytes"),
                dp_noise_std=float(raw.get("dp_noise_std", 0.0)),
                test_seed=_seed_value(raw.get("test_seed")),
                seed_round=_int(raw.get("seed_round", 0), "seed_round"),
                prefetch=tuple((_int(p["round_id"], "prefetch round_id"), _str(p["triple_id"], "prefetch triple_id"))
                               for p in (raw.get("prefetch") or ())),
                check_inputs=raw.get("check_inputs", True),
                norm_bound=None if raw.get("norm_bound") is None else float(raw["norm_bound"]),
                min_participants=(None if raw.get("min_participants") is None
                                  else _int(raw["min_participants"], "min_participants")),
                reveal=_str(raw.get("reveal", modes.DEFAULT_MODE), "reveal"),
            )
        except KeyError as exc:
            raise ValueError(f"round parameter {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad round parameters: {exc}") from None
        req.check()
        return req

    def check(self) -> None:
        if self.round_id < 0 or self.d < 1 or self.chunk_bytes < 8:
            raise ValueError("round_id >= 0, d >= 1 and chunk_bytes >= 8 are required")
        if len(set(self.worker_ids)) != len(self.worker_ids) or any(w < 0 for w in self.worker_ids):
            raise ValueError("worker ids must be distinct non-negative integers")
        if not (np.isfinite(self.share_window_s) and self.share_window_s > 0):
            raise ValueError("share_window_s must be a positive number of seconds")
        if self.min_participants is not None:
            check_min_participants(self.min_participants)
        if self.center is not None and self.rule != "cclip":
            raise ValueError("only cclip takes a public center")
        self.params()
        if self.center is not None and len(self.center) != self.d:
            raise ValueError(f"center has dimension {len(self.center)}, the round has d={self.d}")
        try:
            kind = self.plan().triple_kind
        except TypeError as exc:                # an option value the rule's circuit cannot take (e.g. a list)
            raise ValueError(f"bad options for rule {self.rule!r} with reveal={self.reveal!r}: {exc}") from None
        if kind is not None and not self.triple_id:
            raise ValueError(f"rule {self.rule!r} with check_inputs={self.check_inputs} uses a {kind} triple: "
                             "the round needs a triple id")
        if self.triple_id is not None and not 0 < len(self.triple_id) <= MAX_TRIPLE_ID:
            raise ValueError(f"a triple id has 1 to {MAX_TRIPLE_ID} characters")
        self._check_prefetch(kind)
        if self.test_seed is not None:
            SeedSource(self._master())

    def _check_prefetch(self, kind: str | None) -> None:
        if not self.prefetch:
            return
        if kind is None:
            raise ValueError(f"rule {self.rule!r} without the input validity check uses no triple, so the round "
                             "cannot prefetch triples")
        if len(self.prefetch) > MAX_PREFETCH:
            raise ValueError(f"at most {MAX_PREFETCH} triples can be prefetched, got {len(self.prefetch)}")
        rounds = [r for r, _ in self.prefetch]
        ids = [t for _, t in self.prefetch]
        if len(set(rounds)) != len(rounds) or any(r <= self.round_id for r in rounds):
            raise ValueError(f"prefetched triples are for distinct later rounds than {self.round_id}, got {rounds}")
        if len(set(ids)) != len(ids) or self.triple_id in ids:
            raise ValueError("prefetched triple ids must be distinct and differ from this round's triple id")
        if any(not 0 < len(t) <= MAX_TRIPLE_ID for t in ids):
            raise ValueError(f"a triple id has 1 to {MAX_TRIPLE_ID} characters")

    def _master(self) -> bytes | int | None:
        return bytes.fromhex(self.test_seed) if isinstance(self.test_seed, str) else self.test_seed

    def params(self, server_minimum: int = 2) -> RoundParams:
        """The round's public parameters, checked as every entry point checks them (``params.RoundParams``),
        with the larger of the server's and the request's minimum cohort."""
        return RoundParams.build(self.rule, self.f, len(self.worker_ids), self.d, frac_bits=self.frac_bits,
                                 reveal=self.reveal, norm_bound=self.norm_bound,
                                 min_participants=max(server_minimum, self.min_participants or 0),
                                 dp_noise_std=self.dp_noise_std, check_inputs=self.check_inputs,
                                 options=self.options)

    def secure_rule(self) -> SecureRule | None:
        """The rule's circuit on shares for this round's ``reveal`` (None: S1 opens the view, or the weights
        are public); ValueError for an unknown mode or a rule without a circuit for it."""
        step, rule_options = split_pre(self.options)
        check_pre_mode(step, modes.check_mode(self.reveal))
        return modes.secure_rule(self.rule, self.reveal, rule_options)

    @property
    def on_shares(self) -> bool:
        return self.secure_rule() is not None

    @cached_property
    def spec(self) -> RuleSpec:
        """The rule, after the round's pre-aggregation step if any (bucketing: S1's permutation is fresh, or
        derived from the test seed like the in-process run's), drawn once per request."""
        step, _ = split_pre(self.options)
        seed = (SeedSource(self._master()).seed("bucketing", self.seed_round) if self.test_seed is not None
                else prg.fresh_seed())
        return with_pre(get_rule(self.rule), step, seed)

    def cohort_spec(self, server_minimum: int) -> RuleSpec:
        """The rule with the round's minimum cohort: the larger of the server's and the request's."""
        return with_cohort(self.spec, max(server_minimum, self.min_participants or 0), self.options)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the request: equal at both servers iff they run the same round."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def plan(self) -> RoundPlan:
        """The protocol's RoundPlan for this request (both servers build the same one); the triple id is
        dropped when the round uses no triple (a mean without the input validity check). With the rule on
        shares, the plan's mode and the dealer material of the rule's circuit for all the expected workers
        (enough for fewer), as ``secrobust.api.Cluster.run_round`` makes them."""
        center = encode_center(np.array(self.center), self.d, self.frac_bits) if self.center is not None else None
        return self.params().plan(self.round_id, self.worker_ids, self.spec.reveals(self.options), center,
                                  self.triple_id, self.chunk_bytes)

    def noise_seed(self, party: int) -> tuple[bytes, str]:
        """(seed, label) of this server's DP noise: fresh, or derived from the test seed like the in-process run."""
        if self.test_seed is None:
            return SeedSource(None).noise(self.round_id, party), f"dp-noise|{self.round_id}|{party}"
        src = SeedSource(self._master())
        return src.noise(self.seed_round, party), f"dp-noise|{self.seed_round}|{party}"


def fresh_triple_id(round_id: int, seed: bytes | int | None = None) -> str:
    """A triple id in the in-process format ``r<round>-<16 hex>``: fresh, or derived from a test seed."""
    return SeedSource(seed).triple_id(round_id)


def _seed_value(value: Any) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    return _int(value, "test_seed")


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {value!r}")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value
