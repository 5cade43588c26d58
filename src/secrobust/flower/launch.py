"""``secrobust flower-servers``: the dealer, S0, S1 and S1's approval service of a provisioned folder as
processes, until stopped.

A folder made by ``secrobust init --out DIR --workers N --local-keys`` (or by hand, ``secrobust ca``,
``keygen``, ``sign``, ``init``: docs/deployment-setup.md) holds one folder per party with its TOML file,
its key and its certificates. ``ProvisionedServers(DIR)`` starts each listed server party with
``python -m secrobust.deploy <role> --config DIR/<party>/<party>.toml`` (mutual TLS, the addresses in
the TOML files), in its own process group, and S1's approval service (``deploy.approval``, as
``operator:S1``) when ``operator-s1/approval.toml`` exists (``secrobust flower-approval`` writes it); waits
until each listens (and, when the operators' files are in the folder, answers a status call over mutual TLS
as the operators will: through the approval service when operator:S0's file names it), writes
``--ready-file``, and stops them all on SIGTERM / SIGINT or when one exits. The Flower ServerApp then reads
operator:S0's file (``secrobust-dir`` = DIR) and each SuperNode its worker's file. Nothing here imports
Flower.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ..deploy import approval
from ..deploy.config import load as load_config
from ..deploy.local import Child, LocalDeployment, LocalOptions
from ..deploy.operator import Operator
from ..pki.certs import operator_party, tls_name
from ..transport.grpc import PartyUnreachable, RemoteRejected

SERVER_PARTIES = ("dealer", "S0", "S1")
APPROVAL = "approval"
PARTIES = (*SERVER_PARTIES, APPROVAL)
ROLE = {"dealer": "dealer", "S0": "server", "S1": "server"}


def default_parties(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """The dealer, S0, S1, and S1's approval service when the folder has its file."""
    has = (Path(folder) / tls_name(operator_party(1)) / approval.APPROVAL_FILE).is_file()
    return (*SERVER_PARTIES, APPROVAL) if has else SERVER_PARTIES


class ProvisionedServers(LocalDeployment):
    """The listed server parties (default: dealer, S0, S1) of the provisioned folder ``folder``, each its
    own process; logs in ``folder/logs/<party>.log``. Use as a context manager or start()/stop()."""

    def __init__(self, folder: str | os.PathLike[str], parties: Iterable[str] | None = None,
                 start_timeout_s: float = 120.0) -> None:
        folder = Path(folder).resolve()       # the children run in it: their paths must not be relative
        super().__init__(1, folder, LocalOptions(start_timeout_s=start_timeout_s))
        self.cert_dir = folder
        self.parties = tuple(dict.fromkeys(default_parties(folder) if parties is None else parties))
        bad = [p for p in self.parties if p not in PARTIES]
        if bad or not self.parties:
            raise ValueError(f"flower-servers starts dealer, S0, S1 and/or approval, not {', '.join(bad) or 'nothing'}")

    def config_file(self, party: str) -> Path:
        if party == APPROVAL:
            return self.party_dir(operator_party(1)) / approval.APPROVAL_FILE
        return super().config_file(party)

    def _spawn(self, child: Child) -> None:
        if child.name != APPROVAL:
            super()._spawn(child)
            return
        spawn_approval(self, child)

    def _start(self) -> None:
        missing = [str(self.config_file(p)) for p in self.parties if not self.config_file(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.cert_dir} is not a provisioned folder: no {', '.join(missing)}; make one with "
                f"'secrobust init --out {self.cert_dir} --workers N --local-keys' (one machine) or "
                "docs/deployment-setup.md")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        state = self.workdir / "state"
        state.mkdir(parents=True, exist_ok=True)
        for name in self.parties:
            port_file = state / f"launch-{tls_name(name) if name != APPROVAL else APPROVAL}.port"
            port_file.unlink(missing_ok=True)
            if name == APPROVAL:
                self.addresses[name] = approval.load(self.config_file(name)).listen    # a bad policy fails here
                self._add(name, ["--config", str(self.config_file(name)), "--port-file", str(port_file)])
                continue
            cfg = load_config(self.config_file(name))          # a malformed file fails here, named
            self.addresses[name] = str(cfg.listen or cfg.peers.get(name, ""))
            self._add(name, [ROLE[name], "--config", str(self.config_file(name)), "--port-file", str(port_file)])
        for name in self.parties:
            self._spawn(self.children[name])
        self._wait_ports(state)
        ops = [self.config_file(operator_party(i)) for i in (0, 1)]
        if set(SERVER_PARTIES) <= set(self.parties) and all(p.is_file() for p in ops):
            cfgs = [load_config(p) for p in ops]
            peers = {k: v for c in cfgs for k, v in c.peers.items()}
            self.operator = Operator([c.identity() for c in cfgs], peers.get("S0"), peers.get("S1"),
                                     peers.get("dealer"), connect_timeout=cfgs[0].connect_timeout_s)
            self.wait_listening(SERVER_PARTIES)
            via = cfgs[0].peers.get(operator_party(1))
            if APPROVAL in self.parties and via:
                self._wait_approval(Operator([cfgs[0].identity()], peers.get("S0"), None, None, approval=via,
                                             connect_timeout=cfgs[0].connect_timeout_s))

    def _wait_approval(self, split: Operator) -> None:
        wait_approval(self, split)

    def _wait_ports(self, state: Path) -> None:
        deadline = time.monotonic() + self.options.start_timeout_s
        for name in self.parties:
            port_file = state / f"launch-{tls_name(name) if name != APPROVAL else APPROVAL}.port"
            while not port_file.exists():
                child = self.children[name]
                if not child.alive:
                    raise RuntimeError(f"{name} exited with code {child.proc.returncode if child.proc else '?'}; "
                                       f"log {child.log}:\n{self.tail(name)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not start listening in {self.options.start_timeout_s:.0f} s; "
                                       f"log {child.log}:\n{self.tail(name)}")
                time.sleep(0.1)

    def wait_workers_ready(self, timeout: float | None = None) -> None:
        """No worker process: the Flower SuperNodes are the workers."""

    def describe(self) -> dict[str, object]:
        """What the ready file holds: the folder, each party's address, process id and log."""
        return {"folder": str(self.cert_dir),
                "parties": {name: {"address": self.addresses.get(name), "pid": c.proc.pid if c.proc else None,
                                   "log": str(c.log)} for name, c in self.children.items()}}

    def first_exited(self) -> str | None:
        """The first party whose process is gone, or None."""
        return next((name for name, c in self.children.items() if not c.alive), None)


def spawn_approval(dep: LocalDeployment, child: Child) -> None:
    """Start S1's approval service (``python -m secrobust.deploy.approval`` with ``child.argv``) as a child of
    the launcher ``dep``, in its own process group, its output in ``child.log``."""
    log = open(child.log, "ab")  # noqa: SIM115  (the child keeps it; closed here once handed over)
    try:
        child.proc = subprocess.Popen([sys.executable, "-m", "secrobust.deploy.approval", *child.argv],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=dep._env(), cwd=str(dep.workdir), start_new_session=True)
    finally:
        log.close()


def wait_approval(dep: LocalDeployment, split: Operator) -> None:
    """Block until operator:S0 reaches S1 through the approval service (its status call); closes ``split``."""
    deadline = time.monotonic() + dep.options.start_timeout_s
    try:
        while True:
            child = dep.children[APPROVAL]
            if not child.alive:
                raise RuntimeError(f"{APPROVAL} exited; log {child.log}:\n{dep.tail(APPROVAL)}")
            try:
                split.clients["S1"].control("status", timeout=5.0)
                return
            except (PartyUnreachable, RemoteRejected) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"operator:S0 cannot reach S1's approval service ({exc}); log "
                                       f"{child.log}:\n{dep.tail(APPROVAL)}") from None
                time.sleep(0.1)
    finally:
        split.close()


def serve(folder: Path, parties: Iterable[str] | None = None, *, ready_file: Path | None = None,
          start_timeout_s: float = 120.0, echo=print) -> int:
    """Start the parties, announce them, and keep them until SIGTERM / SIGINT (exit 0) or until one exits
    (its log's tail, exit 1). Every process started is stopped before this returns."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    servers = ProvisionedServers(folder, parties, start_timeout_s=start_timeout_s)
    try:
        servers.start()
        info = servers.describe()
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps(info, indent=1))
            os.replace(tmp, ready_file)
        for name, p in info["parties"].items():     # type: ignore[union-attr]
            echo(f"{name}: listening at {p['address']} (pid {p['pid']}, log {p['log']})")
        echo(f"ready: secrobust-dir = {servers.cert_dir}; stop with Ctrl-C or SIGTERM")
        while not stop.wait(0.5):
            gone = servers.first_exited()
            if gone is not None:
                echo(f"error: {gone} exited; log {servers.children[gone].log}:\n{servers.tail(gone)}")
                return 1
        return 0
    finally:
        servers.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["APPROVAL", "PARTIES", "SERVER_PARTIES", "ProvisionedServers", "default_parties", "serve",
           "spawn_approval", "wait_approval"]
