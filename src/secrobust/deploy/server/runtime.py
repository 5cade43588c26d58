"""The server process's handler (``ServerRuntime``) and the thread that runs each opened round."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ...primitives import prg
from ...circuits import validity
from ...gates.arith import Budget
from ...pki.certs import DEALER_ID, Identity, operator_party, worker_index
from ...gates.dealer import TripleSpec
from ...errors import ProtocolError, RoundAborted
from ...protocol.nodes import ServerNode
from ...protocol import messages as M
from ...protocol.messages import Message
from ...protocol.offline import request_triple, triple_from_message
from ...protocol import streaming
from ...protocol.server import RoundPlan, noise_share
from ...rules import secure
from ...transport.grpc import Accounting, PeerClient
from ...transport.grpc import secrobust_pb2 as pb
from ...transport.grpc.bulk import BulkClient, lane_beside, send_over
from ...transport.grpc.pace import Pace
from ...transport.grpc.endpoint import CONTROL_LIMIT
from ...transport.grpc.errors import PartyUnreachable, Rejected, RemoteRejected
from ...transport.grpc.tls import MAX_GRPC_MESSAGE
from ...transport.grpc.logs import LOGGER_NAME, Timer, event
from ..config import PartyConfig
from ..declines import COMMAND as DECLINE, parse_decline
from ..pool import FAILED, PENDING, READY, PoolEntry, TriplePool, triple_key
from ..rounds import RoundRequest

HEADER_SLACK = 64 << 10
SMALL_MESSAGE = 4 << 10
KEEP_ROUNDS = 8
KEEP_SHARES = 2
PROBE_S = 2.0
ROW_IDLE_S = 0.25
"""S0 waits this long for a block of rows of E to fill before it takes fewer."""
SEND_THREADS = 2
"""S1's rows of E in flight to S0 at once."""
UPLOAD_SLOTS = 8
"""Masked shares S1 receives at once (``reserve``), at least; more in a round of more than 15 workers
(``upload_slots``)."""
UPLOAD_WINDOW = 1 << 20
"""S1's HTTP/2 receive window per stream (``tls.server_options``): uploads that wait for a slot hold at most
this much in gRPC's buffers."""
ROW_BACKLOG = 16
"""Rows of E that S0 holds (received or being received) before it has added them to its Gram share."""
FETCH_SLOTS = 4
FETCH_WAIT_S = 60.0
"""The longest an aggregate-share fetch waits for a slot before it is refused (``busy``)."""
"""Aggregate-share replies a server encodes and streams at once (``fetch_slot``)."""
PHASES = ("share", "agree", "offline", "open", "validity", "distances", "rule", "aggregate", "done")
OPEN_KINDS = (M.MASKED_OPEN, M.VALIDITY_MASKED_OPEN)


def key_traffic_key(round_id: int) -> str:
    """The accounting key of S0's share-key replies of a round (``Accounting``)."""
    return f"keys:{round_id}"


class PeerTimeout(RoundAborted):
    """The other server (or the dealer's triple) did not arrive within the configured time."""


class PeerAborted(RoundAborted):
    """The other server (or the operator) aborted the round and said why."""


def _triple_bytes(kind: str, spec: TripleSpec) -> int:
    """Payload bound of a dealer delivery: S0's part is seeds only; S1's also holds C1 (n x n at most),
    the check's bit-triple words, the rule circuit's correction words and the weighted-sum correction
    (8d bytes, reveal="aggregate")."""
    if kind == M.TRIPLE_S0:
        return 16 * spec.n
    return (16 * spec.n * spec.n + 8 * spec.and_words + spec.rule.bytes_to_s1()
            + (8 * spec.d if spec.vector else 0))


RULE_SLACK_STEPS = 8
"""Rule openings a peer may send beyond the circuit's round count for all the expected workers (the
last exchange of the weights, or of their masked shares, comes on top; fewer workers take no more)."""


def upload_slots(n: int) -> int:
    """S1's upload slots in a round of n workers: more than any k < n/2 worker certificates can hold (each
    has one share in flight at a time), so theirs never keep an honest share waiting for a slot."""
    return max(UPLOAD_SLOTS, n // 2 + 1)


def rule_step_cap(request: RoundRequest, plan: RoundPlan) -> int:
    """The most ``rule-open`` messages a peer may send before this server's own circuit has ended and so
    fixed the exact count (``_PeerSequence.rule_finished``)."""
    if not plan.on_shares:
        return 0
    return secure.rounds(request.rule, len(plan.worker_ids), request.f, dict(request.options),
                         plan.view_range, plan.d, plan.frac_bits) + RULE_SLACK_STEPS


def rule_open_bytes(plan: RoundPlan) -> int:
    """Payload bound of one ``rule-open`` message. Every opening of the rule's gates consumes dealer
    material (a bit triple word opens 2 words, a daBit plane word 1, a product triple 2 ring values), and the
    circuit for fewer workers takes no more than the plan's budget, so one step opens at most
    8 (2 AND words + daBit words + 2 products) bytes; the last step opens the n + 1 weights or the n masked
    weight shares."""
    b: Budget = plan.rule_budget
    return 8 * (2 * b.and_words + b.dabit_words + 2 * b.mults) + 8 * (len(plan.worker_ids) + 1)


def wait_seconds(args: dict[str, Any], limit: float) -> float:
    """A long poll's ``wait_s`` argument: a finite, non-negative number of seconds, capped at ``limit``
    (a NaN deadline would never pass, so the call would hold its handler thread for good)."""
    value = args.get("wait_s", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Rejected("bad-request", f"wait_s must be a finite number of seconds >= 0, got {value!r}")
    return min(float(value), limit)


class _PeerSequence:
    """The order in which one server's messages reach the other; anything else is out of phase.
    To S0: S1's participants, the validity seed (check on), the check's comparison steps, S1's weights, the
    aggregate share; and S1's rows of E (``open_kind``, one per worker whose share S1 took, in any order,
    from the share phase until the comparisons, or the weights without the check, begin; after the
    participant list only rows of listed workers). To S1: the validity seed, the comparison steps, S0's
    view share (rules that open one), the aggregate share.

    With the rule on shares (``reveal`` "weights" or "aggregate") the rule circuit's openings
    (``rule-open``, numbered steps) take the place of the view share and the weights, both ways. Their
    number depends on the participants left after dropouts and the check, which a server knows only once
    its own check has ended, so until its own circuit ends (``rule_finished``) a server takes at most
    ``rule_cap`` of them; then exactly as many as its circuit had."""

    def __init__(self, receiver: int, plan: RoundPlan, rule_cap: int = 0) -> None:
        checks = plan.validity
        if plan.on_shares:
            rule = [M.RULE_OPEN]
        else:
            rule = [*([M.VIEW_SHARE] if receiver == 1 and plan.reveal else []), *([M.WEIGHTS] if receiver == 0 else [])]
        self.kinds = [*([M.PARTICIPANTS] if receiver == 0 else []), *([M.VALIDITY_SEED] if checks else []),
                      *([M.VALIDITY_OPEN] * validity.rounds(len(plan.worker_ids)) if checks else []),
                      *rule, M.AGGREGATE_SHARE]
        self.pos = 0
        self.step = 0
        self.d = plan.d
        self.open_kind = plan.open_kind if receiver == 0 and plan.triple_kind is not None else None
        self.rows_until = 2 if checks else 1       # rows until kinds[rows_until] (comparisons or weights)
        self.allowed = set(plan.worker_ids)
        self.rows: set[int] = set()
        self.rule_cap = rule_cap
        self.rule_steps = 0
        """``rule-open`` messages taken so far."""
        self.rule_total: int | None = None
        """The exact number of rule openings, once this server's own circuit has ended."""

    def expected(self) -> str | None:
        return self.kinds[self.pos] if self.pos < len(self.kinds) else None

    def _rows_open(self) -> bool:
        return self.open_kind is not None and self.pos <= self.rows_until and not self.rule_steps

    def _in_rule(self) -> bool:
        return self.expected() == M.RULE_OPEN

    @property
    def rule_over(self) -> bool:
        """The peer has sent the message after its last rule opening (its circuit has ended)."""
        return M.RULE_OPEN in self.kinds and self.pos > self.kinds.index(M.RULE_OPEN)

    def check(self, kind: str) -> None:
        if kind == self.open_kind and self._rows_open():
            return
        want = self.expected()
        if want == M.RULE_OPEN:
            limit = self.rule_cap if self.rule_total is None else self.rule_total
            after = self.kinds[self.pos + 1]
            if kind == M.RULE_OPEN and self.rule_steps < limit:
                return
            if kind == after and self.rule_steps and (self.rule_total is None or self.rule_steps == self.rule_total):
                return
            if kind == M.RULE_OPEN:
                raise Rejected("out-of-phase", f"a rule opening beyond the {limit} the rule's circuit has")
            need = "rule openings" if self.rule_total is None else f"{self.rule_total - self.rule_steps} more rule openings"
            raise Rejected("out-of-phase", f"expected {need} from the peer server, got {kind}")
        if kind != want:
            also = f" or {self.open_kind}" if self._rows_open() else ""
            raise Rejected("out-of-phase", f"expected {want or 'nothing more'}{also} from the peer server, got {kind}")

    def advance(self, msg: Message) -> None:
        self.check(msg.kind)
        if msg.kind == self.open_kind and self._rows_open():
            w = msg.fields.get("worker")
            if isinstance(w, bool) or not isinstance(w, int) or w not in self.allowed:
                raise Rejected("out-of-phase", f"a masked opening row for worker {w!r}, who is not a participant")
            if w in self.rows:
                raise Rejected("duplicate", f"a second masked opening row for worker {w}")
            e = msg.arrays.get("e")
            if e is None or e.dtype != np.uint64 or e.shape != (self.d,) or len(msg.arrays) != 1:
                raise Rejected("wrong-size", f"a masked opening row is uint64 of shape ({self.d},)")
            self.rows.add(w)
            return
        if msg.kind == M.PARTICIPANTS:
            listed = msg.fields.get("workers")
            if isinstance(listed, list):
                self.allowed &= {w for w in listed if isinstance(w, int) and not isinstance(w, bool)}
        if msg.kind == M.VALIDITY_OPEN:
            step = msg.fields.get("step")
            if step != self.step:
                raise Rejected("out-of-phase", f"validity opening {step!r}; step {self.step} was due")
            self.step += 1
        if msg.kind == M.RULE_OPEN:
            step = msg.fields.get("step")
            if step != self.rule_steps:
                raise Rejected("out-of-phase", f"rule opening {step!r}; step {self.rule_steps} was due")
            self.rule_steps += 1
            return                              # the block goes on until the message after it
        if self._in_rule():
            self.pos += 1                       # the rule block is over: this is the message after it
        self.pos += 1

    def rule_finished(self, steps: int) -> None:
        """This server's circuit ended after ``steps`` openings each way: the peer sends exactly as many."""
        if self.rule_steps > steps:
            raise RoundAborted(f"the peer server sent {self.rule_steps} rule openings; the circuit has {steps}")
        self.rule_total = steps


class _Streamed:
    """A round's rows at one server while the share phase runs (``protocol.streaming``).

    S1: its masked shares in arrival order (one n_plan x d matrix, so an upload's receive buffer is freed
    as soon as it is copied in), how many of them were opened to S0 and added to the Gram share, and
    <x1_k, v> for a center. S0: A0 for every planned position and the columns of 2 A0 E^T filled so far.
    """

    def __init__(self, party: int, plan: RoundPlan) -> None:
        n, d = len(plan.worker_ids), plan.d
        self.position = {w: i for i, w in enumerate(plan.worker_ids)}
        self.order: list[int] = []
        self.opened = 0
        self.rows: np.ndarray | None = np.empty((n, d), dtype=np.uint64) if party == 1 else None
        self.a0: np.ndarray | None = None
        kind = plan.triple_kind
        self.row_gram = streaming.RowGram(n, kind) if party == 1 and kind else None
        self.col_gram = streaming.ColumnGram(n, kind) if party == 0 and kind else None
        self.u = np.zeros(n, dtype=np.uint64) if party == 1 and plan.center is not None else None
        self.weighted: streaming.WeightedRows | None = None
        """S0, reveal="aggregate": u^T E over the rows of E taken so far."""

    def release(self) -> None:
        self.rows = self.a0 = None
        self.weighted = None


class RoundRun:
    """One round at one server: its request, phase, inbox from the peer, and outcome."""

    def __init__(self, request: RoundRequest, party: int, min_participants: int) -> None:
        self.request = request
        self.plan = request.plan()
        self.spec = request.cohort_spec(min_participants)
        self.digest = request.digest()
        self.confirmed = False
        """The other server holds a request with the same digest (``confirm-request``): no share is used before."""
        self.reveal = bool(self.plan.reveal)
        """The round opens a masked E: the rule needs distances or norms (S1 opens them, or the rule runs on
        their shares)."""
        self.on_shares = request.secure_rule()
        """The rule's circuit when it runs on shares (``reveal`` "weights" or "aggregate"), else None."""
        self.mode = request.reveal
        self.uses_triple = self.plan.triple_kind is not None
        self.phase = "share"
        self.status = "running"
        self.reason = ""
        self.error: dict[str, Any] = {}
        self.intake_open = True
        """S1: masked shares are taken; S0: share keys are handed out."""
        self.received: set[int] = set()
        """S1: workers whose masked share arrived; S0: workers that fetched their share key."""
        self.in_flight: set[int] = set()
        """S1: workers whose masked share is being received (one at a time each: it takes an 8d-byte buffer)."""
        self.dropped: dict[int, str] = {}
        """S1: workers whose upload took a slot and ended without a share (stalled, cut off, refused): out of
        this round, so that no certificate holds a slot twice."""
        self.upload_slots = upload_slots(len(self.plan.worker_ids))
        self.declined: dict[int, str] = {}
        """Workers that said why they sit this round out (``declines``), first reason each."""
        self.inbox: dict[str, deque[Message]] = defaultdict(deque)
        self.peer_seq = _PeerSequence(party, self.plan, rule_step_cap(request, self.plan))
        self.streamed = _Streamed(party, self.plan)
        self.triple_in = False
        self.triple: dict[str, Any] = {}
        self.deferred: list[str] = []
        """S1: the triples this request prefetches for later rounds, requested from the dealer once it ends."""
        self.share_deadline = time.monotonic() + request.share_window_s
        self.seconds: dict[str, float] = defaultdict(float)
        self.participants: tuple[int, ...] = ()
        self.rejected: dict[int, str] = {}
        self.weights: np.ndarray | None = None
        self.center_weight = 0.0
        self.view: dict[str, np.ndarray] = {}
        self.own_share: np.ndarray | None = None
        self.aggregate_digest = ""

    @property
    def round_id(self) -> int:
        return self.request.round_id

    @property
    def finished(self) -> bool:
        return self.status != "running"


class ServerRuntime:
    """The PartyHandler of S0 or S1 plus the thread that runs each opened round."""

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
        self._cv = threading.Condition(threading.RLock())
        self.round: RoundRun | None = None
        self.history: OrderedDict[int, RoundRun] = OrderedDict()
        self.last_round = self._load_last_round()
        self.shutdown_requested = threading.Event()
        self.closing = False
        self.pool = TriplePool()
        self._to_request: deque[str] = deque()
        self._requester: threading.Thread | None = None
        self._senders: ThreadPoolExecutor | None = None
        self._uploads = 0
        self._fetching = 0
        self._fetchers: set[str] = set()
        """Callers holding an aggregate-share slot: one each, so a few slow readers cannot hold them all."""
        self._ahead: dict[str, tuple[threading.Event, dict[str, np.ndarray]]] = {}
        """S0: A0 expanded ahead of its round, by triple id (``_expand_ahead``)."""
        self.bulk_port: int | None = None
        """The port of this server's bulk lane (``transport.grpc.bulk``), announced in ``status``; None: gRPC only."""
        self.peer_bulk: BulkClient | None = None
        """S1: the bulk lane of S0 (learnt from its answer to ``confirm-request``), for the rows of E."""

    # state that survives a restart

    def _state_file(self) -> Path | None:
        return None if self.cfg.state_dir is None else Path(self.cfg.state_dir) / "last_round"

    def _load_last_round(self) -> int:
        path = self._state_file()
        if path is None or not path.exists():
            return -1
        return int(path.read_text().strip() or -1)

    def _store_last_round(self, round_id: int) -> None:
        path = self._state_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(round_id))
        os.replace(tmp, path)

    def close(self) -> None:
        """Release every call that waits (long polls, fetches, reports) so the process can exit."""
        with self._cv:
            self.closing = True
            self._to_request.clear()
            self._cv.notify_all()
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
        rnd = self.round
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
        rnd = self.round
        n = len(rnd.request.worker_ids) if rnd else 0
        d = rnd.request.d if rnd else 0
        if env.phase in (M.TRIPLE_S0, M.TRIPLE_S1):
            with self._cv:
                specs = [e.spec for e in self.pool.pending_for(env.round_id)]
            return HEADER_SLACK + max((_triple_bytes(env.phase, s) for s in specs), default=0)
        if env.phase == M.VALIDITY_SEED:
            return SMALL_MESSAGE
        if env.phase == M.VALIDITY_OPEN:
            return HEADER_SLACK + (16 * validity.and_words(n) if rnd and rnd.plan.validity else 0)
        if env.phase == M.RULE_OPEN:
            return HEADER_SLACK + (rule_open_bytes(rnd.plan) if rnd and rnd.plan.on_shares else 0)
        if env.phase == M.PARTICIPANTS:
            return HEADER_SLACK + 16 * n if self.index == 0 else SMALL_MESSAGE
        if env.phase == M.SHARE_MASKED:
            return HEADER_SLACK + 8 * d if self.index == 1 else SMALL_MESSAGE
        if env.phase == M.AGGREGATE_SHARE:
            return HEADER_SLACK + 8 * d
        if env.phase == M.VIEW_SHARE:
            return HEADER_SLACK + 16 * n * n if self.index == 1 else SMALL_MESSAGE
        if env.phase == M.WEIGHTS:
            return HEADER_SLACK + 8 * n if self.index == 0 else SMALL_MESSAGE
        if env.phase in OPEN_KINDS:
            return HEADER_SLACK + 8 * d if self.index == 0 else SMALL_MESSAGE   # one row of E, S1 -> S0
        return SMALL_MESSAGE

    def precheck(self, env: pb.Envelope) -> None:
        with self._cv:
            if env.sender == DEALER_ID:
                self._precheck_triple(env)
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
        """Bounds on the 8d-byte messages a server holds at once (``Endpoint`` calls this once ``precheck``
        passed; a stream that waits is held back by flow control). S1 receives at most ``upload_slots(n)``
        masked shares at once (each is a buffer, committed as its bytes arrive, until it is copied into the
        round's matrix; a worker with its share in flight has no row there yet): so S1 needs about 8nd bytes
        for the shares, and they complete one after another (their rows are opened while the rest upload)
        instead of all at the end. S0 takes a row of E only while fewer
        than ``ROW_BACKLOG`` rows wait to be added to its Gram share (S1 then sends more slowly)."""
        if self.index == 1 and env.phase == M.SHARE_MASKED and worker_index(env.sender) is not None:
            return self._reserve_upload(env)
        if self.index == 1 and env.phase == M.SHARE_MASKED:
            def room(rnd: RoundRun | None) -> bool:
                return self._uploads < UPLOAD_SLOTS
        elif self.index == 0 and env.phase in OPEN_KINDS and env.sender == self.peer_name:
            def room(rnd: RoundRun | None) -> bool:
                return rnd is None or len(rnd.inbox[env.phase]) + self._uploads < ROW_BACKLOG
        else:
            return None
        with self._cv:
            while True:
                rnd = self.round if self.round is not None and self.round.round_id == env.round_id else None
                if room(rnd):
                    break
                if rnd is None or rnd.finished or self.closing or (self.index == 1 and not rnd.intake_open):
                    raise Rejected("out-of-phase", f"round {env.round_id} moved on while the {env.phase} message "
                                   "waited for its turn")
                self._cv.wait(1.0)
            self._uploads += 1
        return self._slot_release("_uploads")

    def _reserve_upload(self, env: pb.Envelope) -> Callable[..., None]:
        """An upload slot for a worker's share (``precheck`` marked it in flight; ``upload_slots`` of them per
        round): the worker is out of ``in_flight`` again when its stream ends, and if that stream took a slot
        and did not bring its payload in full (stalled, cut off by its pace, disconnected), the worker is
        dropped from the round (``RoundRun.dropped``). A payload that arrived whole and was refused for its
        content leaves the worker free to send again: it paid its bytes at the pace, and a worker holds one
        slot at a time whatever it does."""
        w = worker_index(env.sender)
        assert w is not None

        def current() -> RoundRun | None:
            rnd = self.round
            return rnd if rnd is not None and rnd.round_id == env.round_id else None

        def done(stalled: bool) -> None:
            dropped = False
            with self._cv:
                rnd = current()
                if rnd is None:
                    return
                rnd.in_flight.discard(w)
                if stalled and w not in rnd.received and rnd.intake_open and not rnd.finished:
                    rnd.dropped.setdefault(w, "its upload took a slot and did not bring its payload in full "
                                              "(stalled, cut off by the upload pace, or disconnected)")
                    self._close_when_all_answered(rnd)
                    self._cv.notify_all()
                    dropped = True
            if dropped:
                event(self.log, "upload-dropped", level=logging.WARNING, round=env.round_id, phase="share", worker=w)
        try:
            with self._cv:
                while True:
                    rnd = current()
                    if rnd is None or rnd.finished or self.closing or not rnd.intake_open:
                        raise Rejected("out-of-phase", f"round {env.round_id} moved on while the {env.phase} "
                                       "message waited for its turn")
                    if self._uploads < rnd.upload_slots:
                        break
                    self._cv.wait(1.0)
                self._uploads += 1
        except BaseException:
            done(False)
            raise
        slot = self._slot_release("_uploads")

        def release(arrived: bool = False) -> None:
            slot()
            done(not arrived)
        return release

    def upload_pace(self, env: pb.Envelope) -> Pace | None:
        """The pace a worker's share upload must keep at S1 (``transport.grpc.pace.Pace``; the configured
        ``upload_grace_s`` and ``upload_min_rate``); other payloads keep the lanes' default."""
        if self.index == 1 and env.phase == M.SHARE_MASKED and worker_index(env.sender) is not None:
            return Pace(self.cfg.upload_grace_s, self.cfg.upload_min_rate)
        return None

    def fetch_slot(self, caller: str, phase: str) -> Callable[[], None] | None:
        """At most ``FETCH_SLOTS`` aggregate shares (8d bytes each, plus their encoding) are encoded and
        streamed at once: every worker fetches both servers' shares as soon as a round ends, and n replies
        in memory together would cost about 16nd bytes."""
        if phase != M.AGGREGATE_SHARE or caller == self.operator_name:
            return None                         # the operator's one fetch does not queue behind n workers'
        deadline = time.monotonic() + FETCH_WAIT_S
        with self._cv:
            if caller in self._fetchers:
                raise Rejected("busy", f"{caller} is already fetching an aggregate share here")
            while self._fetching >= FETCH_SLOTS and not self.closing:
                if time.monotonic() >= deadline:
                    raise Rejected("busy", f"no aggregate-share slot came free within {FETCH_WAIT_S:g} s")
                self._cv.wait(1.0)
            self._fetching += 1
            self._fetchers.add(caller)
        slot = self._slot_release("_fetching")

        def release() -> None:
            with self._cv:
                self._fetchers.discard(caller)
            slot()
        return release

    def _slot_release(self, counter: str) -> Callable[..., None]:
        """The release of one slot counted in ``counter`` (taken under ``_cv``): give it back, wake waiters
        (``arrived``, passed by the lanes for a reserved payload, changes nothing here)."""
        def release(arrived: bool = False) -> None:
            with self._cv:
                setattr(self, counter, getattr(self, counter) - 1)
                self._cv.notify_all()
        return release

    def _precheck_triple(self, env: pb.Envelope) -> None:
        want = M.TRIPLE_S0 if self.index == 0 else M.TRIPLE_S1
        if env.phase != want:
            raise Rejected("out-of-phase", f"{self.party} takes only {want} from the dealer, got {env.phase}")
        if not self.pool.pending_for(env.round_id):
            raise Rejected("wrong-round", f"{self.party} expects no triple for round {env.round_id}")

    def _accept_triple(self, msg: Message) -> None:
        """A dealer delivery: this server's part of a pending pooled triple (claimed in the ledger now)."""
        part = triple_from_message(msg)
        if (self.index == 0) != (msg.kind == M.TRIPLE_S0):
            raise Rejected("out-of-phase", f"{self.party} got the other server's part of a triple")
        if part.spec.triple_id in self.node.ledger:
            raise Rejected("duplicate", f"triple {part.spec.triple_id} was already delivered to {self.party}")
        entry = self.pool.deliver(part, msg.round_id, time.monotonic())
        self.node.ledger.claim(entry.triple_id)
        event(self.log, "triple-pooled", round=entry.round_id, triple_id=entry.triple_id, n=entry.spec.n,
              d=entry.spec.d, kind=entry.spec.kind, seconds=round(time.monotonic() - entry.registered_at, 6))
        self._expand_ahead()

    def _expand_ahead(self) -> None:
        """S0 with no round running: expand the next pooled triple's A0 (S0's input shares, n x d words of
        AES-CTR) now, so the round that uses it does not spend that time. One at a time (8nd bytes); a
        round that finds it still running waits for it (``_take_a0``), a discarded triple drops it."""
        if self.index != 0:
            return
        with self._cv:
            if self._ahead or (self.round is not None and not self.round.finished) or self.closing:
                return
            ready = [e for e in self.pool.entries.values() if e.state == READY and e.part is not None
                     and e.round_id > self.last_round]
            if not ready:
                return
            entry = min(ready, key=lambda e: e.round_id)
            done, slot = threading.Event(), {}
            self._ahead[entry.triple_id] = (done, slot)

        def work() -> None:
            try:
                slot["a0"] = streaming.s0_rows(entry.part, np.arange(entry.spec.n))  # type: ignore[arg-type]
            except Exception as exc:            # the round then expands it itself
                event(self.log, "expand-failed", level=logging.WARNING, triple_id=entry.triple_id, error=str(exc))
            finally:
                done.set()
        threading.Thread(target=work, name=f"{self.party}-expand", daemon=True).start()

    def _take_a0(self, triple_id: str | None) -> np.ndarray | None:
        """The A0 ``_expand_ahead`` made for ``triple_id`` (waiting for it if it is being made), else None."""
        with self._cv:
            ahead = self._ahead.pop(triple_id, None) if triple_id is not None else None
        if ahead is None:
            return None
        ahead[0].wait()
        return ahead[1].get("a0")

    def accept(self, msg: Message, env: pb.Envelope) -> None:
        with self._cv:
            if msg.sender == DEALER_ID:
                self._accept_triple(msg)
                self._cv.notify_all()
                return
            rnd = self._current(msg.round_id, msg.sender)
            w = worker_index(msg.sender)
            if w is not None:
                self._accept_share(rnd, w, msg)
            else:
                rnd.peer_seq.advance(msg)
                rnd.inbox[msg.kind].append(msg)
            self._cv.notify_all()

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
        self._close_when_all_answered(rnd)

    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> Message:
        if phase == M.SHARE_KEY and self.index == 0:
            return self._fetch_key(caller, round_id, wait_s)
        if phase != M.AGGREGATE_SHARE:
            can = f"{M.SHARE_KEY} (from S0, by the worker it belongs to) or {M.AGGREGATE_SHARE}"
            raise Rejected("not-permitted", f"only {can} can be fetched, not {phase!r} from {self.party}")
        deadline = time.monotonic() + wait_s
        with self._cv:
            rnd = self.round if self.round is not None and self.round.round_id == round_id else self.history.get(round_id)
            if rnd is None:
                raise Rejected("wrong-round", f"{self.party} knows no round {round_id}")
            w = worker_index(caller)
            if caller != self.operator_name and (w is None or w not in rnd.plan.worker_ids):
                raise Rejected("not-permitted", f"{caller} is not a worker of round {round_id}")
            while not rnd.finished and not self.closing and time.monotonic() < deadline:
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
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
        with self._cv:
            rnd = self.round
            if rnd is None or rnd.round_id != round_id:
                raise Rejected("wrong-round", f"round {round_id} is not the round open at {self.party}")
            if w not in rnd.plan.worker_ids:
                raise Rejected("unknown-party", f"worker {w} is not expected in round {round_id}")
            while rnd.intake_open and not rnd.finished and not self.closing and not self._keys_ready(rnd) \
                    and time.monotonic() < deadline:
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
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
            self._cv.notify_all()
        return msg

    def _keys_ready(self, rnd: RoundRun) -> bool:
        return rnd.confirmed and (rnd.triple_in or not rnd.uses_triple)

    def account_fetch_as(self, caller: str, env: pb.Envelope) -> Any:
        """A share key is a protocol message (counted like the in-process run's); an aggregate-share
        download is not: book them apart."""
        return key_traffic_key(env.round_id) if env.phase == M.SHARE_KEY else env.round_id

    def control(self, caller: str, command: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        self.permits(caller, command)
        if command == "status":
            return self._status(caller, args)
        if command == "confirm-request":
            return self._confirm_request(round_id, args)
        if command == DECLINE:
            return self._decline(caller, round_id, args)
        if command == "abort-round":
            with self._cv:
                rnd = self.round
                if rnd is not None and rnd.round_id == round_id and not rnd.finished:
                    rnd.error = {"type": "PeerAborted", "party": caller}
                    rnd.reason = f"{caller} aborted round {round_id}: {args.get('reason', '')}"
                    rnd.intake_open = False
                    self._cv.notify_all()
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

    # rounds

    def _decline(self, caller: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        """A worker of the open round says why it sits the round out (``declines``): kept for the report."""
        w = worker_index(caller)
        if w is None:
            raise Rejected("not-permitted", f"only a worker declines a round; {caller} may not")
        reason = parse_decline(args)
        with self._cv:
            rnd = self._current(round_id, caller)
            rnd.declined.setdefault(w, reason)
            if self.index == 1:
                self._close_when_all_answered(rnd)
                self._cv.notify_all()
        event(self.log, "worker-declined", round=round_id, worker=w, reason=reason)
        return {"ok": True}

    @staticmethod
    def _close_when_all_answered(rnd: RoundRun) -> None:
        """S1's intake closes once every expected worker has sent its share, declined the round or been
        dropped: no one else can still arrive, so the round need not wait out its share window. (A worker
        declines, or is dropped, only for itself, under its own certificate, so no worker can close the
        window for another.)"""
        if rnd.received | set(rnd.declined) | set(rnd.dropped) >= set(rnd.plan.worker_ids):
            rnd.intake_open = False

    def _status(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        after = args.get("after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise Rejected("bad-request", f"status 'after' must be a round id, got {after!r}")
        wait_s = wait_seconds(args, 60.0)
        deadline = time.monotonic() + wait_s
        w = worker_index(caller)
        with self._cv:
            while True:
                rnd = self.round
                ready = rnd is not None and rnd.intake_open and (after is None or rnd.round_id > after)
                if ready or self.closing or time.monotonic() >= deadline:
                    break
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            out: dict[str, Any] = {"party": self.party, "last_round": self.last_round, "round": None,
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
                out["triples"] = self.pool.public()
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
        with self._cv:
            old = self.round
            if old is not None and not old.finished and old.error.get("type") == "PeerAborted":
                deadline = time.monotonic() + self.cfg.peer_timeout_s
                while not old.finished and time.monotonic() < deadline:
                    self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            if old is not None and not old.finished:
                raise Rejected("out-of-phase", f"round {old.round_id} is still running at {self.party}")
            if request.round_id <= self.last_round:
                raise Rejected("wrong-round", f"round ids must increase: {request.round_id} after {self.last_round}")
            pool_plan = self.pool.plan(request, time.monotonic())
            for gone in self.pool.commit(pool_plan):
                event(self.log, "triple-discarded", round=gone.round_id, triple_id=gone.triple_id, state=gone.state,
                      reason=f"not named by the request of round {request.round_id}")
            for tid in [t for t in self._ahead if t not in self.pool.entries]:
                del self._ahead[tid]            # an A0 made ahead for a triple no longer pooled
            if run.uses_triple:
                held = self.pool.entries[request.triple_id]  # type: ignore[index]
                run.triple = {"triple_id": held.triple_id,
                              "prefetched": held.triple_id not in {e.triple_id for e in pool_plan.add},
                              "ready_at_open": held.state == READY}
            if self.index == 1:
                # this round's own triple now; the next rounds' once this one is over, so that on a shared
                # machine the dealer's work falls between rounds instead of slowing this one
                self._to_request.extend(e.triple_id for e in pool_plan.add if e.round_id == request.round_id)
                run.deferred = [e.triple_id for e in pool_plan.add if e.round_id != request.round_id]
            # S0's input shares are the triple's A0; an unchecked mean has no triple, so S0 draws their master
            self.node.start_round(run.plan, prg.fresh_seed() if self.index == 0 and not run.uses_triple else None)
            self._store_last_round(request.round_id)
            self.last_round = request.round_id
            self.round = run
            self._cv.notify_all()
        event(self.log, "round-open", round=request.round_id, rule=request.rule, f=request.f, reveal=request.reveal,
              n=len(request.worker_ids),
              d=request.d, triple_id=request.triple_id, prefetch=[t for _, t in request.prefetch],
              prefetched=run.triple.get("prefetched"), ready_at_open=run.triple.get("ready_at_open"))
        if self.index == 1 and self._to_request:
            self._start_requester()
        threading.Thread(target=self._run, args=(run,), name=f"{self.party}-round-{request.round_id}",
                         daemon=True).start()
        return {"round_id": request.round_id, "opened": True}

    def max_control_bytes(self, command: str) -> int:
        """An open-round request carries the worker list and cclip's public center (d numbers): up to
        gRPC's message limit; every other command a few small fields."""
        return MAX_GRPC_MESSAGE if command == "open-round" else CONTROL_LIMIT

    def account_as(self, msg: Message, env: pb.Envelope) -> Any:
        """A dealer delivery is booked under its triple, the rest under the round id."""
        if msg.sender == DEALER_ID:
            return triple_key(str(msg.fields.get("triple_id")))
        return env.round_id

    def _traffic(self, rnd: RoundRun) -> dict[str, Any]:
        """This round's traffic: its own messages plus the offline traffic of the triple it used."""
        if rnd.triple_in:
            return self.accounting.totals(rnd.round_id, triple_key(rnd.triple["triple_id"]))
        return self.accounting.totals(rnd.round_id)

    def _report(self, round_id: int, wait_s: float) -> dict[str, Any]:
        """The round's public outcome at this server once it is over (or after ``wait_s``): status, phase,
        reason of an abort, participants, weights, ``rejected`` ({worker id as a string: reason}, the
        workers the input validity check or S1's view check excluded), ``declined`` (the same for workers that
        said why they sent nothing), ``dropped`` (S1: the same for workers whose upload took a slot and brought
        no share), seconds per phase, the aggregate's digest, traffic and the triple used;
        S1 adds the view it opened. ``reveal`` says what the round made public: with "aggregate" the weights
        are None (nobody learnt them), and only with "distances" is there a view."""
        deadline = time.monotonic() + wait_s
        with self._cv:
            rnd = self.round if self.round is not None and self.round.round_id == round_id else self.history.get(round_id)
            if rnd is None:
                raise Rejected("wrong-round", f"{self.party} knows no round {round_id}")
            while not rnd.finished and not self.closing and time.monotonic() < deadline:
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            out: dict[str, Any] = {
                "party": self.party, "round_id": rnd.round_id, "status": rnd.status, "phase": rnd.phase,
                "reveal": rnd.mode,
                "reason": rnd.reason, "error": rnd.error, "participants": list(rnd.participants),
                "weights": None if rnd.weights is None else rnd.weights.tolist(), "center_weight": rnd.center_weight,
                "rejected": {str(w): reason for w, reason in sorted(rnd.rejected.items())},
                "declined": {str(w): reason for w, reason in sorted(rnd.declined.items())},
                "dropped": {str(w): reason for w, reason in sorted(rnd.dropped.items())},
                "seconds": dict(rnd.seconds), "aggregate_sha256": rnd.aggregate_digest,
                "traffic": self._traffic(rnd), "triple": dict(rnd.triple),
                "key_traffic": self.accounting.totals(key_traffic_key(rnd.round_id)),
            }
            if self.index == 1 and rnd.mode == secure.DEFAULT_MODE:
                out["view"] = {k: v.tolist() for k, v in rnd.view.items()}
            return out

    def _wait(self, rnd: RoundRun, kind: str, timeout: float | None = None,
              gone: Callable[[], bool] | None = None) -> Message:
        """The peer's next ``kind`` message; PeerTimeout after the peer timeout, RoundAborted at once if
        ``gone()`` says none will come."""
        limit = self.cfg.peer_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cv:
            while not rnd.inbox[kind]:
                self._check_alive(rnd)
                if gone is not None and gone():
                    raise RoundAborted(f"{self.peer_name} moved on without sending the next {kind}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeout(f"{self.peer_name} sent no {kind} within {limit:g} s")
                self._cv.wait(min(left, 1.0))
            return rnd.inbox[kind].popleft()

    def _check_alive(self, rnd: RoundRun) -> None:
        if rnd.error.get("type") == "PeerAborted":
            raise PeerAborted(rnd.reason)

    def _wait_triple(self, rnd: RoundRun) -> None:
        """Take this round's triple out of the pool, waiting for the dealer's delivery if need be."""
        timer = self._enter(rnd, "offline")
        tid = rnd.request.triple_id
        deadline = time.monotonic() + self.cfg.peer_timeout_s
        try:
            with self._cv:
                while True:
                    self._check_alive(rnd)
                    entry = self.pool.entries.get(tid)  # type: ignore[arg-type]
                    if entry is None:
                        raise RoundAborted(f"the triple {tid} of round {rnd.round_id} is no longer in the pool")
                    if entry.state == FAILED:
                        self.pool.take(entry.triple_id)
                        err = entry.error
                        if isinstance(err, PartyUnreachable):
                            raise err
                        raise RoundAborted(f"the dealer's triple for round {rnd.round_id} did not arrive: {err}")
                    if entry.state == READY:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PeerTimeout(f"the triple for round {rnd.round_id} did not arrive within "
                                          f"{self.cfg.peer_timeout_s:g} s")
                    self._cv.wait(min(left, 1.0))
                self.pool.take(entry.triple_id)
                assert entry.part is not None
                self.node.install_triple(entry.part)
                rnd.triple_in = True
                rnd.triple["waited_s"] = round(timer.seconds, 6)
        finally:
            rnd.seconds["offline"] += timer.seconds
        event(self.log, "triple-used", round=rnd.round_id, triple_id=tid, waited_s=round(timer.seconds, 6),
              prefetched=rnd.triple.get("prefetched"))

    def _start_requester(self) -> None:
        with self._cv:
            if self._requester is None or not self._requester.is_alive():
                self._requester = threading.Thread(target=self._request_loop, name=f"{self.party}-offline",
                                                   daemon=True)
                self._requester.start()
            self._cv.notify_all()

    def _request_loop(self) -> None:
        """S1: ask the dealer for each pending pooled triple, one request at a time, in the order named."""
        while True:
            with self._cv:
                entry: PoolEntry | None = None
                while entry is None:
                    while not self._to_request and not self.closing:
                        self._cv.wait(1.0)
                    if self.closing:
                        return
                    candidate = self.pool.entries.get(self._to_request.popleft())
                    if candidate is not None and candidate.state == PENDING and not candidate.requested:
                        entry = candidate
                entry.requested = True
            self._request_triple(entry)

    def _request_triple(self, entry: PoolEntry) -> None:
        spec = entry.spec
        timer = Timer()
        event(self.log, "triple-requested", round=entry.round_id, triple_id=entry.triple_id, n=spec.n, d=spec.d,
              kind=spec.kind)
        try:
            self.dealer.send(request_triple(entry.round_id, spec), timeout=60.0 + spec.n * spec.n * spec.d / 2e8,
                             account_as=triple_key(entry.triple_id))
        except Exception as exc:
            with self._cv:
                self.pool.fail(entry.triple_id, exc)
                self._cv.notify_all()
            event(self.log, "offline-failed", level=logging.WARNING, round=entry.round_id, triple_id=entry.triple_id,
                  error=str(exc), seconds=round(timer.seconds, 6))

    def _send(self, rnd: RoundRun, msg: Message) -> None:
        with self._cv:
            self._check_alive(rnd)
        send_over(self.peer_bulk if msg.kind in OPEN_KINDS else None, self.peer, msg)

    def _enter(self, rnd: RoundRun, phase: str) -> Timer:
        with self._cv:
            rnd.phase = phase
            self._cv.notify_all()
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
                self._wait_triple(rnd)          # S0 hands out no key before it (its shares are the triple's A0)
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
                  rejected=len(rnd.rejected), seconds=round(total.seconds, 6), bytes=self._traffic(rnd)["sent"])
        except Exception as exc:
            self._abort(rnd, exc)
        finally:
            with self._cv:
                rnd.streamed.release()
                if self.node.state is not None and self.node.state.plan is rnd.plan:
                    self.node.state = None      # the round's shares are not needed any more
                self._archive(rnd)
                self._to_request.extend(rnd.deferred)
                self._cv.notify_all()
            if rnd.deferred:
                self._start_requester()
            self._expand_ahead()

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
        with self._cv:
            rnd.confirmed = True
            self._cv.notify_all()

    def _use_peer_bulk(self, port: Any) -> None:
        """S1: send the rows of E over S0's bulk lane when S0 offers one."""
        self.peer_bulk = lane_beside(self.peer_bulk, self.peer, port)

    def _confirm_request(self, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        """S0's side of ``_confirm_with_s0``: wait (up to the peer timeout) for its own round ``round_id``
        to be open, compare digests, and answer with its own."""
        theirs = args.get("sha256")
        if not isinstance(theirs, str) or len(theirs) != 64:
            raise Rejected("bad-request", "confirm-request carries the request's SHA-256 as 64 hex digits")
        deadline = time.monotonic() + self.cfg.peer_timeout_s
        with self._cv:
            while (self.round is None or self.round.round_id < round_id) and not self.closing \
                    and time.monotonic() < deadline:
                self._cv.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            rnd = self.round
            if rnd is None or rnd.round_id != round_id or rnd.finished:
                raise Rejected("wrong-round", f"round {round_id} is not open at {self.party}")
            if theirs != rnd.digest:
                rnd.error = {"type": "PeerAborted", "party": self.peer_name}
                rnd.reason = (f"the servers hold different requests for round {round_id} "
                              f"(S0 {rnd.digest[:12]}, S1 {theirs[:12]})")
                rnd.intake_open = False
            else:
                rnd.confirmed = True
            self._cv.notify_all()
            return {"sha256": rnd.digest, "bulk": self.bulk_port}

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
            with self._cv:
                while True:
                    self._check_alive(rnd)
                    now = time.monotonic()
                    if rnd.intake_open and now >= rnd.share_deadline:
                        rnd.intake_open = False
                        self._cv.notify_all()
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
                    self._cv.wait(max(0.01, min((seed_due if closed else rnd.share_deadline) - now, 1.0)))
                start, workers = st.opened, list(st.order[st.opened:])
                triple = self.node.current.triple if rnd.uses_triple else None
            if not (new_rows or gram or agree or seed or project):
                break
            if agree:
                self._s1_agree(rnd, share_s)
                agreed, seed_due = True, time.monotonic() + self.cfg.peer_timeout_s
            if seed:
                with self._phase(rnd, "validity"):
                    with self._cv:
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
                    with self._cv:
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
            with self._cv:
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
    def _gram_due(st: _Streamed, closed: bool) -> bool:
        """S1: a block of opened rows is ready for the Gram share (any size once no more shares come)."""
        if st.row_gram is None:
            return False
        waiting = st.opened - st.row_gram.done
        return waiting >= streaming.MIN_BLOCK or (closed and waiting > 0)

    def _sender(self) -> ThreadPoolExecutor:
        with self._cv:
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
                st.a0 = self._take_a0(rnd.request.triple_id)
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
            with self._cv:
                idle_until = time.monotonic() + ROW_IDLE_S
                while True:
                    self._check_alive(rnd)
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
                    self._cv.wait(max(0.01, min(until - now, 1.0)))
                    if len(rnd.inbox[kind]) > pending:
                        idle_until = time.monotonic() + ROW_IDLE_S
                taken = [rnd.inbox[kind].popleft() for _ in range(min(pending, streaming.BLOCK_ROWS))] if rows else []
                if taken:
                    self._cv.notify_all()       # room for more rows (``reserve``)
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
                    with self._cv:
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
            with self._cv:
                msg = rnd.inbox[M.PARTICIPANTS].popleft()
                rnd.intake_open = False
                self._cv.notify_all()
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
        with self._phase(rnd, "open" if rnd.reveal else "validity"), self._cv:
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
            with self._cv:
                msg = self.node.validity_start()
            while msg is not None:
                self._send(rnd, msg)
                peer_msg = self._wait(rnd, M.VALIDITY_OPEN)
                with self._cv:
                    msg = self.node.validity_step(peer_msg)
            self._record_rejected(rnd)
            with self._cv:
                self.node.check_enough(rnd.spec, rnd.request.f)
                rnd.participants = self.node.current.participants or ()

    def _record_rejected(self, rnd: RoundRun) -> None:
        """Take the node's rejected workers into the round's report, one ``worker-rejected`` event each."""
        with self._cv:
            new = {w: reason for w, reason in self.node.rejected.items() if w not in rnd.rejected}
            rnd.rejected.update(new)
        for w, reason in sorted(new.items()):
            event(self.log, "worker-rejected", level=logging.WARNING, round=rnd.round_id, phase=rnd.phase, worker=w,
                  reason=reason)

    def _open_view(self, rnd: RoundRun) -> None:
        """S0 sends its share of the distances/norms; S1 opens them (an empty view when the rule opens none)."""
        if not rnd.reveal:
            if self.index == 1:
                with self._cv:
                    self.node.open_view(None)
            return
        with self._phase(rnd, "distances"):
            if self.index == 0:
                with self._cv:
                    view_share = self.node.view_share_message()
                self._send(rnd, view_share)
            else:
                view_msg = self._wait(rnd, M.VIEW_SHARE)
                with self._cv:
                    self.node.open_view(view_msg)

    def _rule(self, rnd: RoundRun) -> None:
        """S1 applies the rule and sends the public weights (and the workers it rejected) to S0."""
        with self._phase(rnd, "rule"):
            if self.index == 1:
                with self._cv:
                    weights_msg = self.node.choose(rnd.spec, rnd.request.f, dict(rnd.request.options))
                self._send(rnd, weights_msg)
            else:
                weights_msg = self._wait(rnd, M.WEIGHTS)
                with self._cv:
                    self.node.receive_weights(weights_msg)
        self._record_rejected(rnd)

    def _rule_on_shares(self, rnd: RoundRun) -> None:
        """reveal="weights" or "aggregate": the rule's circuit on the shared view, one ``rule-open`` message
        each way per round (as the check's comparisons), until both servers hold the public weights
        ("weights") or their shares of them ("aggregate"). No view share and no weights message: S1 opens
        nothing. The number of rounds depends on the participants left, so the peer's count is fixed when
        this server's own circuit ends (``_PeerSequence.rule_finished``); a peer that ends its circuit
        earlier (its next message arrives instead of an opening) aborts the round at once."""
        req = rnd.request
        with self._phase(rnd, "rule"):
            with self._cv:
                msg = self.node.rule_start(rnd.on_shares, req.f, dict(req.options))
            steps = 0
            while msg is not None:
                self._send(rnd, msg)
                steps += 1
                peer_msg = self._wait(rnd, M.RULE_OPEN, gone=lambda: rnd.peer_seq.rule_over)
                with self._cv:
                    msg = self.node.rule_step(peer_msg)
            with self._cv:
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
            with self._cv:
                share = self.node.aggregate_share(noise)
                share_msg = self.node.aggregate_message(share)
            self._send(rnd, share_msg)
            peer_share = self._wait(rnd, M.AGGREGATE_SHARE)
            with self._cv:
                out = self.node.reveal(share, peer_share)
        return share, out

    def _finish(self, rnd: RoundRun, share: np.ndarray, out: np.ndarray) -> None:
        st = self.node.current
        with self._cv:
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
            self._cv.notify_all()

    def _abort(self, rnd: RoundRun, exc: BaseException) -> None:
        with self._cv:
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
            self._cv.notify_all()
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

    def _archive(self, rnd: RoundRun) -> None:
        self.history[rnd.round_id] = rnd
        while len(self.history) > KEEP_ROUNDS:
            self.history.popitem(last=False)
        for old in list(self.history.values())[:-KEEP_SHARES]:
            old.own_share = None

