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
    for round_id, (n, d, drop) in enumerate([(7, 40, {}), (7, 40, {2: "S1"}), (7, 40, {}), (8, 33, {0: "S1"})]):
        x = rng.standard_normal((n, d)) * 0.1
        got = cluster.run_round(x, "krum", 1, drop=drop)
        kept = [i for i in range(n) if i not in drop]
        twin = secrobust.plain_aggregate(x[kept], "krum", 1, insecure_test_seed=SEED, round_id=round_id)
        np.testing.assert_array_equal(got.aggregate, twin.aggregate)
        seen.append((cluster._encoded, cluster.s1._buffers["s1-rows"], cluster.s0._buffers["a0"]))
    for k in range(3):
        assert seen[1][k] is seen[0][k] and seen[2][k] is seen[0][k]
        assert seen[3][k] is not seen[0][k] and seen[3][k].shape[0] == 8
