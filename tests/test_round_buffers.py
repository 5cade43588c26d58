"""A Cluster keeps its large matrices across rounds (docs/performance.md): reused while (n, d) stays, remade
when it changes, and no round reads what an earlier one left in them."""

import numpy as np

import secrobust
from secrobust import api

SEED = b"buffers-seed-000"


def test_rounds_on_kept_buffers_equal_their_twins_across_shapes_and_drops():
    cluster = api.Cluster(insecure_test_seed=SEED)
    rng = np.random.default_rng(11)
    seen = []
    shapes = [(7, 40, {}), (7, 40, {2: "S1", 4: "S0"}), (7, 40, {}), (8, 33, {0: "S1", 1: "both"})]
    for round_id, (n, d, drop) in enumerate(shapes):
        x = rng.standard_normal((n, d)) * 0.1
        got = cluster.run_round(x, "krum", 1, drop=drop)
        kept = [i for i in range(n) if i not in drop]
        twin = secrobust.plain_aggregate(x[kept], "krum", 1, insecure_test_seed=SEED, round_id=round_id)
        np.testing.assert_array_equal(got.aggregate, twin.aggregate)
        seen.append((cluster.s1._buffers["s1-rows"], cluster.s0._buffers["a0"]))
        # the workers built their shares in S1's matrix: S1's inputs are its rows, in arrival order
        inputs = cluster.s1.current.inputs
        assert all(np.shares_memory(inputs[w], seen[-1][0][k]) for k, w in enumerate(kept))
    for k in range(2):
        assert seen[1][k] is seen[0][k] and seen[2][k] is seen[0][k]
        assert seen[3][k] is not seen[0][k] and seen[3][k].shape[0] == 8


def test_aggregate_calls_reuse_the_last_calls_matrices_up_to_keep_bytes(monkeypatch):
    api.drop_kept_buffers()
    rng = np.random.default_rng(12)
    kept = []
    for round_id, (n, d, drop) in enumerate([(7, 40, {}), (7, 40, {3: "S1"}), (6, 40, {})]):
        x = rng.standard_normal((n, d)) * 0.1
        got = secrobust.aggregate(x, "krum", 1, drop=drop, insecure_test_seed=SEED)
        rows = [i for i in range(n) if i not in drop]
        twin = secrobust.plain_aggregate(x[rows], "krum", 1, insecure_test_seed=SEED)
        np.testing.assert_array_equal(got.aggregate, twin.aggregate)
        kept.append((api._kept[1]["s1-rows"], api._kept[0]["a0"]))
    assert kept[1][0] is kept[0][0] and kept[1][1] is kept[0][1]
    assert kept[2][0] is not kept[0][0] and kept[2][0].shape == (6, 40)
    api.drop_kept_buffers()
    assert not api._kept
    monkeypatch.setattr(api, "KEEP_BYTES", 16 * 7 * 40 - 1)     # 16nd bytes: one byte too many
    secrobust.aggregate(rng.standard_normal((7, 40)) * 0.1, "krum", 1, insecure_test_seed=SEED)
    assert not api._kept
