"""Configuration of one deployed party, from a TOML file and/or command-line flags (flags win).

Example ``s0.toml``::

    party = "S0"                     # S0, S1, dealer, worker:<i>, operator
    listen = "127.0.0.1:7100"        # servers and the dealer only
    state_dir = "state/s0"           # servers: last round id survives a restart
    log_file = "logs/s0.jsonl"       # JSON lines; stderr when absent

    [peers]
    S0 = "127.0.0.1:7100"
    S1 = "127.0.0.1:7101"
    dealer = "127.0.0.1:7102"

    [tls]
    cert = "certs/s0.pem"
    key = "certs/s0.key"
    ca = "certs/ca.pem"

    [admission]
    workers = "0-9"                  # worker ids the servers admit: "0-9", "0,2,5" or a list

    [timeouts]
    peer_s = 60                      # longest wait for the other server's next message
    connect_s = 5                    # longest wait for a TLS connection to a peer

    [rounds]                         # servers only
    min_participants = 5             # abort a round that would aggregate fewer workers (never below 2)
    insecure_test_seeds = false      # true only in tests: accept a request's fixed test seed
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from ..certs import DEALER_ID, OPERATOR_ID, SERVER_IDS, Identity, PartyPaths, check_party_id, worker_index
from ..rules.registry import DEFAULT_MIN_PARTICIPANTS, check_min_participants

ROLES = ("server", "dealer", "worker", "operator")


@dataclass(frozen=True)
class PartyConfig:
    """Everything one party process needs: who it is, where it listens, whom it talks to, its TLS files."""

    party: str
    cert: Path
    key: Path
    ca: Path
    listen: str | None = None
    peers: Mapping[str, str] = field(default_factory=dict)
    workers: tuple[int, ...] = ()
    state_dir: Path | None = None
    log_file: Path | None = None
    peer_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    min_participants: int = DEFAULT_MIN_PARTICIPANTS
    """A server aborts a round that would aggregate fewer workers (after dropouts and rejections)."""
    insecure_test_seeds: bool = False
    """A server accepts a round request's ``test_seed`` only with this set (tests: it fixes the DP noise)."""

    @property
    def role(self) -> str:
        if self.party in SERVER_IDS:
            return "server"
        if self.party == DEALER_ID:
            return "dealer"
        if self.party == OPERATOR_ID:
            return "operator"
        if worker_index(self.party) is not None:
            return "worker"
        raise ValueError(f"party {self.party!r} is none of S0, S1, dealer, operator, worker:<i>")

    def identity(self) -> Identity:
        return Identity.load(PartyPaths(self.party, self.cert, self.key, self.ca))

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
                  "operator": ("S0", "S1")}[role]
        for name in needed:
            self.peer(name)
        if self.peer_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
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
    """Read ``toml_path`` (if any), apply non-None ``overrides`` (flag values), resolve relative paths
    against the TOML file's folder, and check the result."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if toml_path is not None:
        with open(toml_path, "rb") as fh:
            raw = tomllib.load(fh)
        base = Path(toml_path).resolve().parent
    tls = raw.get("tls", {})
    timeouts = raw.get("timeouts", {})
    rounds = raw.get("rounds", {})
    values: dict[str, Any] = {
        "party": raw.get("party"), "listen": raw.get("listen"), "state_dir": raw.get("state_dir"),
        "log_file": raw.get("log_file"), "cert": tls.get("cert"), "key": tls.get("key"), "ca": tls.get("ca"),
        "workers": raw.get("admission", {}).get("workers"), "peers": dict(raw.get("peers", {})),
        "peer_timeout_s": timeouts.get("peer_s"), "connect_timeout_s": timeouts.get("connect_s"),
        "min_participants": rounds.get("min_participants"), "insecure_test_seeds": rounds.get("insecure_test_seeds"),
    }
    unknown = set(raw) - {"party", "listen", "state_dir", "log_file", "tls", "timeouts", "admission", "peers",
                          "rounds"}
    if unknown:
        raise ValueError(f"unknown keys in {toml_path}: {sorted(unknown)}")
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
    for key in ("cert", "key", "ca"):
        if values[key] is None:
            raise ValueError(f"{party}: TLS file '{key}' is missing ([tls] {key} = ... or --{key})")

    def path(v: Any) -> Path | None:
        if v is None:
            return None
        p = Path(v)
        return p if p.is_absolute() else base / p

    cfg = PartyConfig(
        party=party, cert=path(values["cert"]), key=path(values["key"]), ca=path(values["ca"]),  # type: ignore[arg-type]
        listen=values["listen"], peers=peers, workers=parse_worker_ids(values["workers"]),
        state_dir=path(values["state_dir"]), log_file=path(values["log_file"]),
        peer_timeout_s=float(values["peer_timeout_s"] if values["peer_timeout_s"] is not None else 60.0),
        connect_timeout_s=float(values["connect_timeout_s"] if values["connect_timeout_s"] is not None else 5.0),
        min_participants=(values["min_participants"] if values["min_participants"] is not None
                          else DEFAULT_MIN_PARTICIPANTS),
        insecure_test_seeds=bool(values["insecure_test_seeds"]) if values["insecure_test_seeds"] is not None else False,
    )
    return cfg.check()


def to_toml(cfg: PartyConfig) -> str:
    """The TOML text that ``load`` reads back into ``cfg``."""
    def q(v: Any) -> str:
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = [f"party = {q(cfg.party)}"]
    if cfg.listen:
        lines.append(f"listen = {q(cfg.listen)}")
    if cfg.state_dir:
        lines.append(f"state_dir = {q(cfg.state_dir)}")
    if cfg.log_file:
        lines.append(f"log_file = {q(cfg.log_file)}")
    lines += ["", "[peers]", *(f"{q(k)} = {q(v)}" for k, v in cfg.peers.items())]
    lines += ["", "[tls]", f"cert = {q(cfg.cert)}", f"key = {q(cfg.key)}", f"ca = {q(cfg.ca)}"]
    if cfg.workers:
        lines += ["", "[admission]", f"workers = [{', '.join(str(w) for w in cfg.workers)}]"]
    lines += ["", "[timeouts]", f"peer_s = {cfg.peer_timeout_s}", f"connect_s = {cfg.connect_timeout_s}"]
    if cfg.role == "server":
        lines += ["", "[rounds]", f"min_participants = {cfg.min_participants}"]
        if cfg.insecure_test_seeds:
            lines.append("insecure_test_seeds = true")
    lines.append("")
    return "\n".join(lines)


__all__ = ["DEALER_ID", "OPERATOR_ID", "PartyConfig", "ROLES", "load", "parse_worker_ids", "replace", "to_toml"]
