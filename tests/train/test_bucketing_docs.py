"""The bucketing paper's table in docs/training.md against the runs committed in results/.

``results/bucketing-exp2-*/`` hold what ``secrobust train`` wrote for the configs of the same names. These tests
check that each committed output is its shipped config's, that the docs' side-by-side tables (the authors' net,
and the earlier runs with PyTorch's example net) are the ones ``secrobust.train.reference`` prints from them
(``--all``), that the whole secure runs equal their plaintext twins
record for record, and that the numbers the docs quote for the mimic-target and standard-model checks are the runs'.
After new runs, ``.venv/bin/python tests/train/test_bucketing_docs.py --write`` copies the table into the docs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (--write): the shared helpers live in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doc_blocks import read_block, write_block

from secrobust.train import reference
from secrobust.train.config import load_config, without_later_defaults

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "training.md"
CONFIGS = ROOT / "src" / "secrobust" / "train" / "configs"
RESULTS = ROOT / "results"
GRIDS = ("bucketing-exp2-noniid", "bucketing-exp2-iid")
EXAMPLE_GRIDS = ("bucketing-exp2-noniid-examplenet", "bucketing-exp2-iid-examplenet")
"""The same grids with PyTorch's example net (``mnist-net``: a ReLU after conv2 that the authors' net lacks) and
fresh dropout masks; the first whole secure runs and the target checks ran on these."""
SECURE = {"bucketing-exp2-secure-full": ("bucketing-exp2-noniid-examplenet", {"krum", "cclip"}),
          "bucketing-exp2-secure-full-theirnet": ("bucketing-exp2-noniid", {"mean", "geomed"})}
"""Whole secure runs: the grid that holds their plaintext twins, and the rules each folder must hold."""
CHECKS = ("bucketing-exp2-krum-target", "bucketing-exp2-krum-target-masks", "bucketing-exp2-krum-bucketing-target",
          "bucketing-exp2-median-target-masks")
THEIR_TARGETS = ("bucketing-exp2-noniid-target14", "bucketing-exp2-noniid-target17", "bucketing-exp2-noniid-target1",
                 "bucketing-exp2-noniid-target14-theirinit", "bucketing-exp2-noniid-target1-theirinit",
                 "bucketing-exp2-noniid-target14-renew", "bucketing-exp2-noniid-target17-krum2",
                 "bucketing-exp2-noniid-target17-theirinit")
"""Their net's grid cells rerun with the worker their seed's mimic copied (-renew also with their CPU schedule of
dropout masks, ``train.renew_dropout``; -krum2 with their KRUM score, ``rule_options.krum.power = 2``; -theirinit
with that score and their initial weights, ``model.init = "torch-seed"``)."""
STANDARD = "mnist-alpha1-mnistnet-lr1"
STANDARD_KRUM = "mnist-alpha1-mnistnet-krum"
"""The alpha = 1 Krum cells the docs quote, rerun with the standard model."""
BLOCKS = {"bucketing-table": GRIDS, "bucketing-table-examplenet": EXAMPLE_GRIDS}


def records(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RESULTS / name / "results.jsonl").read_text().splitlines() if line.strip()]


def present(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if (RESULTS / n / "results.jsonl").exists()]


def markdown(grids: tuple[str, ...]) -> str:
    return reference.table(reference.collect([RESULTS / n for n in present(grids)]), every_row=True) + "\n"


def docs_text() -> str:
    return DOCS.read_text()


def test_the_committed_outputs_are_the_shipped_configs() -> None:
    names = present(GRIDS + EXAMPLE_GRIDS + tuple(SECURE) + (STANDARD, STANDARD_KRUM) + THEIR_TARGETS + CHECKS)
    assert {"bucketing-exp2-noniid", "bucketing-exp2-noniid-examplenet"} <= set(names)
    for name in names:
        config = load_config(CONFIGS / f"{name}.toml")
        shipped = without_later_defaults(json.loads(json.dumps(config.to_dict(), sort_keys=True)))
        assert without_later_defaults(json.loads((RESULTS / name / "config.json").read_text())) == shipped, name
        ids = {spec.run_id for spec in config.runs()}
        assert {r["run_id"] for r in records(name)} <= ids, name


def test_the_docs_tables_are_the_ones_the_reference_prints() -> None:
    text = docs_text()
    for block, grids in BLOCKS.items():
        assert read_block(DOCS, block) == markdown(grids), "run: .venv/bin/python tests/train/test_bucketing_docs.py --write"
        command = "python -m secrobust.train.reference --all " + " ".join(f"results/{n}" for n in present(grids))
        assert f"<!-- {block}: {command} -->" in text, block


def test_the_grids_run_the_network_their_names_say() -> None:
    for grids, model in ((GRIDS, "bucketing-mnist-net"), (EXAMPLE_GRIDS, "mnist-net")):
        for name in present(grids):
            assert {r["model"] for r in records(name)} == {model}, name


def test_whole_secure_runs_equal_their_plaintext_twins() -> None:
    for name, (grid, rules) in SECURE.items():
        secure = records(name)
        assert {r["rule"] for r in secure} == rules and len(secure) == len(rules), name
        assert all(r["secure"] for r in secure), name
        twins = {(r["rule"], r["seed"]): r for r in records(grid) if not r["secure"]}
        for r in secure:
            twin = twins[(r["rule"], r["seed"])]
            assert without_later_defaults({**r["spec"], "secure": False}) == \
                without_later_defaults({**twin["spec"], "secure": False}), (name, r["rule"])
            assert r["rounds"] == twin["rounds"] == 600
            assert r["weights_sha256"] == twin["weights_sha256"], (name, r["rule"])
            assert r["history"] == twin["history"], (name, r["rule"])


def test_the_target_checks_quoted_in_the_docs_are_the_runs() -> None:
    text = docs_text()
    for name in present(CHECKS):
        (run,) = records(name)
        assert run["rule"].replace("+", "-") in name and run["attack"] == "mimic"
        assert run["spec"]["attack_options"] == {"target": 14}
        assert not run["secure"] and run["seed"] == 0
        assert f"{reference.score(run['history']):.2f}" in text, name


def test_the_reruns_with_their_targets_are_their_nets_grid_runs_but_the_target_and_quoted_in_the_docs() -> None:
    assert present(THEIR_TARGETS) == list(THEIR_TARGETS)
    grid = {(r["rule"], r["seed"]): r for r in records("bucketing-exp2-noniid")}
    text = docs_text()
    for name in THEIR_TARGETS:
        for run in records(name):
            their = reference.MIMIC_COPIED[True][run["seed"]]
            assert run["spec"]["attack_options"] == {"target": their} and run["model"] == "bucketing-mnist-net", name
            assert f"target{their}" in name and run.get("copied", their) == their
            twin = grid[(run["rule"], run["seed"])]["spec"]
            spec = {**run["spec"], "attack_options": twin["attack_options"]}
            if name.endswith("-renew"):
                assert spec["train"].pop("renew_dropout") == 30
            if name.endswith("-theirinit"):
                assert spec["model"].pop("init") == "torch-seed"
            if name.endswith(("-krum2", "-theirinit")):
                assert spec["rule_options"] == {"power": 2} and twin["rule_options"] == {}
                spec["rule_options"] = {}
            assert without_later_defaults(spec) == without_later_defaults(twin), (name, run["rule"])
            assert f"{reference.score(run['history']):.2f}" in text, (name, run["rule"])


def test_the_standard_model_reaches_98_percent_without_attack_as_the_docs_say() -> None:
    (run,) = records(STANDARD)
    assert run["rule"] == "mean" and run["attack"] == "none" and run["model"] == "mnist-net"
    assert run["workers"] == 50 and not run["diverged"]
    assert run["final_accuracy"] >= 0.98
    assert f"{100 * run['final_accuracy']:.1f}%" in docs_text()


def test_the_standard_models_krum_cells_are_the_runs_the_docs_quote() -> None:
    runs = {(r["rule"], r["attack"]): r for r in records(STANDARD_KRUM)}
    assert set(runs) == {(rule, attack) for rule in ("krum", "krum+nnm") for attack in ("none", "alie")}
    text = docs_text()
    for run in runs.values():
        assert run["model"] == "mnist-net" and run["workers"] == 50 and run["f"] == 10 and not run["secure"]
    for rule in ("krum", "krum+nnm"):
        row = " | ".join(f"{100 * runs[(rule, a)]['final_accuracy']:.1f}%" for a in ("none", "alie"))
        assert f"| {rule} | {row} |" in text, rule


def write() -> None:
    for block, grids in BLOCKS.items():
        write_block(DOCS, block, markdown(grids))
    print(f"wrote the side-by-side tables into {DOCS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write   (the tests run under pytest)")
    write()
