"""A whole deployment on loopback: the dealer, S0, S1 and the workers, each a separate OS process.

``LocalDeployment`` plays both server organisations' CAs and makes each party's key in that party's
own folder (``secrobust.pki.ceremony.make_deployment_certs``), picks free ports on 127.0.0.1, writes each party's
TOML file into its folder, starts every party with ``python -m secrobust.deploy ... --config`` that file
in its own process group (a process sees only its own key and the public CA certificates), and always
terminates them (context manager, ``atexit``, and each child also exits when the launcher is gone).
``aggregate`` has the signature and the result of ``secrobust.aggregate``: the launcher writes each
worker's update where only that worker process reads it, opens the round as both operators
(``operator:S0`` and ``operator:S1``), and rebuilds the result from the servers' reports and aggregate
shares.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import api
from ..gates.dealer import DEFAULT_CHUNK_BYTES
from ..params import RoundParams
from ..pki.ceremony import make_deployment_certs
from ..pki.certs import (
    Identity,
    operator_party,
    party_dir,
    party_paths,
    standard_parties,
    tls_name,
    worker_party,
)
from ..primitives import kernel
from ..rules.cohort import DEFAULT_MIN_PARTICIPANTS
from ..transport.grpc import PartyUnreachable, RemoteRejected
from ..updates import as_matrix, check_updates, encode_center
from .config import PartyConfig, to_toml
from .operator import Operator
from .process import PARENT_ENV
from .rounds import RoundRequest

LOOPBACK = "127.0.0.1"
SRC_DIR = Path(__file__).resolve().parents[2]


SERVER_NAMES = ("dealer", "S0", "S1")
START_ATTEMPTS = 3
"""Starts of the servers with fresh ports when one lost its port to another process before binding it."""
PORT_TAKEN = "Address already in use"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago: all bound at once, then released
    (one at a time, a released port can come back from the next ``bind(0)``)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Child:
    """A party process started by the launcher."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalOptions:
    """Knobs of a local deployment (timeouts in seconds)."""

    share_window_s: float = 20.0
    peer_timeout_s: float = 30.0
    connect_timeout_s: float = 3.0
    start_timeout_s: float = 60.0
    workers_per_process: int = 1
    prefetch: int = 1
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    min_participants: int = DEFAULT_MIN_PARTICIPANTS
    """Both servers' minimum cohort (``[rounds] min_participants``)."""
    insecure_test_seeds: bool = False
    """Tests only: the servers accept ``aggregate(insecure_test_seed=...)`` (it fixes their DP noise)."""
    bulk: bool = True
    """The servers' bulk lane for 8d-byte messages (``transport.grpc.bulk``); off: every message over gRPC."""
    dealer_nice: int = 10
    """The dealer process's nice value: its triples for later rounds yield the CPU to the round running now."""


class LocalDeployment:
    """Dealer, S0, S1 and ``n_workers`` workers as processes on loopback with mutual TLS."""

    def __init__(self, n_workers: int, workdir: str | os.PathLike[str] | None = None,
                 options: LocalOptions | None = None) -> None:
        if n_workers < 1:
            raise ValueError("a deployment needs at least one worker")
        self.n_workers = n_workers
        self.options = options or LocalOptions()
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="secrobust-")) if workdir is None else Path(workdir)
        self.cert_dir = self.workdir / "parties"
        """Both CAs (the launcher plays both server organisations) and one folder per party."""
        self.updates_dir = self.workdir / "updates"
        self.children: dict[str, Child] = {}
        self._retired: list[subprocess.Popen] = []
        """Servers of a start that lost a port and did not exit within the wait (``stop`` ends them)."""
        self.addresses: dict[str, str] = {}
        self.operator: Operator | None = None

    # lifecycle

    def __enter__(self) -> "LocalDeployment":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every party and wait until the servers listen and every worker reached both servers."""
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        o = self.options
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_deployment_certs(self.cert_dir, standard_parties(self.n_workers))
        self.updates_dir.mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.addresses = {name: f"{LOOPBACK}:{port}" for name, port in zip(SERVER_NAMES, free_ports(3))}
            self._write_configs()
            since: dict[str, int] = {}
            for name, argv in (("dealer", ["dealer"]), ("S0", ["server"]), ("S1", ["server"])):
                self._add(name, [*argv, "--config", str(self.config_file(name)),
                                 "--port-file", str(self.workdir / "state" / f"{tls_name(name)}.port")])
                log = self.children[name].log
                since[name] = log.stat().st_size if log.exists() else 0
                self._spawn(self.children[name])
            self.operator = Operator([self.identity(operator_party(0)), self.identity(operator_party(1))],
                                     self.addresses["S0"], self.addresses["S1"], self.addresses["dealer"],
                                     connect_timeout=o.connect_timeout_s, prefetch=o.prefetch)
            try:
                self.wait_listening(SERVER_NAMES)
                break
            except RuntimeError:
                if not any(self._lost_its_port(name, since[name]) for name in SERVER_NAMES) \
                        or attempt == START_ATTEMPTS:
                    raise
                self._retire_servers(attempt)
        per = max(1, o.workers_per_process)
        for lo in range(0, self.n_workers, per):
            hi = min(lo + per, self.n_workers) - 1
            name = f"workers-{lo}-{hi}" if per > 1 else tls_name(worker_party(lo))
            configs = [arg for i in range(lo, hi + 1) for arg in ("--config", str(self.config_file(worker_party(i))))]
            argv = ["worker", *configs, "--updates", str(self.updates_dir),
                    "--ready-file", str(self.workdir / "state" / f"{name}.ready")]
            self._add(name, argv)
            self._spawn(self.children[name])
        self.wait_workers_ready()

    def _write_configs(self) -> None:
        """Every party's TOML file, with the servers' current addresses."""
        o = self.options
        workers = tuple(range(self.n_workers))
        for name in standard_parties(self.n_workers):
            folder = self.party_dir(name)
            paths = party_paths(folder, name)
            cfg = PartyConfig(party=name, key=paths.key, certs=paths.certs, cas=paths.cas,
                              listen=self.addresses.get(name) if name in ("S0", "S1", "dealer") else None,
                              peers=dict(self.addresses), workers=workers if name in ("S0", "S1") else (),
                              state_dir=self.workdir / "state" / tls_name(name) if name in ("S0", "S1") else None,
                              peer_timeout_s=o.peer_timeout_s, connect_timeout_s=o.connect_timeout_s,
                              min_participants=o.min_participants, insecure_test_seeds=o.insecure_test_seeds,
                              bulk_listen=None if o.bulk or name not in ("S0", "S1") else "off")
            self.config_file(name).write_text(to_toml(cfg, relative_to=folder))

    def _lost_its_port(self, name: str, since: int) -> bool:
        """The server exited because another process bound its address between ``free_ports`` and its own
        bind: its log, from byte ``since`` (this attempt's spawn) on, says so for that very address."""
        child = self.children[name]
        if child.alive or not child.log.exists():
            return False
        with open(child.log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        return PORT_TAKEN in text and self.addresses[name] in text

    def _retire_servers(self, attempt: int) -> None:
        """Stop the three servers of a start that lost a port, and keep their logs as
        ``<party>.attempt<attempt>.log``; ``stop`` reaps any that outlive the wait."""
        if self.operator is not None:
            self.operator.close()
            self.operator = None
        servers = [self.children[name] for name in SERVER_NAMES]
        for child in servers:
            if child.alive:
                assert child.proc is not None
                try:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for child in servers:
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._retired.append(child.proc)
            del self.children[child.name]
            if child.log.exists():
                child.log.rename(child.log.with_name(f"{child.name}.attempt{attempt}.log"))

    def party_dir(self, party: str) -> Path:
        """The folder of ``party``'s key, certificates, CA certificates and configuration (its own only)."""
        return party_dir(self.cert_dir, party)

    def config_file(self, party: str) -> Path:
        """The TOML file ``party``'s process is started with."""
        return self.party_dir(party) / f"{tls_name(party)}.toml"

    def identity(self, party: str) -> Identity:
        """``party``'s TLS identity, loaded from its folder (tests: play a party from the launcher)."""
        return Identity.load(party_paths(self.party_dir(party), party))

    def _add(self, name: str, argv: list[str]) -> None:
        self.children[name] = Child(name, argv, self.workdir / "logs" / f"{name}.log")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), *filter(None, [env.get("PYTHONPATH")])])
        env[PARENT_ENV] = str(os.getpid())
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        env.update(self.options.extra_env)
        return env

    def _spawn(self, child: Child) -> None:
        log = open(child.log, "ab")
        try:
            child.proc = subprocess.Popen([sys.executable, "-m", "secrobust.deploy", *child.argv], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                                          cwd=str(self.workdir), start_new_session=True)
            if child.name == "dealer" and self.options.dealer_nice:
                # offline work: on one machine the next round's triple must not slow this round's online phase
                os.setpriority(os.PRIO_PROCESS, child.proc.pid, self.options.dealer_nice)
        finally:
            log.close()

    def wait_listening(self, names: tuple[str, ...], timeout: float | None = None) -> None:
        """Block until each named party answers a status call over mutual TLS."""
        assert self.operator is not None
        deadline = time.monotonic() + (timeout or self.options.start_timeout_s)
        clients = {"S0": self.operator.clients["S0"], "S1": self.operator.clients["S1"], "dealer": self.operator.dealer}
        for name in names:
            while True:
                child = self.children[name]
                if not child.alive:
                    raise RuntimeError(f"{name} exited with code {child.proc.returncode if child.proc else '?'}; "
                                       f"log:\n{self.tail(name)}")
                try:
                    clients[name].control("status", timeout=5.0)  # type: ignore[union-attr]
                    break
                except (PartyUnreachable, RemoteRejected):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} did not start listening; log:\n{self.tail(name)}") from None
                    time.sleep(0.1)

    def wait_workers_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.options.start_timeout_s)
        for child in self.children.values():
            if not child.name.startswith("worker"):
                continue
            ready = self.workdir / "state" / f"{child.name}.ready"
            while not ready.exists():
                if not child.alive:
                    raise RuntimeError(f"{child.name} exited; log:\n{self.tail(child.name)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{child.name} did not reach both servers; log:\n{self.tail(child.name)}")
                time.sleep(0.05)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.children[name].log
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one party's process group (tests of failures)."""
        child = self.children[name]
        if child.proc is not None and child.proc.poll() is None:
            try:
                os.killpg(child.proc.pid, sig)
            except ProcessLookupError:
                pass
            child.proc.wait(timeout=10)

    def restart(self, name: str) -> None:
        """Start a killed party again on the same address with the same configuration."""
        child = self.children[name]
        if child.alive:
            raise RuntimeError(f"{name} is still running")
        child.restarts += 1
        self._spawn(child)
        if name in ("dealer", "S0", "S1"):
            self.wait_listening((name,))
        else:
            (self.workdir / "state" / f"{name}.ready").unlink(missing_ok=True)
            self.wait_workers_ready()

    def stop(self) -> None:
        """Terminate every party (SIGTERM, then SIGKILL after 5 s) and remove a temporary workdir."""
        if self.operator is not None:
            self.operator.close()
            self.operator = None
        order = sorted(self.children.values(), key=lambda c: c.name in ("S0", "S1", "dealer"))
        procs = [c.proc for c in order if c.proc is not None and c.proc.poll() is None]
        procs += [p for p in self._retired if p.poll() is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        atexit.unregister(self.stop)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # rounds

    def aggregate(self, updates: Any, rule: str = "krum", f: int = 0, *, frac_bits: int | None = None,
                  insecure_test_seed: bytes | int | None = None, dp_noise_std: float = 0.0, unchecked: Any = (),
                  ring_rows: Mapping[int, Any] | None = None, drop: Mapping[int, str] | None = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, check_inputs: bool = True, norm_bound: float | None = None,
                  share_window_s: float | None = None, absent: Any = (), min_participants: int | None = None,
                  reveal: str | None = None, over_bound: str = "exclude", **options: Any) -> api.AggregateResult:
        """One round over the deployment; same arguments and result as ``secrobust.aggregate``.

        Worker i (for i < n) sends row i. ``drop``, ``unchecked`` and ``ring_rows`` are simulated as
        in-process (the worker process is cut off from the named server: from S0 it gets no key and sends
        nothing, to S1 its masked share is lost / bypasses the encoder / shares the given uint64 ring
        elements as they are). ``min_participants`` asks for a larger cohort than the servers' own
        (``LocalOptions.min_participants``), never a smaller one. ``absent`` lists workers that get no input this round and so fetch and
        send nothing at all. ``reveal`` ("distances", "weights" or "aggregate") is what the round makes
        public, as in process: with the rule on shares S1 opens no view and the servers run the rule's circuit
        between them. ``insecure_test_seed`` (tests only; the servers refuse it unless started with
        ``LocalOptions(insecure_test_seeds=True)``) makes the servers' DP noise that of
        ``secrobust.aggregate(insecure_test_seed=...)``; the result depends on no other seed (the input
        validity check's decisions hold for any projections, except with probability 2^-40).
        """
        if self.operator is None:
            raise RuntimeError("the deployment is not running; use it as a context manager or call start()")
        api.refuse_seed_option(options)
        inputs = RoundParams.check(updates, rule, f, frac_bits=frac_bits, reveal=reveal, norm_bound=norm_bound,
                                   min_participants=max(self.options.min_participants, min_participants or 2),
                                   dp_noise_std=dp_noise_std, check_inputs=check_inputs, unchecked=unchecked,
                                   ring_rows=ring_rows, options=options, over_bound=over_bound)
        params, x, byz, rows = inputs.params, inputs.x, inputs.unchecked, inputs.ring_rows
        n, d, frac_bits, reveal = params.n, params.d, params.frac_bits, params.reveal
        if n > self.n_workers:
            raise ValueError(f"{n} updates but the deployment has {self.n_workers} workers")
        rule_options = {k: v for k, v in options.items() if not (rule == "cclip" and k == "center")}
        drop = api.check_drop(drop, n)
        t0 = time.perf_counter()
        check_updates(x, frac_bits, byz, rows)
        encode_seconds = time.perf_counter() - t0
        center = None
        center_value = params.center
        if center_value is not None:
            encode_center(center_value, d, frac_bits)
            center = [float(v) for v in np.asarray(center_value, dtype=np.float64).reshape(-1)]
        absent_set = {int(i) for i in absent}

        statuses = self.operator.status()
        round_id = self.operator.next_round_id(statuses)
        folder = self.updates_dir / f"round-{round_id}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            def write(start: int, stop: int) -> None:
                for i in range(start, stop):
                    if i in absent_set:
                        _write_absent(folder, i)
                    else:
                        _write_input(folder, i, rows.get(i, x[i]), unchecked=i in byz, ring_row=i in rows,
                                     where=drop.get(i))
            kernel.parallel_for(write, n, max(1, -(-n // kernel.threads())))
            request = self.operator.with_triples(RoundRequest(
                round_id=round_id, worker_ids=tuple(range(n)), d=d, rule=rule, f=f, frac_bits=frac_bits,
                options=rule_options, center=center,
                share_window_s=share_window_s or self.options.share_window_s, chunk_bytes=chunk_bytes,
                dp_noise_std=dp_noise_std, test_seed=_test_seed(insecure_test_seed), seed_round=0,
                check_inputs=check_inputs, norm_bound=norm_bound, min_participants=min_participants, reveal=reveal),
                statuses)
            self.operator.open_round(request)
            result = self.operator.collect(request, n=n, wait_s=request.share_window_s + 600.0)
            result.stats.seconds["encode"] = encode_seconds
            return replace(result, frac_bits=frac_bits, norm_bound=inputs.scale.norm_bound,
                           bound_from_data=inputs.scale.from_data)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _write_input(folder: Path, i: int, row: np.ndarray, *, unchecked: bool, ring_row: bool,
                 where: str | None) -> None:
    """Worker i's input for the round where only its process reads it (``worker.directory_source``)."""
    stem = tls_name(worker_party(i))
    meta: dict[str, Any] = {}
    if unchecked:
        meta["unchecked"] = True
    if ring_row:
        meta["ring"] = True
    if where is not None:
        meta["skip"] = ["S0", "S1"] if where == "both" else [where]
    if meta:
        (folder / f"{stem}.json").write_text(json.dumps(meta))
    np.save(folder / f"{stem}.npy", row)


def _write_absent(folder: Path, i: int) -> None:
    """Worker i sits the round out and contacts nobody: no update file, a side file skipping both servers
    (without it, a missing file makes the worker decline the round and name the file it expected)."""
    (folder / f"{tls_name(worker_party(i))}.json").write_text(json.dumps({"skip": ["S0", "S1"]}))


def _test_seed(seed: bytes | int | None) -> int | str | None:
    """The master seed as it travels in a RoundRequest: an int as is, bytes as hex."""
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed
    return bytes(seed).hex()


def in_process_reference(round_id: int, updates: Any, rule: str = "krum", f: int = 0, *,
                         insecure_test_seed: bytes | int | None = None, **kwargs: Any) -> api.AggregateResult:
    """``secrobust.aggregate`` run as round ``round_id`` of a ``Cluster`` (so triple ids, and with them the
    byte counts, are those of that round). It sends the deployment's messages (one row of E per worker whose
    share reached S1, ``protocol.streaming``), so ``LocalDeployment.aggregate`` on the same arguments returns
    this, bit for bit and byte for byte (tests/net)."""
    cluster = api.Cluster(insecure_test_seed=insecure_test_seed)
    cluster.next_round = round_id
    return cluster.run_round(updates, rule, f, **kwargs)


def aggregate_grpc(updates: Any, rule: str = "krum", f: int = 0, *, workdir: str | os.PathLike[str] | None = None,
                   options: LocalOptions | None = None, **kwargs: Any) -> api.AggregateResult:
    """``secrobust.aggregate`` over a fresh local deployment (one process per party, TLS on), torn down after."""
    n = as_matrix(updates).shape[0]
    with LocalDeployment(n, workdir, options) as dep:
        return dep.aggregate(updates, rule, f, **kwargs)
