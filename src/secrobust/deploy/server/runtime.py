"""The server process's handler (``ServerRuntime``): it wires a server's parts together, answers the
endpoint's calls (admission, message checks and intake, fetches, control commands) and runs each opened
round on its own thread."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from ...errors import ProtocolError, RoundAborted
from ...primitives import prg
from ...pki.certs import DEALER_ID, Identity, operator_party, worker_index
from ...protocol import messages as M
from ...protocol.messages import Message
from ...protocol import streaming
from ...protocol.nodes import ServerNode
from ...protocol.server import noise_share
from ...rules import secure
from ...transport.grpc import Accounting, PeerClient
from ...transport.grpc import secrobust_pb2 as pb
from ...transport.grpc.endpoint import CONTROL_LIMIT
from ...transport.grpc.bulk import BulkClient, lane_beside, send_over
from ...transport.grpc.errors import PartyUnreachable, Rejected, RemoteRejected
from ...transport.grpc.logs import LOGGER_NAME, Timer, event
from ...transport.grpc.pace import Pace
from ...transport.grpc.tls import MAX_GRPC_MESSAGE
from ..config import PartyConfig
from ..declines import COMMAND as DECLINE, parse_decline
from ..pool import triple_key
from ..rounds import RoundRequest
from .offline import OfflinePool
from .run import PeerAborted, PeerTimeout, RoundRun, Rounds, Streamed, key_traffic_key, traffic
from .sequence import OPEN_KINDS, message_bound
from .slots import UPLOAD_WINDOW, Slots
from .sync import Monitor

PROBE_S = 2.0
ROW_IDLE_S = 0.25
"""S0 waits this long for a block of rows of E to fill before it takes fewer."""
SEND_THREADS = 2
"""S1's rows of E in flight to S0 at once."""


def wait_seconds(args: dict[str, Any], limit: float) -> float:
    """A long poll's ``wait_s`` argument: a finite, non-negative number of seconds, capped at ``limit``
    (a NaN deadline would never pass, so the call would hold its handler thread for good)."""
    value = args.get("wait_s", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Rejected("bad-request", f"wait_s must be a finite number of seconds >= 0, got {value!r}")
    return min(float(value), limit)


class ServerRuntime:
    """The PartyHandler of S0 or S1 plus the thread that runs each opened round. Its parts share one Monitor
    (``sync``): the rounds (``run``), the triple pool (``offline``) and the payload slots (``slots``)."""

    def __init__(self, cfg: PartyConfig, identity: Identity, *, accounting: Accounting | None = None) -> None:
        if cfg.party not in ("S0", "S1"):
            raise ValueError(f"a server is S0 or S1, not {cfg.party!r}")
        self.cfg = cfg
        self.party = cfg.party
        self.index = 0 if cfg.party == "S0" else 1
        self.stream_window = UPLOAD_WINDOW if self.index == 1 else None
        self.peer_name = "S1" if self.index == 0 else "S0"
        self.operator_name = operator_party(self.index)
        self.node = ServerNode(self.index)
        self.accounting = accounting or Accounting()
        self.peer = PeerClient(identity, self.peer_name, cfg.peer(self.peer_name), accounting=self.accounting,
                               connect_timeout=cfg.connect_timeout_s)
        self.dealer = PeerClient(identity, DEALER_ID, cfg.peer(DEALER_ID), accounting=self.accounting,
                                 connect_timeout=cfg.connect_timeout_s)
        self.log = logging.getLogger(LOGGER_NAME)
        self.monitor = Monitor()
        self.rounds = Rounds(cfg.state_dir)
        self.shutdown_requested = threading.Event()
        self.offline = OfflinePool(self.monitor, self.rounds, self.node, self.index, self.party, self.dealer,
                                   cfg.peer_timeout_s)
        self.slots = Slots(self.monitor, self.rounds, cfg, self.index, self.peer_name, self.operator_name)
        self._senders: ThreadPoolExecutor | None = None
        self.bulk_port: int | None = None
        """The port of this server's bulk lane (``transport.grpc.bulk``), announced in ``status``; None: gRPC only."""
        self.peer_bulk: BulkClient | None = None
        """S1: the bulk lane of S0 (learnt from its answer to ``confirm-request``), for the rows of E."""

    def close(self) -> None:
        """Release every call that waits (long polls, fetches, reports) so the process can exit."""
        with self.monitor:
            self.monitor.closing = True
            self.offline.close()
            self.monitor.notify()
            if self._senders is not None:
                self._senders.shutdown(wait=False, cancel_futures=True)
            if self.peer_bulk is not None:
                self.peer_bulk.close()

    # PartyHandler

    def admitted(self, caller: str) -> bool:
        """The other server, the dealer, this server's own operator (not the other's) and admitted workers."""
        if caller in (self.peer_name, DEALER_ID, self.operator_name):
            return True
        w = worker_index(caller)
        return w is not None and w in self.cfg.workers

    def permits(self, caller: str, command: str) -> None:
        """Who may run which control command, checked before its arguments are even parsed. The dealer runs
        none: it only answers S1's triple requests, and a server's ``status`` would tell it each round's
        timing and participant counts, more than the n, d, triple kind and id it is meant to learn."""
        allowed = {"status": None, "abort-round": (self.peer_name, self.operator_name),
                   "confirm-request": (self.peer_name,) if self.index == 0 else (),
                   "open-round": (self.operator_name,), "report": (self.operator_name,),
                   "shutdown": (self.operator_name,), DECLINE: None}
        if command not in allowed:
            raise Rejected("bad-request", f"unknown command {command!r}")
        who = allowed[command]
        if (who is not None and caller not in who) or caller == DEALER_ID:
            raise Rejected("not-permitted", f"{caller} may not run {command!r} on {self.party}")

    def _current(self, round_id: int, sender: str) -> RoundRun:
        rnd = self.rounds.current
        if rnd is None:
            raise Rejected("wrong-round", f"message for round {round_id}, but no round is open at {self.party}")
        if round_id != rnd.round_id:
            raise Rejected("wrong-round", f"message for round {round_id}, but round {rnd.round_id} is the one "
                           f"open at {self.party}")
        w = worker_index(sender)
        if w is not None and w not in rnd.plan.worker_ids:
            raise Rejected("unknown-party", f"worker {w} is not expected in round {rnd.round_id}")
        if rnd.finished:
            raise Rejected("out-of-phase", f"round {rnd.round_id} is already {rnd.status}")
        return rnd

    def max_message_bytes(self, env: pb.Envelope) -> int:
        if env.phase in (M.TRIPLE_S0, M.TRIPLE_S1):
            return self.offline.delivery_bound(env)
        rnd = self.rounds.current
        return message_bound(env.phase, self.index, rnd.request if rnd else None, rnd.plan if rnd else None)

    def precheck(self, env: pb.Envelope) -> None:
        with self.monitor:
            if env.sender == DEALER_ID:
                self.offline.precheck(env)
                return
            rnd = self._current(env.round_id, env.sender)
            sender = env.sender
            w = worker_index(sender)
            if w is not None:
                if self.index == 0:
                    raise Rejected("not-permitted", f"a worker sends nothing to S0 (it fetches its {M.SHARE_KEY} "
                                   f"there), got {env.phase}")
                if env.phase != M.SHARE_MASKED:
                    raise Rejected("out-of-phase", f"a worker sends {M.SHARE_MASKED} to S1, not {env.phase}")
                if w in rnd.received:
                    raise Rejected("duplicate", f"worker {w} already sent its share for round {rnd.round_id}")
                if w in rnd.in_flight:
                    raise Rejected("duplicate", f"worker {w} is already sending its share for round {rnd.round_id}")
                if w in rnd.dropped:
                    raise Rejected("out-of-phase", f"worker {w} was dropped from round {rnd.round_id}: "
                                   f"{rnd.dropped[w]}")
                if not rnd.intake_open:
                    raise Rejected("out-of-phase", f"the share phase of round {rnd.round_id} is closed")
                rnd.in_flight.add(w)
            elif sender == self.peer_name:
                rnd.peer_seq.check(env.phase)
            else:
                raise Rejected("not-permitted", f"{sender} sends no protocol messages to {self.party}")

    def reserve(self, env: pb.Envelope) -> Callable[..., None] | None:
        """The payload slot this message waits for (``Slots.reserve``)."""
        return self.slots.reserve(env)

    def upload_pace(self, env: pb.Envelope) -> Pace | None:
        """The pace a worker's share upload keeps (``Slots.upload_pace``)."""
        return self.slots.upload_pace(env)

    def fetch_slot(self, caller: str, phase: str) -> Callable[[], None] | None:
        """The slot an aggregate-share reply waits for (``Slots.fetch_slot``)."""
        return self.slots.fetch_slot(caller, phase)

    def accept(self, msg: Message, env: pb.Envelope) -> None:
        with self.monitor:
            if msg.sender == DEALER_ID:
                self.offline.accept(msg)
                self.monitor.notify()
                return
            rnd = self._current(msg.round_id, msg.sender)
            w = worker_index(msg.sender)
            if w is not None:
                self._accept_share(rnd, w, msg)
            else:
                rnd.peer_seq.advance(msg)
                rnd.inbox[msg.kind].append(msg)
            self.monitor.notify()

    def _accept_share(self, rnd: RoundRun, w: int, msg: Message) -> None:
        """S1 takes worker w's masked share (S0 takes none: precheck refuses them)."""
        if self.index != 1:
            raise Rejected("not-permitted", "a worker sends nothing to S0")
        if not rnd.intake_open:
            raise Rejected("out-of-phase", f"the share phase of round {rnd.round_id} is closed")
        if w in rnd.received:
            raise Rejected("duplicate", f"worker {w} already sent its share for round {rnd.round_id}")
        if msg.fields.get("worker") != w:
            raise Rejected("sender-mismatch", f"share names worker {msg.fields.get('worker')!r}, certificate is worker {w}")
        x1 = msg.arrays.get("x1")
        if x1 is None or x1.dtype != np.uint64 or x1.shape != (rnd.plan.d,):
            got = "no vector" if x1 is None else f"{x1.dtype} of shape {x1.shape}"
            raise Rejected("wrong-size", f"worker {w} sent {got}; round {rnd.round_id} takes uint64 of "
                           f"shape ({rnd.plan.d},)")
        st = rnd.streamed
        assert st.rows is not None
        slot = len(st.order)
        st.rows[slot] = x1          # the upload's receive buffer goes once this call returns
        self.node.receive_share(Message(msg.kind, msg.round_id, msg.sender, msg.recipient, msg.fields,
                                        {"x1": st.rows[slot]}))
        st.order.append(w)
        rnd.received.add(w)
        rnd.close_when_all_answered()

    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> Message:
        if phase == M.SHARE_KEY and self.index == 0:
            return self._fetch_key(caller, round_id, wait_s)
        if phase != M.AGGREGATE_SHARE:
            can = f"{M.SHARE_KEY} (from S0, by the worker it belongs to) or {M.AGGREGATE_SHARE}"
            raise Rejected("not-permitted", f"only {can} can be fetched, not {phase!r} from {self.party}")
        deadline = time.monotonic() + wait_s
        with self.monitor:
            rnd = self.rounds.find(round_id)
            if rnd is None:
                raise Rejected("wrong-round", f"{self.party} knows no round {round_id}")
            w = worker_index(caller)
            if caller != self.operator_name and (w is None or w not in rnd.plan.worker_ids):
                raise Rejected("not-permitted", f"{caller} is not a worker of round {round_id}")
            self.monitor.wait_until(lambda: rnd.finished or self.monitor.closing, deadline)
            if not rnd.finished:
                raise Rejected("not-found", f"round {round_id} has not finished at {self.party} yet")
            if rnd.status != "done":
                raise Rejected("round-aborted", f"round {round_id} aborted: {rnd.reason}")
            if rnd.own_share is None:
                raise Rejected("not-found", f"the aggregate share of round {round_id} is no longer kept")
            arrays = {"share": rnd.own_share}
            if rnd.weights is not None:         # none with reveal="aggregate": nobody learns them
                arrays["weights"] = rnd.weights
            if rnd.plan.center is not None:
                arrays["center"] = rnd.plan.center
            return Message(M.AGGREGATE_SHARE, round_id, self.party, caller, arrays=arrays,
                           fields={"participants": list(rnd.participants), "center_weight": rnd.center_weight,
                                   "frac_bits": rnd.plan.frac_bits, "reveal": rnd.mode})

    def _fetch_key(self, caller: str, round_id: int, wait_s: float) -> Message:
        """S0 -> worker: the key of S0's share of the *caller's* update, once per round.

        The worker is the caller's certificate name; the request names no worker, so nobody can ask for
        another worker's key. S1 (or anyone else) holding worker i's key would hold both shares of x_i:
        only the worker itself is served, only while the share phase is open, and only once (a worker
        needs its key once; refusing a second fetch also bounds what a stolen worker certificate yields
        after the fact). Waits up to ``wait_s`` for this round's triple, whose seed the keys derive from."""
        w = worker_index(caller)
        if w is None:
            raise Rejected("not-permitted", f"only a worker fetches its {M.SHARE_KEY}; {caller} may not")
        deadline = time.monotonic() + wait_s
        with self.monitor:
            rnd = self.rounds.current
            if rnd is None or rnd.round_id != round_id:
                raise Rejected("wrong-round", f"round {round_id} is not the round open at {self.party}")
            if w not in rnd.plan.worker_ids:
                raise Rejected("unknown-party", f"worker {w} is not expected in round {round_id}")
            self.monitor.wait_until(lambda: not rnd.intake_open or rnd.finished or self.monitor.closing
                                    or self._keys_ready(rnd), deadline)
            if rnd.finished and rnd.status != "done":
                raise Rejected("round-aborted", f"round {round_id} aborted: {rnd.reason}")
            if not rnd.intake_open:
                raise Rejected("out-of-phase", f"the share phase of round {round_id} is closed")
            if w in rnd.received:
                raise Rejected("duplicate", f"worker {w} already fetched its {M.SHARE_KEY} for round {round_id}")
            if not self._keys_ready(rnd):
                raise Rejected("not-found", f"the keys of round {round_id} are not ready at S0 yet (its triple "
                               "has not arrived)")
            msg = self.node.share_key_message(w)
            rnd.received.add(w)
            self.monitor.notify()
        return msg

    @staticmethod
    def _keys_ready(rnd: RoundRun) -> bool:
        return rnd.confirmed and (rnd.triple_in or not rnd.uses_triple)

    def account_fetch_as(self, caller: str, env: pb.Envelope) -> Any:
        """A share key is a protocol message (counted like the in-process run's); an aggregate-share
        download is not: book them apart."""
        return key_traffic_key(env.round_id) if env.phase == M.SHARE_KEY else env.round_id

    def account_as(self, msg: Message, env: pb.Envelope) -> Any:
        """A dealer delivery is booked under its triple, the rest under the round id."""
        if msg.sender == DEALER_ID:
            return triple_key(str(msg.fields.get("triple_id")))
        return env.round_id

    def max_control_bytes(self, command: str) -> int:
        """An open-round request carries the worker list and cclip's public center (d numbers): up to
        gRPC's message limit; every other command a few small fields."""
        return MAX_GRPC_MESSAGE if command == "open-round" else CONTROL_LIMIT

    def control(self, caller: str, command: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        self.permits(caller, command)
        if command == "status":
            return self._status(caller, args)
        if command == "confirm-request":
            return self._confirm_request(round_id, args)
        if command == DECLINE:
            return self._decline(caller, round_id, args)
        if command == "abort-round":
            with self.monitor:
                rnd = self.rounds.current
                if rnd is not None and rnd.round_id == round_id and not rnd.finished:
                    rnd.error = {"type": "PeerAborted", "party": caller}
                    rnd.reason = f"{caller} aborted round {round_id}: {args.get('reason', '')}"
                    rnd.intake_open = False
                    self.monitor.notify()
            return {"ok": True}
        if command == "open-round":
            if args.get("round_id") != round_id:
                raise Rejected("wrong-round", f"open-round call for round {round_id} carries the parameters of round "
                               f"{args.get('round_id')!r}")
            return self._open(args)
        if command == "report":
            return self._report(round_id, wait_seconds(args, 600.0))
        if command == "shutdown":
            self.shutdown_requested.set()
            return {"ok": True}
        raise Rejected("bad-request", f"unknown command {command!r}")

    # control commands

    def _decline(self, caller: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        """A worker of the open round says why it sits the round out (``declines``): kept for the report."""
        w = worker_index(caller)
        if w is None:
            raise Rejected("not-permitted", f"only a worker declines a round; {caller} may not")
        reason = parse_decline(args)
        with self.monitor:
            rnd = self._current(round_id, caller)
            rnd.declined.setdefault(w, reason)
            if self.index == 1:
                rnd.close_when_all_answered()
                self.monitor.notify()
        event(self.log, "worker-declined", round=round_id, worker=w, reason=reason)
        return {"ok": True}

    def _status(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise Rejected("bad-request", f"status 'after' must be a round id, got {after!r}")
        wait_s = wait_seconds(args, 60.0)
        deadline = time.monotonic() + wait_s
        w = worker_index(caller)

        def open_for_shares() -> bool:
            rnd = self.rounds.current
            return (rnd is not None and rnd.intake_open and (after is None or rnd.round_id > after)) \
                or self.monitor.closing
        with self.monitor:
            self.monitor.wait_until(open_for_shares, deadline)
            rnd = self.rounds.current
            out: dict[str, Any] = {"party": self.party, "last_round": self.rounds.last, "round": None,
                                   "bulk": self.bulk_port}
            if rnd is not None:
                info: dict[str, Any] = {"round_id": rnd.round_id, "status": rnd.status, "phase": rnd.phase,
                                        "intake_open": rnd.intake_open, "d": rnd.plan.d,
                                        "frac_bits": rnd.plan.frac_bits,
                                        "share_deadline_in_s": max(0.0, rnd.share_deadline - time.monotonic())}
                if w is not None:
                    info["expected"] = w in rnd.plan.worker_ids
                    info["received"] = w in rnd.received
                else:
                    info["received"] = len(rnd.received)
                out["round"] = info
            if w is None:
                out["triples"] = self.offline.pool.public()
            return out

    def _open(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            request = RoundRequest.from_json(args)
            run = RoundRun(request, self.index, self.cfg.min_participants)
            run.spec.validate(len(request.worker_ids), request.f, request.options)
        except ValueError as exc:
            raise Rejected("bad-request", str(exc)) from None
        if request.test_seed is not None and not self.cfg.insecure_test_seeds:
            raise Rejected("not-permitted", f"{self.party} refuses a fixed test_seed: it was not started with "
                           "insecure_test_seeds (a known seed makes its DP noise known to the other parties)")
        bad = sorted(set(request.worker_ids) - set(self.cfg.workers))
        if bad:
            raise Rejected("unknown-party", f"workers {bad} are not admitted at {self.party}")
        with self.monitor:
            old = self.rounds.current
            if old is not None and not old.finished and old.error.get("type") == "PeerAborted":
                self.monitor.wait_until(lambda: old.finished, time.monotonic() + self.cfg.peer_timeout_s)
            if old is not None and not old.finished:
                raise Rejected("out-of-phase", f"round {old.round_id} is still running at {self.party}")
            if request.round_id <= self.rounds.last:
                raise Rejected("wrong-round", f"round ids must increase: {request.round_id} after {self.rounds.last}")
            self.offline.open_round(request, run)
            # S0's input shares are the triple's A0; an unchecked mean has no triple, so S0 draws their master
            self.node.start_round(run.plan, prg.fresh_seed() if self.index == 0 and not run.uses_triple else None)
            self.rounds.start(run)
            self.monitor.notify()
        event(self.log, "round-open", round=request.round_id, rule=request.rule, f=request.f, reveal=request.reveal,
              n=len(request.worker_ids),
              d=request.d, triple_id=request.triple_id, prefetch=[t for _, t in request.prefetch],
              prefetched=run.triple.get("prefetched"), ready_at_open=run.triple.get("ready_at_open"))
        self.offline.request_queued()
        threading.Thread(target=self._run, args=(run,), name=f"{self.party}-round-{request.round_id}",
                         daemon=True).start()
        return {"round_id": request.round_id, "opened": True}

    def _report(self, round_id: int, wait_s: float) -> dict[str, Any]:
        """The round's public outcome at this server once it is over (or after ``wait_s``): status, phase,
        reason of an abort, participants, weights, ``rejected`` ({worker id as a string: reason}, the
        workers the input validity check or S1's view check excluded), ``declined`` (the same for workers that
        said why they sent nothing), ``dropped`` (S1: the same for workers whose upload took a slot and brought
        no share), seconds per phase, the aggregate's digest, traffic and the triple used;
        S1 adds the view it opened. ``reveal`` says what the round made public: with "aggregate" the weights
        are None (nobody learnt them), and only with "distances" is there a view."""
        deadline = time.monotonic() + wait_s
        with self.monitor:
            rnd = self.rounds.find(round_id)
            if rnd is None:
                raise Rejected("wrong-round", f"{self.party} knows no round {round_id}")
            self.monitor.wait_until(lambda: rnd.finished or self.monitor.closing, deadline)
            out: dict[str, Any] = {
                "party": self.party, "round_id": rnd.round_id, "status": rnd.status, "phase": rnd.phase,
                "reveal": rnd.mode,
                "reason": rnd.reason, "error": rnd.error, "participants": list(rnd.participants),
                "weights": None if rnd.weights is None else rnd.weights.tolist(), "center_weight": rnd.center_weight,
                "rejected": {str(w): reason for w, reason in sorted(rnd.rejected.items())},
                "declined": {str(w): reason for w, reason in sorted(rnd.declined.items())},
                "dropped": {str(w): reason for w, reason in sorted(rnd.dropped.items())},
                "seconds": dict(rnd.seconds), "aggregate_sha256": rnd.aggregate_digest,
                "traffic": traffic(self.accounting, rnd), "triple": dict(rnd.triple),
                "key_traffic": self.accounting.totals(key_traffic_key(rnd.round_id)),
            }
            if self.index == 1 and rnd.mode == secure.DEFAULT_MODE:
                out["view"] = {k: v.tolist() for k, v in rnd.view.items()}
            return out

    def _confirm_request(self, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        """S0's side of ``_confirm_with_s0``: wait (up to the peer timeout) for its own round ``round_id``
        to be open, compare digests, and answer with its own."""
        theirs = args.get("sha256")
        if not isinstance(theirs, str) or len(theirs) != 64:
            raise Rejected("bad-request", "confirm-request carries the request's SHA-256 as 64 hex digits")
        deadline = time.monotonic() + self.cfg.peer_timeout_s
        with self.monitor:
            self.monitor.wait_until(lambda: self.monitor.closing or (self.rounds.current is not None
                                                                     and self.rounds.current.round_id >= round_id),
                                    deadline)
            rnd = self.rounds.current
            if rnd is None or rnd.round_id != round_id or rnd.finished:
                raise Rejected("wrong-round", f"round {round_id} is not open at {self.party}")
            if theirs != rnd.digest:
                rnd.error = {"type": "PeerAborted", "party": self.peer_name}
                rnd.reason = (f"the servers hold different requests for round {round_id} "
                              f"(S0 {rnd.digest[:12]}, S1 {theirs[:12]})")
                rnd.intake_open = False
            else:
                rnd.confirmed = True
            self.monitor.notify()
            return {"sha256": rnd.digest, "bulk": self.bulk_port}

    # the round

    def _wait(self, rnd: RoundRun, kind: str, gone: Callable[[], bool] | None = None) -> Message:
        """The peer's next ``kind`` message; PeerTimeout after the peer timeout, RoundAborted at once if
        ``gone()`` says none will come."""
        limit = self.cfg.peer_timeout_s
        deadline = time.monotonic() + limit

        def arrived() -> bool:
            if rnd.inbox[kind]:
                return True
            rnd.check_alive()
            if gone is not None and gone():
                raise RoundAborted(f"{self.peer_name} moved on without sending the next {kind}")
            return False
        with self.monitor:
            if not self.monitor.wait_until(arrived, deadline):
                raise PeerTimeout(f"{self.peer_name} sent no {kind} within {limit:g} s")
            return rnd.inbox[kind].popleft()

    def _send(self, rnd: RoundRun, msg: Message) -> None:
        with self.monitor:
            rnd.check_alive()
        send_over(self.peer_bulk if msg.kind in OPEN_KINDS else None, self.peer, msg)

    def _enter(self, rnd: RoundRun, phase: str) -> Timer:
        with self.monitor:
            rnd.phase = phase
            self.monitor.notify()
        return Timer()

    @contextmanager
    def _phase(self, rnd: RoundRun, phase: str) -> Iterator[None]:
        """Mark the round as in ``phase`` and add the time spent to ``rnd.seconds[phase]``."""
        timer = self._enter(rnd, phase)
        try:
            yield
        finally:
            rnd.seconds[phase] += timer.seconds

    def _run(self, rnd: RoundRun) -> None:
        """The round's steps in the order of ``secrobust.api.Cluster.run_round``, with steps 2-3 streamed by
        rows while the shares arrive (``protocol.streaming``); any failure aborts it."""
        total = Timer()
        try:
            if self.index == 1:
                self._confirm_with_s0(rnd)
            if rnd.uses_triple:
                self.offline.install(rnd, self._enter(rnd, "offline"))  # S0 hands out no key before it (A0)
            if self.index == 1:
                self._s1_share_and_open(rnd)
            else:
                self._s0_share_and_open(rnd)
            if rnd.plan.validity:
                self._check_inputs(rnd)
            if rnd.on_shares is not None:
                self._rule_on_shares(rnd)       # instead of S1 opening the view and choosing the weights
            else:
                self._open_view(rnd)
                self._rule(rnd)
            share, out = self._aggregate(rnd)
            self._finish(rnd, share, out)
            event(self.log, "round-done", round=rnd.round_id, phase="done", participants=len(rnd.participants),
                  rejected=len(rnd.rejected), seconds=round(total.seconds, 6), bytes=traffic(self.accounting, rnd)["sent"])
        except Exception as exc:
            self._abort(rnd, exc)
        finally:
            with self.monitor:
                rnd.streamed.release()
                if self.node.state is not None and self.node.state.plan is rnd.plan:
                    self.node.state = None      # the round's shares are not needed any more
                self.rounds.archive(rnd)
                self.offline.round_over(rnd)
                self.monitor.notify()
            self.offline.after_round(rnd)

    def _confirm_with_s0(self, rnd: RoundRun) -> None:
        """S1, before any share is used: S0 must hold the same round request (equal digests). S0 answers
        with its own digest and aborts on a mismatch; so does S1. An operator who opens the two servers with
        different rules, workers or parameters gets an aborted round, not a mixed one."""
        try:
            reply = self.peer.control("confirm-request", rnd.round_id, {"sha256": rnd.digest},
                                      timeout=self.cfg.peer_timeout_s + 5.0)
        except RemoteRejected as exc:
            raise RoundAborted(f"S0 did not confirm the request of round {rnd.round_id}: {exc}") from None
        theirs = reply.get("sha256")
        if theirs != rnd.digest:
            raise RoundAborted(f"the servers hold different requests for round {rnd.round_id} "
                               f"(S0 {str(theirs)[:12]}, S1 {rnd.digest[:12]})")
        self._use_peer_bulk(reply.get("bulk"))
        with self.monitor:
            rnd.confirmed = True
            self.monitor.notify()

    def _use_peer_bulk(self, port: Any) -> None:
        """S1: send the rows of E over S0's bulk lane when S0 offers one."""
        self.peer_bulk = lane_beside(self.peer_bulk, self.peer, port)

    def _s1_share_and_open(self, rnd: RoundRun) -> None:
        """S1's steps 1-3, each done as soon as it can be:

        * as each masked share comes in, its row of E goes to S0 (``SEND_THREADS`` sends in flight, so the
          link to S0, the slowest part, stays busy);
        * the Gram share takes the opened rows in blocks of ``streaming.MIN_BLOCK`` to ``BLOCK_ROWS``;
        * once the intake closes (every expected share in, or the deadline) the shares are fixed: S1 fixes
          the participants, sends them to S0 with its validity seed contribution, and as soon as S0's
          contribution is in, projects its shares column chunk by column chunk, between the last rows;
        * every row is with S0 (acknowledged) before this returns, so S0 has them all before the check's
          comparisons or the view."""
        timer = Timer()
        st, plan = rnd.streamed, rnd.plan
        open_phase = "open" if rnd.reveal else "validity"
        sends: deque[Future] = deque()
        agreed = False
        projector: streaming.Projector | None = None
        share_s: float | None = None
        seed_due = float("inf")
        while True:
            with self.monitor:
                while True:
                    rnd.check_alive()
                    now = time.monotonic()
                    if rnd.intake_open and now >= rnd.share_deadline:
                        rnd.intake_open = False
                        self.monitor.notify()
                    closed = not rnd.intake_open
                    if closed and share_s is None:
                        share_s = timer.seconds
                    new_rows = rnd.uses_triple and st.opened < len(st.order)
                    gram = self._gram_due(st, closed)
                    agree = closed and not agreed
                    seed = agreed and plan.validity and projector is None and bool(rnd.inbox[M.VALIDITY_SEED])
                    project = projector is not None and not projector.done
                    if new_rows or gram or agree or seed or project:
                        break
                    if agreed and (not plan.validity or projector is not None):
                        break                   # every row opened and in the Gram share, projections done
                    if now >= seed_due:
                        raise PeerTimeout(f"{self.peer_name} sent no {M.VALIDITY_SEED} within "
                                          f"{self.cfg.peer_timeout_s:g} s")
                    self.monitor.cv.wait(max(0.01, min((seed_due if closed else rnd.share_deadline) - now, 1.0)))
                start, workers = st.opened, list(st.order[st.opened:])
                triple = self.node.current.triple if rnd.uses_triple else None
            if not (new_rows or gram or agree or seed or project):
                break
            if agree:
                self._s1_agree(rnd, share_s)
                agreed, seed_due = True, time.monotonic() + self.cfg.peer_timeout_s
            if seed:
                with self._phase(rnd, "validity"):
                    with self.monitor:
                        self.node.receive_validity_seed(rnd.inbox[M.VALIDITY_SEED].popleft())
                        joint = self.node.current.validity_seed
                    slot = {w: k for k, w in enumerate(st.order)}
                    rows = np.array([slot[w] for w in rnd.participants], dtype=np.int64)
                    assert st.rows is not None
                    projector = streaming.Projector(st.rows, rows, joint, plan.center, plan.chunk_bytes)
            if new_rows:
                with self._phase(rnd, open_phase):
                    assert st.rows is not None
                    for k, w in enumerate(workers, start):
                        e = streaming.opening_row(st.rows[k], triple, st.position[w], plan.center)
                        msg = streaming.opening_message(rnd.round_id, plan.open_kind, w, e)
                        del e
                        while len(sends) > SEND_THREADS:
                            sends.popleft().result()
                        sends.append(self._sender().submit(self._send, rnd, msg))
                        del msg
                    with self.monitor:
                        st.opened = start + len(workers)
            if self._gram_due(st, not rnd.intake_open):
                with self._phase(rnd, open_phase):
                    assert st.rows is not None and st.row_gram is not None
                    done = st.row_gram.done
                    upto = min(st.opened, done + streaming.BLOCK_ROWS)
                    st.row_gram.add(st.rows, upto)
                    if st.u is not None:
                        st.u[done:upto] = streaming.center_products(st.rows[done:upto], plan.center)
            elif projector is not None and not projector.done:
                with self._phase(rnd, "validity"):
                    projector.step()
        if sends:
            with self._phase(rnd, open_phase):
                while sends:
                    sends.popleft().result()    # every row is with S0 before the comparisons or the view
        rnd.seconds["share"] += share_s if share_s is not None else timer.seconds
        if rnd.uses_triple:
            self._complete_opening(rnd, projector)

    def _s1_agree(self, rnd: RoundRun, share_s: float | None = None) -> None:
        """S1, its intake closed: the participants are the workers whose share it holds; it tells S0, with its
        fresh contribution to the check's projection seed (the shares are fixed now)."""
        with self._phase(rnd, "agree"):
            with self.monitor:
                rnd.participants = self.node.agree(None, rnd.spec.minimum(rnd.request.f), rnd.spec.needs(rnd.request.f))
                msgs = [self.node.participants_message()]
                if rnd.plan.validity:
                    msgs.append(self.node.validity_seed_message(prg.fresh_seed()))
            for msg in msgs:
                self._send(rnd, msg)
        event(self.log, "shares-closed", round=rnd.round_id, phase="share", received=len(rnd.received),
              expected=len(rnd.plan.worker_ids), seconds=None if share_s is None else round(share_s, 6),
              opened=rnd.streamed.opened)

    @staticmethod
    def _gram_due(st: Streamed, closed: bool) -> bool:
        """S1: a block of opened rows is ready for the Gram share (any size once no more shares come)."""
        if st.row_gram is None:
            return False
        waiting = st.opened - st.row_gram.done
        return waiting >= streaming.MIN_BLOCK or (closed and waiting > 0)

    def _sender(self) -> ThreadPoolExecutor:
        with self.monitor:
            if self._senders is None:
                self._senders = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix=f"{self.party}-send")
            return self._senders

    def _s0_share_and_open(self, rnd: RoundRun) -> None:
        """S0's steps 1-3: hand out keys (``fetch``) and, as S1's rows of E arrive, fill the columns of its Gram
        share 2 A0 E^T in blocks (at least ``streaming.MIN_BLOCK`` rows, fewer when they are the last ones or no
        row came for ``ROW_IDLE_S``). S1's participant list closes the key handout; S0 answers it with its
        validity seed contribution and, once S1's is in, projects its shares (A0's rows) column chunk by column
        chunk between the last rows. Returns once every participant's row is in."""
        timer = Timer()
        st, plan = rnd.streamed, rnd.plan
        open_phase = "open" if rnd.reveal else "validity"
        if rnd.uses_triple:
            with self._phase(rnd, open_phase):
                st.a0 = self.offline.take_a0(rnd.request.triple_id)
                rnd.triple["a0_ahead"] = st.a0 is not None and st.a0.shape == (len(plan.worker_ids), plan.d)
                if not rnd.triple["a0_ahead"]:
                    st.a0 = streaming.s0_rows(self.node.current.triple, np.arange(len(plan.worker_ids)))
                if streaming.weighted_sum(plan):
                    st.weighted = streaming.WeightedRows(self.node.current.triple)
        kind = plan.open_kind
        agreed = False
        projector: streaming.Projector | None = None
        deadline = rnd.share_deadline + self.cfg.peer_timeout_s
        next_probe = time.monotonic() + PROBE_S
        share_s: float | None = None
        while True:
            probe = False
            with self.monitor:
                idle_until = time.monotonic() + ROW_IDLE_S
                while True:
                    rnd.check_alive()
                    now = time.monotonic()
                    pending = len(rnd.inbox[kind])
                    left = (len(set(rnd.participants) - set(st.order)) if rnd.uses_triple else 0) if agreed else None
                    agree = not agreed and bool(rnd.inbox[M.PARTICIPANTS])
                    seed = agreed and plan.validity and projector is None and bool(rnd.inbox[M.VALIDITY_SEED])
                    rows = pending > 0 and (pending >= streaming.MIN_BLOCK or now >= idle_until
                                            or (left is not None and pending >= left))
                    project = projector is not None and not projector.done
                    if agree or seed or rows or project:
                        break
                    if agreed and left == 0 and (not plan.validity or projector is not None):
                        break                   # every participant's row is in, projections done
                    if now >= deadline:
                        want = f"rows of E from {self.peer_name}" if agreed else f"{M.PARTICIPANTS} from {self.peer_name}"
                        raise PeerTimeout(f"no {want} within {self.cfg.peer_timeout_s:g} s")
                    if not agreed and not pending and now >= next_probe:
                        probe = True
                        break
                    until = idle_until if pending else min(deadline, next_probe if not agreed else deadline)
                    self.monitor.cv.wait(max(0.01, min(until - now, 1.0)))
                    if len(rnd.inbox[kind]) > pending:
                        idle_until = time.monotonic() + ROW_IDLE_S
                taken = [rnd.inbox[kind].popleft() for _ in range(min(pending, streaming.BLOCK_ROWS))] if rows else []
                if taken:
                    self.monitor.notify()       # room for more rows (``reserve``)
            if probe:
                self._probe_peer()
                next_probe = time.monotonic() + PROBE_S
                continue
            if not (agree or seed or rows or project):
                break
            if agree:
                share_s = timer.seconds
                self._s0_agree(rnd)
                agreed = True
                deadline = max(deadline, time.monotonic() + self.cfg.peer_timeout_s)
            if seed:
                with self._phase(rnd, "validity"):
                    with self.monitor:
                        self.node.receive_validity_seed(rnd.inbox[M.VALIDITY_SEED].popleft())
                        state = self.node.current
                    assert st.a0 is not None
                    projector = streaming.Projector(st.a0, state.positions(), state.validity_seed, plan.center,
                                                    plan.chunk_bytes)
            if taken:
                deadline = max(deadline, time.monotonic() + self.cfg.peer_timeout_s)   # S1 is at work
                with self._phase(rnd, open_phase):
                    assert st.a0 is not None and st.col_gram is not None
                    opened = [streaming.read_opening(m, plan.worker_ids, (), plan.d) for m in taken]
                    del taken
                    if agreed and not {w for w, _ in opened} <= set(rnd.participants):
                        raise RoundAborted("S1 opened the row of a worker it did not list as a participant")
                    st.col_gram.add(st.a0, [st.position[w] for w, _ in opened], [e for _, e in opened])
                    if st.weighted is not None:
                        st.weighted.add([st.position[w] for w, _ in opened], [e for _, e in opened])
                    st.order.extend(w for w, _ in opened)
                    del opened
            elif projector is not None and not projector.done:
                with self._phase(rnd, "validity"):
                    projector.step()
        rnd.seconds["share"] += share_s if share_s is not None else timer.seconds
        if rnd.uses_triple:
            self._complete_opening(rnd, projector)

    def _s0_agree(self, rnd: RoundRun) -> None:
        """S0 takes S1's participant list (its key handout closes), checks that S1 opened no row of anyone
        else, and answers with its fresh contribution to the check's projection seed."""
        with self._phase(rnd, "agree"):
            with self.monitor:
                msg = rnd.inbox[M.PARTICIPANTS].popleft()
                rnd.intake_open = False
                self.monitor.notify()
                rnd.participants = self.node.agree(msg, rnd.spec.minimum(rnd.request.f), rnd.spec.needs(rnd.request.f))
                extra = set(rnd.streamed.order) - set(rnd.participants)
                if extra:
                    raise RoundAborted(f"S1 opened the rows of {sorted(extra)} but did not list them as participants")
                mine = self.node.validity_seed_message(prg.fresh_seed()) if rnd.plan.validity else None
            if mine is not None:
                self._send(rnd, mine)
        event(self.log, "shares-closed", round=rnd.round_id, phase="share", received=len(rnd.received),
              expected=len(rnd.plan.worker_ids), participants=len(rnd.participants), opened=len(rnd.streamed.order))

    def _probe_peer(self) -> None:
        """S0, waiting for S1: is S1 still there? Its port refusing connections aborts the round at once; a
        slow answer is no proof of anything (S1 may be busy taking 8d-byte uploads on a loaded machine), so
        only the deadline ends the wait then."""
        try:
            self.peer.control("status", timeout=PROBE_S * 5)
        except PartyUnreachable as exc:
            if exc.detail.startswith("UNAVAILABLE"):
                raise

    def _complete_opening(self, rnd: RoundRun, projector: streaming.Projector | None) -> None:
        """The node's state after steps 2-3 for the participants (plan order), as ``open_masked``/``accumulate``
        and ``project`` leave it in process: this server's Gram share from the streamed rows, and with the
        check on, the projections of its input shares under the joint seed."""
        st, plan = rnd.streamed, rnd.plan
        with self._phase(rnd, "open" if rnd.reveal else "validity"), self.monitor:
            state = self.node.current
            if self.index == 1:
                assert st.row_gram is not None
                slot = {w: k for k, w in enumerate(st.order)}
                rows = np.array([slot[w] for w in state.participants or ()], dtype=np.int64)
                vv = np.dot(plan.center, plan.center) if plan.center is not None else None
                h = st.row_gram.share(rows, None if st.u is None else st.u[rows], vv)
            else:
                assert st.col_gram is not None
                h = st.col_gram.share(state.positions())
                st.a0 = None                    # S0's aggregate share re-expands the few weighted rows
            self.node.state = streaming.complete(state, h, None if projector is None else projector.proj,
                                                 None if st.weighted is None else st.weighted.total)

    def _check_inputs(self, rnd: RoundRun) -> None:
        """The check's comparison rounds, one message each way per round, until both servers hold the
        accept flags; rejected workers leave the round, which aborts if too few passed."""
        with self._phase(rnd, "validity"):
            with self.monitor:
                msg = self.node.validity_start()
            while msg is not None:
                self._send(rnd, msg)
                peer_msg = self._wait(rnd, M.VALIDITY_OPEN)
                with self.monitor:
                    msg = self.node.validity_step(peer_msg)
            self._record_rejected(rnd)
            with self.monitor:
                self.node.check_enough(rnd.spec, rnd.request.f)
                rnd.participants = self.node.current.participants or ()

    def _record_rejected(self, rnd: RoundRun) -> None:
        """Take the node's rejected workers into the round's report, one ``worker-rejected`` event each."""
        with self.monitor:
            new = {w: reason for w, reason in self.node.rejected.items() if w not in rnd.rejected}
            rnd.rejected.update(new)
        for w, reason in sorted(new.items()):
            event(self.log, "worker-rejected", level=logging.WARNING, round=rnd.round_id, phase=rnd.phase, worker=w,
                  reason=reason)

    def _open_view(self, rnd: RoundRun) -> None:
        """S0 sends its share of the distances/norms; S1 opens them (an empty view when the rule opens none)."""
        if not rnd.reveal:
            if self.index == 1:
                with self.monitor:
                    self.node.open_view(None)
            return
        with self._phase(rnd, "distances"):
            if self.index == 0:
                with self.monitor:
                    view_share = self.node.view_share_message()
                self._send(rnd, view_share)
            else:
                view_msg = self._wait(rnd, M.VIEW_SHARE)
                with self.monitor:
                    self.node.open_view(view_msg)

    def _rule(self, rnd: RoundRun) -> None:
        """S1 applies the rule and sends the public weights (and the workers it rejected) to S0."""
        with self._phase(rnd, "rule"):
            if self.index == 1:
                with self.monitor:
                    weights_msg = self.node.choose(rnd.spec, rnd.request.f, dict(rnd.request.options))
                self._send(rnd, weights_msg)
            else:
                weights_msg = self._wait(rnd, M.WEIGHTS)
                with self.monitor:
                    self.node.receive_weights(weights_msg)
        self._record_rejected(rnd)

    def _rule_on_shares(self, rnd: RoundRun) -> None:
        """reveal="weights" or "aggregate": the rule's circuit on the shared view, one ``rule-open`` message
        each way per round (as the check's comparisons), until both servers hold the public weights
        ("weights") or their shares of them ("aggregate"). No view share and no weights message: S1 opens
        nothing. The number of rounds depends on the participants left, so the peer's count is fixed when
        this server's own circuit ends (``PeerSequence.rule_finished``); a peer that ends its circuit
        earlier (its next message arrives instead of an opening) aborts the round at once."""
        req = rnd.request
        with self._phase(rnd, "rule"):
            with self.monitor:
                msg = self.node.rule_start(rnd.on_shares, req.f, dict(req.options))
            steps = 0
            while msg is not None:
                self._send(rnd, msg)
                steps += 1
                peer_msg = self._wait(rnd, M.RULE_OPEN, gone=lambda: rnd.peer_seq.rule_over)
                with self.monitor:
                    msg = self.node.rule_step(peer_msg)
            with self.monitor:
                rnd.peer_seq.rule_finished(steps)
        event(self.log, "rule-done", round=rnd.round_id, phase="rule", reveal=rnd.mode, steps=steps)

    def _aggregate(self, rnd: RoundRun) -> tuple[np.ndarray, np.ndarray]:
        """This server's aggregate share (plus its DP noise), exchanged with the peer's: (share, aggregate)."""
        req = rnd.request
        with self._phase(rnd, "aggregate"):
            noise = None
            if req.dp_noise_std:
                seed, label = req.noise_seed(self.index)
                noise = noise_share(seed, label, req.d, req.dp_noise_std, req.frac_bits)
            with self.monitor:
                share = self.node.aggregate_share(noise)
                share_msg = self.node.aggregate_message(share)
            self._send(rnd, share_msg)
            peer_share = self._wait(rnd, M.AGGREGATE_SHARE)
            with self.monitor:
                out = self.node.reveal(share, peer_share)
        return share, out

    def _finish(self, rnd: RoundRun, share: np.ndarray, out: np.ndarray) -> None:
        st = self.node.current
        with self.monitor:
            choice = st.choice
            assert choice is not None or rnd.plan.mode == "aggregate"
            if choice is not None and rnd.mode != "aggregate":
                rnd.weights = np.asarray(choice.weights, dtype=np.float64)
            # with the weights shared, the center's part is inside the aggregate shares already
            rnd.center_weight = float(choice.center_weight) if choice is not None else 0.0
            if st.view is not None and rnd.mode == secure.DEFAULT_MODE:
                rnd.view = {k: v for k in ("distances", "norms") if (v := getattr(st.view, k)) is not None}
            rnd.own_share = share
            rnd.aggregate_digest = hashlib.sha256(np.ascontiguousarray(out, dtype="<f8").tobytes()).hexdigest()
            rnd.phase = "done"
            rnd.status = "done"
            self.monitor.notify()

    def _abort(self, rnd: RoundRun, exc: BaseException) -> None:
        with self.monitor:
            told_by_peer = isinstance(exc, PeerAborted)
            rnd.status = "aborted"
            rnd.intake_open = False
            if not told_by_peer:
                rnd.reason = str(exc)
                rnd.error = {"type": type(exc).__name__}
                if isinstance(exc, PartyUnreachable):
                    rnd.error.update(party=exc.party, address=exc.address, detail=exc.detail)
                elif hasattr(exc, "party") and hasattr(exc, "code"):
                    rnd.error.update(party=exc.party, code=exc.code)
            self.monitor.notify()
        level = logging.WARNING if isinstance(exc, ProtocolError) else logging.ERROR
        event(self.log, "round-aborted", level=level, round=rnd.round_id, phase=rnd.phase, reason=rnd.reason,
              error=rnd.error.get("type"))
        if level == logging.ERROR:
            self.log.error("unexpected error in round %s", rnd.round_id, exc_info=exc)
        if not told_by_peer and not (isinstance(exc, PartyUnreachable) and exc.party == self.peer_name):
            try:
                self.peer.control("abort-round", rnd.round_id, {"reason": rnd.reason}, timeout=3.0)
            except ProtocolError:
                pass
