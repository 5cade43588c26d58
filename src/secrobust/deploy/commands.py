"""Deployment commands of the ``secrobust`` CLI: dealer, server, worker (and, from their own modules,
the key ceremony and ``init`` in ``setup_commands``, the operator's ``round`` in ``round_command``).

``register(app)`` adds them to the main typer app. Every party reads its settings from ``--config``
(TOML, see ``secrobust.deploy.config``) and/or flags; flags win.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from ..cli_io import check_output_dir, fail, load_array
from ..errors import ProtocolError
from ..pki.certs import party_dir, worker_party
from . import round_command, setup_commands
from .config import PartyConfig, load, parse_worker_ids

_CFG = typer.Option(None, "--config", help="TOML file with this party's settings (flags override it)")
_TLS = typer.Option(None, "--tls-dir", help="this party's own folder: <name>.key, <name>.s0.pem / <name>.s1.pem, "
                    "ca-s0.pem, ca-s1.pem")
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

    @app.command("dealer")
    def dealer_cmd(config: Optional[Path] = _CFG, listen: Optional[str] = typer.Option(None, help="host:port to serve on"),
                   s0: Optional[str] = _S0, s1: Optional[str] = _S1, tls_dir: Optional[Path] = _TLS,
                   log_file: Optional[Path] = _LOG,
                   connect_timeout: Optional[float] = _CONNECT,
                   port_file: Optional[Path] = typer.Option(None, help="write the bound port here once listening")) -> None:
        """Run the dealer: answers S1's triple requests and sends each server its part."""
        from .process import run_dealer

        cfg = _load(config, party="dealer" if config is None else None, listen=listen, S0=s0, S1=s1, tls_dir=tls_dir,
                    log_file=log_file, connect_timeout_s=connect_timeout)
        _serve(run_dealer, cfg, port_file=port_file)

    @app.command("server")
    def server_cmd(party: Optional[int] = typer.Option(None, "--party", help="0 for S0, 1 for S1 (the rule server)"),
                   config: Optional[Path] = _CFG, listen: Optional[str] = typer.Option(None, help="host:port to serve on"),
                   s0: Optional[str] = _S0, s1: Optional[str] = _S1, dealer: Optional[str] = _DEALER,
                   tls_dir: Optional[Path] = _TLS,
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
                    dealer=dealer, tls_dir=tls_dir, workers=workers, state_dir=state_dir,
                    log_file=log_file, peer_timeout_s=peer_timeout, connect_timeout_s=connect_timeout)
        if cfg.role != "server":
            fail(f"{cfg.party} is not a server")
        _serve(run_server, cfg, port_file=port_file)

    @app.command("worker")
    def worker_cmd(worker_id: Optional[int] = typer.Option(None, "--id", help="this worker's id i (party worker:i)"),
                   ids: Optional[str] = typer.Option(None, help="run several workers in one process, e.g. '0-24' "
                                                     "(each one's folder under --cert-dir)"),
                   config: list[Path] = typer.Option([], "--config", help="a worker's TOML file (repeat to run "
                                                     "several workers in one process)"),
                   s0: Optional[str] = _S0, s1: Optional[str] = _S1, tls_dir: Optional[Path] = _TLS,
                   cert_dir: Optional[Path] = typer.Option(None, help="with --ids: the folder made by 'secrobust "
                                                           "certs' or 'init' (one folder per party)"),
                   updates: Optional[Path] = typer.Option(None, help="folder with round-<r>/worker-<i>.npy inputs "
                                                          "(default: the config's inbox)"),
                   update: Optional[Path] = typer.Option(None, help="one .npy vector sent in every round"),
                   out: Optional[Path] = typer.Option(None, help="save each round's aggregate as round-<r>.npy here"),
                   rounds: Optional[int] = typer.Option(None, help="stop after this many rounds"),
                   log_file: Optional[Path] = _LOG, connect_timeout: Optional[float] = _CONNECT,
                   ready_file: Optional[Path] = typer.Option(None, help="touch this once both servers answered")) -> None:
        """Run a worker (or several): each round fetch the share key from S0, send the masked update to S1, fetch the aggregate."""
        from .process import run_workers
        from .worker import directory_source, fixed_source

        if updates is not None and update is not None:
            fail("give at most one of --updates DIR and --update FILE")
        try:
            vec = load_array(update, "--update") if update is not None else None
            if out is not None:
                check_output_dir(out)
        except ValueError as exc:
            fail(exc)
        if len(config) > 1 and (ids or worker_id is not None):
            fail("give several workers as --config files or as --ids with --cert-dir, not both")
        if len(config) > 1:
            cfgs = [_load(c, S0=s0, S1=s1, log_file=log_file, connect_timeout_s=connect_timeout) for c in config]
        else:
            wids = _worker_ids(ids) if ids else ([worker_id] if worker_id is not None else [None])
            cfgs = []
            for w in wids:
                party = worker_party(w) if w is not None else None
                folder = party_dir(cert_dir, party) if cert_dir is not None and party is not None else tls_dir
                cfgs.append(_load(config[0] if config else None, party=party, S0=s0, S1=s1, tls_dir=folder,
                                  log_file=log_file, connect_timeout_s=connect_timeout))
        if any(c.role != "worker" for c in cfgs):
            fail("a worker's party id is worker:<i>")
        if vec is not None:
            sources = [fixed_source(vec) for _ in cfgs]
        else:
            sources = []
            for c in cfgs:
                inbox = updates or c.inbox
                if inbox is None or not inbox.is_dir():
                    fail(f"{c.party}: --updates (or inbox = ... in its TOML) must be a folder holding "
                         f"round-<r>/{c.party.replace(':', '-')}.npy, got {inbox}; or give --update FILE")
                sources.append(directory_source(inbox, c.party))
        out_dirs = [out / c.party.replace(":", "-") if out and len(cfgs) > 1 else out for c in cfgs]
        _serve(run_workers, cfgs, sources, out_dirs=out_dirs, ready_file=ready_file, max_rounds=rounds)

    setup_commands.register(app)
    round_command.register(app)


def main() -> None:
    """``python -m secrobust.deploy``: the deployment commands alone (no training imports)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="secrobust deployment: certificates and the dealer, server and worker processes.")
    register(app)
    app()


__all__ = ["main", "register"]
