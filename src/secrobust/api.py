"""``secrobust.aggregate``: one round of the two-server protocol, every party in this process.

Parties exchange real serialised messages through an in-memory channel, so the byte counts in
``stats`` are those of a deployment. The same run is the oracle the networked deployment is
tested against; ``plain_aggregate`` is the plaintext twin on the same encoded inputs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from . import ring
from .dealer import DEFAULT_CHUNK_BYTES
from .nodes import DealerNode, ServerNode
from .protocol import messages as M
from .protocol.offline import request_triple
from .protocol.server import RoundPlan, finish_aggregate, noise_share
from .protocol.worker import share_update
from .randomness import SeedSource
from .rules.plain import plain_run, split_options
from .rules.registry import get_rule
from .rules.view import DISTANCES, NORMS, Choice
from .transport.channel import InMemoryChannel, Stats, Tap
from .updates import as_matrix, check_unchecked, encode_center, encode_updates

DROP_TARGETS = ("S0", "S1", "both")


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What a round reveals. ``distances``/``revealed`` are what S1 saw; NaN rows for workers that dropped."""

    aggregate: np.ndarray
    weights: np.ndarray
    distances: np.ndarray | None
    stats: Stats
    revealed: dict[str, np.ndarray] = field(default_factory=dict)
    participants: tuple[int, ...] = ()
    center_weight: float = 0.0
    rule: str = ""
    f: int = 0


class Cluster:
    """Two servers and a dealer kept across rounds, so triple reuse is refused over a whole training run.

    cclip's center defaults to the previous round's aggregate (zero in the first round).
    """

    def __init__(self, seed: bytes | int | None = None, tap: Tap | None = None) -> None:
        self.seeds = SeedSource(seed)
        self.tap = tap
        self.s0, self.s1 = ServerNode(0), ServerNode(1)
        self.dealer = DealerNode()
        self.next_round = 0
        self.last_aggregate: np.ndarray | None = None

    def run_round(self, updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
                  dp_noise_std: float = 0.0, unchecked: Any = (), drop: Mapping[int, str] | None = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, **options: Any) -> AggregateResult:
        round_id = self.next_round
        self.next_round += 1
        spec = get_rule(rule)
        ring.check_frac_bits(frac_bits)
        x = as_matrix(updates)
        n, d = x.shape
        center_value, rule_options = split_options(rule, options)
        if rule == "cclip" and center_value is None and self.last_aggregate is not None and self.last_aggregate.shape == (d,):
            center_value = self.last_aggregate
        spec.validate(n, f, rule_options)
        drop = check_drop(drop, n)
        check_noise(dp_noise_std)
        stats = Stats()
        channel = InMemoryChannel(stats, self.tap)
        s0, s1 = self.s0, self.s1

        with _phase(stats, "encode"):
            encoded = encode_updates(x, frac_bits, check_unchecked(unchecked, n))
            center = encode_center(center_value, d, frac_bits) if center_value is not None else None
        reveal = spec.reveals(rule_options)
        plan = RoundPlan(round_id, tuple(range(n)), d, frac_bits, reveal, center,
                         self.seeds.triple_id(round_id) if reveal else None, chunk_bytes)
        s0.start_round(plan)
        s1.start_round(plan)

        if reveal:
            with _phase(stats, "offline"):
                channel.send(request_triple(round_id, plan.triple_spec()))
                for msg in self.dealer.handle(channel.receive("dealer", M.TRIPLE_REQUEST), self.seeds.triple(round_id)):
                    channel.send(msg)
                s0.receive_triple(channel.receive("S0", M.TRIPLE_S0))
                s1.receive_triple(channel.receive("S1", M.TRIPLE_S1))

        with _phase(stats, "share"):
            for i in range(n):
                to_s0, to_s1 = share_update(round_id, i, encoded[i], self.seeds.worker(round_id, i))
                if drop.get(i) not in ("S0", "both"):
                    channel.send(to_s0)
                if drop.get(i) not in ("S1", "both"):
                    channel.send(to_s1)
            del encoded
            for msg in channel.receive_all("S0", M.SHARE_SEED):
                s0.receive_share(msg)
            for msg in channel.receive_all("S1", M.SHARE_MASKED):
                s1.receive_share(msg)

        with _phase(stats, "agree"):
            channel.send(s0.participants_message())
            channel.send(s1.participants_message())
            s0.agree(channel.receive("S0", M.PARTICIPANTS), spec.min_n(f), spec.requirement)
            participants = s1.agree(channel.receive("S1", M.PARTICIPANTS), spec.min_n(f), spec.requirement)

        if reveal:
            with _phase(stats, "open"):
                for start, stop in s0.chunks():
                    channel.send(s0.open_masked(start, stop))
                    channel.send(s1.open_masked(start, stop))
                    s0.accumulate(channel.receive("S0", M.MASKED_OPEN))
                    s1.accumulate(channel.receive("S1", M.MASKED_OPEN))
            with _phase(stats, "distances"):
                channel.send(s0.view_share_message())
                s1.open_view(channel.receive("S1", M.VIEW_SHARE))
        else:
            s1.open_view(None)

        with _phase(stats, "rule"):
            channel.send(s1.choose(spec, f, rule_options))
            s0.receive_weights(channel.receive("S0", M.WEIGHTS))

        with _phase(stats, "aggregate"):
            shares = []
            for node in (s0, s1):
                noise = (noise_share(self.seeds.noise(round_id, node.party), f"dp-noise|{round_id}|{node.party}", d,
                                     dp_noise_std, frac_bits) if dp_noise_std else None)
                share = node.aggregate_share(noise)
                shares.append(share)
                channel.send(node.aggregate_message(share))
            out0 = s0.reveal(shares[0], channel.receive("S0", M.AGGREGATE_SHARE))
            out1 = s1.reveal(shares[1], channel.receive("S1", M.AGGREGATE_SHARE))
        if not np.array_equal(out0, out1):
            raise AssertionError("the two servers reconstructed different aggregates")

        self.last_aggregate = out0
        choice = s1.current.choice
        view = s1.current.view
        return make_result(out0, choice, view, participants, n, stats, rule, f)


def aggregate(updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
              seed: bytes | int | None = None, dp_noise_std: float = 0.0, unchecked: Any = (),
              drop: Mapping[int, str] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
              **options: Any) -> AggregateResult:
    """Run one secure round on (n, d) updates and return the revealed robust aggregate.

    S1 learns the squared distances (or, for norm-clip/cclip, the squared norms) of the encoded
    updates; both servers learn the weights and the aggregate; the dealer learns only (n, d).
    ``seed`` fixes every party's randomness (tests); by default seeds are fresh from ``secrets``.
    ``unchecked`` lists workers that bypass the honest encoder (simulated Byzantine workers);
    ``drop`` maps a worker to the server(s) its share never reaches ("S0", "S1" or "both").
    ``dp_noise_std`` makes each server add N(0, std^2) to its aggregate share.
    """
    return Cluster(seed).run_round(updates, rule, f, frac_bits=frac_bits, dp_noise_std=dp_noise_std,
                                   unchecked=unchecked, drop=drop, chunk_bytes=chunk_bytes, **options)


def plain_aggregate(updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int = ring.DEFAULT_FRAC_BITS,
                    seed: bytes | int | None = None, dp_noise_std: float = 0.0, unchecked: Any = (),
                    **options: Any) -> AggregateResult:
    """The plaintext twin of ``aggregate`` on the same encoded updates (same weights, same aggregate;
    with ``seed``, the same DP noise too)."""
    check_noise(dp_noise_std)
    stats = Stats()
    with _phase(stats, "plain"):
        run = plain_run(updates, rule, f, frac_bits, unchecked, **options)
        n, d = run.encoded.shape
        total = np.matmul(ring.encode_weights(run.choice.weights), run.encoded)
        if dp_noise_std:
            seeds = SeedSource(seed)
            for party in (0, 1):
                total += noise_share(seeds.noise(0, party), f"dp-noise|0|{party}", d, dp_noise_std, frac_bits)
        out = finish_aggregate(total, frac_bits, run.center, run.choice)
    return make_result(out, run.choice, run.view, tuple(range(n)), n, stats, rule, f)


def make_result(out: np.ndarray, choice: Choice, view: Any, participants: tuple[int, ...], n: int, stats: Stats,
            rule: str, f: int) -> AggregateResult:
    idx = np.array(participants, dtype=np.int64)
    weights = np.zeros(n)
    weights[idx] = choice.weights
    revealed = {}
    for key in (DISTANCES, NORMS):
        value = getattr(view, key)
        if value is not None:
            full = np.full((n, n) if value.ndim == 2 else (n,), np.nan)
            full[np.ix_(idx, idx) if value.ndim == 2 else idx] = value
            revealed[key] = full
    return AggregateResult(out, weights, revealed.get(DISTANCES), stats, revealed, participants,
                           choice.center_weight, rule, f)


def check_drop(drop: Mapping[int, str] | None, n: int) -> dict[int, str]:
    drop = dict(drop or {})
    for i, where in drop.items():
        if not 0 <= int(i) < n or where not in DROP_TARGETS:
            raise ValueError(f"drop maps a worker in 0..{n - 1} to one of {DROP_TARGETS}; got {i}: {where!r}")
    return drop


def check_noise(std: float) -> None:
    if not (np.isfinite(std) and std >= 0):
        raise ValueError(f"dp_noise_std must be finite and >= 0, got {std}")


@contextmanager
def _phase(stats: Stats, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stats.seconds[name] += time.perf_counter() - t0
