"""Ring attacks: the wrap-around each one relies on (checked with the old protocol's mod-2^64 arithmetic),
and training runs in which the input validity check rejects them, secure and plaintext alike."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

import secrobust
from secrobust.primitives import ring
from secrobust.train import attacks, runner
from secrobust.train.attacks import RING_ATTACKS, RING_MIX, is_ring_attack, make_attack
from secrobust.train.config import ExperimentConfig, RunSpec
from secrobust.train.data import Dataset
from secrobust.train.experiment import run_grid
from secrobust.train.runner import RunResult, run

F = 20
HALF = 2**63
RULES = ("krum", "multi-krum", "geomed", "mean")


def _rows(h: int = 16, f: int = 4, d: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.05, 0.1, size=(h, d)), rng.normal(0.05, 0.1, size=(f, d))


def _sq(a: np.ndarray) -> int:
    """The squared norm of a uint64 vector in Z_2^64, as the old protocol computed it."""
    return int(np.sum(a * a, dtype=np.uint64))


def _signed(v: int) -> int:
    return v - 2**64 if v >= HALF else v


def _ring_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed readings of ||x_i - y_j||^2 mod 2^64, (len(x), len(y)) as Python ints."""
    return np.array([[_signed(_sq(a - b)) for b in y] for a in x], dtype=object)


def _old_krum(rows: np.ndarray, f: int, frac_bits: int) -> tuple[int, np.ndarray]:
    """Krum with distances computed and decoded in Z_2^64 and no check: (chosen row, revealed aggregate)."""
    n = rows.shape[0]
    dist = _ring_distances(rows, rows).astype(np.float64) / 2.0 ** (2 * frac_bits)
    scores = [np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)]
    chosen = int(np.argmin(scores))
    total = ring.encode_weights(np.array([1.0]))[0] * rows[chosen]
    return chosen, ring.decode(total, frac_bits + ring.WEIGHT_FRAC_BITS)


@pytest.mark.parametrize("name", sorted(RING_ATTACKS))
def test_every_ring_attack_returns_f_uint64_rows_deterministically_for_numpy_and_torch(name: str) -> None:
    honest, own = _rows()
    before = honest.copy(), own.copy()
    attack = make_attack(name)

    first = attack(honest, own, np.random.default_rng(7), F)
    again = attack(torch.from_numpy(honest), torch.from_numpy(own), np.random.default_rng(7), F)

    assert is_ring_attack(name) and first.shape == (4, 40) and first.dtype == np.uint64
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(honest, before[0])
    np.testing.assert_array_equal(own, before[1])
    assert np.linalg.norm(ring.to_signed(first).astype(np.float64), axis=1).min() > ring.SCALED_NORM_BOUND


@pytest.mark.parametrize("agree", [True, False], ids=["agreeing-coordinate", "gf2-dependency"])
def test_high_bits_makes_every_old_squared_distance_negative_and_old_krum_return_the_target(agree: bool) -> None:
    honest, own = _rows()
    if agree:
        honest[:, 3] = 0.25
    y = ring.encode(honest, F)

    rows = attacks.high_bits(honest, own, np.random.default_rng(0), F, scale=10.0)

    assert (_ring_distances(rows, y) < 0).all()
    offset = rows[0] - ring.encode_unchecked(-10.0 * honest.mean(axis=0), F)
    high = np.flatnonzero(offset >= np.uint64(1 << 61))
    assert set(offset[high].tolist()) <= {2**62, 2**62 + 1, 2**62 - 1} and high.size >= 1
    assert not agree or high.tolist() == [3]
    chosen, aggregate = _old_krum(np.vstack([rows, y]), 4, F)
    assert chosen < 4
    np.testing.assert_allclose(aggregate, -10.0 * honest.mean(axis=0), rtol=0, atol=1.5 * 2.0**-F)


def test_zero_wrap_leaves_every_squared_distance_unchanged_mod_2_64_while_far_in_every_coordinate() -> None:
    honest, own = _rows()
    honest[:, [5, 6]] = 0.0
    y = ring.encode(honest, F)
    base = ring.encode_unchecked(honest.mean(axis=0), F)

    rows = attacks.zero_wrap(honest, own, np.random.default_rng(0), F)

    np.testing.assert_array_equal(_ring_distances(rows, y), _ring_distances(base[None, :], y).repeat(4, axis=0))
    offset = rows[0] - base
    assert (offset[[5, 6]] == np.uint64(2**32)).all()
    assert all(int(v) >= 2**32 and int(v) & (int(v) - 1) == 0 for v in offset)
    true = np.linalg.norm(ring.to_signed(rows[0]).astype(np.float64) - ring.to_signed(y).astype(np.float64), axis=1)
    assert true.min() / 2.0**F >= 2.0 ** (32 - F)


def test_norm_wrap_has_a_squared_norm_in_the_upper_half_of_the_ring() -> None:
    honest, own = _rows(d=4810)
    y = ring.encode(honest, F)

    rows = attacks.norm_wrap(honest, own, np.random.default_rng(0), F)

    exact = sum(int(v) ** 2 for v in ring.to_signed(rows[0]))
    assert HALF <= exact < 2**64
    assert _signed(_sq(rows[0])) < 0
    assert (_ring_distances(rows[:1], y) < 0).all()
    cosine = ring.to_signed(rows[0]).astype(np.float64) @ honest.mean(axis=0)
    assert cosine < 0


def test_random_ring_words_cover_the_whole_ring_and_follow_the_seed() -> None:
    honest, own = _rows(d=5000)

    rows = attacks.random_ring(honest, own, np.random.default_rng(0), F)
    other = attacks.random_ring(honest, own, np.random.default_rng(1), F)

    top = (rows >> np.uint64(63)).astype(np.float64)
    assert abs(top.mean() - 0.5) < 0.02
    assert (rows.astype(np.float64) / 2.0**64).mean() == pytest.approx(0.5, abs=0.01)
    assert not np.array_equal(rows, other)


def test_ring_overflow_sends_each_of_the_four_ring_attacks_every_round() -> None:
    honest, own = _rows()
    fixed = {name: RING_ATTACKS[name](honest, own[:1], np.random.default_rng(0), F)[0]
             for name in ("high-bits", "zero-wrap", "norm-wrap")}

    kinds = []
    for seed in range(8):
        rows = attacks.ring_overflow(honest, own, np.random.default_rng(seed), F)
        kind = [next((k for k, v in fixed.items() if np.array_equal(r, v)), "random-ring") for r in rows]
        assert sorted(kind) == sorted(RING_MIX)
        kinds.append(tuple(kind))
    assert len(set(kinds)) > 1


def test_ring_attacks_have_options_only_where_documented() -> None:
    assert attacks.attack_options("high-bits") == {"scale": 10.0}
    assert all(attacks.attack_options(name) == {} for name in RING_ATTACKS if name != "high-bits")
    assert not is_ring_attack("large-norm")
    with pytest.raises(ValueError, match=r"allowed: none, .*large-norm, .*zero-wrap, high-bits, norm-wrap"):
        make_attack("high-bit")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['frac_bits'\]"):
        make_attack("zero-wrap", frac_bits=20)


def test_without_the_validity_check_zero_wrap_takes_weight_and_with_it_none() -> None:
    honest, own = _rows()
    honest[:, :10] = 0.0
    rows = attacks.zero_wrap(honest, own, np.random.default_rng(0), F)
    x = np.vstack([own, honest])
    byz = {j: rows[j] for j in range(4)}

    old = secrobust.plain_aggregate(x, "multi-krum", 4, ring_rows=byz, check_inputs=False)
    new = secrobust.plain_aggregate(x, "multi-krum", 4, ring_rows=byz, insecure_test_seed=1)

    assert old.weights[:4].sum() > 0
    assert np.abs(old.aggregate[:10]).max() > 100
    assert set(new.rejected) == {0, 1, 2, 3} and not new.weights[:4].any()


@pytest.fixture
def train(digits: Dataset, one_spec: Callable[..., RunSpec]) -> Callable[..., RunResult]:
    def go(rule: str, attack: str, secure: bool, rounds: int = 2) -> RunResult:
        grid = {"rules": [rule], "attacks": [attack], "secure": [secure]}
        return run(one_spec(grid=grid, train={"rounds": rounds, "eval_every": 1}), dataset=digits)

    return go


@pytest.mark.parametrize("attack", sorted(RING_ATTACKS))
def test_the_check_rejects_every_ring_attack_and_secure_runs_equal_their_plaintext_twins(
    train: Callable[..., RunResult], attack: str
) -> None:
    for rule in RULES:
        secure = train(rule, attack, True)
        plain = train(rule, attack, False)

        assert secure.byzantine == plain.byzantine and len(secure.byzantine) == 4
        np.testing.assert_array_equal(secure.weights, plain.weights)
        assert secure.history == plain.history
        assert not secure.weights[:, secure.byzantine].any()
        assert secure.rejected.tolist() == [4, 4] and secure.rejected_honest == 0
        record = secure.record()
        assert record["byzantine_weight"] == 0.0
        assert record["rejected_total"] == 8 and record["rejected_honest"] == 0
        assert [h["rejected"] for h in record["history"]] == [0, 4, 4]


def test_ring_rows_go_as_ring_rows_and_float_attacks_never_send_them(
    train: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = runner.engine_aggregate

    def spy(updates: np.ndarray, rule: str, f: int, **kwargs: Any) -> Any:
        calls.append({"updates": updates.copy(), **kwargs})
        return real(updates, rule, f, **kwargs)

    monkeypatch.setattr(runner, "engine_aggregate", spy)

    for secure in (True, False):
        result = train("krum", "high-bits", secure, rounds=1)
        call = calls[-1]
        assert call["unchecked"] == ()
        assert sorted(call["ring_rows"]) == result.byzantine
        assert all(row.dtype == np.uint64 and row.shape == (650,) for row in call["ring_rows"].values())
        assert not call["updates"][result.byzantine].any()
    train("krum", "sign-flip", False, rounds=1)
    assert "ring_rows" not in calls[-1] and calls[-1]["unchecked"] == tuple(result.byzantine)


def test_the_grid_summary_and_table_report_the_rejections(
    small_config: Callable[..., ExperimentConfig], tmp_path: Path
) -> None:
    buffer = io.StringIO()
    cfg = small_config(
        train={"rounds": 2, "eval_every": 1},
        grid={"rules": ["mean", "krum"], "attacks": ["none", "ring-overflow"], "secure": [True, False]},
    )

    summary = run_grid(cfg, tmp_path, console=Console(file=buffer, width=200), progress=False, plots=False)

    rows = {(r["rule"], r["attack"], r["secure"]): r for r in summary["final_accuracy"]}
    for rule in ("mean", "krum"):
        attacked = rows[(rule, "ring-overflow", True)]
        assert attacked["rejected_per_round"] == 4.0 and attacked["byzantine_weight"] == 0.0
        assert attacked["final_accuracy"] == rows[(rule, "ring-overflow", False)]["final_accuracy"]
        assert rows[(rule, "none", True)]["rejected_per_round"] == 0.0
    printed = buffer.getvalue()
    assert "ring-overflow" in printed
    assert ("input validity check, f = 4, ring-overflow: 4 workers rejected per round, "
            "Byzantine weight at most 0.000, 0 honest workers rejected") in printed
    assert "f = 4, none" not in printed
