"""The server process's handler (``ServerRuntime``): it wires a server's parts together and answers the
endpoint's calls (admission, message checks and intake, fetches, control commands)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

from ...pki.certs import DEALER_ID, Identity, operator_party, worker_index
from ...primitives import kernel, prg
from ...protocol import messages as M
from ...protocol.messages import Message
from ...protocol.nodes import ServerNode
from ...rules import modes
from ...transport.grpc import Accounting, PeerClient
from ...transport.grpc import secrobust_pb2 as pb
from ...transport.grpc.errors import Rejected
from ...transport.grpc.logs import LOGGER_NAME, event
from ...transport.grpc.pace import Pace
from ...transport.grpc.tls import MAX_GRPC_MESSAGE
from ...transport.handler import CONTROL_LIMIT, PartyHandler
from ...transport.lane import CONNECTIONS_PER_CALLER
from ..config import PartyConfig
from ..declines import COMMAND as DECLINE
from ..declines import parse_decline
from ..pool import triple_key
from ..rounds import RoundRequest
from .driver import RoundDriver
from .forward import FORWARD_STREAMS, RowForward
from .link import PeerLink
from .offline import OfflinePool
from .run import RoundRun, Rounds, key_traffic_key, traffic
from .s0 import S0Steps
from .s1 import S1Steps
from .sequence import message_bound
from .slots import UPLOAD_WINDOW, Slots
from .sync import Monitor


def wait_seconds(args: dict[str, Any], limit: float) -> float:
    """A long poll's ``wait_s`` argument: a finite, non-negative number of seconds, capped at ``limit``
    (a NaN deadline would never pass, so the call would hold its handler thread for good)."""
    value = args.get("wait_s", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Rejected("bad-request", f"wait_s must be a finite number of seconds >= 0, got {value!r}")
    return min(float(value), limit)


class ServerRuntime(PartyHandler):
    """The PartyHandler of S0 or S1: the endpoint's calls land here and go to the server's parts, which share
    one Monitor (``sync``): the rounds (``run``), the triple pool (``offline``), the payload slots
    (``slots``), the peer link (``link``), S0's or S1's own steps (``s0``, ``s1``) and the round driver."""

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
        self.link = PeerLink(self.monitor, self.peer, cfg.peer_timeout_s)
        self.steps: S0Steps | S1Steps = (
            S0Steps(self.monitor, self.rounds, self.node, self.link, self.offline, self.party) if self.index == 0
            else S1Steps(self.monitor, self.node, self.link, self.party))
        self.driver = RoundDriver(self.monitor, self.rounds, self.node, self.link, self.steps, self.offline,
                                  self.index, self.party, self.accounting)
        self.bulk_port: int | None = None
        """The port of this server's bulk lane (``transport.grpc.bulk``), announced in ``status``; None: gRPC only."""
        # the first round's ring products would otherwise load the kernel (Numba) on that round's clock
        threading.Thread(target=kernel.warm_up, name="ring-kernel-warm-up", daemon=True).start()

    def close(self) -> None:
        """Release every call that waits (long polls, fetches, reports) so the process can exit."""
        with self.monitor:
            self.monitor.closing = True
            self.offline.close()
            self.monitor.notify()
            self.steps.close()
            self.link.close()

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
                self.steps.precheck_share(rnd, w, env.phase)
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

    def payload_watch(self, env: pb.Envelope, buf: Any) -> RowForward | None:
        """S1: a worker's share arriving on the bulk lane may have its row of E forwarded meanwhile
        (``S1Steps.forward_watch``)."""
        w = worker_index(env.sender)
        if self.index != 1 or env.phase != M.SHARE_MASKED or w is None:
            return None
        with self.monitor:
            rnd = self.rounds.current
            if rnd is None or rnd.round_id != env.round_id or rnd.finished or not isinstance(self.steps, S1Steps):
                return None
            return self.steps.forward_watch(rnd, w, buf)

    def bulk_connections(self, caller: str) -> int | None:
        """The other server may hold a forwarded row's stream (``forward.FORWARD_STREAMS``) beside the usual
        connections."""
        return CONNECTIONS_PER_CALLER + FORWARD_STREAMS if caller == self.peer_name else None

    def accept(self, msg: Message, env: pb.Envelope) -> None:
        with self.monitor:
            if msg.sender == DEALER_ID:
                self.offline.accept(msg)
                self.monitor.notify()
                return
            rnd = self._current(msg.round_id, msg.sender)
            w = worker_index(msg.sender)
            if w is not None:
                self.steps.accept_share(rnd, w, msg)
            else:
                rnd.peer_seq.advance(msg)
                rnd.inbox[msg.kind].append(msg)
            self.monitor.notify()

    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> Message:
        if phase == M.SHARE_KEY and isinstance(self.steps, S0Steps):
            return self.steps.fetch_key(caller, round_id, wait_s)
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
            first = self.slots.operator_fetch(round_id) if caller == self.operator_name else None
            try:
                return self._aggregate_reply(rnd, caller, deadline)
            except BaseException:
                if first is not None:
                    first()
                raise

    def _aggregate_reply(self, rnd: RoundRun, caller: str, deadline: float) -> Message:
        """With the lock held: ``caller``'s aggregate-share reply, once ``rnd`` is over (by ``deadline``)."""
        round_id = rnd.round_id
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
            assert isinstance(self.steps, S0Steps)
            return self.steps.confirm_request(round_id, args, self.bulk_port)
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
            self.steps.declined(rnd)
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
        self.driver.start(run)
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
            if self.index == 1 and rnd.mode == modes.DEFAULT_MODE:
                out["view"] = {k: v.tolist() for k, v in rnd.view.items()}
            return out
