"""Training over the deployment: the runner's aggregation step sent through gRPC gives the same history
as the in-process engine (the ``demo --transport grpc`` path)."""

from __future__ import annotations

import numpy as np
import pytest

from secrobust.deploy.local import LocalDeployment, LocalOptions


def test_a_short_training_run_over_grpc_matches_the_in_process_run(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    from secrobust.train import runner
    from secrobust.train.config import demo_config

    cfg = demo_config().replace(train={"rounds": 3})
    spec = next(s for s in cfg.runs() if s.secure and s.rule == "krum" and s.attack == "alie")
    want = runner.run(spec)
    with LocalDeployment(spec.train.workers, tmp_path, LocalOptions(workers_per_process=5)) as dep:
        monkeypatch.setattr(runner, "engine_aggregate",
                            lambda updates, rule, f, *, secure, **kw: dep.aggregate(updates, rule, f, **kw))
        got = runner.run(spec)
    assert got.history == want.history
    assert np.array_equal(got.weights, want.weights)
