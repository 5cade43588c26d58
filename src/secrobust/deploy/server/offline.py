"""A server's offline material: the pool of the dealer's triples the round requests name
(``deploy.pool``), S1's requester asking the dealer for them in the background, and S0's A0 expanded
ahead of the round that uses it."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from ...errors import RoundAborted
from ...protocol import messages as M
from ...protocol import streaming
from ...protocol.messages import Message
from ...protocol.nodes import ServerNode
from ...protocol.offline import request_triple, triple_from_message
from ...transport.grpc import PeerClient
from ...transport.grpc import secrobust_pb2 as pb
from ...transport.grpc.errors import PartyUnreachable, Rejected
from ...transport.grpc.logs import LOGGER_NAME, Timer, event
from ..pool import FAILED, PENDING, READY, PoolEntry, TriplePool, triple_key
from ..rounds import RoundRequest
from .run import PeerTimeout, RoundRun, Rounds
from .sequence import delivery_bound
from .sync import Monitor


class OfflinePool:
    """This server's triples (``pool``) and their supply: S1 asks the dealer for each triple a request names,
    one at a time on its requester thread (this round's at once, later rounds' once the round is over);
    S0, idle between rounds, expands the next pooled triple's A0 (``expand_ahead``)."""

    def __init__(self, monitor: Monitor, rounds: Rounds, node: ServerNode, index: int, party: str,
                 dealer: PeerClient, peer_timeout_s: float) -> None:
        self.monitor = monitor
        self.rounds = rounds
        self.node = node
        self.index = index
        self.party = party
        self.dealer = dealer
        self.peer_timeout_s = peer_timeout_s
        self.log = logging.getLogger(LOGGER_NAME)
        self.pool = TriplePool()
        self._to_request: deque[str] = deque()
        self._requester: threading.Thread | None = None
        self._ahead: dict[str, tuple[threading.Event, dict[str, np.ndarray]]] = {}
        """S0: A0 expanded ahead of its round, by triple id (``expand_ahead``)."""

    def close(self) -> None:
        """Ask for nothing more (the lock is held; the requester thread ends at the next notify)."""
        self._to_request.clear()

    # dealer deliveries

    def delivery_bound(self, env: pb.Envelope) -> int:
        with self.monitor:
            specs = [e.spec for e in self.pool.pending_for(env.round_id)]
        return delivery_bound(env.phase, specs)

    def precheck(self, env: pb.Envelope) -> None:
        want = M.TRIPLE_S0 if self.index == 0 else M.TRIPLE_S1
        if env.phase != want:
            raise Rejected("out-of-phase", f"{self.party} takes only {want} from the dealer, got {env.phase}")
        if not self.pool.pending_for(env.round_id):
            raise Rejected("wrong-round", f"{self.party} expects no triple for round {env.round_id}")

    def accept(self, msg: Message) -> None:
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
        self.expand_ahead()

    # S0: A0 ahead of its round

    def expand_ahead(self) -> None:
        """S0 with no round running: expand the next pooled triple's A0 (S0's input shares, n x d words of
        AES-CTR) now, so the round that uses it does not spend that time. One at a time (8nd bytes); a
        round that finds it still running waits for it (``take_a0``), a discarded triple drops it."""
        if self.index != 0:
            return
        with self.monitor:
            if self._ahead or self.rounds.running() or self.monitor.closing:
                return
            ready = [e for e in self.pool.entries.values() if e.state == READY and e.part is not None
                     and e.round_id > self.rounds.last]
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

    def take_a0(self, triple_id: str | None) -> np.ndarray | None:
        """The A0 ``expand_ahead`` made for ``triple_id`` (waiting for it if it is being made), else None."""
        with self.monitor:
            ahead = self._ahead.pop(triple_id, None) if triple_id is not None else None
        if ahead is None:
            return None
        ahead[0].wait()
        return ahead[1].get("a0")

    # rounds

    def open_round(self, request: RoundRequest, run: RoundRun) -> None:
        """With the lock held, as ``run`` opens: keep the triples its request names (discarding the rest),
        note whether its own was prefetched, and (S1) queue this round's triple for the dealer at once and
        the later rounds' for when it is over."""
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

    def request_queued(self) -> None:
        """S1: start asking the dealer if anything is queued."""
        if self.index == 1 and self._to_request:
            self._start_requester()

    def round_over(self, rnd: RoundRun) -> None:
        """With the lock held, ``rnd`` over: queue the triples it prefetches for later rounds."""
        self._to_request.extend(rnd.deferred)

    def after_round(self, rnd: RoundRun) -> None:
        """Outside the lock, ``rnd`` over: ask for its prefetched triples, and expand the next A0 (S0)."""
        if rnd.deferred:
            self._start_requester()
        self.expand_ahead()

    def install(self, rnd: RoundRun, timer: Timer) -> None:
        """Take this round's triple out of the pool, waiting for the dealer's delivery if need be
        (``timer``: the round's offline phase, entered by the caller)."""
        tid = rnd.request.triple_id
        deadline = time.monotonic() + self.peer_timeout_s
        entry: PoolEntry | None = None

        def delivered() -> bool:
            nonlocal entry
            rnd.check_alive()
            entry = self.pool.entries.get(tid)  # type: ignore[arg-type]
            if entry is None:
                raise RoundAborted(f"the triple {tid} of round {rnd.round_id} is no longer in the pool")
            if entry.state == FAILED:
                self.pool.take(entry.triple_id)
                err = entry.error
                if isinstance(err, PartyUnreachable):
                    raise err
                raise RoundAborted(f"the dealer's triple for round {rnd.round_id} did not arrive: {err}")
            return entry.state == READY
        try:
            with self.monitor:
                if not self.monitor.wait_until(delivered, deadline):
                    raise PeerTimeout(f"the triple for round {rnd.round_id} did not arrive within "
                                      f"{self.peer_timeout_s:g} s")
                assert entry is not None
                self.pool.take(entry.triple_id)
                assert entry.part is not None
                self.node.install_triple(entry.part)
                rnd.triple_in = True
                rnd.triple["waited_s"] = round(timer.seconds, 6)
        finally:
            rnd.seconds["offline"] += timer.seconds
        event(self.log, "triple-used", round=rnd.round_id, triple_id=tid, waited_s=round(timer.seconds, 6),
              prefetched=rnd.triple.get("prefetched"))

    # S1: the requester

    def _start_requester(self) -> None:
        with self.monitor:
            if self._requester is None or not self._requester.is_alive():
                self._requester = threading.Thread(target=self._request_loop, name=f"{self.party}-offline",
                                                   daemon=True)
                self._requester.start()
            self.monitor.notify()

    def _request_loop(self) -> None:
        """S1: ask the dealer for each pending pooled triple, one request at a time, in the order named."""
        while True:
            with self.monitor:
                entry: PoolEntry | None = None
                while entry is None:
                    self.monitor.wait_until(lambda: bool(self._to_request) or self.monitor.closing)
                    if self.monitor.closing:
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
            with self.monitor:
                self.pool.fail(entry.triple_id, exc)
                self.monitor.notify()
            event(self.log, "offline-failed", level=logging.WARNING, round=entry.round_id, triple_id=entry.triple_id,
                  error=str(exc), seconds=round(timer.seconds, 6))
