"""Published numbers to compare the harness against, and the side-by-side table.

Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via bucketing" (ICLR 2022), MNIST.
The numbers are the authors' released outputs in github.com/epfml/byzantine-robust-noniid-optimizer (commit
0e27349): ``outputs/exp2/all/output/exp2.tex`` (s = 0) and ``exp2_bucketing.tex`` (s = 2), each the mean and
sample std over seeds 0, 1, 2 of one run's score, and the per-seed scores recomputed from the runs' ``stats``
files next to them. A run's score is what their plotting code (``exp2.py --plot``) takes: the mean of the test
accuracy of the last 5 evaluations (iterations 480, 510, ..., 600). ``exp1`` (n = 24, f = 0, long-tailed
classes, 4,500 iterations) is kept for reference.

``python -m secrobust.train.reference [--all] DIR...`` prints the markdown table for the result directories given
(``secrobust train`` outputs of configs ``bucketing-exp2-*.toml``); ``--all`` keeps the cells not run.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

SOURCE = "epfml/byzantine-robust-noniid-optimizer@0e27349, outputs/<exp>/all/output/<exp>{,_bucketing}.tex"
LAST = 5
"""Evaluations averaged into a run's score, as the authors' plotting code does."""

RULES = {"mean": "AVG", "krum": "KRUM", "median": "CM", "geomed": "RFA", "cclip": "CClip"}
"""Our rule name -> theirs."""

# (experiment, our rule, bucket size s, non-IID) -> (mean, std, (seed 0, seed 1, seed 2)), in %
PAPER: dict[tuple[str, str, int, bool], tuple[float, float, tuple[float, ...]]] = {
    ("exp2", "mean", 0, False): (93.20, 0.21, (93.38, 93.26, 92.96)),
    ("exp2", "mean", 0, True): (92.73, 0.32, (92.82, 92.99, 92.38)),
    ("exp2", "mean", 2, False): (93.17, 0.23, (93.37, 93.21, 92.92)),
    ("exp2", "mean", 2, True): (92.67, 0.27, (92.78, 92.86, 92.36)),
    ("exp2", "krum", 0, False): (90.36, 0.25, (90.61, 90.11, 90.37)),
    ("exp2", "krum", 0, True): (37.33, 6.78, (30.85, 44.37, 36.76)),
    ("exp2", "krum", 2, False): (91.64, 0.30, (91.99, 91.49, 91.43)),
    ("exp2", "krum", 2, True): (53.15, 3.96, (52.26, 57.47, 49.71)),
    ("exp2", "median", 0, False): (90.80, 0.12, (90.94, 90.72, 90.73)),
    ("exp2", "median", 0, True): (64.27, 3.70, (63.48, 68.30, 61.02)),
    ("exp2", "median", 2, False): (91.91, 0.24, (92.18, 91.83, 91.72)),
    ("exp2", "median", 2, True): (78.60, 3.15, (80.95, 75.02, 79.84)),
    ("exp2", "geomed", 0, False): (92.92, 0.25, (93.10, 93.01, 92.64)),
    ("exp2", "geomed", 0, True): (78.93, 9.27, (77.87, 88.69, 70.24)),
    ("exp2", "geomed", 2, False): (93.00, 0.23, (93.19, 93.08, 92.75)),
    ("exp2", "geomed", 2, True): (91.17, 0.51, (91.06, 91.72, 90.73)),
    ("exp2", "cclip", 0, False): (93.16, 0.22, (93.36, 93.19, 92.93)),
    ("exp2", "cclip", 0, True): (91.53, 0.06, (91.58, 91.47, 91.53)),
    ("exp2", "cclip", 2, False): (93.17, 0.23, (93.39, 93.19, 92.93)),
    ("exp2", "cclip", 2, True): (92.56, 0.21, (92.73, 92.63, 92.32)),
    ("exp1", "mean", 0, False): (98.79, 0.10, ()),
    ("exp1", "mean", 0, True): (98.75, 0.02, ()),
    ("exp1", "mean", 2, False): (98.80, 0.10, ()),
    ("exp1", "mean", 2, True): (98.74, 0.02, ()),
    ("exp1", "krum", 0, False): (97.95, 0.25, ()),
    ("exp1", "krum", 0, True): (89.90, 4.75, ()),
    ("exp1", "krum", 2, False): (98.35, 0.20, ()),
    ("exp1", "krum", 2, True): (93.27, 0.10, ()),
    ("exp1", "median", 0, False): (97.72, 0.22, ()),
    ("exp1", "median", 0, True): (80.36, 0.05, ()),
    ("exp1", "median", 2, False): (98.26, 0.22, ()),
    ("exp1", "median", 2, True): (95.59, 0.89, ()),
    ("exp1", "geomed", 0, False): (98.62, 0.08, ()),
    ("exp1", "geomed", 0, True): (82.60, 0.84, ()),
    ("exp1", "geomed", 2, False): (98.75, 0.14, ()),
    ("exp1", "geomed", 2, True): (97.34, 0.58, ()),
    ("exp1", "cclip", 0, False): (98.78, 0.10, ()),
    ("exp1", "cclip", 0, True): (98.78, 0.06, ()),
    ("exp1", "cclip", 2, False): (98.79, 0.10, ()),
    ("exp1", "cclip", 2, True): (98.75, 0.02, ()),
}

# exp2's mimic: (non-IID) -> the honest worker their seeds 0, 1, 2 copied (the stats files' "mmc_count" entry,
# "select"; the same for every rule and s, as the choice is made on iteration 0's honest gradients). Non-IID: the
# shards of labels 7, 8 and 0 (with 77 images of 1)
MIMIC_COPIED: dict[bool, tuple[int, int, int]] = {True: (14, 17, 1), False: (2, 4, 12)}


def score(history: list[dict[str, Any]], last: int = LAST) -> float:
    """A run's score in %: the mean test accuracy of its last ``last`` evaluations."""
    if len(history) < last:
        raise ValueError(f"a score needs {last} evaluations, the run has {len(history)}")
    return 100.0 * statistics.fmean(entry["accuracy"] for entry in history[-last:])


def bucket_size(label: str, rule_options: dict[str, Any]) -> int:
    """s of a grid label: 0 without bucketing, else the run's s (2 unless its options say)."""
    return int(rule_options.get("s", 2)) if label.partition("@")[0].endswith("+bucketing") else 0


def variant(rule: str, rule_options: dict[str, Any]) -> str:
    """The row a run belongs to: our base rule, plus the options that change its definition (Krum's score power:
    their KRUM sums squared distances squared, ``power = 2``)."""
    base = rule.partition("+")[0].partition("@")[0]
    power = rule_options.get("power", 1)
    return base if power == 1 else f"{base}, power = {power}"


def cells(records: list[dict[str, Any]], secure: bool = False) -> dict[tuple[str, int], list[float]]:
    """Scores by (row, s), one per seed, of the plaintext (or secure) runs in ``records``; the row is our base
    rule, with Krum's ``power`` when it is not 1 (``variant``)."""
    out: dict[tuple[str, int], list[float]] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        if rec["secure"] != secure:
            continue
        options = rec["spec"].get("rule_options", {})
        key = (variant(rec["rule"], options), bucket_size(rec["rule"], options))
        out.setdefault(key, []).append(score(rec["history"]))
    return out


def _mean_std(values: list[float] | tuple[float, ...]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"


def table(results: dict[bool, dict[tuple[str, int], list[float]]], experiment: str = "exp2",
          every_row: bool = False) -> str:
    """The markdown table: one row per (row, s, split) the results hold (``every_row``: per cell of the
    paper's table, "not run" where the results hold none), ours against the paper's. A rule run with another
    definition (``variant``: Krum with ``power = 2``) gets rows of its own, against the same paper cell."""
    lines = [
        "| rule (theirs) | s | split | paper: mean ± std, 3 seeds | paper: seed 0 | ours | ours − paper (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    present = {label for split in results.values() for label, _ in split}
    for rule, theirs in RULES.items():
        labels = sorted({label for label in present if label.partition(",")[0] == rule} | {rule}, key=lambda label: (len(label), label))
        for label in labels:
            name = f"{rule} ({theirs}){label[len(rule):]}"
            for s in (0, 2):
                for noniid in (False, True):
                    ours = results.get(noniid, {}).get((label, s))
                    if not ours and not (every_row and label == rule):
                        continue
                    mean, std, seeds = PAPER[(experiment, rule, s, noniid)]
                    seed0 = f"{seeds[0]:.2f}" if seeds else "-"
                    row = f"| {name} | {s} | {'non-IID' if noniid else 'IID'} | {mean:.2f} ± {std:.2f} | {seed0} | "
                    if ours:
                        row += f"{_mean_std(ours)} | {statistics.fmean(ours) - mean:+.2f} |"
                    else:
                        row += "not run | - |"
                    lines.append(row)
    return "\n".join(lines)


def load(directory: str | Path) -> tuple[bool, list[dict[str, Any]]]:
    """(non-IID?, records) of a ``secrobust train`` output directory; non-IID is the "sorted" partition."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    records = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines() if line.strip()]
    return config["data"]["partition"] == "sorted", records


def collect(directories: list[str | Path]) -> dict[bool, dict[tuple[str, int], list[float]]]:
    """The plaintext cells of the result directories, by split (non-IID?)."""
    results: dict[bool, dict[tuple[str, int], list[float]]] = {}
    for directory in directories:
        noniid, records = load(directory)
        results.setdefault(noniid, {}).update(cells(records))
    return results


def main(argv: list[str]) -> int:
    every_row = "--all" in argv
    print(table(collect([a for a in argv if a != "--all"]), every_row=every_row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
