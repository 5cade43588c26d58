"""Server and dealer objects that keep state across rounds and delegate every step to ``protocol``.

They hold no sockets: a runner (in-process, or a network service) moves their messages.
"""

from __future__ import annotations

import numpy as np

from ..dealer import TripleLedger, TripleSeeds, TripleShare0, TripleShare1
from ..errors import UnexpectedMessage
from ..protocol import offline, server
from ..protocol.messages import Message
from ..rules.registry import RuleSpec, apply


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

    def start_round(self, plan: server.RoundPlan) -> None:
        self.state = server.new_round(self.party, plan)

    @property
    def current(self) -> server.ServerState:
        if self.state is None:
            raise UnexpectedMessage(f"{self.name}: no round in progress")
        return self.state

    def receive_share(self, msg: Message) -> None:
        self.state = server.receive_share(self.current, msg)

    def receive_triple(self, msg: Message) -> None:
        self.state = server.receive_triple(self.current, msg, self.ledger)

    def install_triple(self, triple: TripleShare0 | TripleShare1) -> None:
        """A part delivered ahead of the round (already claimed in ``ledger`` on delivery)."""
        self.state = server.install_triple(self.current, triple)

    def participants_message(self) -> Message:
        return server.participants_message(self.current)

    def agree(self, peer_msg: Message, min_n: int, requirement: str) -> tuple[int, ...]:
        self.state = server.agree_participants(self.current, peer_msg, min_n, requirement)
        return self.current.participants or ()

    def chunks(self) -> list[tuple[int, int]]:
        return server.column_chunks(self.current)

    def open_masked(self, start: int, stop: int) -> Message:
        self.state, msg = server.open_masked(self.current, start, stop)
        return msg

    def accumulate(self, peer_msg: Message) -> None:
        self.state = server.accumulate(self.current, peer_msg)

    def view_share_message(self) -> Message:
        return server.view_share_message(self.current)

    def open_view(self, msg: Message | None) -> None:
        self.state = server.empty_view(self.current) if msg is None else server.open_view(self.current, msg)

    def choose(self, spec: RuleSpec, f: int, options: dict) -> Message:
        """S1 only: apply the rule to the opened view and emit the public weights."""
        st = self.current
        if st.view is None:
            raise UnexpectedMessage(f"{self.name}: nothing opened yet")
        choice = apply(spec, st.view, len(st.participants or ()), f, options)
        self.state, msg = server.weights_message(st, choice)
        return msg

    def receive_weights(self, msg: Message) -> None:
        self.state = server.receive_weights(self.current, msg)

    def aggregate_share(self, noise: np.ndarray | None = None) -> np.ndarray:
        return server.aggregate_share(self.current, noise)

    def aggregate_message(self, share: np.ndarray) -> Message:
        return server.aggregate_message(self.current, share)

    def reveal(self, own_share: np.ndarray, peer_msg: Message) -> np.ndarray:
        return server.reveal_aggregate(self.current, own_share, peer_msg)
