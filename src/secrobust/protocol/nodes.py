"""Server and dealer objects that keep state across rounds and delegate every step to ``protocol``.

They hold no sockets: a runner (in-process, or a network service) moves their messages.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import MalformedMessage, UnexpectedMessage
from ..gates.compare import Party
from ..gates.dealer import TripleLedger, TripleSeeds, TripleShare0, TripleShare1
from ..rules.possible import choose_possible, effective_f, require_passed
from ..rules.spec import RuleSpec
from ..rules.spec import SecureRule
from . import offline, server, streaming
from .messages import RULE_OPEN, VALIDITY_OPEN, Message


class DealerNode:
    """Answers triple requests; refuses a triple id it issued before."""

    def __init__(self) -> None:
        self.ledger = TripleLedger()

    def handle(self, request: Message, seeds: TripleSeeds) -> tuple[Message, Message]:
        return offline.answer_request(request, seeds, self.ledger)


class ServerNode:
    """One of the two servers. ``state`` is the current round's; the ledger spans rounds. Steps 2-3 run by
    rows as the deployment runs them (``protocol.streaming``): ``take_share``/``open_rows``/``add_gram``
    at S1, ``take_rows`` at S0, then ``project`` (with the check) and ``finish_opening``."""

    def __init__(self, party: int) -> None:
        self.party = party
        self.name = server.SERVER_NAMES[party]
        self.ledger = TripleLedger()
        self.state: server.ServerState | None = None
        self._circuit: Party | None = None
        self._circuit_kind = ""
        self._step = 0
        self._s1_rows: streaming.S1Rows | None = None
        self._s0_rows: streaming.S0Rows | None = None
        self._proj: np.ndarray | None = None
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """A uint64 matrix kept across rounds while its shape stays, so a round does not fault in fresh pages
        for it (docs/performance.md). Every word a round reads, it wrote first."""
        buf = self._buffers.pop(name, None)
        if buf is None or buf.shape != shape:
            del buf
            buf = np.empty(shape, dtype=np.uint64)
        self._buffers[name] = buf
        return buf

    def release_buffers(self) -> dict[str, np.ndarray]:
        """The matrices this node kept across rounds, which it keeps no longer (for ``adopt_buffers`` of a node
        of another run in this process; this node's last round state may still view them)."""
        out, self._buffers = self._buffers, {}
        return out

    def adopt_buffers(self, buffers: dict[str, np.ndarray]) -> None:
        """Keep ``buffers`` (another node's ``release_buffers``) as if this node had made them: reused by a round
        of the same shapes, which writes every word it reads."""
        self._buffers.update(buffers)

    def _plan_matrix(self, name: str, plan: server.RoundPlan) -> np.ndarray:
        return self._buffer(name, (len(plan.worker_ids), plan.d))

    def share_matrix(self, n: int, d: int) -> np.ndarray:
        """S1: the kept n x d matrix that ``take_share`` takes a round of n planned workers' shares into (row k:
        the k-th share in). A runner in one process may build worker i's share in place in row i and send the
        shares in worker order (``api.Cluster``): a share already in its slot is not copied, and a later one
        goes to a row whose worker was taken or sent nothing, so no matrix of n x d encodings is made besides."""
        return self._buffer("s1-rows", (n, d))

    def start_round(self, plan: server.RoundPlan, share_master: bytes | None = None) -> None:
        """``share_master``: S0's seed for the workers' share keys when the round has no triple."""
        self.state = server.new_round(self.party, plan, share_master)
        self._circuit, self._step = None, 0
        self._s1_rows, self._s0_rows, self._proj = None, None, None

    @property
    def current(self) -> server.ServerState:
        if self.state is None:
            raise UnexpectedMessage(f"{self.name}: no round in progress")
        return self.state

    def share_key_message(self, worker: int) -> Message:
        """S0: the key of its share of ``worker``'s update, for that worker."""
        return server.share_key_message(self.current, worker)

    def receive_share(self, msg: Message) -> None:
        """S1 records one worker's masked share as it is (a runner that keeps the rows itself: the deployment)."""
        self.state = server.receive_share(self.current, msg)

    def take_share(self, msg: Message) -> None:
        """S1 takes one worker's masked share as the next row of its arrival-order matrix, from which
        ``open_rows`` opens it."""
        state = server.receive_share(self.current, msg)
        worker = msg.fields["worker"]
        if self._s1_rows is None:
            self._s1_rows = streaming.S1Rows(state.plan, self._plan_matrix("s1-rows", state.plan))
        row = self._s1_rows.take(worker, msg.arrays["x1"])
        self.state = replace(state, inputs={**state.inputs, worker: row})

    def receive_triple(self, msg: Message) -> None:
        self.state = server.receive_triple(self.current, msg, self.ledger)

    def install_triple(self, triple: TripleShare0 | TripleShare1) -> None:
        """A part delivered ahead of the round (already claimed in ``ledger`` on delivery)."""
        self.state = server.install_triple(self.current, triple)

    def participants_message(self) -> Message:
        return server.participants_message(self.current)

    def agree(self, s1_msg: Message | None, min_n: int, requirement: str) -> tuple[int, ...]:
        """S1 passes None (its own shares decide); S0 passes S1's participants message (and checks that S1
        opened no row of anyone else)."""
        self.state = server.agree_participants(self.current, s1_msg, min_n, requirement)
        if self._s0_rows is not None:
            self._s0_rows.check_listed(self.current.participants or ())
        return self.current.participants or ()

    def open_rows(self) -> list[Message]:
        """S1: the rows of E, for S0, of the shares taken since the last call (arrival order)."""
        st = self.current
        if st.plan.triple_kind is None:
            return []
        if not isinstance(st.triple, TripleShare1):
            raise UnexpectedMessage(f"S1: no triple for round {st.plan.round_id}")
        return self._rows1().open(st.triple)

    def add_gram(self, closed: bool = False, min_rows: int = streaming.MIN_BLOCK) -> None:
        """S1: the opened rows into the Gram share, by blocks of ``min_rows`` or more as they become due (all
        once ``closed``)."""
        rows = self._rows1()
        while rows.gram_due(closed, min_rows):
            rows.add_block()

    def take_rows(self, msgs: list[Message]) -> None:
        """S0: S1's rows of E, into the columns of its Gram share."""
        st = self.current
        for msg in msgs:
            server._expect(st, msg, st.plan.open_kind, "S1")
        self._rows0().take(msgs)

    def _rows1(self) -> streaming.S1Rows:
        if self.party != 1:
            raise UnexpectedMessage("only S1 opens a masked share; S0's input share is the dealer's mask")
        if self._s1_rows is None:
            self._s1_rows = streaming.S1Rows(self.current.plan, self._plan_matrix("s1-rows", self.current.plan))
        return self._s1_rows

    def _rows0(self) -> streaming.S0Rows:
        st = self.current
        if self.party != 0:
            raise UnexpectedMessage("only S0 receives the masked opening")
        if self._s0_rows is None:
            if not isinstance(st.triple, TripleShare0):
                raise UnexpectedMessage(f"S0: no triple for round {st.plan.round_id}")
            self._s0_rows = streaming.S0Rows(st.plan, st.triple, self._plan_matrix("a0", st.plan))
            if st.agreed is not None:
                self._s0_rows.check_listed(st.agreed)
        return self._s0_rows

    def validity_seed_message(self, seed: bytes) -> Message:
        self.state, msg = server.validity_seed_message(self.current, seed)
        return msg

    def receive_validity_seed(self, msg: Message) -> None:
        self.state = server.receive_validity_seed(self.current, msg)

    def project(self) -> None:
        """The check's projections of this server's input shares (S1: its rows; S0: A0's) under the joint seed."""
        st = self.current
        if st.validity_seed is None:
            raise UnexpectedMessage(f"{self.name}: nothing to project before the joint validity seed")
        if self.party == 1:
            x, rows = self._rows1().rows, self._rows1().slots(st._participants())
        else:
            x, rows = self._rows0().a0, st.positions()
        self._proj = streaming.Projector(x, rows, st.validity_seed, st.plan.center, st.plan.chunk_bytes).run()

    def finish_opening(self) -> None:
        """Steps 2-3 done: this server's Gram share of the participants (and its projections) in its state."""
        st = self.current
        if st.plan.validity and self._proj is None:
            raise UnexpectedMessage(f"{self.name}: the projections are not done")
        if self.party == 1:
            h, u_dot_e = self._rows1().share(st._participants()), None
        else:
            rows = self._rows0()
            h, u_dot_e = rows.share(st.positions()), rows.u_dot_e
        self.state = streaming.complete(st, h, self._proj, u_dot_e)
        self._proj = None

    def validity_start(self) -> Message:
        """The first round of this server's comparisons."""
        return self._start(VALIDITY_OPEN, server.validity_party(self.current))

    def validity_step(self, peer_msg: Message) -> Message | None:
        """Feed the peer's opening of the current round; the next message, or None once the flags are applied."""
        return self._feed(VALIDITY_OPEN, peer_msg, server.accept_workers)

    def rule_start(self, rule: SecureRule, f: int, options: dict) -> Message:
        """The first round of the rule on shares (reveal="weights" or "aggregate")."""
        st = self.current
        return self._start(RULE_OPEN, server.rule_party(st, rule, effective_f(f, st.rejected), options))

    def rule_step(self, peer_msg: Message) -> Message | None:
        """Feed the peer's opening; the next message, or None once the weights (or their shares) are in."""
        return self._feed(RULE_OPEN, peer_msg, server.apply_rule_output)

    def _start(self, kind: str, circuit: Party) -> Message:
        self._circuit, self._circuit_kind, self._step = circuit, kind, 0
        return self._circuit_message(next(circuit))

    def _feed(self, kind: str, peer_msg: Message, finish) -> Message | None:
        st = self.current
        if self._circuit is None or self._circuit_kind != kind:
            raise UnexpectedMessage(f"{self.name}: no {kind} circuit in progress")
        server._expect(st, peer_msg, kind, st.peer)
        if peer_msg.fields.get("step") != self._step:
            raise UnexpectedMessage(f"{self.name}: {kind.split('-')[0]} opening {peer_msg.fields.get('step')!r}, "
                                    f"expected {self._step}")
        arr = peer_msg.arrays.get("x")
        if arr is None:
            raise MalformedMessage(f"{self.name}: {kind} opening without its array")
        try:
            out = self._circuit.send(arr)
        except StopIteration as stop:
            self._circuit = None
            self.state = finish(st, stop.value)
            return None
        except ValueError as exc:
            raise MalformedMessage(f"{self.name}: {exc}") from None
        self._step += 1
        return self._circuit_message(out)

    def _circuit_message(self, arr) -> Message:
        st = self.current
        return Message(self._circuit_kind, st.plan.round_id, self.name, st.peer, fields={"step": self._step},
                       arrays={"x": arr})

    @property
    def rejected(self) -> dict[int, str]:
        return dict(self.current.rejected)

    def check_enough(self, spec: RuleSpec, f: int) -> None:
        """Abort the round if too few workers passed the input validity check for the rule."""
        st = self.current
        require_passed(spec, len(st.participants or ()), f, st.rejected, f"round {st.plan.round_id}: ")

    def view_share_message(self) -> Message:
        return server.view_share_message(self.current)

    def open_view(self, msg: Message | None) -> None:
        self.state = server.empty_view(self.current) if msg is None else server.open_view(self.current, msg)

    def choose(self, spec: RuleSpec, f: int, options: dict) -> Message:
        """S1 only: apply the rule to the opened view and emit the public weights."""
        st = self.current
        if st.view is None:
            raise UnexpectedMessage(f"{self.name}: nothing opened yet")
        workers = st.participants or ()
        choice, dropped = choose_possible(spec, st.view, len(workers), effective_f(f, st.rejected), st.plan.frac_bits,
                                          options, f"round {st.plan.round_id}: ")
        self.state, msg = server.weights_message(st, choice, tuple(workers[i] for i in dropped))
        return msg

    def receive_weights(self, msg: Message) -> None:
        self.state = server.receive_weights(self.current, msg)

    def aggregate_share(self, noise: np.ndarray | None = None) -> np.ndarray:
        return server.aggregate_share(self.current, noise)

    def aggregate_message(self, share: np.ndarray) -> Message:
        return server.aggregate_message(self.current, share)

    def reveal(self, own_share: np.ndarray, peer_msg: Message) -> np.ndarray:
        return server.reveal_aggregate(self.current, own_share, peer_msg)
