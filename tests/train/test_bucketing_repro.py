"""The bucketing-paper reproduction's pieces: MnistNet, the label-sorted splits, the honest-only split, the configs,
the harness's bucketing of a coordinate-wise rule, and the reference table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from secrobust.train.attacks import ignores_own
from secrobust.train.config import load_config, parse_config
from secrobust.train.data import partition, partition_sorted
from secrobust.train.models import FlatAdapter, MnistNet, build_model
from secrobust.train.reference import PAPER, cells, score, table
import secrobust.train.runner as runner_module
from secrobust.train.runner import copied_worker, harness_bucket_size, run, worker_parts

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "secrobust" / "train" / "configs"


def test_mnist_net_shapes_and_size() -> None:
    model = build_model("mnist-net", (1, 28, 28), 10, seed=0)
    assert isinstance(model, MnistNet)
    assert FlatAdapter(model).dim == 1_199_882
    model.eval()
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    assert out.shape == (3, 10)
    assert torch.equal(out, model(x))
    assert build_model("mnist-net", (1, 8, 8), 10)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="MnistNet"):
        build_model("mnist-net", (1, 7, 7), 10)


def _their_forward(model: MnistNet, x: torch.Tensor) -> torch.Tensor:
    """codes/tasks/mnist.py's Net.forward (epfml/byzantine-robust-noniid-optimizer) on our parameters, in eval
    mode, before its log_softmax (a cross-entropy on these logits is their NLL loss): no ReLU after conv2."""
    x = (x - 0.1307) / 0.3081
    x = torch.nn.functional.max_pool2d(model.conv2(torch.relu(model.conv1(x))), 2)
    return model.fc2(torch.relu(model.fc1(torch.flatten(x, 1))))


def test_bucketing_mnist_net_is_their_network_and_differs_from_the_example_only_by_conv2s_relu() -> None:
    theirs = build_model("bucketing-mnist-net", (1, 28, 28), 10, seed=0)
    example = build_model("mnist-net", (1, 28, 28), 10, seed=0)
    assert FlatAdapter(theirs).dim == 1_199_882
    assert np.array_equal(FlatAdapter(theirs).get(), FlatAdapter(example).get())     # same layers, same init
    theirs.eval()
    example.eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(theirs(x), _their_forward(theirs, x), rtol=0, atol=1e-6)
        assert not torch.allclose(example(x), theirs(x), atol=1e-3)


def test_mnist_net_init_follows_seed() -> None:
    a, b = (FlatAdapter(build_model("mnist-net", (1, 8, 8), 10, seed=s)).get() for s in (1, 1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, FlatAdapter(build_model("mnist-net", (1, 8, 8), 10, seed=2)).get())


def test_sorted_partition_is_contiguous_label_shards() -> None:
    labels = np.repeat(np.arange(10), 30)[np.random.default_rng(0).permutation(300)]
    parts = partition_sorted(labels, 20)
    assert [len(p) for p in parts] == [15] * 20
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    for p in parts:
        assert len(set(labels[p].tolist())) == 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(labels, 20, "sorted", None)))


def test_sorted_partition_pads_with_its_head() -> None:
    labels = np.array([2, 0, 1, 0, 2, 1, 1])
    parts = partition_sorted(labels, 3)
    assert [len(p) for p in parts] == [3, 3, 3]
    assert parts[2][-2:].tolist() == [1, 3]


def test_stratified_partition_balances_classes() -> None:
    labels = np.repeat(np.arange(10), 40)
    parts = partition_sorted(labels, 20, strided=True)
    for p in parts:
        assert np.bincount(labels[p], minlength=10).tolist() == [2] * 10


def test_honest_split_gives_byzantine_workers_iid_shares() -> None:
    cfg = parse_config({"data": {"partition": "sorted", "split": "honest"}})
    labels = np.repeat(np.arange(10), 50)
    parts = worker_parts(labels, 10, [2, 7], cfg.data, np.random.default_rng(0))
    honest = [0, 1, 3, 4, 5, 6, 8, 9]
    for i, shard in zip(honest, partition_sorted(labels, 8)):
        assert np.array_equal(parts[i], shard)
    for i in (2, 7):
        assert len(parts[i]) in (62, 63) and len(set(labels[parts[i]].tolist())) > 1


@pytest.mark.parametrize("suffix, model, masks", [("", "bucketing-mnist-net", True), ("-examplenet", "mnist-net", False)])
def test_bucketing_configs_parse(suffix: str, model: str, masks: bool) -> None:
    for split, scheme in (("noniid", "sorted"), ("iid", "stratified")):
        cfg = load_config(CONFIGS / f"bucketing-exp2-{split}{suffix}.toml")
        assert cfg.name == f"bucketing-exp2-{split}{suffix}"
        assert (cfg.data.partition, cfg.data.split, cfg.model.name) == (scheme, "honest", model)
        assert cfg.train.fixed_dropout is masks
        assert (cfg.train.workers, cfg.train.rounds, cfg.train.lr, cfg.train.momentum) == (25, 600, 0.01, 0.0)
        assert cfg.grid.f == (5,) and cfg.grid.attacks == ("mimic",)
        assert {r.partition("+")[0] for r in cfg.grid.rules} == {"mean", "krum", "median", "geomed", "cclip"}
        their_start = {"start": "zero"} if suffix == "" else {}          # the first grid started from the mean
        assert cfg.rule_options["geomed"] == {"iterations": 8, "nu": 0.1, "tol": 0.0, **their_start}
        assert cfg.rule_options["cclip"] == {"tau": 10.0, "iterations": 3}
        specs = cfg.runs()
        assert [harness_bucket_size(s) for s in specs].count(2) == len(cfg.grid.seeds)


def test_new_keys_at_defaults_keep_run_ids() -> None:
    spec = parse_config({}).runs()[0]
    blob = spec.to_dict()
    for section, key in (("train", "sample_rate"), ("train", "idle_byzantine"), ("train", "fixed_dropout"),
                         ("train", "renew_dropout"), ("data", "split"), ("dp", "epsilon"), ("model", "init")):
        del blob[section][key]
    expected = hashlib.sha256(json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert spec.run_id == expected
    assert parse_config({"data": {"split": "honest"}}).runs()[0].run_id != spec.run_id
    with pytest.raises(ValueError, match="data.split"):
        parse_config({"data": {"split": "byzantine"}})


def test_renewed_masks_are_shared_within_a_block_and_new_after_it(digits) -> None:
    """renew_dropout = k: rounds [0, k) draw the masks of fixed_dropout's one set, round k those of a new one (the
    authors' code: a new set after every evaluation). So a run with k = 2 follows the k = 0 run for two rounds,
    then leaves it; with k at least the run's length it is that run."""
    table = {
        "data": {"dataset": "digits", "partition": "sorted", "split": "honest"},
        "model": {"name": "mnist-net"},
        "train": {"workers": 11, "rounds": 4, "batch_size": 8, "lr": 0.05, "eval_every": 1, "fixed_dropout": True},
        "grid": {"rules": ["mean"], "attacks": ["none"], "f": [0], "seeds": [0], "secure": [False]},
    }

    def history(every: int) -> list[float]:
        spec = parse_config({**table, "train": {**table["train"], "renew_dropout": every}}).runs()[0]
        return [h["loss"] for h in run(spec, dataset=digits).history]

    once = history(0)
    assert history(4) == once
    renewed = history(2)
    assert renewed[:3] == once[:3] and renewed[3] != once[3]
    with pytest.raises(ValueError, match="train.fixed_dropout"):
        parse_config({"train": {"renew_dropout": 30}})
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="train.renew_dropout"):
            parse_config({"train": {"fixed_dropout": True, "renew_dropout": bad}})


def test_torch_seed_init_is_torch_manual_seed_then_the_layers_in_order_and_the_masks_start_after_it(
        digits, monkeypatch) -> None:
    """model.init = "torch-seed" is the bucketing paper's ``torch.manual_seed(seed); Net()``: conv1, conv2, fc1, fc2
    drawn in that order from the global RNG just seeded, which the fixed dropout masks then start from (their
    CPU masks); the default keeps the spawned seeds, and runs differ between the two."""
    table = {
        "data": {"dataset": "digits", "partition": "sorted", "split": "honest"},
        "model": {"name": "bucketing-mnist-net", "init": "torch-seed"},
        "train": {"workers": 11, "rounds": 2, "batch_size": 8, "lr": 0.05, "eval_every": 1, "fixed_dropout": True},
        "grid": {"rules": ["mean"], "attacks": ["none"], "f": [0], "seeds": [3], "secure": [False]},
    }
    seen: dict[str, object] = {}
    built, local = runner_module.build_model, runner_module._local_update

    def spy_build(*args, **kwargs):
        model = built(*args, **kwargs)
        seen["theta"] = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        return model

    def spy_local(*args, **kwargs):
        seen.setdefault("masks", args[-1].clone())
        return local(*args, **kwargs)

    monkeypatch.setattr(runner_module, "build_model", spy_build)
    monkeypatch.setattr(runner_module, "_local_update", spy_local)
    spec = parse_config(table).runs()[0]
    theirs = run(spec, dataset=digits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        layers = [nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1), nn.Linear(64 * 2 * 2, 128), nn.Linear(128, 10)]
        after = torch.get_rng_state()
    expected = torch.cat([p.detach().flatten() for layer in layers for p in layer.parameters()])
    assert torch.equal(seen["theta"], expected)
    assert torch.equal(seen["masks"], after)
    seen.clear()
    spawned = run(parse_config({**table, "model": {"name": "bucketing-mnist-net"}}).runs()[0], dataset=digits)
    assert not torch.equal(seen["theta"], expected) and spawned.history != theirs.history
    assert spec.run_id != spawned.spec.run_id
    with pytest.raises(ValueError, match="model.init"):
        parse_config({"model": {"init": "xavier"}})


def test_mimic_ignores_own_rows() -> None:
    assert ignores_own("mimic") and not ignores_own("sign-flip") and not ignores_own("label-flip")


def _tiny(rules: list[str], secure: list[bool]) -> list:
    table = {
        "data": {"dataset": "digits", "partition": "sorted", "split": "honest"},
        "model": {"name": "mnist-net"},
        "train": {"workers": 11, "rounds": 3, "batch_size": 8, "lr": 0.01, "eval_every": 1, "idle_byzantine": True},
        "grid": {"rules": rules, "attacks": ["mimic"], "f": [2], "seeds": [0], "secure": secure},
        "rule_options": {"geomed": {"iterations": 8, "nu": 0.1, "tol": 0.0}, "cclip": {"tau": 10.0, "iterations": 3}},
    }
    return parse_config(table).runs()


def test_tiny_run_of_the_setting_secure_equals_plaintext(digits) -> None:
    secure, plain = (run(s, dataset=digits) for s in _tiny(["geomed+bucketing"], [True, False]))
    assert secure.record()["weights_sha256"] == plain.record()["weights_sha256"]
    assert secure.history == plain.history
    assert len(secure.history) == 4


def test_a_mimic_run_records_the_worker_it_copied_and_fixing_that_target_changes_nothing(digits) -> None:
    """``copied`` means what ``attack_options.mimic.target`` sets: a rerun with the recorded target is the same run
    (the target fixed in round 0 is the one the warm-up chose; the attack's own random draw feeds nothing else)."""
    table = {
        "data": {"dataset": "digits", "partition": "sorted", "split": "honest"},
        "model": {"name": "mnist-net"},
        "train": {"workers": 11, "rounds": 3, "batch_size": 8, "lr": 0.01, "eval_every": 1, "idle_byzantine": True},
        "grid": {"rules": ["krum"], "attacks": ["mimic"], "f": [2], "seeds": [0, 1, 2], "secure": [False]},
    }
    free = [run(s, dataset=digits) for s in parse_config(table).runs()]
    copied = [r.record()["copied"] for r in free]
    assert all(isinstance(c, int) and 0 <= c < 9 for c in copied)
    assert len(set(copied)) > 1, "three seeds copied one worker: the record cannot tell runs apart"
    assert [copied_worker(r.spec, dataset=digits) for r in free] == copied
    for result, target in zip(free, copied):
        fixed = parse_config({**table, "grid": {**table["grid"], "seeds": [result.spec.seed]},
                              "attack_options": {"mimic": {"target": target}}}).runs()[0]
        again = run(fixed, dataset=digits)
        assert again.record()["copied"] == target
        assert again.history == result.history
        np.testing.assert_array_equal(again.weights, result.weights)
    other = parse_config({**table, "grid": {**table["grid"], "attacks": ["sign-flip"], "seeds": [0]}}).runs()[0]
    assert run(other, dataset=digits).record()["copied"] is None


def test_median_with_bucketing_runs_on_bucket_means(digits) -> None:
    (spec,) = _tiny(["median+bucketing"], [False])
    result = run(spec, dataset=digits)
    assert np.isnan(result.weights).all() and len(result.history) == 4
    again = run(spec, dataset=digits)
    assert again.history == result.history


def test_reference_scores_and_table() -> None:
    history = [{"accuracy": a} for a in (0.1, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9)]
    assert score(history) == pytest.approx(90.0)
    records = [{"seed": s, "secure": False, "rule": "krum+bucketing", "spec": {"rule_options": {}},
                "history": history} for s in (0, 1)]
    got = cells(records)
    assert got == {("krum", 2): [pytest.approx(90.0)] * 2}
    text = table({True: got})
    assert "| krum (KRUM) | 2 | non-IID | 53.15 ± 3.96 | 52.26 | 90.00 ± 0.00 (2 seeds) | +36.85 |" in text
    theirs = [{**r, "rule": "krum", "spec": {"rule_options": {"power": 2}}} for r in records[:1]]
    both = cells(records + theirs)
    assert both == {("krum", 2): [pytest.approx(90.0)] * 2, ("krum, power = 2", 0): [pytest.approx(90.0)]}
    rows = [line for line in table({True: both}, every_row=True).splitlines() if line.startswith("| krum")]
    assert rows == ["| krum (KRUM) | 0 | IID | 90.36 ± 0.25 | 90.61 | not run | - |",
                    "| krum (KRUM) | 0 | non-IID | 37.33 ± 6.78 | 30.85 | not run | - |",
                    "| krum (KRUM) | 2 | IID | 91.64 ± 0.30 | 91.99 | not run | - |",
                    "| krum (KRUM) | 2 | non-IID | 53.15 ± 3.96 | 52.26 | 90.00 ± 0.00 (2 seeds) | +36.85 |",
                    "| krum (KRUM), power = 2 | 0 | non-IID | 37.33 ± 6.78 | 30.85 | 90.00 (1 seed) | +52.67 |"]
    mean, _, seeds = PAPER[("exp2", "median", 2, True)]
    assert mean == pytest.approx(sum(seeds) / 3, abs=0.01)
