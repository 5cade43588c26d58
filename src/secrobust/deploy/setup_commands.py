"""Key ceremony and set-up commands of the ``secrobust`` CLI: ca, keygen, sign, certs, init.

For a real deployment each server organisation runs ``ca`` once, every party runs ``keygen`` on its own
machine and sends only its CSR to the CA(s) that certify it, a CA runs ``sign`` and returns the
certificate, and ``init`` writes the TOML files. ``certs`` and ``init --local-keys`` play every role on
one machine, for trials only (docs/deployment-setup.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_io import fail
from ..pki.ceremony import (
    CA_DAYS,
    CERT_DAYS,
    csr_party,
    load_ca,
    make_ca,
    make_deployment_certs,
    make_key,
    sign_csr,
)
from ..pki.certs import ORGS, orgs_of, standard_parties, tls_name
from .layout import DEFAULT_ADDRESSES, write_configs


def _parties(workers: int, extra: list[str]) -> list[str]:
    if workers < 0:
        fail(f"--workers must be >= 0, got {workers}")
    base = standard_parties(workers)
    return base + [p for p in extra if p not in base]


def register(app: typer.Typer) -> None:
    """Add ca, keygen, sign, certs and init to ``app``."""

    @app.command("ca")
    def ca_cmd(org: str = typer.Option(..., help="the server organisation this CA belongs to: S0 or S1"),
               out: Path = typer.Option(..., help="folder for ca-<org>.key (keep it offline) and ca-<org>.pem"),
               days: int = typer.Option(CA_DAYS, help="validity in days")) -> None:
        """Make one server organisation's certificate authority (once per organisation)."""
        try:
            ca = make_ca(out, org, days=days)
        except (ValueError, OSError) as exc:
            fail(exc)
        typer.echo(f"{org}'s CA: {ca.cert_path} (public: give it to every party); its key stays in {out}")

    @app.command("keygen")
    def keygen_cmd(party: str = typer.Option(..., help="this party's id: S0, S1, operator:S0, operator:S1, dealer "
                                             "or worker:<i>"),
                   out: Path = typer.Option(..., help="this party's own folder"),
                   overwrite: bool = typer.Option(False, help="replace an existing key")) -> None:
        """Generate this party's private key (mode 0600, never leaves the folder) and its signing request."""
        try:
            key, csr = make_key(out, party, overwrite=overwrite)
        except (ValueError, OSError) as exc:
            fail(exc)
        cas = " and ".join(f"{o}'s CA" for o in orgs_of(party))
        typer.echo(f"key: {key} (keep it here)\nsigning request: {csr} (send it to {cas})")

    @app.command("sign")
    def sign_cmd(ca: Path = typer.Option(..., help="the CA folder made by 'secrobust ca'"),
                 csr: Path = typer.Option(..., help="a party's signing request (<name>.csr)"),
                 out: Optional[Path] = typer.Option(None, help="where to write the certificate (default: "
                                                    "<name>.<org>.pem beside the CSR)"),
                 days: int = typer.Option(CERT_DAYS, help="validity in days")) -> None:
        """As a server organisation's CA: sign a party's CSR.

        Refused if the CSR is malformed, its name is no party's, or the party is not one this
        organisation certifies (S0's CA never signs S1 or operator:S1)."""
        try:
            authority = load_ca(ca)
            pem = csr.read_bytes()
            cert = sign_csr(authority, pem, days=days)
            target = out or csr.parent / f"{tls_name(csr_party(pem))}.{authority.org.lower()}.pem"
            target.write_bytes(cert)
        except (ValueError, OSError) as exc:
            fail(f"{csr}: {exc}")
        typer.echo(f"wrote {target}: return it to {csr_party(pem)} with {authority.cert_path.name}")

    @app.command("certs")
    def certs_cmd(out: Path = typer.Option(..., help="folder for ca-s0/, ca-s1/ and one folder per party"),
                  workers: int = typer.Option(0, help="make keys for worker:0 .. worker:<n-1>"),
                  party: list[str] = typer.Option([], help="an extra party id (repeatable), e.g. worker:17"),
                  days: int = typer.Option(CERT_DAYS, help="validity in days"),
                  overwrite: bool = typer.Option(False, help="replace keys and certificates that exist")) -> None:
        """Trials on one machine only: both CAs and every party's key, each party in its own folder.

        A real deployment runs ca, keygen and sign on each party's own machine instead."""
        try:
            paths = make_deployment_certs(out, _parties(workers, party), days=days, overwrite=overwrite)
        except (ValueError, OSError) as exc:
            fail(exc)
        for org in ORGS:
            typer.echo(f"{org}'s CA: {out / f'ca-{org.lower()}'}")
        for name, p in paths.items():
            typer.echo(f"{name}: {p.key.parent}")

    @app.command("init")
    def init_cmd(out: Path = typer.Option(..., help="deployment folder: one folder per party"),
                 workers: int = typer.Option(..., help="number of workers (ids 0 .. n-1)"),
                 s0: str = typer.Option(DEFAULT_ADDRESSES["S0"], "--s0", help="host:port where the others reach S0"),
                 s1: str = typer.Option(DEFAULT_ADDRESSES["S1"], "--s1", help="host:port where the others reach S1"),
                 dealer: str = typer.Option(DEFAULT_ADDRESSES["dealer"], "--dealer",
                                            help="host:port where the servers reach the dealer"),
                 local_keys: bool = typer.Option(False, help="also make both CAs and every party's key, each in "
                                                 "its own folder (one machine: trials only)"),
                 overwrite: bool = typer.Option(False, help="replace TOML files that exist")) -> None:
        """Write a ready TOML file for every party (S0, S1, their operators, the dealer, the workers)."""
        try:
            files = write_configs(out, workers, {"S0": s0, "S1": s1, "dealer": dealer}, overwrite=overwrite)
            if local_keys:
                make_deployment_certs(out, list(files))
        except (ValueError, OSError) as exc:
            fail(exc)
        for name, path in files.items():
            typer.echo(f"{name}: {path}")
        if not local_keys:
            typer.echo(f"next: each party runs 'secrobust keygen --party <id> --out {out}/<its folder>' and puts "
                       "its signed certificates and ca-s0.pem, ca-s1.pem beside its key (docs/deployment-setup.md)")


__all__ = ["register"]
