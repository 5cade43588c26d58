"""A worker as a network client: waits for a round, secret-shares its update, fetches the aggregate.

What crosses the wire: from S0 the 16-byte key k_i of S0's share of this worker's update
(SHARE_KEY, fetched: S0's share is PRG(k_i), a row of the dealer's mask, fixed before the worker
had an update), checked by ``protocol.worker.share_key``; to S1 the encoded update minus PRG(k_i)
(SHARE_MASKED, 8d bytes, made by ``protocol.worker.share_update``); nothing to S0. Back from each
server its aggregate share with the public weights (AGGREGATE_SHARE, 8d bytes plus n weights). The
worker learns the round's public parameters (id, d, F), its own key, the weights and the aggregate,
nothing else. It talks to the servers only: a server's certificate must name it (S0 or S1), so the
key can only come from S0 and the masked update only go to S1.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ProtocolError
from ..pki.certs import Identity, tls_name, worker_index
from ..primitives import ring
from ..protocol import messages as M
from ..protocol.worker import reconstruct, share_key, share_update
from ..transport.grpc import Accounting, PartyUnreachable, PeerClient, RemoteRejected
from ..transport.grpc.logs import LOGGER_NAME, Timer, event
from ..transport.peer import Peer
from .config import PartyConfig
from .declines import COMMAND as DECLINE
from .declines import clean_reason

SKIP_TARGETS = ("S0", "S1")
KEY_REPLY_BYTES = 4 << 10
"""A share-key reply is a few hundred bytes; a worker refuses anything larger."""
LANE_KINDS = (M.SHARE_MASKED, M.AGGREGATE_SHARE)
"""What a worker moves over a server's bulk lane when the server offers one: its share to S1 and the
aggregate shares it fetches."""


@dataclass(frozen=True)
class WorkerInput:
    """One round's input of a worker. ``unchecked``, ``ring`` and ``skip`` exist for simulations only: a
    Byzantine worker that bypasses the honest encoder, one whose ``update`` is the exact uint64 ring
    vector it shares (no encoding at all), and a worker cut off from the named server(s): skipping S0
    means it gets no key and sits the round out (it sends nothing); skipping S1 means it fetches its key
    but its masked share is lost (as ``drop`` in process)."""

    update: np.ndarray
    unchecked: bool = False
    skip: tuple[str, ...] = ()
    ring: bool = False


UpdateSource = Callable[[int, int], "WorkerInput | None"]
"""(round id, d) -> this worker's input for the round, or None to sit the round out."""


KEEP_OUTCOMES = 16


@dataclass
class WorkerOutcome:
    round_id: int
    status: str
    detail: str = ""
    aggregate: np.ndarray | None = None
    weights: np.ndarray | None = None
    participants: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class MissingUpdate(FileNotFoundError):
    """The inbox has no update file for a round the worker is expected in; the message names the path."""

    def __init__(self, path: Path, round_id: int) -> None:
        super().__init__(errno.ENOENT, f"no update file {path} (it must exist when round {round_id} opens)", str(path))
        self.path = Path(path)


def directory_source(root: Path, party: str) -> UpdateSource:
    """Inputs from files: ``root/round-<r>/<tls name>.npy`` (a float64 vector, or uint64 ring elements
    with "ring") and an optional ``.json`` beside it with {"unchecked": bool, "ring": bool,
    "skip": ["S0"|"S1", ...]}. No ``.npy`` file raises ``MissingUpdate`` (the worker declines the round,
    naming the path), unless the ``.json`` alone says {"skip": ["S0", "S1"]}: then the worker sits the round
    out and sends nothing at all (simulated absence, ``LocalDeployment.aggregate(absent=...)``)."""
    stem = tls_name(party)

    def source(round_id: int, d: int) -> WorkerInput | None:
        path = Path(root) / f"round-{round_id}" / f"{stem}.npy"
        side = path.with_suffix(".json")
        meta: dict[str, Any] = json.loads(side.read_text()) if side.exists() else {}
        skip = tuple(meta.get("skip", ()))
        if any(s not in SKIP_TARGETS for s in skip):
            raise ValueError(f"{side.name}: skip lists servers from {SKIP_TARGETS}")
        if not path.exists():
            if set(skip) == set(SKIP_TARGETS):
                return None
            raise MissingUpdate(path, round_id)
        update = np.load(path, allow_pickle=False)
        return WorkerInput(update, bool(meta.get("unchecked", False)), skip, bool(meta.get("ring", False)))

    return source


def fixed_source(update: np.ndarray) -> UpdateSource:
    """The same update in every round (a demo worker)."""
    return lambda round_id, d: WorkerInput(np.asarray(update, dtype=np.float64))


class WorkerRuntime:
    """One worker's client loop against S0 and S1."""

    def __init__(self, cfg: PartyConfig, identity: Identity, source: UpdateSource, *,
                 out_dir: Path | None = None, accounting: Accounting | None = None,
                 encode_slots: threading.Semaphore | None = None) -> None:
        wid = worker_index(cfg.party)
        if wid is None:
            raise ValueError(f"a worker's party id is worker:<i>, not {cfg.party!r}")
        self.worker_id = wid
        self.party = cfg.party
        self.cfg = cfg
        self.source = source
        self.out_dir = out_dir
        self.accounting = accounting or Accounting()
        self.s0 = PeerClient(identity, "S0", cfg.peer("S0"), accounting=self.accounting,
                             connect_timeout=cfg.connect_timeout_s)
        self.s1 = PeerClient(identity, "S1", cfg.peer("S1"), accounting=self.accounting,
                             connect_timeout=cfg.connect_timeout_s)
        self.servers = {"S0": Peer(self.s0, bulk=LANE_KINDS), "S1": Peer(self.s1, bulk=LANE_KINDS)}
        """Each server with the bulk lane its ``status`` announces (``transport.lane``)."""
        self.encode_slots = encode_slots
        """Shared by the workers of one process: how many read and encode their update at once (each holds
        about three d-vectors while it does, one after), so a process of many simulated workers peaks at a
        few updates' worth of memory, not all of them."""
        self.last_round = -1
        self.log = logging.getLogger(LOGGER_NAME)

    def ping(self) -> None:
        """Both servers answer (raises PartyUnreachable or RemoteRejected otherwise)."""
        for client in (self.s0, self.s1):
            client.control("status", timeout=10.0)

    def wait_for_round(self, wait_s: float = 10.0) -> dict[str, Any] | None:
        """Public parameters of a round newer than the last one, open at both servers, or None."""
        st0 = self.s0.control("status", args={"after": self.last_round, "wait_s": wait_s}, timeout=wait_s + 15.0)
        self.servers["S0"].use_lane(st0.get("bulk"))
        info = st0.get("round")
        if not info or not info.get("intake_open") or info["round_id"] <= self.last_round:
            return None
        st1 = self.s1.control("status", args={"after": self.last_round, "wait_s": 5.0}, timeout=20.0)
        self.servers["S1"].use_lane(st1.get("bulk"))
        other = st1.get("round") or {}
        if other.get("round_id") != info["round_id"] or not other.get("intake_open"):
            return None
        if (other.get("d"), other.get("frac_bits")) != (info.get("d"), info.get("frac_bits")):
            raise ProtocolError(f"S0 and S1 announce different parameters for round {info['round_id']}")
        return info

    def participate(self, info: dict[str, Any]) -> WorkerOutcome:
        """Share this worker's update for the announced round, then fetch and rebuild the aggregate."""
        r, d, frac_bits = int(info["round_id"]), int(info["d"]), int(info["frac_bits"])
        self.last_round = max(self.last_round, r)
        if not info.get("expected", False):
            return WorkerOutcome(r, "not-expected")
        got = self._read_and_encode(r, d, frac_bits)
        if got is None:
            return WorkerOutcome(r, "sat-out")
        if isinstance(got, str):
            return self.decline(r, got)
        encoded, owned, skip, seconds = got
        if "S0" in skip:
            return WorkerOutcome(r, "partial", "cut off from S0: no share key, so no share", seconds=seconds)
        timer = Timer()
        wait_s = float(info.get("share_deadline_in_s", 30.0)) + 5.0
        try:
            msg = self.s0.fetch(r, M.SHARE_KEY, wait_s=wait_s, max_bytes=KEY_REPLY_BYTES)
            key = share_key(msg, r, self.worker_id, d)
            del msg
            seconds["key"] = timer.seconds
            timer = Timer()
            to_s1 = share_update(r, self.worker_id, encoded, key, in_place=owned)
            del encoded, key
            if "S1" not in skip:
                self.servers["S1"].send(to_s1)
            del to_s1
        except (RemoteRejected, PartyUnreachable, ProtocolError) as exc:
            event(self.log, "share-refused", level=logging.WARNING, round=r, error=str(exc))
            return WorkerOutcome(r, "refused", str(exc), seconds=seconds)
        seconds["share"] = timer.seconds
        if skip:
            return WorkerOutcome(r, "partial", f"share skipped to {list(skip)}", seconds=seconds)
        return self.collect(r, seconds, wait_s=float(info.get("share_deadline_in_s", 30.0)) + 120.0)

    def _read_and_encode(self, r: int, d: int, frac_bits: int
                         ) -> tuple[np.ndarray, bool, tuple[str, ...], dict[str, float]] | str | None:
        """(the encoding, whether the worker owns it, the servers to skip, seconds) for round r; or why the
        worker declines; or None to sit the round out. The float update is dropped once encoded. Holds one of
        ``encode_slots`` throughout."""
        with self.encode_slots if self.encode_slots is not None else nullcontext():
            try:
                inp = self.source(r, d)
            except MissingUpdate as exc:
                event(self.log, "update-missing", level=logging.WARNING, round=r, path=str(exc.path))
                return f"cannot read its update: {exc.strerror}"
            except (OSError, ValueError) as exc:
                return f"cannot read its update: {_os_reason(exc) if isinstance(exc, OSError) else exc}"
            if inp is None:
                return None
            timer = Timer()
            try:
                encoded, owned = encode_owned(inp, d, frac_bits)
            except ValueError as exc:
                return str(exc)
            return encoded, owned, inp.skip, {"encode": timer.seconds}

    def decline(self, round_id: int, reason: str) -> WorkerOutcome:
        """Sit round ``round_id`` out and tell both servers why (best effort: their reports carry the reason
        to the operators, ``secrobust.deploy.declines``)."""
        reason = clean_reason(reason)
        event(self.log, "round-declined", level=logging.WARNING, round=round_id, reason=reason)
        for client in (self.s0, self.s1):
            try:
                client.control(DECLINE, round_id, {"reason": reason}, timeout=10.0)
            except (RemoteRejected, PartyUnreachable) as exc:
                event(self.log, "decline-undelivered", level=logging.WARNING, round=round_id, error=str(exc))
        return WorkerOutcome(round_id, "error", reason)

    def collect(self, round_id: int, seconds: dict[str, float] | None = None, *, wait_s: float = 120.0) -> WorkerOutcome:
        """Fetch both servers' aggregate shares for ``round_id`` and rebuild the aggregate."""
        seconds = dict(seconds or {})
        timer = Timer()
        try:
            m0 = self.servers["S0"].fetch(round_id, M.AGGREGATE_SHARE, wait_s=wait_s)
            m1 = self.servers["S1"].fetch(round_id, M.AGGREGATE_SHARE, wait_s=wait_s)
            out, weights, participants = reconstruct(m0, m1)
        except (RemoteRejected, PartyUnreachable, ProtocolError) as exc:
            return WorkerOutcome(round_id, "aborted", str(exc), seconds=seconds)
        seconds["fetch"] = timer.seconds
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            np.save(self.out_dir / f"round-{round_id}.npy", out)
        event(self.log, "aggregate-received", round=round_id, phase=M.AGGREGATE_SHARE,
              participants=len(participants), seconds=round(sum(seconds.values()), 6))
        return WorkerOutcome(round_id, "done", "", out, weights, participants, seconds)

    def serve(self, stop: threading.Event, *, max_rounds: int | None = None, ready: Callable[[], None] | None = None,
              poll_s: float = 10.0) -> list[WorkerOutcome]:
        """Take part in rounds until ``stop`` is set (or ``max_rounds`` rounds were seen); returns the outcomes
        of the last ``max_rounds`` rounds, or of the last KEEP_OUTCOMES when serving without a limit (a
        long-lived worker must not keep every round's aggregate: then only the newest outcome holds its
        aggregate, 8d bytes, and the older ones are on disk under ``out_dir`` when it is set)."""
        outcomes: deque[WorkerOutcome] = deque(maxlen=max_rounds or KEEP_OUTCOMES)
        seen = 0
        announced = False
        while not stop.is_set() and (max_rounds is None or seen < max_rounds):
            try:
                if not announced:
                    self.ping()
                    if ready is not None:
                        ready()
                    announced = True
                info = self.wait_for_round(poll_s)
            except (PartyUnreachable, RemoteRejected) as exc:
                event(self.log, "server-unavailable", level=logging.WARNING, error=str(exc))
                stop.wait(1.0)
                continue
            if info is None:
                continue
            outcome = self.participate(info)
            if max_rounds is None and outcomes:
                outcomes[-1].aggregate = None
            outcomes.append(outcome)
            seen += 1
            event(self.log, "round-outcome", round=outcome.round_id, status=outcome.status, detail=outcome.detail,
                  seconds=round(sum(outcome.seconds.values()), 6))
        return list(outcomes)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


def _os_reason(exc: OSError) -> str:
    """``strerror: filename`` of a failed read (the file named, so its owner can find it)."""
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def encode_owned(inp: WorkerInput, d: int, frac_bits: int) -> tuple[np.ndarray, bool]:
    """``encode_input``, and whether the worker owns the vector, so may mask it in place (``share_update``):
    a ring row is the input's own array, which belongs to whoever gave it (a source may hand the same one
    every round)."""
    encoded = encode_input(inp, d, frac_bits)
    return encoded, not np.may_share_memory(encoded, inp.update)


def encode_input(inp: WorkerInput, d: int, frac_bits: int) -> np.ndarray:
    """The ring vector (d,) the worker shares: its update through the honest encoder (or, simulated, the
    unchecked one), or the given ring elements as they are. Raises ValueError saying what is wrong."""
    if inp.ring:
        row = np.asarray(inp.update)
        if row.dtype != np.uint64 or row.shape != (d,):
            raise ValueError(f"ring elements must be uint64 of shape ({d},), got {row.dtype} {row.shape}")
        return row
    vec = np.asarray(inp.update, dtype=np.float64).reshape(-1)
    if vec.shape != (d,):
        raise ValueError(f"update has dimension {vec.size}, the round has d={d}")
    try:
        return ring.encode_unchecked(vec, frac_bits) if inp.unchecked else ring.encode(vec, frac_bits)
    except ValueError as exc:
        raise ValueError(f"encoder refused the update: {exc}") from None


def wait_ready(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False
