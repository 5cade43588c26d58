"""The ``round`` command: an operator opens one round at its server(s) and prints the outcome.

Each server admits only its own operator (``operator:S0``, ``operator:S1``). Given both operators'
TOML files (one person or launcher holding both keys), the command builds the request, opens it at S0
then S1, rebuilds the result and prints it. Given one, it acts for that server only, so the two
organisations can each run their own operator:

* S0's operator: ``round --config operator-s0.toml --d ... --workers ... --save-request req.json`` opens
  the round at S0 and writes the request for S1's operator (S0 opens first: it must be ready for the
  dealer's part when S1 asks for the triple);
* S1's operator: ``round --config operator-s1.toml --request req.json`` opens exactly that request at S1.

With split operators (``deploy.approval``), operator:S0's file names S1's approval service under
``[peers]`` (``"operator:S1" = "host:port"``): ``round --config operator-s0.toml`` then runs the whole round,
S1's half through the service, which opens it at S1 only if S1's policy allows it (its refusal is the
command's error), and prints what the launcher's mode prints.

The servers compare the request's SHA-256 before any share is used, so a mismatch aborts the round.
Each side then prints its own server's report (S1's carries the view S1 opened, with ``--reveal
distances``; with ``weights`` or ``aggregate`` the rule runs on shares and S1 opens none, and with
``aggregate`` no report or output holds the weights). The output's
``declined`` names the workers that sat the round out and why (e.g. an update with the wrong d).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..cli_io import check_output_file, fail, save_npz
from ..errors import ProtocolError, RoundAborted
from ..pki.certs import operator_party
from ..primitives import ring
from ..transport.grpc import PartyUnreachable, RemoteRejected
from .config import PartyConfig, load, parse_worker_ids
from .operator import Operator, declined
from .rounds import RoundRequest

REPORT_KEYS = ("round_id", "party", "status", "reason", "reveal", "participants", "weights", "rejected", "declined",
               "aggregate_sha256")


def operators(configs: list[Path]) -> list[PartyConfig]:
    """The operator configurations given with ``--config`` (one per server at most), or exit 2."""
    if not configs:
        fail("give --config with operator:S0's TOML file, operator:S1's, or both")
    cfgs = []
    for path in configs:
        try:
            cfg = load(path)
        except (ValueError, OSError) as exc:
            fail(f"--config {path}: {exc}")
        if cfg.role != "operator":
            fail(f"--config {path} is {cfg.party}'s, not an operator's (operator:S0 or operator:S1)")
        cfgs.append(cfg)
    if len({c.party for c in cfgs}) != len(cfgs):
        fail("each operator's --config once")
    return cfgs


def _address(cfgs: list[PartyConfig], name: str) -> str | None:
    return next((c.peers[name] for c in cfgs if name in c.peers), None)


def _options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--option is key=value, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def _read_request(path: Path) -> RoundRequest:
    try:
        return RoundRequest.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        fail(f"--request {path}: {exc}")


def _request(round_id: int, wids: tuple[int, ...], d: int | None, rule: str, f: int, options: dict[str, Any],
             window: float, check_inputs: bool, norm_bound: float | None, min_participants: int | None,
             reveal: str, triple_id: str | None = None) -> RoundRequest:
    return RoundRequest(round_id, wids, int(d or 0), rule, f, ring.DEFAULT_FRAC_BITS, options, None, triple_id,
                        window, check_inputs=check_inputs, norm_bound=norm_bound, min_participants=min_participants,
                        reveal=reveal)


def register(app: typer.Typer) -> None:
    """Add the ``round`` command to ``app``."""

    @app.command("round")
    def round_cmd(config: list[Path] = typer.Option([], "--config", help="an operator's TOML file: operator:S0's, "
                                                    "operator:S1's, or both (repeat)"),
                  rule: str = typer.Option("krum", help="robust rule"),
                  f: int = typer.Option(0, help="Byzantine workers"),
                  d: Optional[int] = typer.Option(None, help="dimension of the updates"),
                  workers: Optional[str] = typer.Option(None, help="expected worker ids, e.g. '0-9'"),
                  window: float = typer.Option(30.0, help="seconds the share phase stays open"),
                  option: list[str] = typer.Option([], "--option", "-o", help="rule option key=value (repeatable)"),
                  prefetch: int = typer.Option(1, help="also request the triples of this many next rounds now "
                                               "(same n, d; 0 to 4)"),
                  check_inputs: bool = typer.Option(True, "--check-inputs/--no-check-inputs",
                                                    help="run the input validity check (benchmarks only turn "
                                                    "it off: robustness then fails against ring attacks)"),
                  norm_bound: Optional[float] = typer.Option(None, help="reject every worker whose vector has L2 "
                                                             "norm above this (e.g. the DP clipping norm)"),
                  min_participants: Optional[int] = typer.Option(None, help="a larger minimum cohort than the "
                                                                 "servers' own for this round"),
                  reveal: str = typer.Option("distances", help="what the round reveals besides the aggregate: "
                                             "distances (S1 opens them), weights (the rule runs on shares between "
                                             "the servers) or aggregate (the weights stay shared too)"),
                  request: Optional[Path] = typer.Option(None, help="open exactly this request (JSON written by the "
                                                         "other operator's --save-request)"),
                  save_request: Optional[Path] = typer.Option(None, help="write the request opened here, for the "
                                                              "other server's operator"),
                  out: Optional[Path] = typer.Option(None, help="write aggregate and weights to this .npz (needs both "
                                                     "operators)")) -> None:
        """As an operator: open one round at your server(s), wait for it, print the outcome as JSON."""
        cfgs = operators(config)
        if request is None and [c.party for c in cfgs] == ["operator:S1"]:
            fail("S1's operator opens the request S0's operator saved (--request FILE): S0 opens a round first, "
                 "so it is ready for the dealer's part when S1 asks for the triple")
        if request is None and (d is None or workers is None):
            fail("--d and --workers are needed to build a round request (or give --request FILE)")
        approval = cfgs[0].peers.get(operator_party(1)) if [c.party for c in cfgs] == [operator_party(0)] else None
        if out is not None and len(cfgs) != 2 and not approval:
            fail("--out needs both operators' --config (or operator:S0's naming S1's approval service): one "
                 "operator sees only its own server's report")
        try:
            for path, name in ((out, "--out"), (save_request, "--save-request")):
                if path is not None:
                    check_output_file(path, name)
        except ValueError as exc:
            fail(exc)
        opts = _options(option)
        wids: tuple[int, ...] = ()
        if request is None:
            try:
                wids = parse_worker_ids(workers)
            except ValueError as exc:
                fail(f"--workers: {exc}")
        fixed = _read_request(request) if request is not None else None
        if fixed is None:
            try:
                _request(0, wids, d, rule, f, opts, window, check_inputs, norm_bound, min_participants, reveal,
                         triple_id="unnamed").check()
            except ValueError as exc:
                fail(exc)
        try:
            op = Operator([c.identity() for c in cfgs], _address(cfgs, "S0"), None if approval else _address(cfgs, "S1"),
                          _address(cfgs, "dealer"), connect_timeout=cfgs[0].connect_timeout_s, prefetch=prefetch,
                          approval=approval)
        except ValueError as exc:
            fail(exc)
        try:
            if fixed is None:
                statuses = op.status()
                built = _request(op.next_round_id(statuses), wids, d, rule, f, opts, window, check_inputs, norm_bound,
                                 min_participants, reveal)
                req = op.with_triples(built, statuses)
                req.check()
            else:
                req = fixed
            op.open_round(req)
            if save_request is not None:
                save_request.write_text(json.dumps(req.to_json()))
            wait_s = req.share_window_s + 600.0
            if op.both:
                res = op.collect(req, n=len(req.worker_ids), wait_s=wait_s)
                printed: dict[str, Any] = {
                    "round_id": req.round_id, "reveal": req.reveal, "participants": list(res.participants),
                    "weights": None if res.weights is None else res.weights.tolist(),
                    "aggregate_norm": float(np.linalg.norm(res.aggregate)),
                    "rejected": {str(req.worker_ids[i]): reason for i, reason in res.rejected.items()},
                    "declined": {str(w): r for w, r in declined(op.last_reports).items()},
                    "stats": res.stats.as_dict()}
            else:
                rep = op.outcome(req.round_id, wait_s)[op.sides[0]]
                printed = {k: rep.get(k) for k in REPORT_KEYS}
                if "view" in rep:
                    printed["view"] = rep["view"]
        except (RoundAborted, RemoteRejected, PartyUnreachable, ProtocolError, ValueError, OSError) as exc:
            fail(f"{type(exc).__name__}: {exc}")
        finally:
            op.close()
        typer.echo(json.dumps(printed, default=str))
        if out is not None:
            arrays = {"aggregate": res.aggregate}
            if res.weights is not None:         # none with reveal="aggregate": nobody learnt them
                arrays["weights"] = res.weights
            save_npz(out, **arrays)


__all__ = ["operators", "register"]
