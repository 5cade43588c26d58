"""The dealer (crypto provider) as a network service, wrapping the protocol's DealerNode.

What crosses the wire: S1's TRIPLE_REQUEST (public sizes n, d, the triple kind and a fresh triple
id; no data), then the dealer's TRIPLE_S0 to S0 (two seeds) and TRIPLE_S1 to S1 (a seed and the
n x n correction C1); a triple for a round with the input validity check also carries its bit triples
(a seed each, and S1's correction words: 8 bytes per word, ``validity.and_words(n)`` words). With the
rule on shares (``reveal`` "weights" or "aggregate") the request also states the rule circuit's material
(AND words, daBit words, product triples: public sizes that depend on n, f and the rule) and, for
"aggregate", the weighted-sum correlation; S0 gets one more seed for each, S1 a seed and its correction
words (8 (AND words + 64 daBit words + products) bytes, and 8d for the correlation). The dealer
learns only (n, d), the size of the rule's circuit (so which rule family and mode the round runs) and
the id of the round the triple is for (a prefetched triple is requested during an earlier round). Each
request gets fresh
seeds from the operating system; a triple id the dealer has issued before is refused (``duplicate``).
The request call returns once both servers accepted their part, so S1 knows at once whether the
offline phase worked; if a server is unreachable the request is refused with ``round-aborted``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..gates.dealer import TripleSeeds
from ..pki.certs import Identity, operator_party
from ..protocol import messages as M
from ..protocol.messages import Message
from ..protocol.nodes import DealerNode
from ..transport.grpc import Accounting, PeerClient
from ..transport.grpc import secrobust_pb2 as pb
from ..transport.grpc.errors import Rejected
from ..transport.grpc.logs import LOGGER_NAME, Timer, event
from ..transport.handler import PartyHandler
from .config import PartyConfig
from .pool import triple_key

REQUEST_LIMIT = 64 << 10
OPERATORS = (operator_party(0), operator_party(1))


class DealerRuntime(PartyHandler):
    """The dealer's PartyHandler: answers S1's triple requests by pushing the two parts to S0 and S1."""

    party = "dealer"

    def __init__(self, cfg: PartyConfig, identity: Identity, *, accounting: Accounting | None = None) -> None:
        if cfg.party != "dealer":
            raise ValueError(f"the dealer's party id is 'dealer', not {cfg.party!r}")
        self.cfg = cfg
        self.node = DealerNode()
        self.accounting = accounting or Accounting()
        self.clients = {name: PeerClient(identity, name, cfg.peer(name), accounting=self.accounting,
                                         connect_timeout=cfg.connect_timeout_s) for name in ("S0", "S1")}
        self.log = logging.getLogger(LOGGER_NAME)
        self._lock = threading.Lock()
        self.shutdown_requested = threading.Event()
        self.issued = 0
        self.making: str | None = None

    def close(self) -> None:
        """Nothing waits at the dealer; present for symmetry with the servers."""

    def admitted(self, caller: str) -> bool:
        """The servers and their operators (each certified by its own organisation's CA)."""
        return caller in ("S0", "S1", *OPERATORS)

    def max_message_bytes(self, env: pb.Envelope) -> int:
        return REQUEST_LIMIT

    def precheck(self, env: pb.Envelope) -> None:
        if env.phase != M.TRIPLE_REQUEST or env.sender != "S1":
            raise Rejected("out-of-phase", f"the dealer takes only {M.TRIPLE_REQUEST} from S1, got {env.phase} "
                           f"from {env.sender}")

    def accept(self, msg: Message, env: pb.Envelope) -> None:
        timer = Timer()
        info = {k: msg.fields.get(k) for k in ("triple_id", "n", "d", "kind")}
        info.update({k: msg.fields[k] for k in ("rule", "vector") if k in msg.fields})
        with self._lock:
            self.making = info["triple_id"]
            event(self.log, "triple-making", round=msg.round_id, phase=M.TRIPLE_REQUEST, **info)
            try:
                to_s0, to_s1 = self.node.handle(msg, TripleSeeds.fresh())
            finally:
                self.making = None
        make_s = timer.seconds
        key = triple_key(str(info["triple_id"]))
        self.clients["S0"].send(to_s0, account_as=key)
        self.clients["S1"].send(to_s1, account_as=key)
        self.issued += 1
        event(self.log, "triple-issued", round=msg.round_id, phase=M.TRIPLE_REQUEST, **info,
              make_seconds=round(make_s, 6), seconds=round(timer.seconds, 6))

    def account_as(self, msg: Message, env: pb.Envelope) -> str:
        """A triple request is booked under its triple (see ``secrobust.deploy.pool.triple_key``)."""
        return triple_key(str(msg.fields.get("triple_id")))

    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> Message:
        raise Rejected("not-permitted", "the dealer holds nothing to fetch")

    def control(self, caller: str, command: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        if command == "status":
            return {"party": self.party, "issued": self.issued, "making": self.making}
        if command == "report":
            tid = args.get("triple_id")
            keys = [triple_key(str(tid))] if tid else []
            return {"party": self.party, "traffic": self.accounting.totals(round_id, *keys)}
        if command == "shutdown":      # a third party both organisations depend on: its own host stops it
            raise Rejected("not-permitted", f"{caller} cannot stop the dealer; its host stops it (SIGTERM)")
        raise Rejected("bad-request", f"{caller} cannot run {command!r} on the dealer")
