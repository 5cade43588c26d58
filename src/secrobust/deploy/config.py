"""Configuration of one deployed party, from a TOML file and/or command-line flags (flags win).

Example ``s0.toml`` (``secrobust init`` writes one per party)::

    party = "S0"                     # S0, S1, dealer, operator:S0, operator:S1, worker:<i>
    listen = "127.0.0.1:7100"        # servers and the dealer only
    bulk_listen = "127.0.0.1:7110"   # servers: the bulk lane for 8d-byte messages ("off": gRPC only)
    state_dir = "state"              # servers: the last round id survives a restart
    log_file = "s0.jsonl"            # JSON lines; stderr when absent
    inbox = "inbox"                  # workers: round-<r>/worker-<i>.npy inputs

    [peers]
    S0 = "127.0.0.1:7100"
    S1 = "127.0.0.1:7101"
    dealer = "127.0.0.1:7102"

    [tls]                            # or dir = "." for the conventional names below
    key = "s0.key"
    cert_s0 = "s0.s0.pem"            # the certificate S0's CA issued (cert_s1: S1's CA)
    ca_s0 = "ca-s0.pem"
    ca_s1 = "ca-s1.pem"

    [admission]
    workers = "0-9"                  # worker ids the servers admit: "0-9", "0,2,5" or a list

    [timeouts]
    peer_s = 60                      # longest wait for the other server's next message
    connect_s = 5                    # longest wait for a TLS connection to a peer
    upload_grace_s = 5               # S1: a worker's share may send nothing for this long after "go" ...
    upload_min_rate = 1000000        # ... then must average this many bytes/s, or it is cut and dropped

    [rounds]                         # servers only
    min_participants = 5             # abort a round that would aggregate fewer workers (never below 2)
    insecure_test_seeds = false      # true only in tests: accept a request's fixed test seed

Relative paths are read from the TOML file's folder. A server or operator has one certificate (from its
own organisation's CA), the dealer and a worker two (``secrobust.pki.certs``); every party has both CA
certificates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import tomllib

from ..pki.certs import (
    DEALER_ID,
    ORGS,
    ROLES,
    SERVER_IDS,
    Identity,
    PartyPaths,
    check_party_id,
    operator_server,
    orgs_of,
    party_paths,
    party_role,
)
from ..rules.cohort import DEFAULT_MIN_PARTICIPANTS, check_min_participants
from ..transport.grpc.pace import UPLOAD_GRACE_S, UPLOAD_MIN_RATE

TLS_KEYS = ("dir", "key", *(f"cert_{o.lower()}" for o in ORGS), *(f"ca_{o.lower()}" for o in ORGS))
TOP_KEYS = ("party", "listen", "bulk_listen", "state_dir", "log_file", "inbox", "tls", "timeouts", "admission", "peers",
            "rounds")


@dataclass(frozen=True)
class PartyConfig:
    """Everything one party process needs: who it is, where it listens, whom it talks to, its TLS files."""

    party: str
    key: Path
    certs: Mapping[str, Path]
    cas: Mapping[str, Path]
    listen: str | None = None
    peers: Mapping[str, str] = field(default_factory=dict)
    workers: tuple[int, ...] = ()
    state_dir: Path | None = None
    log_file: Path | None = None
    inbox: Path | None = None
    peer_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    min_participants: int = DEFAULT_MIN_PARTICIPANTS
    insecure_test_seeds: bool = False
    upload_grace_s: float = UPLOAD_GRACE_S
    upload_min_rate: float = UPLOAD_MIN_RATE
    """S1: a worker's share upload is cut off, and the worker dropped from the round, once it falls behind
    ``upload_min_rate`` bytes per second on average after ``upload_grace_s`` seconds from "go"
    (``transport.grpc.pace.Pace``; docs/deployment.md weighs it against slow honest links)."""
    bulk_listen: str | None = None
    """Servers: where the bulk lane listens (``transport.lane``); None: the host of ``listen`` on a free
    port, announced in ``status``; "off": no bulk lane, every message over gRPC."""

    @property
    def role(self) -> str:
        """server, operator, dealer or worker."""
        return party_role(self.party)

    @property
    def tls(self) -> PartyPaths:
        return PartyPaths(self.party, self.key, dict(self.certs), dict(self.cas))

    def identity(self) -> Identity:
        """The party's key and certificates, read and checked (ValueError names the file at fault)."""
        return Identity.load(self.tls)

    def peer(self, name: str) -> str:
        if name not in self.peers:
            raise ValueError(f"{self.party}: no address for {name}; give it under [peers] or with --{name.lower()}")
        return self.peers[name]

    def check(self) -> "PartyConfig":
        """Raise ValueError naming what is missing for this party's role."""
        role = self.role
        if role in ("server", "dealer") and not self.listen:
            raise ValueError(f"{self.party} needs a listen address (--listen or listen = ...)")
        needed = {"server": ("S0", "S1", "dealer"), "dealer": ("S0", "S1"), "worker": ("S0", "S1"),
                  "operator": (SERVER_IDS[operator_server(self.party) or 0],)}[role]
        for name in needed:
            self.peer(name)
        if set(self.certs) != set(orgs_of(self.party)):
            want = " and ".join(f"cert_{o.lower()}" for o in orgs_of(self.party))
            raise ValueError(f"{self.party}: [tls] needs {want} (the certificate from each CA that certifies it)")
        if self.peer_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        for name in ("upload_grace_s", "upload_min_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        check_min_participants(self.min_participants)
        if not isinstance(self.insecure_test_seeds, bool):
            raise ValueError("insecure_test_seeds is true or false")
        return self


def parse_worker_ids(spec: Any) -> tuple[int, ...]:
    """Worker ids from a list of ints or a string like "0-9,12,20-24"."""
    if spec is None or spec == "":
        return ()
    if isinstance(spec, (list, tuple)):
        ids = [int(x) for x in spec]
    elif isinstance(spec, str):
        ids = []
        for part in spec.split(","):
            part = part.strip()
            lo, sep, hi = part.partition("-")
            if sep:
                ids.extend(range(int(lo), int(hi) + 1))
            else:
                ids.append(int(part))
    else:
        raise ValueError(f"workers must be a list of ids or a string like '0-9', got {spec!r}")
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError("worker ids must be distinct non-negative integers")
    return tuple(ids)


def load(toml_path: Path | None = None, **overrides: Any) -> PartyConfig:
    """Read ``toml_path`` (if any), apply non-None ``overrides`` (flag values; ``tls_dir`` is a party's
    own folder with the conventional file names), resolve relative paths against the TOML file's folder,
    and check the result."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if toml_path is not None:
        with open(toml_path, "rb") as fh:
            raw = tomllib.load(fh)
        base = Path(toml_path).resolve().parent
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown keys in {toml_path}: {sorted(unknown)}")
    tls = dict(raw.get("tls", {}))
    bad_tls = set(tls) - set(TLS_KEYS)
    if bad_tls:
        raise ValueError(f"unknown [tls] keys in {toml_path}: {sorted(bad_tls)}; one CA per server organisation: "
                         f"give {', '.join(TLS_KEYS[1:])} or dir (see docs/deployment-setup.md)")
    timeouts = raw.get("timeouts", {})
    rounds = raw.get("rounds", {})
    values: dict[str, Any] = {
        "party": raw.get("party"), "listen": raw.get("listen"), "bulk_listen": raw.get("bulk_listen"),
        "state_dir": raw.get("state_dir"),
        "log_file": raw.get("log_file"), "inbox": raw.get("inbox"), "tls_dir": tls.get("dir"),
        "workers": raw.get("admission", {}).get("workers"), "peers": dict(raw.get("peers", {})),
        "peer_timeout_s": timeouts.get("peer_s"), "connect_timeout_s": timeouts.get("connect_s"),
        "upload_grace_s": timeouts.get("upload_grace_s"), "upload_min_rate": timeouts.get("upload_min_rate"),
        "min_participants": rounds.get("min_participants"), "insecure_test_seeds": rounds.get("insecure_test_seeds"),
    }
    peers = dict(values["peers"])
    for name in ("S0", "S1", "dealer"):
        v = overrides.pop(name, None)
        if v is not None:
            peers[name] = v
    values["peers"] = peers
    for key, value in overrides.items():
        if key not in values:
            raise TypeError(f"unknown configuration override {key!r}")
        if value is not None:
            values[key] = value
    if values["party"] is None:
        raise ValueError("the party id is missing (party = ... or --party)")
    party = check_party_id(str(values["party"]))
    party_role(party)

    def path(v: Any) -> Path | None:
        if v is None:
            return None
        p = Path(v)
        return p if p.is_absolute() else base / p

    files = _tls_files(party, tls, path(values["tls_dir"]) if overrides.get("tls_dir") is None
                       else Path(overrides["tls_dir"]).resolve(), path)
    cfg = PartyConfig(
        party=party, key=files["key"], certs=files["certs"], cas=files["cas"],
        listen=values["listen"], bulk_listen=values["bulk_listen"], peers=peers,
        workers=parse_worker_ids(values["workers"]),
        state_dir=path(values["state_dir"]), log_file=path(values["log_file"]), inbox=path(values["inbox"]),
        peer_timeout_s=float(values["peer_timeout_s"] if values["peer_timeout_s"] is not None else 60.0),
        connect_timeout_s=float(values["connect_timeout_s"] if values["connect_timeout_s"] is not None else 5.0),
        upload_grace_s=_number(values["upload_grace_s"], UPLOAD_GRACE_S, "upload_grace_s"),
        upload_min_rate=_number(values["upload_min_rate"], UPLOAD_MIN_RATE, "upload_min_rate"),
        min_participants=(values["min_participants"] if values["min_participants"] is not None
                          else DEFAULT_MIN_PARTICIPANTS),
        insecure_test_seeds=bool(values["insecure_test_seeds"]) if values["insecure_test_seeds"] is not None else False,
    )
    return cfg.check()


def _number(value: Any, default: float, name: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _tls_files(party: str, tls: Mapping[str, Any], folder: Path | None, path: Any) -> dict[str, Any]:
    """The key, certificates and CA certificates: named in [tls], else the conventional names in ``folder``."""
    conv = party_paths(folder, party) if folder is not None else None
    key = path(tls.get("key")) or (conv.key if conv else None)
    if key is None:
        raise ValueError(f"{party}: the TLS key is missing ([tls] key = ..., [tls] dir = ... or --tls-dir)")
    certs: dict[str, Path] = {}
    for org in ORGS:
        given = path(tls.get(f"cert_{org.lower()}"))
        if given is not None or (conv is not None and org in conv.certs):
            certs[org] = given or conv.certs[org]  # type: ignore[union-attr]
    cas: dict[str, Path] = {}
    for org in ORGS:
        given = path(tls.get(f"ca_{org.lower()}")) or (conv.cas[org] if conv else None)
        if given is None:
            raise ValueError(f"{party}: the CA certificate of {org} is missing ([tls] ca_{org.lower()} = ..., "
                             "[tls] dir = ... or --tls-dir)")
        cas[org] = given
    return {"key": key, "certs": certs, "cas": cas}


def to_toml(cfg: PartyConfig, relative_to: Path | None = None) -> str:
    """The TOML text that ``load`` reads back into ``cfg`` (paths under ``relative_to`` written relative to it,
    for a TOML file in that folder)."""
    def q(v: Any) -> str:
        if isinstance(v, Path) and relative_to is not None and v.is_relative_to(relative_to):
            v = v.relative_to(relative_to)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [f"party = {q(cfg.party)}"]
    for name in ("listen", "bulk_listen", "state_dir", "log_file", "inbox"):
        if getattr(cfg, name):
            lines.append(f"{name} = {q(getattr(cfg, name))}")
    lines += ["", "[peers]", *(f"{q(k)} = {q(v)}" for k, v in cfg.peers.items())]
    lines += ["", "[tls]", f"key = {q(cfg.key)}", *(f"cert_{o.lower()} = {q(p)}" for o, p in cfg.certs.items()),
              *(f"ca_{o.lower()} = {q(p)}" for o, p in cfg.cas.items())]
    if cfg.workers:
        lines += ["", "[admission]", f"workers = [{', '.join(str(w) for w in cfg.workers)}]"]
    lines += ["", "[timeouts]", f"peer_s = {cfg.peer_timeout_s}", f"connect_s = {cfg.connect_timeout_s}"]
    if (cfg.upload_grace_s, cfg.upload_min_rate) != (UPLOAD_GRACE_S, UPLOAD_MIN_RATE):
        lines += [f"upload_grace_s = {cfg.upload_grace_s!r}", f"upload_min_rate = {cfg.upload_min_rate!r}"]
    if cfg.role == "server":
        lines += ["", "[rounds]", f"min_participants = {cfg.min_participants}"]
        if cfg.insecure_test_seeds:
            lines.append("insecure_test_seeds = true")
    lines.append("")
    return "\n".join(lines)


__all__ = ["DEALER_ID", "PartyConfig", "ROLES", "load", "parse_worker_ids", "replace", "to_toml"]
