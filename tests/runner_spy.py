"""A recorder for the training runner's engine calls, shared by the runner and DP tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from secrobust.train import runner


class EngineSpy:
    """Wraps ``runner.engine_aggregate`` for one test. Each call is recorded as a dict: the rows (a copy) and
    their count ``k``, ``f``, the per-server noise ``sigma``, what was ``rejected``, the returned ``aggregate``,
    and every keyword argument. ``replace(i, result)`` may swap the i-th call's result."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, replace: Callable[[int, Any], Any] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.real = runner.engine_aggregate
        self.replace = replace
        monkeypatch.setattr(runner, "engine_aggregate", self)

    def __call__(self, updates: np.ndarray, rule: str, f: int, **kwargs: Any) -> Any:
        result = self.real(updates, rule, f, **kwargs)
        self.calls.append({**kwargs, "updates": updates.copy(), "k": len(updates), "f": f,
                           "sigma": kwargs.get("dp_noise_std", 0.0), "rejected": dict(result.rejected or {}),
                           "aggregate": np.array(result.aggregate)})
        if self.replace is not None:
            result = self.replace(len(self.calls) - 1, result)
        return result
