"""``secrobust.aggregate``: one round of the two-server protocol, every party in this process.

Parties exchange real serialised messages through an in-memory channel, so the byte counts in
``stats`` are those of a deployment. The same run is the oracle the networked deployment is
tested against; ``plain_aggregate`` is the plaintext twin on the same encoded inputs.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from .circuits import validity
from .gates.dealer import DEFAULT_CHUNK_BYTES
from .params import RoundParams
from .primitives import ring
from .protocol import messages as M
from .protocol.nodes import DealerNode, ServerNode
from .protocol.offline import request_triple
from .protocol.seeds import SeedSource
from .protocol.server import finish_aggregate, noise_share
from .protocol.streaming import BLOCK_ROWS, MIN_BLOCK
from .protocol.worker import share_key, share_update, worker_name
from .rules import modes
from .rules.cohort import DEFAULT_MIN_PARTICIPANTS
from .rules.plain import plain_run
from .rules.possible import effective_f
from .rules.spec import SecureRule
from .rules.view import DISTANCES, NORMS, Choice, view_range, view_words
from .scale import Scale
from .transport.channel import InMemoryChannel, Stats, Tap
from .updates import encode_center, encode_updates, safe_center

DROP_TARGETS = ("S0", "S1", "both")
KEEP_BYTES = 1 << 30
"""``aggregate`` keeps its servers' n x d matrices (S1's shares, S0's A0: 16nd bytes) for the next call in this
process when they take at most this much, so that a loop calling it each round maps no fresh pages for them
(docs/performance.md); ``drop_kept_buffers`` frees them."""

_kept_lock = threading.Lock()
_kept: dict[int, dict[str, np.ndarray]] = {}
"""Server index -> the matrices the last ``aggregate`` call's servers kept (``ServerNode.release_buffers``)."""


def drop_kept_buffers() -> None:
    """Free the matrices ``aggregate`` keeps for its next call (``KEEP_BYTES``)."""
    with _kept_lock:
        _kept.clear()


def _lend_kept(cluster: Cluster) -> None:
    """Hand the kept matrices to a new Cluster's servers (another thread's call finds none and makes its own)."""
    with _kept_lock:
        kept = dict(_kept)
        _kept.clear()
    for index, node in ((0, cluster.s0), (1, cluster.s1)):
        node.adopt_buffers(kept.get(index, {}))


def _keep(cluster: Cluster) -> None:
    """Keep the matrices of a Cluster that is done, if they fit ``KEEP_BYTES``."""
    bufs = {index: node.release_buffers() for index, node in ((0, cluster.s0), (1, cluster.s1))}
    if sum(b.nbytes for part in bufs.values() for b in part.values()) <= KEEP_BYTES:
        with _kept_lock:
            _kept.clear()
            _kept.update(bufs)


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What a round reveals. ``distances``/``revealed`` are what S1 saw (nothing unless ``reveal="distances"``);
    NaN rows for workers that dropped. ``weights`` is None with ``reveal="aggregate"``: nobody learns them."""

    aggregate: np.ndarray
    weights: np.ndarray | None
    distances: np.ndarray | None
    stats: Stats
    revealed: dict[str, np.ndarray] = field(default_factory=dict)
    participants: tuple[int, ...] = ()
    center_weight: float = 0.0
    rule: str = ""
    f: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    """Workers excluded by the input validity check (or by S1's range check of the opened view), with the reason."""
    reveal: str = modes.DEFAULT_MODE
    n: int = 0
    frac_bits: int | None = None
    """F, the fixed point's fractional bits this round used (derived from the bound unless given)."""
    norm_bound: float | None = None
    """The public bound (real units) every accepted update had: the caller's, or the encoder's range at F."""
    bound_from_data: bool = False
    """True when F was lowered to fit the largest honest update: the bound then depends on the data."""

    @property
    def resolution(self) -> float | None:
        """The encoding's step 2^-F: the precision of every update and of the aggregate."""
        return None if self.frac_bits is None else 2.0 ** -self.frac_bits

    def __repr__(self) -> str:
        """One short line: rule, f, who took part and the arrays' shapes, never their values."""
        shape = self._shape
        return (f"AggregateResult(rule={self.rule!r}, f={self.f}, reveal={self.reveal!r}, participants="
                f"{len(self.participants)} of {self.n}, rejected={sorted(self.rejected)}, aggregate={shape(self.aggregate)}, "
                f"weights={shape(self.weights)}, distances={shape(self.distances)}, revealed={list(self.revealed)})")

    @staticmethod
    def _shape(arr: np.ndarray | None) -> str:
        """``float64(n, d)`` for an array, ``None`` for none."""
        return "None" if arr is None else f"{arr.dtype}{tuple(arr.shape)}"


class Cluster:
    """Two servers and a dealer kept across rounds, so triple reuse is refused over a whole training run.

    cclip's center defaults to the previous round's aggregate (zero in the first round).
    Every party's randomness is fresh from ``secrets`` unless ``insecure_test_seed`` fixes it (tests and
    simulations only: two runs with one seed reuse every mask, so S1 would learn x - x').
    """

    def __init__(self, *, insecure_test_seed: bytes | int | None = None, tap: Tap | None = None) -> None:
        self.seeds = SeedSource(insecure_test_seed)
        self.tap = tap
        self.s0, self.s1 = ServerNode(0), ServerNode(1)
        self.dealer = DealerNode()
        self.next_round = 0
        self.last_aggregate: np.ndarray | None = None

    def run_round(self, updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int | None = None,
                  dp_noise_std: float = 0.0, unchecked: Any = (), ring_rows: Mapping[int, Any] | None = None,
                  drop: Mapping[int, str] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  check_inputs: bool = True, norm_bound: float | None = None,
                  min_participants: int = DEFAULT_MIN_PARTICIPANTS, reveal: str | None = None,
                  over_bound: str = "exclude", **options: Any) -> AggregateResult:
        refuse_seed_option(options)
        round_id = self.next_round
        self.next_round += 1
        inputs = RoundParams.check(updates, rule, f, frac_bits=frac_bits, reveal=reveal, norm_bound=norm_bound,
                                   min_participants=min_participants, dp_noise_std=dp_noise_std,
                                   check_inputs=check_inputs, unchecked=unchecked, ring_rows=ring_rows,
                                   options=options, over_bound=over_bound)
        params = inputs.params
        x, n, d = inputs.x, params.n, params.d
        frac_bits, reveal = params.frac_bits, params.reveal
        spec = params.spec_with_pre(self.seeds.seed("bucketing", round_id))
        rule_options, center_value, rows = params.options, params.center, inputs.ring_rows
        if rule == "cclip" and center_value is None and self.last_aggregate is not None and self.last_aggregate.shape == (d,):
            center_value = safe_center(self.last_aggregate, frac_bits)
        drop = check_drop(drop, n)
        check_inputs, on_shares = params.check_inputs, params.on_shares
        stats = Stats()
        channel = InMemoryChannel(stats, self.tap)
        s0, s1 = self.s0, self.s1

        with _phase(stats, "encode"):
            # worker i encodes and masks its update in row i of S1's kept share matrix (ServerNode.share_matrix),
            # so S1 takes each share where it already is: no second n x d matrix, no copy
            encoded = encode_updates(x, frac_bits, inputs.unchecked, rows, s1.share_matrix(n, d))
            center = encode_center(center_value, d, frac_bits) if center_value is not None else None
        needs = spec.reveals(rule_options)
        plan = params.plan(round_id, tuple(range(n)), needs, center, self.seeds.triple_id(round_id), chunk_bytes)
        s0.start_round(plan, None if plan.triple_kind else self.seeds.share_master(round_id))
        s1.start_round(plan)

        if plan.triple_kind is not None:
            with _phase(stats, "offline"):
                channel.send(request_triple(round_id, plan.triple_spec()))
                for msg in self.dealer.handle(channel.receive("dealer", M.TRIPLE_REQUEST), self.seeds.triple(round_id)):
                    channel.send(msg)
                s0.receive_triple(channel.receive("S0", M.TRIPLE_S0))
                s1.receive_triple(channel.receive("S1", M.TRIPLE_S1))

        # Steps 1-3 as the deployment runs them (protocol.streaming): S1 opens each share's row of E for S0
        # as it arrives, both add rows to their Gram shares by blocks, and with the check on the servers fix
        # the projections' joint seed once S1 has fixed the participants.
        open_phase = "open" if needs else "validity"
        rows = plan.triple_kind is not None
        for i in range(n):
            with _phase(stats, "share"):
                if drop.get(i) in ("S0", "both"):
                    continue  # a worker that cannot reach S0 gets no key and sits the round out
                channel.send(s0.share_key_message(i))
                key = share_key(channel.receive(worker_name(i), M.SHARE_KEY), round_id, i, d)
                msg = share_update(round_id, i, encoded[i], key, in_place=True)
                if drop.get(i) == "S1":
                    continue
                channel.send(msg)
                del msg
                s1.take_share(channel.receive("S1", M.SHARE_MASKED))
            if rows:
                with _phase(stats, open_phase):
                    self._open_rows(channel, plan.open_kind, closed=False)
        del encoded

        with _phase(stats, "agree"):
            participants = s1.agree(None, spec.minimum(f), spec.needs(f))
            channel.send(s1.participants_message())
            if check_inputs:
                channel.send(s1.validity_seed_message(self.seeds.validity(round_id, 1)))
            s0.agree(channel.receive("S0", M.PARTICIPANTS), spec.minimum(f), spec.needs(f))
            if check_inputs:
                channel.send(s0.validity_seed_message(self.seeds.validity(round_id, 0)))
        if rows:
            with _phase(stats, open_phase):
                self._open_rows(channel, plan.open_kind, closed=True)
        if check_inputs:
            with _phase(stats, "validity"):
                s0.receive_validity_seed(channel.receive("S0", M.VALIDITY_SEED))
                s1.receive_validity_seed(channel.receive("S1", M.VALIDITY_SEED))
                s0.project()
                s1.project()
        if rows:
            with _phase(stats, open_phase):
                s0.finish_opening()
                s1.finish_opening()
        if check_inputs:
            with _phase(stats, "validity"):
                self._run_check(channel)
                s0.check_enough(spec, f)
                s1.check_enough(spec, f)
            participants = s1.current.participants or ()

        if on_shares is not None:
            with _phase(stats, "rule"):
                self._run_circuit(channel, M.RULE_OPEN, lambda node: node.rule_start(on_shares, f, rule_options),
                                  lambda node, msg: node.rule_step(msg))
        else:
            if needs:
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

        if s0.rejected != s1.rejected:
            raise AssertionError("the two servers rejected different workers")
        self.last_aggregate = out0
        if plan.mode == "weights" and not np.array_equal(s0.current.choice.weights, s1.current.choice.weights):
            raise AssertionError("the two servers opened different weights")
        choice = s1.current.choice
        view = s1.current.view
        return make_result(out0, choice, view, participants, n, stats, rule, f, s1.rejected, reveal,
                           inputs.scale, inputs.excluded)

    def _open_rows(self, channel: InMemoryChannel, kind: str, closed: bool) -> None:
        """S1's rows of E for the shares it took since the last call go to S0; S1 adds the rows that are due
        to its Gram share, S0 takes its waiting rows once a block of them is in (all once ``closed``). S1's
        blocks are the largest the deployment allows (``BLOCK_ROWS``: its rows are in its matrix anyway); S0's
        stay at ``MIN_BLOCK``: 16 rows made its product cheaper (0.25 against 0.33 CPU-s at n = 50, d = 1e6) but
        the rows of E waiting for it faulted fresh pages each block, and the round cost as much or more."""
        for msg in self.s1.open_rows():
            channel.send(msg)
        self.s1.add_gram(closed, BLOCK_ROWS)
        if closed or channel.pending("S0", kind) >= MIN_BLOCK:
            self.s0.take_rows(channel.receive_all("S0", kind))

    def _run_check(self, channel: InMemoryChannel) -> None:
        """The comparisons of the validity check, round by round through the channel."""
        self._run_circuit(channel, M.VALIDITY_OPEN, lambda node: node.validity_start(),
                          lambda node, msg: node.validity_step(msg))

    def _run_circuit(self, channel: InMemoryChannel, kind: str, start, step) -> None:
        """Both servers' sides of a two-party circuit, round by round through the channel."""
        msgs = [start(self.s0), start(self.s1)]
        while True:
            for msg in msgs:
                channel.send(msg)
            nxt = [step(node, channel.receive(node.name, kind)) for node in (self.s0, self.s1)]
            if nxt[0] is None or nxt[1] is None:
                if nxt[0] is not None or nxt[1] is not None:
                    raise AssertionError(f"the servers' {kind} circuits ended at different rounds")
                return
            msgs = nxt


def aggregate(updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int | None = None,
              insecure_test_seed: bytes | int | None = None, dp_noise_std: float = 0.0, unchecked: Any = (),
              ring_rows: Mapping[int, Any] | None = None, drop: Mapping[int, str] | None = None,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES, check_inputs: bool = True, norm_bound: float | None = None,
              min_participants: int = DEFAULT_MIN_PARTICIPANTS, reveal: str | None = None,
              over_bound: str = "exclude", **options: Any) -> AggregateResult:
    """Run one secure round on (n, d) updates and return the revealed robust aggregate.

    ``reveal`` says what the servers learn besides the aggregate (docs/leakage-free.md):
    "distances" (default): S1 learns the squared distances (or, for norm-clip/cclip, the squared norms) of
    the encoded updates and both servers the weights; "weights": the rule runs on shares and only the
    weights are opened; "aggregate": nothing but the aggregate is opened (``result.weights`` is None).
    The dealer learns only (n, d) and the rule's circuit size.
    Seeds are fresh from ``secrets``; ``insecure_test_seed`` fixes every party's randomness, for tests and
    simulations only (the same seed on other data reuses every mask: S1 would learn x - x').
    ``min_participants`` (default 5, at least 2) aborts a round that would aggregate fewer workers, after
    dropouts and rejections: the aggregate of one worker is its update.
    ``unchecked`` lists workers whose float rows bypass the honest encoder, and ``ring_rows`` maps a worker
    to the exact uint64 ring vector (d,) it sends (simulated Byzantine workers; those rows of ``updates``
    are ignored). ``drop`` maps a worker to the server(s) its share never reaches ("S0", "S1" or "both").
    ``dp_noise_std`` makes each server add N(0, std^2) to its aggregate share.
    Every worker's shares go through the input validity check (``secrobust.circuits.validity``): a worker whose
    vector has norm above the encoder's bound is rejected (``result.rejected``), whatever it sent.
    ``norm_bound`` (real units) tightens the check's bound from the encoder's range to C (plus rounding):
    with DP, set it to the clipping norm so that no worker, malicious or not, contributes more.
    ``check_inputs=False`` skips the check (benchmarks only: robustness then fails against ring attacks).
    ``pre="nnm"``, ``"bucketing"`` (with ``s=``, the bucket size, default 2) or ``"arc"`` mixes the updates
    before the rule, from the opened view alone (``rules.pre``; with reveal="distances").
    The servers' n x d matrices are kept for the next call in this process while they take at most
    ``KEEP_BYTES`` (``drop_kept_buffers`` frees them).
    """
    refuse_seed_option(options)
    cluster = Cluster(insecure_test_seed=insecure_test_seed)
    _lend_kept(cluster)
    try:
        return cluster.run_round(
            updates, rule, f, frac_bits=frac_bits, dp_noise_std=dp_noise_std, unchecked=unchecked,
            ring_rows=ring_rows, drop=drop, chunk_bytes=chunk_bytes, check_inputs=check_inputs,
            norm_bound=norm_bound, min_participants=min_participants, reveal=reveal, over_bound=over_bound, **options)
    finally:
        _keep(cluster)


def plain_aggregate(updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int | None = None,
                    insecure_test_seed: bytes | int | None = None, dp_noise_std: float = 0.0, unchecked: Any = (),
                    ring_rows: Mapping[int, Any] | None = None, check_inputs: bool = True,
                    norm_bound: float | None = None, round_id: int = 0,
                    min_participants: int = DEFAULT_MIN_PARTICIPANTS, reveal: str | None = None,
                    over_bound: str = "exclude", **options: Any) -> AggregateResult:
    """The plaintext twin of ``aggregate`` on the same encoded updates (same weights, same aggregate, same
    minimum cohort; with ``insecure_test_seed``, the same DP noise and validity projections too;
    ``round_id`` names the round of a seeded ``Cluster`` to mirror). With ``reveal`` "weights" or
    "aggregate" the rule is its twin on the exact ring view (``rules.modes``)."""
    refuse_seed_option(options)
    inputs = RoundParams.check(updates, rule, f, frac_bits=frac_bits, reveal=reveal, norm_bound=norm_bound,
                               min_participants=min_participants, dp_noise_std=dp_noise_std,
                               check_inputs=check_inputs, unchecked=unchecked, ring_rows=ring_rows,
                               options=options, over_bound=over_bound)
    params = inputs.params
    rule_options, on_shares = params.options, params.on_shares
    frac_bits, reveal, updates, unchecked = params.frac_bits, params.reveal, inputs.x, inputs.unchecked
    stats = Stats()
    with _phase(stats, "plain"):
        seeds = SeedSource(insecure_test_seed)
        vseed = validity.joint_seed(round_id, seeds.validity(round_id, 0), seeds.validity(round_id, 1))
        run = plain_run(updates, rule, f, frac_bits, unchecked, ring_rows=ring_rows, check_inputs=check_inputs,
                        validity_seed=vseed, norm_bound=norm_bound, min_participants=min_participants,
                        rule_on_view=on_shares is None, pre_seed=seeds.seed("bucketing", round_id), **options)
        n, d = run.encoded.shape
        rows = run.encoded[list(run.participants)]
        choice = run.choice
        if on_shares is not None:
            choice, total = _plain_on_shares(on_shares, rows, run, f, rule_options, reveal,
                                             validity.scaled_bound(norm_bound, frac_bits, d), frac_bits)
        else:
            total = np.matmul(ring.encode_weights(choice.weights), rows)
        if dp_noise_std:
            for party in (0, 1):
                total += noise_share(seeds.noise(round_id, party), f"dp-noise|{round_id}|{party}", d, dp_noise_std,
                                     frac_bits)
        out = finish_aggregate(total, frac_bits, run.center, choice or Choice(np.zeros(0)))
    return make_result(out, choice, None if on_shares is not None else run.view, run.participants, n, stats, rule,
                       f, run.rejected, reveal, inputs.scale, inputs.excluded)


def _plain_on_shares(rule: SecureRule, rows: np.ndarray, run: Any, f: int, options: dict, reveal: str,
                     bound: int, frac_bits: int) -> tuple[Choice | None, np.ndarray]:
    """The twin of a rule on shares: its ring weights on the exact ring view, then the public-weight sum
    ("weights") or the ring sum with the center's part in the ring ("aggregate")."""
    y = rows - run.center if run.center is not None else rows
    view = view_words(np.matmul(y, y.T), rule.needs) if rule.needs else {}
    f_eff = effective_f(f, run.rejected)
    dmax = view_range(bound, run.center)
    if rule.output == "aggregate":
        return None, rule.plain(view, rows.shape[0], f_eff, options, dmax, rows=rows)
    w, cw = rule.plain(view, rows.shape[0], f_eff, options, dmax, frac_bits=frac_bits)
    if reveal == "weights":
        values = rule.publish(np.append(w, cw), rows.shape[0], f_eff, options)
        choice = Choice(values[:-1], float(values[-1]))
        return choice, np.matmul(ring.encode_weights(choice.weights), rows)
    total = np.matmul(w, rows)
    if run.center is not None:
        total += np.uint64(cw) * run.center
    return None, total


def refuse_seed_option(options: Mapping[str, Any]) -> None:
    """A clear error for the old ``seed=`` keyword, which would otherwise read as a rule option."""
    if "seed" in options:
        raise TypeError("seed= is now insecure_test_seed=: a fixed seed is for tests only (by default every seed is "
                        "fresh), since one seed on two inputs reuses every mask")


def make_result(out: np.ndarray, choice: Choice | None, view: Any, participants: tuple[int, ...], n: int,
                stats: Stats, rule: str, f: int, rejected: Mapping[int, str] | None = None,
                reveal: str = modes.DEFAULT_MODE, scale: Scale | None = None,
                excluded: Mapping[int, str] | None = None) -> AggregateResult:
    idx = np.array(participants, dtype=np.int64)
    weights = None
    if choice is not None and reveal != "aggregate":
        weights = np.zeros(n)
        weights[idx] = choice.weights
    revealed = {}
    for key in (DISTANCES, NORMS) if reveal == modes.DEFAULT_MODE and view is not None else ():
        value = getattr(view, key)
        if value is not None:
            full = np.full((n, n) if value.ndim == 2 else (n,), np.nan)
            full[np.ix_(idx, idx) if value.ndim == 2 else idx] = value
            revealed[key] = full
    return AggregateResult(out, weights, revealed.get(DISTANCES), stats, revealed, participants,
                           choice.center_weight if choice is not None else 0.0, rule, f,
                           dict(sorted((rejected or {}).items())), reveal, n,
                           scale.frac_bits if scale else None, scale.norm_bound if scale else None,
                           scale.from_data if scale else False)


def check_drop(drop: Mapping[int, str] | None, n: int) -> dict[int, str]:
    drop = dict(drop or {})
    for i, where in drop.items():
        if not 0 <= int(i) < n or where not in DROP_TARGETS:
            raise ValueError(f"drop maps a worker in 0..{n - 1} to one of {DROP_TARGETS}; got {i}: {where!r}")
    return drop


@contextmanager
def _phase(stats: Stats, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stats.seconds[name] += time.perf_counter() - t0
