"""Golden transcripts: the wire format and results of fixed rounds, frozen before the code under them moves.

A transcript is every message of a seeded in-process round (sender, recipient, kind, size and SHA-256 of
its bytes, through a channel tap) and the round's result (SHA-256 of the aggregate and of the weights, the
participants and rejections), for each reveal mode and one rule on shares per circuit family. A refactor
must leave every transcript identical (``tests/test_golden.py``); ``python tests/golden.py --write`` records
them again after a change that is *meant* to change the wire, and the diff then shows exactly what did.
The same cases run through a ``LocalDeployment`` give the deployment's flow (``record_deployment``, read
from the listening parties' wire tap), which equals the in-process one as a multiset (tests/net/test_net_golden.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import secrobust

PATH = Path(__file__).with_name("golden") / "transcripts.json"
CLI_PATH = Path(__file__).with_name("golden") / "cli_errors.json"
CLI_CASES: dict[str, list[str]] = {
    "unknown rule": ["aggregate", "--rule", "krumm", "--example-n", "8", "--example-d", "20"],
    "bad f": ["aggregate", "--rule", "krum", "--f", "5", "--example-n", "8", "--example-d", "20"],
    "bad reveal": ["aggregate", "--reveal", "everything", "--example-n", "8", "--example-d", "20"],
    "reveal the rule lacks": ["aggregate", "--rule", "geomed", "--reveal", "weights", "--example-n", "8",
                              "--example-d", "20"],
    "missing file": ["aggregate", "--updates", "/nonexistent/u.npy"],
    "bad option": ["aggregate", "--option", "m", "--example-n", "8", "--example-d", "20"],
    "unknown option": ["aggregate", "--rule", "krum", "--option", "m=2", "--example-n", "8", "--example-d", "20"],
    "bad frac bits": ["aggregate", "--frac-bits", "40", "--example-n", "8", "--example-d", "20"],
    "bad norm bound": ["aggregate", "--norm-bound", "-1", "--example-n", "8", "--example-d", "20"],
    "bad transport": ["aggregate", "--transport", "carrier-pigeon"],
    "bad over-bound": ["aggregate", "--over-bound", "drop", "--example-n", "8", "--example-d", "20"],
    "bad example": ["example", "--out", "/nonexistent/dir/u.npy"],
}

CASES: dict[str, dict[str, Any]] = {
    "mean@distances": {"rule": "mean", "f": 1},
    "krum@distances": {"rule": "krum", "f": 1},
    "multi-krum+nnm@distances": {"rule": "multi-krum", "f": 1, "pre": "nnm"},
    "geomed@distances": {"rule": "geomed", "f": 1},
    "cclip@distances+dp": {"rule": "cclip", "f": 1, "tau": 0.5, "center": "mean", "dp_noise_std": 0.01},
    "krum@weights": {"rule": "krum", "f": 1, "reveal": "weights"},
    "norm-clip@weights": {"rule": "norm-clip", "f": 1, "reveal": "weights", "tau": 0.5},
    "mda@aggregate": {"rule": "mda", "f": 1, "reveal": "aggregate"},
    "cclip@aggregate": {"rule": "cclip", "f": 1, "reveal": "aggregate", "center": "mean"},
    "median@aggregate": {"rule": "median", "f": 1, "reveal": "aggregate"},
    "trimmed-mean@aggregate+dropout": {"rule": "trimmed-mean", "f": 1, "reveal": "aggregate", "drop": {2: "S1"}},
    "krum@weights+ring-attacker": {"rule": "krum", "f": 1, "reveal": "weights", "ring_rows": 0},
}


def updates(n: int = 8, d: int = 33) -> np.ndarray:
    rng = np.random.default_rng(20261207)
    x = rng.normal(0, 0.3, (n, d)) + rng.normal(0, 0.3, d)
    x[0] *= -4.0
    return x


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def arguments(name: str) -> tuple[np.ndarray, str, int, dict[str, Any]]:
    """(updates, rule, f, keyword arguments) of one case, for ``aggregate`` and ``LocalDeployment.aggregate``."""
    case = dict(CASES[name])
    rule, f = case.pop("rule"), case.pop("f")
    x = updates()
    if case.get("center") == "mean":
        case["center"] = x[1:].mean(axis=0)
    if "ring_rows" in case:
        row = np.zeros(x.shape[1], dtype=np.uint64)
        row[3] = np.uint64(1 << 63)
        case["ring_rows"] = {case["ring_rows"]: row}
    return x, rule, f, case


def _result(res: secrobust.AggregateResult) -> dict[str, Any]:
    return {
        "aggregate": _sha(np.ascontiguousarray(res.aggregate).tobytes()),
        "weights": None if res.weights is None else _sha(np.ascontiguousarray(res.weights).tobytes()),
        "center_weight": res.center_weight,
        "participants": list(res.participants),
        "rejected": sorted(res.rejected),
        "bytes": {party: dict(v) for party, v in sorted(res.stats.by_role().items())},
    }


def record(name: str, round_id: int = 0) -> dict[str, Any]:
    """One case's in-process transcript: every message through the tap in the order sent, then the result.
    ``round_id`` runs it as that round of the seeded Cluster (a deployment's round, to compare flows)."""
    x, rule, f, case = arguments(name)
    messages: list[list[Any]] = []

    def tap(sender: str, recipient: str, kind: str, data: bytes) -> None:
        messages.append([sender, recipient, kind, len(data), _sha(data)])

    cluster = secrobust.Cluster(insecure_test_seed=7, tap=tap)
    cluster.next_round = round_id
    res = cluster.run_round(x, rule, f, **case)
    return {"messages": messages, **_result(res)}


# The deployment's flow: the same cases through a LocalDeployment, every message recorded by the listening
# parties' transport tap (``secrobust.transport.grpc.tap``).

def deployment_overrides(tap_dir: Path) -> dict[str, Any]:
    """``LocalOptions`` (over tests/deployments.py's test options) of a deployment that records its flow into
    ``tap_dir``: no triple prefetch, so a round's triple messages are its own (a triple prefetched for the
    next round carries that round's id and is discarded if that round runs another rule)."""
    from secrobust.transport.grpc import tap

    return {"prefetch": 0, "extra_env": {tap.ENV: str(tap_dir)}}


def deployment_options(tap_dir: Path) -> Any:
    """The whole ``LocalOptions`` of such a deployment (test seeds: the DP noise of ``insecure_test_seed``)."""
    from deployments import test_options

    return test_options(**deployment_overrides(tap_dir))


def is_round_flow(sender: str, recipient: str, kind: str) -> bool:
    """A message among the round's parties, not the delivery of its result: the aggregate shares workers and
    operators fetch after the round (``deploy.worker.reconstruct``) have no in-process counterpart."""
    def party(name: str) -> bool:
        return name in ("S0", "S1", "dealer") or name.startswith("worker:")

    return party(sender) and party(recipient) and not (kind == "aggregate-share" and recipient not in ("S0", "S1"))


def record_deployment(dep: Any, tap_dir: Path, name: str) -> dict[str, Any]:
    """One case run through ``dep`` (started with ``deployment_options(tap_dir)``): its flow in canonical
    order, then the result. Concurrent messages have no fixed order on a network, so the canonical order is
    the sorted one: two flows are equal when they hold the same multiset of (sender, recipient, kind, size)
    (and SHA-256, which differs from the in-process run's: the deployment's keys, masks and triples are fresh
    whatever the test seed; only the DP noise follows it)."""
    from secrobust.transport.grpc import tap

    x, rule, f, case = arguments(name)
    round_id = dep.operator.next_round_id()
    res = dep.aggregate(x, rule, f, insecure_test_seed=7, **case)
    flow = [[r["sender"], r["recipient"], r["kind"], r["size"], r["sha256"][:24]] for r in tap.read(tap_dir)
            if r["round"] == round_id and is_round_flow(r["sender"], r["recipient"], r["kind"])]
    return {"round": round_id, "messages": sorted(flow), **_result(res)}


def flow(transcript: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """A transcript's messages as a sorted multiset of (sender, recipient, kind, size)."""
    return sorted((s, r, k, size) for s, r, k, size, _ in transcript["messages"])


def record_all() -> dict[str, Any]:
    return {name: record(name) for name in CASES}


def record_cli(name: str) -> dict[str, Any]:
    """A CLI error: its exit code and its one stderr line."""
    from typer.testing import CliRunner

    from secrobust.cli import app

    result = CliRunner().invoke(app, CLI_CASES[name])
    return {"exit_code": result.exit_code, "stderr": result.stderr}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden.py --write   (records tests/golden/transcripts.json anew)")
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(json.dumps(record_all(), indent=1) + "\n")
    CLI_PATH.write_text(json.dumps({name: record_cli(name) for name in CLI_CASES}, indent=1) + "\n")
    print(f"wrote {PATH} and {CLI_PATH}")
