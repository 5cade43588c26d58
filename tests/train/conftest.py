"""Shared fixtures for the training package: the digits data set and a small run spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from secrobust.train.config import ExperimentConfig, RunSpec, parse_config
from secrobust.train.data import Dataset, load_digits

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits(seed=0)


def _small_config(**sections: dict[str, Any]) -> ExperimentConfig:
    """A digits/logreg config with 20 workers and few rounds; ``sections`` override tables."""
    table: dict[str, Any] = {
        "name": "test",
        "data": {"dataset": "digits"},
        "model": {"name": "logreg"},
        "train": {"workers": 20, "rounds": 10, "batch_size": 32, "lr": 0.5, "eval_every": 5},
        "grid": {"rules": ["mean"], "attacks": ["none"], "f": [4], "seeds": [0], "secure": [False]},
    }
    for name, values in sections.items():
        table[name] = {**table.get(name, {}), **values}
    return parse_config(table)


def _one_spec(**sections: dict[str, Any]) -> RunSpec:
    specs = _small_config(**sections).runs()
    assert len(specs) == 1
    return specs[0]


@pytest.fixture
def small_config() -> Callable[..., ExperimentConfig]:
    """``small_config(train={"rounds": 3}, ...)``: the small config with tables overridden."""
    return _small_config


@pytest.fixture
def one_spec() -> Callable[..., RunSpec]:
    """``one_spec(grid={...}, ...)``: the single run of a small config whose grid has one point."""
    return _one_spec
