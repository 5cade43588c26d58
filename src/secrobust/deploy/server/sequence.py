"""What the other server may send this one: the order of its messages in a round (``PeerSequence``) and
the largest payload of each kind (``message_bound``, ``delivery_bound``)."""

from __future__ import annotations

import numpy as np

from ...circuits import validity
from ...errors import RoundAborted
from ...gates.arith import Budget
from ...gates.dealer import TripleSpec
from ...protocol import messages as M
from ...protocol.messages import Message
from ...protocol.server import RoundPlan
from ...rules import sizing
from ...transport.grpc.errors import Rejected
from ..rounds import RoundRequest

HEADER_SLACK = 64 << 10
SMALL_MESSAGE = 4 << 10
OPEN_KINDS = (M.MASKED_OPEN, M.VALIDITY_MASKED_OPEN)
RULE_SLACK_STEPS = 8
"""Rule openings a peer may send beyond the circuit's round count for all the expected workers (the
last exchange of the weights, or of their masked shares, comes on top; fewer workers take no more)."""


def triple_bytes(kind: str, spec: TripleSpec) -> int:
    """Payload bound of a dealer delivery: S0's part is seeds only; S1's also holds C1 (n x n at most),
    the check's bit-triple words, the rule circuit's correction words and the weighted-sum correction
    (8d bytes, reveal="aggregate")."""
    if kind == M.TRIPLE_S0:
        return 16 * spec.n
    return (16 * spec.n * spec.n + 8 * spec.and_words + spec.rule.bytes_to_s1()
            + (8 * spec.d if spec.vector else 0))


def delivery_bound(kind: str, specs: list[TripleSpec]) -> int:
    """The largest dealer delivery of ``kind`` for any of the triples ``specs`` still pending."""
    return HEADER_SLACK + max((triple_bytes(kind, s) for s in specs), default=0)


def rule_step_cap(request: RoundRequest, plan: RoundPlan) -> int:
    """The most ``rule-open`` messages a peer may send before this server's own circuit has ended and so
    fixed the exact count (``PeerSequence.rule_finished``)."""
    if not plan.on_shares:
        return 0
    return sizing.rounds(request.rule, len(plan.worker_ids), request.f, dict(request.options),
                         plan.view_range, plan.d, plan.frac_bits) + RULE_SLACK_STEPS


def rule_open_bytes(plan: RoundPlan) -> int:
    """Payload bound of one ``rule-open`` message. Every opening of the rule's gates consumes dealer
    material (a bit triple word opens 2 words, a daBit plane word 1, a product triple 2 ring values), and the
    circuit for fewer workers takes no more than the plan's budget, so one step opens at most
    8 (2 AND words + daBit words + 2 products) bytes; the last step opens the n + 1 weights or the n masked
    weight shares."""
    b: Budget = plan.rule_budget
    return 8 * (2 * b.and_words + b.dabit_words + 2 * b.mults) + 8 * (len(plan.worker_ids) + 1)


def message_bound(phase: str, receiver: int, request: RoundRequest | None, plan: RoundPlan | None) -> int:
    """The largest message of kind ``phase`` server ``receiver`` takes while the round of ``request`` (None:
    no round) is its current one (dealer deliveries: ``delivery_bound``)."""
    n = len(request.worker_ids) if request else 0
    d = request.d if request else 0
    if phase == M.VALIDITY_SEED:
        return SMALL_MESSAGE
    if phase == M.VALIDITY_OPEN:
        return HEADER_SLACK + (16 * validity.and_words(n) if plan and plan.validity else 0)
    if phase == M.RULE_OPEN:
        return HEADER_SLACK + (rule_open_bytes(plan) if plan and plan.on_shares else 0)
    if phase == M.PARTICIPANTS:
        return HEADER_SLACK + 16 * n if receiver == 0 else SMALL_MESSAGE
    if phase == M.SHARE_MASKED:
        return HEADER_SLACK + 8 * d if receiver == 1 else SMALL_MESSAGE
    if phase == M.AGGREGATE_SHARE:
        return HEADER_SLACK + 8 * d
    if phase == M.VIEW_SHARE:
        return HEADER_SLACK + 16 * n * n if receiver == 1 else SMALL_MESSAGE
    if phase == M.WEIGHTS:
        return HEADER_SLACK + 8 * n if receiver == 0 else SMALL_MESSAGE
    if phase in OPEN_KINDS:
        return HEADER_SLACK + 8 * d if receiver == 0 else SMALL_MESSAGE   # one row of E, S1 -> S0
    return SMALL_MESSAGE


class PeerSequence:
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
