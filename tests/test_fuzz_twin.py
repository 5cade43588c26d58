"""A differential fuzzer over the whole option space: the secure round and its plaintext twin agree on every
input, refusals included.

For each drawn case (rule x reveal mode x pre-aggregation x norm_bound x cclip center x tau x DP noise x
dropouts x rejected ring attackers x several rounds of one ``Cluster``), either both paths refuse with the
same exception type and message, or both succeed with equal weights, center weight, rejections and
aggregate, bit for bit. Clipping rules with a public tau are also held against exact float clipping
written here, since the twin could share a bug with the circuit.

Normalisations, each a property of the protocol rather than a difference: a secure error about a round's
cohort carries a "round N: " prefix the twin has no round for; a round with dropouts is compared with the
twin on the rows that took part (the twin has no network), and there "both refuse" is the requirement,
since the secure round learns of the missing workers only after the rule's own checks on n.

Profiles: the default suite runs ``CI_EXAMPLES`` derandomised cases (the same every run: CI never flakes
on a draw); ``-m slow`` runs ``SLOW_SHARDS`` x ``SLOW_EXAMPLES`` random cases (xdist spreads the shards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import secrobust
from secrobust.primitives import ring
from secrobust.updates import safe_center

RULES = ("mean", "krum", "multi-krum", "geomed", "mda", "norm-clip", "cclip", "median", "trimmed-mean", "bulyan")
MODES = ("distances", "weights", "aggregate")
PRES = (None, "nnm", "bucketing", "arc")
MODES_OF = {rule: MODES for rule in RULES} | {"geomed": ("distances",), "median": ("aggregate",),
                                              "trimmed-mean": ("aggregate",), "bulyan": ("aggregate",)}
NEEDS = {rule: (lambda f: 2 * f + 1) for rule in RULES} | {
    "mean": lambda f: f + 1, "krum": lambda f: 2 * f + 3, "multi-krum": lambda f: 2 * f + 3,
    "bulyan": lambda f: 4 * f + 3}
CI_EXAMPLES = 60
SLOW_SHARDS = 8
SLOW_EXAMPLES = 1250
_ROUND_PREFIX = re.compile(r"^round \d+: ")


@dataclass(frozen=True)
class Round:
    """One round of a case: the updates and what happens to them."""

    x: np.ndarray
    ring_rows: dict[int, np.ndarray]
    unchecked: tuple[int, ...]
    drop: dict[int, str]
    center: np.ndarray | None
    dp_noise_std: float


@dataclass(frozen=True)
class Case:
    rule: str
    reveal: str
    f: int
    frac_bits: int
    norm_bound: float | None
    options: dict[str, Any]
    rounds: tuple[Round, ...]
    seed: int
    check_inputs: bool = True
    min_participants: int = 5
    notes: list[str] = field(default_factory=list)


def _ring_attack(rng: np.random.Generator, d: int, kind: int) -> np.ndarray:
    """A Byzantine worker's exact ring words: a wrap past 2^63, a 2^32 spike, or uniform words."""
    row = np.zeros(d, dtype=np.uint64)
    if kind == 0:
        row[0] = np.uint64(1 << 63)
    elif kind == 1:
        row[int(rng.integers(d))] = np.uint64(1 << 32)
    else:
        row = rng.integers(0, 2**64 - 1, size=d, dtype=np.uint64, endpoint=True)
    return row


@st.composite
def cases(draw: st.DrawFn) -> Case:
    valid = draw(st.integers(0, 5)) > 0          # most cases are rounds that should run; the rest, anything
    rule = draw(st.sampled_from(RULES))
    reveal = draw(st.sampled_from(MODES_OF[rule] if valid else MODES))
    f = draw(st.integers(0, 2 if valid else 3))
    min_participants = draw(st.sampled_from((2, 5)))
    low = max(min_participants, NEEDS[rule](f)) if valid else 3
    n = draw(st.integers(low, low + 4))
    d = draw(st.integers(2, 24))
    frac_bits = draw(st.sampled_from((12, 16, 20)))
    scale = draw(st.sampled_from((0.05, 1.0, 20.0)))
    norm_bound = draw(st.one_of(st.none(), st.sampled_from((0.5, 1.0, 3.0))).map(
        lambda b: None if b is None else b * scale * 1.2))
    if norm_bound is not None and norm_bound > ring.max_norm(frac_bits, d):
        norm_bound = None
    options: dict[str, Any] = {}
    pre = draw(st.sampled_from(PRES if not valid or reveal == "distances" else (None,)))
    if valid and rule == "cclip" and pre == "arc":
        pre = None
    if pre is not None:
        options["pre"] = pre
        if pre == "bucketing":
            options["s"] = draw(st.integers(1, 3))
    if rule in ("norm-clip", "cclip") and draw(st.booleans()):
        options["tau"] = draw(st.sampled_from((0.1, 0.5, 1.0, 4.0))) * scale
    if rule == "multi-krum" and draw(st.booleans()):
        options["m"] = draw(st.integers(1, n))
    if rule == "cclip" and reveal == "distances" and draw(st.booleans()):
        options["iterations"] = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    limit = min(ring.max_norm(frac_bits, d), norm_bound if norm_bound is not None else np.inf) * 0.999
    rounds = []
    for _ in range(draw(st.integers(1, 3))):
        x = rng.normal(0, 1, (n, d))
        x *= (scale * rng.uniform(0.2, 1.0, n) / np.linalg.norm(x, axis=1))[:, None]
        if draw(st.booleans()):
            far = rng.normal(0, 1, d)
            x[0] = far / np.linalg.norm(far) * min(10 * scale, limit)
        over = np.linalg.norm(x, axis=1) > limit
        x[over] *= (limit / np.linalg.norm(x[over], axis=1))[:, None]
        byz = draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True))
        ring_rows = {i: _ring_attack(rng, d, draw(st.integers(0, 2))) for i in byz[:1]}
        unchecked = tuple(i for i in byz[1:])
        for i in unchecked:
            x[i] *= draw(st.sampled_from((1.0, 100.0)))
        drop = {}
        if draw(st.integers(0, 3)) == 0:
            drop = {int(rng.integers(n)): draw(st.sampled_from(("S0", "S1", "both")))}
        center = None
        if rule == "cclip" and draw(st.booleans()):
            v = rng.normal(0, 1, d)
            cnorm = draw(st.sampled_from((0.0, 0.5, 2.0, 6.0))) * (norm_bound or scale)
            center = v / np.linalg.norm(v) * min(cnorm, ring.max_norm(frac_bits, d) * 0.999)
        dp = draw(st.sampled_from((0.0, 0.0, 1e-3 * scale)))
        rounds.append(Round(x, ring_rows, unchecked, drop, center, dp))
    return Case(rule, reveal, f, frac_bits, norm_bound, options, tuple(rounds), seed,
                min_participants=min_participants)


def _outcome(call) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (ValueError, TypeError, ArithmeticError, secrobust.errors.ProtocolError) as exc:
        return "error", (type(exc).__name__, _ROUND_PREFIX.sub("", str(exc)))


def _exact_clip(rows: np.ndarray, rule: str, tau: float, center: np.ndarray | None) -> np.ndarray:
    """One step of norm-clip or centered clipping in float, from its definition."""
    v = np.zeros(rows.shape[1]) if center is None or rule == "norm-clip" else center
    y = rows - v
    norms = np.linalg.norm(y, axis=1)
    factors = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
    return v + (factors[:, None] * y).sum(axis=0) / rows.shape[0]


def run_case(case: Case) -> None:
    cluster = secrobust.Cluster(insecure_test_seed=case.seed)
    previous: np.ndarray | None = None
    for rnd in case.rounds:
        round_id = cluster.next_round
        n, d = rnd.x.shape
        options = dict(case.options)
        if rnd.center is not None:
            options["center"] = rnd.center
        common = dict(frac_bits=case.frac_bits, dp_noise_std=rnd.dp_noise_std, norm_bound=case.norm_bound,
                      min_participants=case.min_participants, reveal=case.reveal, check_inputs=case.check_inputs)
        secure = _outcome(lambda: cluster.run_round(rnd.x, case.rule, case.f, unchecked=rnd.unchecked,
                                                    ring_rows=rnd.ring_rows, drop=rnd.drop, **common, **options))
        kept = [i for i in range(n) if i not in rnd.drop]
        index = {w: k for k, w in enumerate(kept)}
        twin_options = dict(options)
        if case.rule == "cclip" and rnd.center is None and previous is not None:
            twin_options["center"] = safe_center(previous, case.frac_bits)
        twin = _outcome(lambda: secrobust.plain_aggregate(
            rnd.x[kept], case.rule, case.f, insecure_test_seed=case.seed, round_id=round_id,
            unchecked=[index[i] for i in rnd.unchecked if i in index],
            ring_rows={index[i]: r for i, r in rnd.ring_rows.items() if i in index}, **common, **twin_options))
        if rnd.drop and secure[0] == "error":
            assert twin[0] == "error" or len(kept) < case.min_participants or _cohort_refusal(secure[1]), (secure, twin)
            if secure[0] == "error":
                continue
        event(f"{case.rule}@{case.reveal}: {secure[0]}" + (f" ({secure[1][1][:40]})" if secure[0] == "error" else ""))
        assert secure[0] == twin[0], f"secure {secure[0]}: {secure[1]!r}; twin {twin[0]}: {twin[1]!r}"
        if secure[0] == "error":
            assert secure[1] == twin[1]
            continue
        got, want = secure[1], twin[1]
        previous = got.aggregate
        assert np.array_equal(got.aggregate, want.aggregate)
        assert got.center_weight == want.center_weight
        assert {kept[i] for i in want.rejected} == set(got.rejected)
        if got.weights is None:
            assert want.weights is None
        else:
            assert np.array_equal(got.weights[kept], want.weights)
            assert not got.weights[[i for i in range(n) if i not in kept]].any()
        tau = case.options.get("tau")
        if (case.rule in ("norm-clip", "cclip") and tau is not None and not rnd.dp_noise_std
                and case.options.get("pre") is None and case.options.get("iterations", 1) == 1):
            rows = ring.decode(ring.encode(rnd.x[list(got.participants)], case.frac_bits), case.frac_bits)
            center = twin_options.get("center")
            if center is not None:
                center = ring.decode(ring.encode(np.asarray(center), case.frac_bits), case.frac_bits)
            want_float = _exact_clip(rows, case.rule, tau, center)
            scale = max(1.0, float(np.abs(rows).max()), float(np.abs(want_float).max()))
            assert np.max(np.abs(got.aggregate - want_float)) <= scale * 2.0**-22 + n * 2.0**-case.frac_bits


def _cohort_refusal(error: tuple[str, str]) -> bool:
    """The secure round's refusal for too few workers after dropouts (the twin sees only those who took part)."""
    return "workers" in error[1] or "needs n" in error[1] or "participants" in error[1]


_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)


@settings(max_examples=CI_EXAMPLES, derandomize=True, **_COMMON)
@given(cases())
def test_secure_round_and_twin_agree_or_refuse_alike(case: Case) -> None:
    run_case(case)


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SLOW_SHARDS))
def test_secure_round_and_twin_agree_or_refuse_alike_long(shard: int) -> None:
    @hypothesis_seed(20261207 + shard)
    @settings(max_examples=SLOW_EXAMPLES, derandomize=False, database=None, **_COMMON)
    @given(cases())
    def check(case: Case) -> None:
        run_case(case)

    check()
