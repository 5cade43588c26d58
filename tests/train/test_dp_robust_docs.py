"""The private-and-robust table of docs/training.md against the grid's own output, committed in results/.

``results/dp-robust/`` holds what ``secrobust train --config src/secrobust/train/configs/dp-robust.toml`` wrote
and ``results/dp-robust.log`` what it printed (and the secure check's run after it). These tests check that
the committed output is that of the shipped config, that the docs' table is the one ``markdown()`` makes from
``summary.json`` (cell for cell), that every run spent the epsilon it asked for, and that the secure-check
pairs are identical. After a new run, ``.venv/bin/python tests/train/test_dp_robust_docs.py --write`` copies
the table into docs/training.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (--write): the shared helpers live in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doc_blocks import read_block, write_block

from secrobust.train.config import load_config, without_later_defaults

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "training.md"
CONFIGS = ROOT / "src" / "secrobust" / "train" / "configs"
OUT = ROOT / "results" / "dp-robust"
CHECK = ROOT / "results" / "dp-robust-secure-check"
BLOCK = "dp-robust-table"
SETTINGS = [("none", 0), ("sign-flip", 5), ("alie", 5), ("min-max", 5), ("sign-flip", 10), ("alie", 10),
            ("min-max", 10)]


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def markdown() -> str:
    """One row per (rule, target epsilon), one column per (attack, f), final accuracy in %, then the epsilon
    spent against an observer and against a server (the largest over the row's runs)."""
    s = json.loads((OUT / "summary.json").read_text())
    cell = {(r["rule"], r["target_epsilon"], r["attack"], r["f"]): r for r in s["final_accuracy"]}
    head = ["rule", "epsilon (target)"] + [f"{a}, f = {f}" if f else "no attack" for a, f in SETTINGS]
    lines = ["| " + " | ".join(head + ["ε spent: observer / server"]) + " |", "|" + "---|" * (len(head) + 1)]
    for rule in s["rules"]:
        for target in s["epsilons"]:
            row = [cell.get((rule, target, a, f)) for a, f in SETTINGS]
            values = ["-" if r is None else f"{100 * r['final_accuracy']:.1f}" for r in row]
            eps = [r["epsilon"] for r in row if r and r["epsilon"] is not None]
            server = [r["epsilon_server"] for r in row if r and r.get("epsilon_server") is not None]
            spent = "-" if not eps else f"{max(eps):.2f} / {max(server):.2f}"
            label = "no noise" if target == 0 else f"{target:g}"
            lines.append("| " + " | ".join([rule, label, *values, spent]) + " |")
    return "\n".join(lines) + "\n"


def docs_table() -> str:
    return read_block(DOCS, BLOCK)


def test_the_committed_output_is_the_shipped_grids() -> None:
    for folder, name in ((OUT, "dp-robust.toml"), (CHECK, "dp-robust-secure-check.toml")):
        config = load_config(CONFIGS / name)
        shipped = without_later_defaults(json.loads(json.dumps(config.to_dict(), sort_keys=True)))
        assert without_later_defaults(json.loads((folder / "config.json").read_text())) == shipped, name
        assert len(records(folder)) == len(config.runs())


def test_the_docs_table_is_the_summarys() -> None:
    assert docs_table() == markdown(), "run: .venv/bin/python tests/train/test_dp_robust_docs.py --write"


def test_every_noisy_run_spent_its_target_and_no_round_refused() -> None:
    for r in records(OUT):
        target = r["spec"]["dp"]["epsilon"]
        if target:
            if r["rule"] == "multi-krum":  # composed over the most-sampled honest worker's rounds: at most the target
                assert r["epsilon"] <= target * 1.001
            else:
                assert abs(r["epsilon"] - target) <= 0.01 * target
            assert r["epsilon_server"] >= r["epsilon"] * 0.999
        else:
            assert r["epsilon"] is None
        assert not r["diverged"]


def test_secure_equals_plaintext_on_the_checked_cells() -> None:
    pairs: dict[tuple[str, str, int], dict[bool, dict[str, Any]]] = {}
    for r in records(CHECK):
        pairs.setdefault((r["rule"], r["attack"], r["f"]), {})[r["secure"]] = r
    assert len(pairs) == 3 and all(set(p) == {True, False} for p in pairs.values())
    for p in pairs.values():
        assert p[True]["weights_sha256"] == p[False]["weights_sha256"]
        assert p[True]["history"] == p[False]["history"] and p[True]["epsilon"] == p[False]["epsilon"]
    main = {(r["rule"], r["attack"], r["f"], r["spec"]["dp"]["epsilon"]): r for r in records(OUT)}
    for (rule, attack, f), p in pairs.items():  # the same run as the table's plaintext cell
        assert p[False]["weights_sha256"] == main[rule, attack, f, 8.0]["weights_sha256"]


def write() -> None:
    write_block(DOCS, BLOCK, markdown())
    print(f"wrote the table of {OUT / 'summary.json'} into {DOCS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write   (the tests run under pytest)")
    write()
