"""What each server receives with reveal="weights" and reveal="aggregate": nothing but uniformly masked words
and the declared output (the weights, or nothing but the aggregate). No view-share, no S1-chosen weights."""

import numpy as np
import pytest

from secrobust.api import Cluster
from secrobust.protocol.messages import Message

from test_views import INPUTS, view_of
from viewstats import same_distribution_pvalue, uniform_pvalue


def record(x: np.ndarray, mode: str, rule: str = "krum", seed: int = 7) -> list:
    log: list = []
    Cluster(insecure_test_seed=seed, tap=lambda *m: log.append(m)).run_round(x, rule, 1, reveal=mode)
    return log


def circuit_words(msgs: list[Message], drop_last: bool) -> np.ndarray:
    """Every word of the rule's openings; with reveal="weights" the last one is the declared output."""
    kept = msgs[:-1] if drop_last else msgs
    return np.concatenate([m.arrays["x"].ravel() for m in kept])


CASES = [(rule, mode) for rule in ("krum", "multi-krum", "mda", "norm-clip", "cclip")
         for mode in ("weights", "aggregate")] + \
    [(rule, "aggregate") for rule in ("median", "trimmed-mean", "bulyan")]


@pytest.mark.parametrize("rule, mode", CASES)
@pytest.mark.parametrize("party", ["S0", "S1"])
def test_the_rule_on_shares_shows_each_server_only_uniform_words(party, mode, rule):
    views = {name: [view_of(record(x, mode, rule, seed), party) for seed in (7, 8, 9)] for name, x in INPUTS.items()}
    for runs in views.values():
        for view in runs:
            assert "view-share" not in view and "weights" not in view
            assert "rule-open" in view
    a, b = (np.concatenate([circuit_words(v["rule-open"], mode == "weights") for v in runs]) for runs in views.values())
    assert uniform_pvalue(a) > 1e-4 and uniform_pvalue(b) > 1e-4
    assert same_distribution_pvalue(a, b) > 1e-4
    assert [m.fields for m in views["small"][0]["rule-open"]] == [m.fields for m in views["structured"][0]["rule-open"]]


def test_with_reveal_weights_the_last_opening_is_the_weights_and_nothing_more():
    x = INPUTS["structured"]
    log: list = []
    res = Cluster(insecure_test_seed=3, tap=lambda *m: log.append(m)).run_round(x, "krum", 1, reveal="weights")
    for party in ("S0", "S1"):
        mine = view_of(log, party)["rule-open"][-1].arrays["x"]
        theirs = view_of(log, "S1" if party == "S0" else "S0")["rule-open"][-1].arrays["x"]
        opened = (mine + theirs).view(np.int64) / 2.0**32
        np.testing.assert_allclose(opened[:-1], res.weights, atol=2.0**-32)
        assert opened[-1] == 0.0


def test_the_dealer_still_receives_only_public_sizes():
    logs = {name: record(x, "aggregate") for name, x in INPUTS.items()}
    requests = {name: [m[3] for m in log if m[1] == "dealer"] for name, log in logs.items()}
    assert requests["small"] == requests["structured"]
    msg = Message.from_bytes(requests["small"][0])
    assert set(msg.fields) == {"triple_id", "n", "d", "kind", "and_words", "rule", "vector"} and not msg.arrays
