"""The model, the data split and local training: scikit-learn's digits (shipped with scikit-learn) and
secrobust.train's small CNN, as a plain PyTorch Flower app would have them."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from secrobust.train.data import load_digits, partition_iid
from secrobust.train.models import build_model


def app_config(context: Any) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` as ``flwr run`` passes it, over ``$SECROBUST_EXAMPLE_CONFIG`` (JSON; run.py
    sets it, since ``run_simulation`` passes no run config)."""
    return {**json.loads(os.environ.get("SECROBUST_EXAMPLE_CONFIG", "{}")), **dict(context.run_config)}


@lru_cache(maxsize=1)
def data(num_partitions: int):
    ds = load_digits(seed=0)
    return ds, partition_iid(len(ds.y_train), num_partitions, np.random.default_rng(0))


def model() -> torch.nn.Module:
    ds, _ = data(1)
    return build_model("cnn", ds.input_shape, ds.n_classes, seed=0)


def train(net: torch.nn.Module, pid: int, num_partitions: int, steps: int, lr: float, flip_labels: bool,
          seed: int) -> tuple[float, int]:
    """Local SGD on partition ``pid``; (mean loss, examples)."""
    torch.set_num_threads(1)
    ds, parts = data(num_partitions)
    idx = parts[pid]
    x, y = torch.from_numpy(ds.x_train[idx]), ds.y_train[idx]
    y = torch.from_numpy(9 - y if flip_labels else y)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        batch = torch.from_numpy(rng.choice(len(idx), size=min(32, len(idx)), replace=False))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[batch]), y[batch])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)), len(idx)


def test(net: torch.nn.Module) -> tuple[float, float]:
    ds, _ = data(1)
    with torch.no_grad():
        logits = net(torch.from_numpy(ds.x_test))
        y = torch.from_numpy(ds.y_test)
        return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))
