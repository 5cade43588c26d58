"""The ``secrobust`` command line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .params import Inputs, RoundParams
from . import api, examples, rules
from .cli_io import check_output_file, parse_key_values, fail, load_array, one_line, save_npy, save_npz
from .errors import ProtocolError
from .rules.plain import split_options
from .rules.pre import prepare
from .rules import modes
from .rules.cohort import DEFAULT_MIN_PARTICIPANTS
from .updates import check_updates, encode_center

app = typer.Typer(help="Secure and Byzantine-robust aggregation with two non-colluding servers.",
                  no_args_is_help=True, add_completion=False)
console = Console()


TRANSPORTS = ("inprocess", "grpc")
ENGINE_KEYWORDS = ("dp_noise_std", "unchecked", "ring_rows", "drop", "chunk_bytes", "min_participants")
COMMAND_ERRORS = (ValueError, ProtocolError, OSError, MemoryError, RuntimeError)


def check_example(n: int, d: int, byzantine: int, seed: int = 0, prefix: str = "--") -> None:
    """Raise ValueError unless n, d >= 1, 0 <= byzantine < n and seed >= 0 (options named with ``prefix``)."""
    if n < 1:
        raise ValueError(f"{prefix}n must be at least 1, got {n}")
    if d < 1:
        raise ValueError(f"{prefix}d must be at least 1, got {d}")
    if not 0 <= byzantine < n:
        raise ValueError(f"{prefix}byzantine must be in 0..{n - 1} (fewer than n={n}), got {byzantine}")
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")


def check_reveal(rule: str, reveal: str, options: dict[str, Any]) -> None:
    """Raise ValueError (naming --reveal) for an unknown mode or a rule with no circuit for it."""
    rules.get_rule(rule)                        # an unknown rule is named as such first
    _, rule_options = split_options(rule, {k: v for k, v in options.items() if k not in ENGINE_KEYWORDS})
    try:
        _, rule_options = prepare(rules.get_rule(rule), rule_options, modes.check_mode(reveal))
        modes.secure_rule(rule, reveal, rule_options)
    except ValueError as exc:
        raise ValueError(f"--reveal: {exc}") from None


def check_round(x: np.ndarray, rule: str, f: int, frac_bits: int | None, check_inputs: bool,
                norm_bound: float | None, options: dict[str, Any], reveal: str | None = None,
                over_bound: str = "exclude") -> Inputs:
    """Raise ValueError for any input a round would refuse, before a party starts (the gRPC deployment's
    processes take seconds to start and would only then see the error); the round's checked parameters."""
    extra = {k: options[k] for k in ENGINE_KEYWORDS if k in options}
    inputs = RoundParams.check(x, rule, f, frac_bits=frac_bits, reveal=reveal, norm_bound=norm_bound,
                               min_participants=extra.get("min_participants", DEFAULT_MIN_PARTICIPANTS),
                               dp_noise_std=extra.get("dp_noise_std", 0.0), check_inputs=check_inputs,
                               unchecked=extra.get("unchecked", ()), ring_rows=extra.get("ring_rows"),
                               options={k: v for k, v in options.items() if k not in ENGINE_KEYWORDS},
                               over_bound=over_bound)
    api.check_drop(extra.get("drop"), inputs.params.n)
    check_updates(inputs.x, inputs.params.frac_bits, inputs.unchecked, inputs.ring_rows)
    if inputs.params.center is not None:
        encode_center(inputs.params.center, inputs.params.d, inputs.params.frac_bits)
    return inputs


@app.command()
def example(out: Path = typer.Option(..., help="where to write the (n, d) float64 .npy file (this exact path)"),
            n: int = typer.Option(20, help="number of workers"), d: int = typer.Option(10_000, help="dimension"),
            byzantine: int = typer.Option(4, help="how many of them are Byzantine (the first rows)"),
            seed: int = typer.Option(0, help="NumPy seed for the simulated data")) -> None:
    """Write a synthetic set of updates with Byzantine outliers."""
    try:
        check_example(n, d, byzantine, seed)
        check_output_file(out)
        save_npy(out, examples.synthetic_updates(n, d, byzantine, seed))
    except COMMAND_ERRORS as exc:
        fail(exc)
    console.print(f"wrote {n} x {d} updates ({byzantine} Byzantine) to {out}", soft_wrap=True, markup=False)


@app.command("aggregate")
def aggregate_cmd(updates: Optional[Path] = typer.Option(None, help=".npy file of shape (n, d) (numpy.save)"),
                  rule: str = typer.Option("krum", help=f"one of {', '.join(rules.RULES)}"),
                  f: int = typer.Option(0, help="number of Byzantine workers to tolerate"),
                  out: Optional[Path] = typer.Option(None, help="write aggregate, weights, distances (what the "
                                                     "round revealed) as an .npz archive to this exact path"),
                  option: list[str] = typer.Option([], "--option", "-o", help="rule option key=value (repeatable)"),
                  frac_bits: Optional[int] = typer.Option(None, help="fixed-point fractional bits F (default: the "
                                                          "largest F <= 20 whose range holds the bound, or the "
                                                          "largest honest update)"),
                  over_bound: str = typer.Option("exclude", help="an honest update above the bound: exclude (the default), clip (scaled to the bound), "
                                                 "or error (naming every such row)"),
                  seed: Optional[int] = typer.Option(None, help="fix all protocol randomness (insecure_test_seed: "
                                                     "tests only, one seed on two inputs reuses every mask)"),
                  check_inputs: bool = typer.Option(True, help="run the input validity check (off: benchmarks only; "
                                                    "robustness then fails against workers that wrap the ring)"),
                  norm_bound: Optional[float] = typer.Option(None, help="reject every worker whose vector has L2 norm "
                                                             "above this (e.g. the DP clipping norm); default: the "
                                                             "encoder's range"),
                  reveal: Optional[str] = typer.Option(None, help="what the round reveals besides the "
                                             "aggregate: distances (S1 opens the distances or norms), weights (the "
                                             "rule runs on shares, only the weights are opened) or aggregate (the "
                                             "weights stay shared too); default: distances, or the only "
                                             "mode the rule has"),
                  transport: str = typer.Option("inprocess", help="inprocess (one process) or grpc (a local "
                                                "deployment: every party its own OS process, mutual TLS)"),
                  example_n: int = typer.Option(20, help="with no --updates: workers in the generated example"),
                  example_d: int = typer.Option(10_000, help="with no --updates: dimension of the example"),
                  example_byzantine: int = typer.Option(4, help="with no --updates: Byzantine workers")) -> None:
    """Run one secure round (in process, or over a local gRPC deployment) and print its outcome and bytes."""
    if transport not in TRANSPORTS:
        fail(f"--transport must be inprocess or grpc, got {transport!r}")
    try:
        if out is not None:
            check_output_file(out)
        options = parse_key_values(option)
        rules.get_rule(rule)
        reveal = modes.default_mode(rule) if reveal is None else reveal
        check_reveal(rule, reveal, options)
        x = _updates(updates, example_n, example_d, example_byzantine)
        run = api.aggregate
        if transport == "grpc":
            check_round(x, rule, f, frac_bits, check_inputs, norm_bound, options, reveal, over_bound)
            run = _grpc_round(seed is not None, options.get("min_participants", DEFAULT_MIN_PARTICIPANTS))
        res = run(x, rule, f, frac_bits=frac_bits, insecure_test_seed=seed, check_inputs=check_inputs,
                  norm_bound=norm_bound, reveal=reveal, over_bound=over_bound, **options)
    except COMMAND_ERRORS as exc:
        fail(exc)
    _print_result(res)
    if out is not None:
        _save_result(res, out)


def _grpc_round(test_seed: bool, min_participants: int) -> Callable[..., api.AggregateResult]:
    """``aggregate_grpc`` over servers started with this minimum cohort (and, with ``--seed``, for tests)."""
    from .deploy.local import LocalOptions, aggregate_grpc

    local = LocalOptions(min_participants=min_participants, insecure_test_seeds=test_seed)
    return functools.partial(aggregate_grpc, options=local)


def _updates(path: Path | None, n: int, d: int, byzantine: int) -> np.ndarray:
    """The (n, d) updates from ``path``, or a generated example when no path is given."""
    if path is not None:
        return load_array(path, "--updates", ndim=2)
    check_example(n, d, byzantine, prefix="--example-")
    console.print(f"no --updates given: generated {n} x {d} updates, the first {byzantine} Byzantine")
    return examples.synthetic_updates(n, d, byzantine)


def _save_result(res: api.AggregateResult, out: Path) -> None:
    """The aggregate and what else the round revealed (the weights unless reveal="aggregate", the distances
    only with reveal="distances") as an .npz archive at exactly ``out``."""
    payload = {"aggregate": res.aggregate}
    if res.weights is not None:
        payload["weights"] = res.weights
    if res.distances is not None:
        payload["distances"] = res.distances
    try:
        save_npz(out, **payload)
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc.strerror or exc}")
    console.print(f"wrote {out}", soft_wrap=True, markup=False)


def _print_result(res: api.AggregateResult) -> None:
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    console.print(f"rule {res.rule}, f={res.f}, reveal={res.reveal}, {len(res.participants)} participants")
    if res.frac_bits is not None:
        origin = " (from the largest update: a data-dependent bound)" if res.bound_from_data else ""
        console.print(f"scale: frac_bits={res.frac_bits}, resolution {res.resolution:.3g}, bound "
                      f"{res.norm_bound:.6g}{origin}", soft_wrap=True, markup=False)
    console.print(f"weights: {'hidden (they stayed secret-shared)' if res.weights is None else res.weights}")
    for worker, reason in res.rejected.items():
        console.print(f"rejected worker {worker}: {reason}")
    console.print(f"revealed aggregate: L2 norm {np.linalg.norm(res.aggregate):.6g}")
    console.print(learned(res), soft_wrap=True, markup=False)
    table = Table(title="bytes per party")
    for col in ("party", "sent", "received"):
        table.add_column(col, justify="right")
    for party, b in res.stats.by_role().items():
        table.add_row(party, f"{b['sent']:,}", f"{b['received']:,}")
    console.print(table)
    console.print("seconds per phase: " + ", ".join(f"{k} {v:.3f}" for k, v in res.stats.seconds.items()))


def learned(res: api.AggregateResult) -> str:
    """One line: what S1 and the servers learnt in this round's reveal mode."""
    how = "the mean's weights follow from the participants" if res.rule in modes.PUBLIC_WEIGHTS else \
        "the rule ran on shares"
    if res.reveal == "weights":
        return f"S1 learned: no distances or norms ({how}); the servers learned the weights and the aggregate"
    if res.reveal == "aggregate":
        return f"S1 learned: no distances or norms ({how}); the servers learned only the aggregate, not the weights"
    return f"S1 learned: {', '.join(res.revealed) or 'nothing beyond the weights'}"


def _register_optional() -> None:
    """The training and deployment commands, when their optional dependencies are installed; a broken
    secrobust module is an error, not a command that silently disappears. ``flower-sim`` is always listed:
    without the flower extra it says how to install it (exit 2)."""
    for module in ("secrobust.train.commands", "secrobust.deploy.commands", "secrobust.flower.commands"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "secrobust":
                raise
            continue
        mod.register(app)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    """The ``secrobust`` entry point: typer's own usage errors (an unknown option, a missing or malformed
    value) become one line on stderr with exit code 2, like every command's errors."""
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="secrobust", standalone_mode=False)
    except click_error as exc:
        if not exc.format_message().strip():
            raise SystemExit(0) from None           # no arguments: the help was shown, nothing went wrong
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        typer.echo(f"error: {where}{one_line(exc.format_message())}", err=True)
        raise SystemExit(2) from None
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        raise SystemExit(2) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
