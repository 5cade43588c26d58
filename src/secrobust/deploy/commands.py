"""Deployment commands of the ``secrobust`` CLI: certs, dealer, server, worker, round.

``register(app)`` adds them to the main typer app. Every party reads its settings from ``--config``
(TOML, see ``secrobust.deploy.config``) and/or flags; flags win.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..certs import OPERATOR_ID, make_deployment_certs, party_paths, standard_parties, worker_party
from ..cli_io import check_output_dir, fail, load_array
from ..errors import ProtocolError
from .config import PartyConfig, load, parse_worker_ids

_CFG = typer.Option(None, "--config", help="TOML file with this party's settings (flags override it)")
_CERT = typer.Option(None, help="this party's certificate (PEM)")
_KEY = typer.Option(None, help="this party's private key (PEM)")
_CA = typer.Option(None, help="the deployment CA certificate (PEM)")
_S0 = typer.Option(None, "--s0", help="address of S0, host:port")
_S1 = typer.Option(None, "--s1", help="address of S1, host:port")
_DEALER = typer.Option(None, "--dealer", help="address of the dealer, host:port")
_LOG = typer.Option(None, help="write JSON-lines logs here instead of stderr")
_CONNECT = typer.Option(None, help="seconds to wait for a TLS connection to a peer")


def _load(config: Optional[Path], **kw: object) -> PartyConfig:
    """The party's settings, or a one-line error and exit code 2."""
    try:
        return load(config, **kw)
    except (ValueError, OSError) as exc:
        fail(exc)


def _serve(run: Callable[..., None], *args: Any, **kw: Any) -> None:
    """Run a party; a failure to start it (a TLS file, a port in use) or to go on is one line and exit code 2."""
    try:
        run(*args, **kw)
    except (ValueError, OSError, RuntimeError, ProtocolError) as exc:
        fail(exc)


def _worker_ids(spec: str) -> list[int | None]:
    """The ids of ``--ids``, or a one-line error and exit code 2."""
    try:
        return list(parse_worker_ids(spec))
    except ValueError as exc:
        fail(f"--ids must look like '0-24' or '0,3,7' (distinct ids >= 0), got {spec!r}: {exc}")


def register(app: typer.Typer) -> None:
    """Add the deployment commands to ``app``."""

    @app.command("certs")
    def certs_cmd(out: Path = typer.Option(..., help="folder for ca.pem, ca.key and per-party <name>.pem/.key"),
                  workers: int = typer.Option(0, help="make certificates for worker:0 .. worker:<n-1>"),
                  party: list[str] = typer.Option([], help="an extra party id (repeatable), e.g. worker:17"),
                  days: int = typer.Option(365, help="validity in days"),
                  overwrite: bool = typer.Option(False, help="re-issue certificates that already exist")) -> None:
        """Make a small CA and ECDSA P-256 certificates for S0, S1, the dealer, the operator and workers."""
        parties = standard_parties(workers) + [p for p in party if p not in standard_parties(workers)]
        try:
            paths = make_deployment_certs(out, parties, days=days, overwrite=overwrite)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"CA: {out / 'ca.pem'} (keep {out / 'ca.key'} offline)")
        for name, p in paths.items():
            typer.echo(f"{name}: {p.cert} {p.key}")

    @app.command("dealer")
    def dealer_cmd(config: Optional[Path] = _CFG, listen: Optional[str] = typer.Option(None, help="host:port to serve on"),
                   s0: Optional[str] = _S0, s1: Optional[str] = _S1, cert: Optional[Path] = _CERT,
                   key: Optional[Path] = _KEY, ca: Optional[Path] = _CA, log_file: Optional[Path] = _LOG,
                   connect_timeout: Optional[float] = _CONNECT,
                   port_file: Optional[Path] = typer.Option(None, help="write the bound port here once listening")) -> None:
        """Run the dealer: answers S1's triple requests and sends each server its part."""
        from .process import run_dealer

        cfg = _load(config, party="dealer" if config is None else None, listen=listen, S0=s0, S1=s1, cert=cert,
                    key=key, ca=ca, log_file=log_file, connect_timeout_s=connect_timeout)
        _serve(run_dealer, cfg, port_file=port_file)

    @app.command("server")
    def server_cmd(party: Optional[int] = typer.Option(None, "--party", help="0 for S0, 1 for S1 (the rule server)"),
                   config: Optional[Path] = _CFG, listen: Optional[str] = typer.Option(None, help="host:port to serve on"),
                   s0: Optional[str] = _S0, s1: Optional[str] = _S1, dealer: Optional[str] = _DEALER,
                   cert: Optional[Path] = _CERT, key: Optional[Path] = _KEY, ca: Optional[Path] = _CA,
                   workers: Optional[str] = typer.Option(None, help="admitted worker ids, e.g. '0-9' or '0,3,7'"),
                   state_dir: Optional[Path] = typer.Option(None, help="folder that keeps the last round id"),
                   log_file: Optional[Path] = _LOG,
                   peer_timeout: Optional[float] = typer.Option(None, help="seconds to wait for the other server"),
                   connect_timeout: Optional[float] = _CONNECT,
                   port_file: Optional[Path] = typer.Option(None, help="write the bound port here once listening")) -> None:
        """Run server S0 or S1."""
        from .process import run_server

        if party is not None and party not in (0, 1):
            fail("--party is 0 or 1")
        cfg = _load(config, party=None if party is None else f"S{party}", listen=listen, S0=s0, S1=s1,
                    dealer=dealer, cert=cert, key=key, ca=ca, workers=workers, state_dir=state_dir,
                    log_file=log_file, peer_timeout_s=peer_timeout, connect_timeout_s=connect_timeout)
        if cfg.role != "server":
            fail(f"{cfg.party} is not a server")
        _serve(run_server, cfg, port_file=port_file)

    @app.command("worker")
    def worker_cmd(worker_id: Optional[int] = typer.Option(None, "--id", help="this worker's id i (party worker:i)"),
                   ids: Optional[str] = typer.Option(None, help="run several workers in one process, e.g. '0-24' "
                                                     "(certificates from --cert-dir)"),
                   config: Optional[Path] = _CFG, s0: Optional[str] = _S0, s1: Optional[str] = _S1,
                   cert: Optional[Path] = _CERT, key: Optional[Path] = _KEY, ca: Optional[Path] = _CA,
                   cert_dir: Optional[Path] = typer.Option(None, help="folder made by 'secrobust certs'"),
                   updates: Optional[Path] = typer.Option(None, help="folder with round-<r>/worker-<i>.npy inputs"),
                   update: Optional[Path] = typer.Option(None, help="one .npy vector sent in every round"),
                   out: Optional[Path] = typer.Option(None, help="save each round's aggregate as round-<r>.npy here"),
                   rounds: Optional[int] = typer.Option(None, help="stop after this many rounds"),
                   log_file: Optional[Path] = _LOG, connect_timeout: Optional[float] = _CONNECT,
                   ready_file: Optional[Path] = typer.Option(None, help="touch this once both servers answered")) -> None:
        """Run a worker (or several): each round fetch the share key from S0, send the masked update to S1, fetch the aggregate."""
        from .process import run_workers
        from .worker import directory_source, fixed_source

        if (updates is None) == (update is None):
            fail("give exactly one of --updates DIR and --update FILE")
        try:
            vec = load_array(update, "--update") if update is not None else None
            if updates is not None and not updates.is_dir():
                raise ValueError(f"--updates: {updates} is not a directory (it holds round-<r>/worker-<i>.npy)")
            if out is not None:
                check_output_dir(out)
        except ValueError as exc:
            fail(exc)
        wids = _worker_ids(ids) if ids else ([worker_id] if worker_id is not None else [None])
        cfgs = []
        for w in wids:
            party = worker_party(w) if w is not None else None
            paths = party_paths(cert_dir, party) if cert_dir is not None and party is not None else None
            cfgs.append(_load(config, party=party, S0=s0, S1=s1, cert=cert or (paths.cert if paths else None),
                              key=key or (paths.key if paths else None), ca=ca or (paths.ca if paths else None),
                              log_file=log_file, connect_timeout_s=connect_timeout))
        if any(c.role != "worker" for c in cfgs):
            fail("a worker's party id is worker:<i>")
        if vec is not None:
            sources = [fixed_source(vec) for _ in cfgs]
        else:
            sources = [directory_source(updates, c.party) for c in cfgs]  # type: ignore[arg-type]
        out_dirs = [out / c.party.replace(":", "-") if out and len(cfgs) > 1 else out for c in cfgs]
        _serve(run_workers, cfgs, sources, out_dirs=out_dirs, ready_file=ready_file, max_rounds=rounds)

    @app.command("round")
    def round_cmd(config: Optional[Path] = _CFG, s0: Optional[str] = _S0, s1: Optional[str] = _S1,
                  dealer: Optional[str] = _DEALER,
                  cert: Optional[Path] = _CERT, key: Optional[Path] = _KEY, ca: Optional[Path] = _CA,
                  rule: str = typer.Option("krum", help="robust rule"), f: int = typer.Option(0, help="Byzantine workers"),
                  d: int = typer.Option(..., help="dimension of the updates"),
                  workers: str = typer.Option(..., help="expected worker ids, e.g. '0-9'"),
                  window: float = typer.Option(30.0, help="seconds the share phase stays open"),
                  option: list[str] = typer.Option([], "--option", "-o", help="rule option key=value (repeatable)"),
                  prefetch: int = typer.Option(1, help="also request the triples of this many next rounds now "
                                               "(same n, d; 0 to 4)"),
                  check_inputs: bool = typer.Option(True, "--check-inputs/--no-check-inputs",
                                                    help="run the input validity check (benchmarks only turn "
                                                    "it off: robustness then fails against ring attacks)"),
                  norm_bound: Optional[float] = typer.Option(None, help="reject every worker whose vector has L2 "
                                                             "norm above this (e.g. the DP clipping norm)"),
                  out: Optional[Path] = typer.Option(None, help="write aggregate and weights to this .npz")) -> None:
        """As the operator: open one round at both servers, wait for it, print the outcome."""
        from .. import ring
        from .operator import Operator
        from .rounds import RoundRequest

        cfg = _load(config, party=OPERATOR_ID if config is None else None, S0=s0, S1=s1, dealer=dealer, cert=cert,
                    key=key, ca=ca)
        opts = {}
        for item in option:
            k, _, v = item.partition("=")
            try:
                opts[k.replace("-", "_")] = json.loads(v)
            except json.JSONDecodeError:
                opts[k.replace("-", "_")] = v
        try:
            op = Operator(cfg.identity(), cfg.peer("S0"), cfg.peer("S1"), cfg.peers.get("dealer"), prefetch=prefetch)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            statuses = op.status()
            rid = op.next_round_id(statuses)
            wids = parse_worker_ids(workers)
            req = op.with_triples(RoundRequest(rid, wids, d, rule, f, ring.DEFAULT_FRAC_BITS, opts, None, None,
                                               window, check_inputs=check_inputs, norm_bound=norm_bound),
                                  statuses)
            req.check()
            op.open_round(req)
            res = op.collect(req, n=len(wids), wait_s=window + 600.0)
        except Exception as exc:  # the command reports any failure as one line and exit code 1
            typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            op.close()
        typer.echo(json.dumps({"round_id": rid, "participants": list(res.participants),
                               "weights": res.weights.tolist(), "aggregate_norm": float(np.linalg.norm(res.aggregate)),
                               "rejected": {str(wids[i]): reason for i, reason in res.rejected.items()},
                               "stats": res.stats.as_dict()}, default=str))
        if out is not None:
            np.savez(out, aggregate=res.aggregate, weights=res.weights)


def main() -> None:
    """``python -m secrobust.deploy``: the deployment commands alone (no training imports)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="secrobust deployment: certificates and the dealer, server and worker processes.")
    register(app)
    app()


__all__ = ["main", "register"]
