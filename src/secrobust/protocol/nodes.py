"""Server and dealer objects that keep state across rounds and delegate every step to ``protocol``.

They hold no sockets: a runner (in-process, or a network service) moves their messages.
"""

from __future__ import annotations

import numpy as np

from ..errors import MalformedMessage, UnexpectedMessage
from ..gates.compare import Party
from ..gates.dealer import TripleLedger, TripleSeeds, TripleShare0, TripleShare1
from ..rules.possible import choose_possible, effective_f, require_passed
from ..rules.registry import RuleSpec
from ..rules.secure import SecureRule
from . import offline, server
from .messages import RULE_OPEN, VALIDITY_OPEN, Message


class DealerNode:
    """Answers triple requests; refuses a triple id it issued before."""

    def __init__(self) -> None:
        self.ledger = TripleLedger()

    def handle(self, request: Message, seeds: TripleSeeds) -> tuple[Message, Message]:
        return offline.answer_request(request, seeds, self.ledger)


class ServerNode:
    """One of the two servers. ``state`` is the current round's; the ledger spans rounds."""

    def __init__(self, party: int) -> None:
        self.party = party
        self.name = server.SERVER_NAMES[party]
        self.ledger = TripleLedger()
        self.state: server.ServerState | None = None
        self._circuit: Party | None = None
        self._circuit_kind = ""
        self._step = 0

    def start_round(self, plan: server.RoundPlan, share_master: bytes | None = None) -> None:
        """``share_master``: S0's seed for the workers' share keys when the round has no triple."""
        self.state = server.new_round(self.party, plan, share_master)
        self._circuit, self._step = None, 0

    @property
    def current(self) -> server.ServerState:
        if self.state is None:
            raise UnexpectedMessage(f"{self.name}: no round in progress")
        return self.state

    def share_key_message(self, worker: int) -> Message:
        """S0: the key of its share of ``worker``'s update, for that worker."""
        return server.share_key_message(self.current, worker)

    def receive_share(self, msg: Message) -> None:
        self.state = server.receive_share(self.current, msg)

    def receive_triple(self, msg: Message) -> None:
        self.state = server.receive_triple(self.current, msg, self.ledger)

    def install_triple(self, triple: TripleShare0 | TripleShare1) -> None:
        """A part delivered ahead of the round (already claimed in ``ledger`` on delivery)."""
        self.state = server.install_triple(self.current, triple)

    def participants_message(self) -> Message:
        return server.participants_message(self.current)

    def agree(self, s1_msg: Message | None, min_n: int, requirement: str) -> tuple[int, ...]:
        """S1 passes None (its own shares decide); S0 passes S1's participants message."""
        self.state = server.agree_participants(self.current, s1_msg, min_n, requirement)
        return self.current.participants or ()

    def chunks(self) -> list[tuple[int, int]]:
        return server.column_chunks(self.current)

    def open_masked(self, start: int, stop: int) -> Message:
        """S1: the masked opening of these columns, for S0."""
        self.state, msg = server.open_masked(self.current, start, stop)
        return msg

    def accumulate(self, s1_msg: Message) -> None:
        """S0: take S1's masked opening of a column chunk."""
        self.state = server.accumulate(self.current, s1_msg)

    def validity_seed_message(self, seed: bytes) -> Message:
        self.state, msg = server.validity_seed_message(self.current, seed)
        return msg

    def receive_validity_seed(self, msg: Message) -> None:
        self.state = server.receive_validity_seed(self.current, msg)

    def project(self) -> None:
        """Projections of the column chunk just opened (S1) or received (S0)."""
        self.state = server.project_pending(self.current)

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
