"""An unchecked row (a simulated Byzantine worker's float row) bypasses the encoder's range, not finiteness."""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.deploy.worker import WorkerInput, encode_input

X = np.random.default_rng(0).normal(size=(7, 5)) * 0.1


@pytest.mark.parametrize(("value", "what"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_a_non_finite_unchecked_row_is_refused_naming_the_worker(value: float, what: str) -> None:
    x = X.copy()
    x[5, 3] = value
    message = rf"^update 5 contains {what} \(entry 3\); an unchecked update must be finite"

    with pytest.raises(ValueError, match=message):
        secrobust.aggregate(x, "mean", 0, unchecked=[1, 5])
    with pytest.raises(ValueError, match=message):
        secrobust.plain_aggregate(x, "mean", 0, unchecked=[1, 5])


def test_a_worker_process_refuses_a_non_finite_unchecked_update() -> None:
    row = X[0].copy()
    row[2] = np.nan

    with pytest.raises(ValueError, match=r"^encoder refused the update: update contains NaN \(entry 2\)"):
        encode_input(WorkerInput(row, unchecked=True), 5, 20)


def test_a_large_finite_unchecked_row_still_goes_through() -> None:
    x = X.copy()
    x[2] *= 1e9

    result = secrobust.plain_aggregate(x, "krum", 1, unchecked=[2], check_inputs=False)

    assert result.weights[2] == 0.0
