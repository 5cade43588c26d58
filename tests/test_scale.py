"""Scale is a setting, not a wall (issue: a newcomer's first day): F follows the bound, rows above it get the
caller's policy, and the small cuts of a first session."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import secrobust
from secrobust.cli import app
from secrobust.primitives import ring
from secrobust.scale import fit_frac_bits, honest_norms


def _float_krum(x: np.ndarray, f: int) -> int:
    g = x @ x.T
    sq = np.diag(g)
    dist = sq[:, None] + sq[None, :] - 2 * g
    return int(np.argmin(np.sort(dist, axis=1)[:, 1:x.shape[0] - f - 1].sum(axis=1)))


@pytest.mark.parametrize("norm", [0.01, 1.0, 200.0, 1e4, 1e6])
def test_updates_of_any_norm_aggregate_with_no_manual_step(norm: float) -> None:
    rng = np.random.default_rng(int(np.log10(norm) + 3))
    n, d, f = 12, 500, 2
    x = rng.normal(0, 1, (n, d))
    x *= (norm * rng.uniform(0.8, 1.0, n) / np.linalg.norm(x, axis=1))[:, None]
    x[:f] *= -3 if norm * 3 <= ring.max_norm(0, d) else -1
    res = secrobust.aggregate(x, "krum", f, insecure_test_seed=1)
    twin = secrobust.plain_aggregate(x, "krum", f, insecure_test_seed=1)
    assert np.array_equal(res.aggregate, twin.aggregate)
    assert res.frac_bits == fit_frac_bits(float(np.linalg.norm(x, axis=1).max()), d)
    assert res.bound_from_data == (res.frac_bits < 20)
    assert res.resolution == 2.0 ** -res.frac_bits
    assert res.norm_bound >= np.linalg.norm(x, axis=1).max()
    chosen = int(np.argmax(res.weights))
    assert chosen == _float_krum(x, f)
    assert np.max(np.abs(res.aggregate - x[chosen])) <= res.resolution


def test_scaling_by_2_to_the_k_is_lowering_f_by_k() -> None:
    x = np.random.default_rng(0).normal(0, 1, (8, 64))
    a = secrobust.aggregate(x, "multi-krum", 1, frac_bits=20, insecure_test_seed=2)
    b = secrobust.aggregate(x * 2.0**5, "multi-krum", 1, frac_bits=15, insecure_test_seed=2)
    assert np.array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.aggregate * 2.0**5, b.aggregate)


def test_a_bound_sets_f_and_frac_bits_stays_an_override() -> None:
    x = np.random.default_rng(1).normal(0, 1, (8, 100))
    assert secrobust.aggregate(x, "mean", norm_bound=1000.0, over_bound="clip", insecure_test_seed=1).frac_bits == 17
    assert secrobust.aggregate(x, "mean", norm_bound=1.0, over_bound="clip", insecure_test_seed=1).frac_bits == 20
    assert secrobust.aggregate(x, "mean", frac_bits=12, insecure_test_seed=1).frac_bits == 12


def test_the_error_names_every_bad_row_and_what_fits() -> None:
    x = np.random.default_rng(2).normal(0, 1, (20, 1000))
    x *= (np.linspace(150, 800, 20) / np.linalg.norm(x, axis=1))[:, None]
    with pytest.raises(ValueError) as info:
        secrobust.aggregate(x, "krum", 4, frac_bits=20, over_bound="error")
    message = str(info.value)
    assert message.startswith("20 update(s) above the bound 128 at frac_bits=20: 0 (150), 1 (184.211)")
    assert "and 12 more" in message and "norm_bound=800 holds them" in message
    assert "frac_bits <= 17 fits" in message
    assert fit_frac_bits(800.0, 1000) == 17


@pytest.mark.parametrize("policy", ["clip", "exclude", "error"])
def test_the_over_bound_policies_and_their_twins(policy: str) -> None:
    x = np.random.default_rng(3).normal(0, 1, (8, 40))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[4] *= 5.0
    outcome = []
    for run in (secrobust.aggregate, secrobust.plain_aggregate):
        try:
            outcome.append(run(x, "mean", 1, norm_bound=1.0, over_bound=policy, insecure_test_seed=3))
        except ValueError as exc:
            outcome.append(str(exc))
    if policy == "error":
        assert outcome[0] == outcome[1] and "4 (5)" in outcome[0]
        return
    got, twin = outcome
    assert np.array_equal(got.aggregate, twin.aggregate) and got.rejected == twin.rejected
    if policy == "clip":
        assert got.rejected == {}
        clipped = x.copy()
        clipped[4] /= 5.0
        np.testing.assert_allclose(got.aggregate, clipped.mean(axis=0), atol=1e-5)
    else:
        assert list(got.rejected) == [4]
    with pytest.raises(ValueError, match="over_bound must be one of exclude, clip, error"):
        secrobust.aggregate(x, "mean", 1, over_bound="drop")


def test_unknown_keywords_get_a_did_you_mean() -> None:
    x = np.random.default_rng(4).normal(0, 1, (8, 10))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['revael'\].*did you mean 'reveal'\?"):
        secrobust.aggregate(x, "krum", 1, revael="aggregate")
    with pytest.raises(ValueError, match=r"did you mean 'iterations'\?"):
        secrobust.plain_aggregate(x, "cclip", 1, iteration=2)


def test_a_transposed_input_warns_and_names_dot_t() -> None:
    x = np.random.default_rng(5).normal(0, 0.01, (30, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        secrobust.plain_aggregate(x, "mean", 0)
    assert any("updates.T" in str(w.message) for w in caught)


def test_the_only_mode_a_rule_has_is_its_default() -> None:
    x = np.random.default_rng(6).normal(0, 1, (7, 20))
    res = secrobust.aggregate(x, "median", 1, insecure_test_seed=1)
    assert res.reveal == "aggregate"
    assert secrobust.aggregate(x, "krum", 1, insecure_test_seed=1).reveal == "distances"


def test_the_cli_reads_torch_files_and_reports_the_scale(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(10, 200, dtype=torch.float64) * 50
    path = tmp_path / "u.pt"
    torch.save(x, path)
    result = CliRunner().invoke(app, ["aggregate", "--updates", str(path), "--rule", "krum", "--f", "2"])
    assert result.exit_code == 0, result.output
    assert "scale: frac_bits=" in result.output and "data-dependent bound" in result.output
    torch.save({"not": "a tensor"}, tmp_path / "d.pt")
    bad = CliRunner().invoke(app, ["aggregate", "--updates", str(tmp_path / "d.pt")])
    assert bad.exit_code == 2 and "holds a dict, not one tensor" in bad.stderr


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 11), st.integers(1, 40), st.integers(-5, 200), st.integers(0, 2**32 - 1))
def test_honest_norms_equal_numpys_norm_bit_for_bit(n: int, d: int, exponent: int, seed: int) -> None:
    """The one-pass norms decide F and the over-bound rows, so they must be np.linalg.norm's exactly,
    NaN, infinity and overflowing rows included."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 10.0 ** exponent
    for _ in range(int(rng.integers(0, 3))):
        x[rng.integers(n), rng.integers(d)] = rng.choice([np.nan, np.inf, -np.inf, 1e300])
    honest = rng.random(n) < 0.8
    want = np.full(n, np.nan)
    finite = honest & np.isfinite(x).all(axis=1)
    with np.errstate(over="ignore"):
        want[finite] = np.linalg.norm(x[finite], axis=1)
        got, got_finite = honest_norms(x, honest)
    assert np.array_equal(got_finite, finite)
    assert np.array_equal(got, want, equal_nan=True)
