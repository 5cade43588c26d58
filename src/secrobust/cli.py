"""The ``secrobust`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from . import api, examples, ring, rules
from .errors import RoundAborted

app = typer.Typer(help="Secure and Byzantine-robust aggregation with two non-colluding servers.",
                  no_args_is_help=True, add_completion=False)
console = Console()


def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"options are key=value, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


@app.command()
def example(out: Path = typer.Option(..., help="where to write the (n, d) float64 .npy file"),
            n: int = typer.Option(20, help="number of workers"), d: int = typer.Option(10_000, help="dimension"),
            byzantine: int = typer.Option(4, help="how many of them are Byzantine (the first rows)"),
            seed: int = typer.Option(0, help="NumPy seed for the simulated data")) -> None:
    """Write a synthetic set of updates with Byzantine outliers."""
    np.save(out, examples.synthetic_updates(n, d, byzantine, seed))
    console.print(f"wrote {n} x {d} updates ({byzantine} Byzantine) to {out}")


@app.command("aggregate")
def aggregate_cmd(updates: Optional[Path] = typer.Option(None, help=".npy file of shape (n, d)"),
                  rule: str = typer.Option("krum", help=f"one of {', '.join(rules.RULES)}"),
                  f: int = typer.Option(0, help="number of Byzantine workers to tolerate"),
                  out: Optional[Path] = typer.Option(None, help="write aggregate, weights, distances to this .npz"),
                  option: list[str] = typer.Option([], "--option", "-o", help="rule option key=value (repeatable)"),
                  frac_bits: int = typer.Option(ring.DEFAULT_FRAC_BITS, help="fixed-point fractional bits F"),
                  seed: Optional[int] = typer.Option(None, help="fix all protocol randomness (testing only)"),
                  check_inputs: bool = typer.Option(True, help="run the input validity check (off: benchmarks only; "
                                                    "robustness then fails against workers that wrap the ring)"),
                  norm_bound: Optional[float] = typer.Option(None, help="reject every worker whose vector has L2 norm "
                                                             "above this (e.g. the DP clipping norm); default: the "
                                                             "encoder's range"),
                  transport: str = typer.Option("inprocess", help="inprocess (one process) or grpc (a local "
                                                "deployment: every party its own OS process, mutual TLS)"),
                  example_n: int = typer.Option(20, help="with no --updates: workers in the generated example"),
                  example_d: int = typer.Option(10_000, help="with no --updates: dimension of the example"),
                  example_byzantine: int = typer.Option(4, help="with no --updates: Byzantine workers")) -> None:
    """Run one secure round in process and print the weights, the aggregate's norm and per-party bytes."""
    if updates is None:
        x = examples.synthetic_updates(example_n, example_d, example_byzantine)
        console.print(f"no --updates given: generated {example_n} x {example_d} updates, "
                      f"the first {example_byzantine} Byzantine")
    else:
        x = np.load(updates, allow_pickle=False)
    if transport not in ("inprocess", "grpc"):
        console.print(f"[red]error:[/red] --transport must be inprocess or grpc, got {transport!r}")
        raise typer.Exit(2)
    run = api.aggregate
    if transport == "grpc":
        from .deploy.local import aggregate_grpc as run
    try:
        res = run(x, rule, f, frac_bits=frac_bits, seed=seed, check_inputs=check_inputs, norm_bound=norm_bound,
                  **_parse_options(option))
    except (ValueError, RoundAborted) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_result(res)
    if out is not None:
        payload = {"aggregate": res.aggregate, "weights": res.weights}
        if res.distances is not None:
            payload["distances"] = res.distances
        np.savez(out, **payload)
        console.print(f"wrote {out}")


def _print_result(res: api.AggregateResult) -> None:
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    console.print(f"rule {res.rule}, f={res.f}, {len(res.participants)} participants")
    console.print(f"weights: {res.weights}")
    for worker, reason in res.rejected.items():
        console.print(f"rejected worker {worker}: {reason}")
    console.print(f"revealed aggregate: L2 norm {np.linalg.norm(res.aggregate):.6g}")
    console.print(f"S1 learned: {', '.join(res.revealed) or 'nothing beyond the weights'}")
    table = Table(title="bytes per party")
    for col in ("party", "sent", "received"):
        table.add_column(col, justify="right")
    for party, b in res.stats.by_role().items():
        table.add_row(party, f"{b['sent']:,}", f"{b['received']:,}")
    console.print(table)
    console.print("seconds per phase: " + ", ".join(f"{k} {v:.3f}" for k, v in res.stats.seconds.items()))


def _register_optional() -> None:
    for module in ("secrobust.train.commands", "secrobust.deploy.commands"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        mod.register(app)


_register_optional()

if __name__ == "__main__":
    app()
