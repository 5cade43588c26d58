"""What each party sees: S0's and S1's views are independent of the inputs; the dealer sees no data."""

import numpy as np
from datagen import updates_with_outliers
from viewstats import same_distribution_pvalue, uniform_pvalue

import secrobust
from secrobust.api import Cluster
from secrobust.primitives import ring
from secrobust.protocol.messages import Message

N, D = 8, 4096


def run_and_record(x: np.ndarray, seed: int, rule: str = "krum") -> list[tuple[str, str, str, bytes]]:
    log: list[tuple[str, str, str, bytes]] = []
    Cluster(insecure_test_seed=seed, tap=lambda *m: log.append(m)).run_round(x, rule, 1)
    return log


def view_of(log, party: str) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for _, recipient, kind, data in log:
        if recipient == party:
            out.setdefault(kind, []).append(Message.from_bytes(data))
    return out


def words(msgs: list[Message], array: str) -> np.ndarray:
    return np.concatenate([m.arrays[array].ravel() for m in msgs])


INPUTS = {
    "small": np.full((N, D), 1e-3),
    "structured": updates_with_outliers(0, N, D, 1) * 0.01,
}


def test_s0_view_is_uniform_and_input_independent():
    logs = {name: run_and_record(x, seed=7) for name, x in INPUTS.items()}
    views = {name: view_of(log, "S0") for name, log in logs.items()}
    e1 = {name: words(v["masked-open"], "e") for name, v in views.items()}
    assert uniform_pvalue(e1["small"]) > 1e-4
    assert uniform_pvalue(e1["structured"]) > 1e-4
    assert same_distribution_pvalue(e1["small"], e1["structured"]) > 1e-4
    # The validity check's openings (Beaver AND openings and S1's share of the accept bits) are uniform too.
    checks = {name: words(v["validity-open"], "x") for name, v in views.items()}
    assert uniform_pvalue(checks["small"]) > 1e-4 and uniform_pvalue(checks["structured"]) > 1e-4
    assert same_distribution_pvalue(checks["small"], checks["structured"]) > 1e-4
    # Everything else S0 receives before the weights is identical byte for byte: the triple, S1's list and seed.
    # S0 receives nothing from the workers: its shares are the dealer's mask A0, which S0 hands out as keys.
    for kind in ("triple-s0", "participants", "validity-seed"):
        assert [m.to_bytes() for m in views["small"][kind]] == [m.to_bytes() for m in views["structured"][kind]]
    assert set(views["small"]) == {"triple-s0", "participants", "validity-seed", "masked-open",
                                   "validity-open", "weights", "aggregate-share"}


def test_a_worker_receives_only_its_key_and_it_does_not_depend_on_any_input():
    views = {name: view_of(run_and_record(x, seed=7), "worker:2") for name, x in INPUTS.items()}
    assert set(views["small"]) == {"share-key"}
    assert [m.to_bytes() for m in views["small"]["share-key"]] == \
        [m.to_bytes() for m in views["structured"]["share-key"]]


def test_s1_view_before_opening_is_uniform_and_input_independent():
    views = {name: view_of(run_and_record(x, seed=9), "S1") for name, x in INPUTS.items()}
    assert "masked-open" not in views["small"]
    for array, kind in (("x1", "share-masked"), ("x", "validity-open"), ("c1", "triple-s1"), ("and_c1", "triple-s1")):
        a, b = words(views["small"][kind], array), words(views["structured"][kind], array)
        if kind != "triple-s1":
            assert uniform_pvalue(a) > 1e-4 and uniform_pvalue(b) > 1e-4, kind
            assert same_distribution_pvalue(a, b) > 1e-4, kind
        else:
            assert np.array_equal(a, b)


def test_the_uniformity_check_can_fail():
    """Negative control: an unmasked share (the encoded inputs themselves) is rejected by the same test."""
    leaked = ring.encode(INPUTS["structured"]).ravel()
    assert uniform_pvalue(leaked) < 1e-12
    assert same_distribution_pvalue(ring.encode(INPUTS["small"]).ravel(), leaked) < 1e-12


def test_dealer_receives_only_public_sizes():
    logs = {name: run_and_record(x, seed=3) for name, x in INPUTS.items()}
    for log in logs.values():
        received = [m for m in log if m[1] == "dealer"]
        assert [m[2] for m in received] == ["triple-request"]
        msg = Message.from_bytes(received[0][3])
        assert msg.sender == "S1" and not msg.arrays
        assert set(msg.fields) == {"triple_id", "n", "d", "kind", "and_words"}
    assert [m[3] for m in logs["small"] if m[1] == "dealer"] == [m[3] for m in logs["structured"] if m[1] == "dealer"]
    assert not [m for m in logs["small"] if m[0].startswith("worker") and m[1] == "dealer"]


def test_a_rejected_worker_changes_only_the_declared_output():
    """With a wrapped row, the servers learn that worker's accept bit (declared); the openings stay uniform."""
    x = INPUTS["structured"]
    wrapped = ring.encode(x[0]) + (np.uint64(1) << np.uint64(40))
    log: list = []
    res = Cluster(insecure_test_seed=7, tap=lambda *m: log.append(m)).run_round(x, "krum", 1, ring_rows={0: wrapped})
    assert list(res.rejected) == [0]
    for party in ("S0", "S1"):
        w = words(view_of(log, party)["validity-open"], "x")
        assert uniform_pvalue(w) > 1e-4, party


def test_s0_never_learns_distances_and_s1_opens_only_what_the_rule_needs():
    x = INPUTS["structured"][:, :64]
    krum = view_of(run_and_record(x, seed=1), "S0")
    assert "view-share" not in krum
    for rule, expected in (("mean", set()), ("norm-clip", {"norms"}), ("krum", {"distances"})):
        s1 = view_of(run_and_record(x, seed=1, rule=rule), "S1")
        opened = set(s1["view-share"][0].arrays) if "view-share" in s1 else set()
        assert opened == expected, rule
        assert set(secrobust.aggregate(x, rule, 1).revealed) == expected


def test_fresh_runs_use_fresh_randomness():
    x = INPUTS["small"][:, :32]
    a, b = run_and_record(x, seed=None), run_and_record(x, seed=None)
    seeds_a = [Message.from_bytes(m[3]).fields["key"] for m in a if m[2] == "share-key"]
    seeds_b = [Message.from_bytes(m[3]).fields["key"] for m in b if m[2] == "share-key"]
    assert len(set(seeds_a) | set(seeds_b)) == 2 * N
