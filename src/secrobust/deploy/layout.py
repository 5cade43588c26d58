"""A by-hand deployment's folder layout: one folder per party, holding its TOML file next to its own key.

``write_configs`` (the ``secrobust init`` command) writes ``<root>/<stem>/<stem>.toml`` for S0, S1, their
operators, the dealer and every worker (stem: ``certs.tls_name``, e.g. ``operator-s1``, ``worker-3``).
Every path in a TOML file is relative to its folder and names the conventional files
(``certs.party_paths``): the party's ``<stem>.key``, its certificate(s) ``<stem>.s0.pem`` /
``<stem>.s1.pem`` and the two CA certificates ``ca-s0.pem`` and ``ca-s1.pem``. A server keeps its last
round id in ``state/``, a worker reads its inputs from ``inbox/round-<r>/worker-<i>.npy``. So each party
can be handed its folder, run ``secrobust keygen`` in it, receive its certificates, and start with
``secrobust <role> --config <folder>/<stem>.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..pki.certs import (
    DEALER_ID,
    SERVER_IDS,
    party_dir,
    party_paths,
    party_role,
    standard_parties,
    tls_name,
)
from ..rules.cohort import DEFAULT_MIN_PARTICIPANTS
from .config import PartyConfig, to_toml

DEFAULT_ADDRESSES = {"S0": "127.0.0.1:7100", "S1": "127.0.0.1:7101", DEALER_ID: "127.0.0.1:7102"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def listen_address(address: str) -> str:
    """Where a listening party binds for peers that reach it at ``address``: the address itself on
    loopback, else every interface on the same port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"an address is host:port, got {address!r}")
    return address if host in LOOPBACK_HOSTS else f"0.0.0.0:{port}"


def write_configs(root: str | os.PathLike[str], workers: int, addresses: Mapping[str, str] | None = None, *,
                  min_participants: int = DEFAULT_MIN_PARTICIPANTS, peer_timeout_s: float = 60.0,
                  connect_timeout_s: float = 5.0, overwrite: bool = False) -> dict[str, Path]:
    """Write each party's TOML file into its folder under ``root`` (workers 0..workers-1, addresses of S0,
    S1 and the dealer as the other parties reach them); {party: TOML path}. Refuses to replace a file
    unless ``overwrite``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"a deployment needs at least one worker, got {workers!r}")
    peers = {**DEFAULT_ADDRESSES, **(addresses or {})}
    listen = {name: listen_address(peers[name]) for name in (*SERVER_IDS, DEALER_ID)}
    ids = tuple(range(workers))
    out: dict[str, Path] = {}
    for party in standard_parties(workers):
        folder = party_dir(root, party)
        target = folder / f"{tls_name(party)}.toml"
        if target.exists() and not overwrite:
            raise ValueError(f"{target} exists (pass --overwrite to replace it)")
        role = party_role(party)
        paths = party_paths(folder, party)
        cfg = PartyConfig(party=party, key=paths.key, certs=paths.certs, cas=paths.cas, listen=listen.get(party),
                          peers=dict(peers), workers=ids if role == "server" else (),
                          state_dir=folder / "state" if role == "server" else None,
                          inbox=folder / "inbox" if role == "worker" else None,
                          peer_timeout_s=peer_timeout_s, connect_timeout_s=connect_timeout_s,
                          min_participants=min_participants).check()
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
        if cfg.inbox is not None:
            cfg.inbox.mkdir(exist_ok=True)
        target.write_text(to_toml(cfg, relative_to=folder))
        out[party] = target
    return out


__all__ = ["DEFAULT_ADDRESSES", "listen_address", "write_configs"]
