"""S1's own part of a round: it confirms the request with S0, takes the workers' masked shares, streams
their rows of E to S0 while they arrive, fixes the participants, opens the view and chooses the weights."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ...errors import RoundAborted
from ...primitives import prg
from ...gates.dealer import TripleShare1
from ...protocol import messages as M
from ...protocol import streaming
from ...protocol.messages import Message
from ...protocol.nodes import ServerNode
from ...transport.grpc.errors import Rejected, RemoteRejected
from ...transport.grpc.logs import LOGGER_NAME, Timer, event
from . import forward
from .forward import RowForward
from .link import PeerLink
from .run import PeerTimeout, RoundRun, Streamed
from .sync import Monitor

SEND_THREADS = 2
"""S1's rows of E in flight to S0 at once."""


class S1Steps:
    """S1's steps of a round that differ from S0's (the round driver runs the rest), and its intake of the
    workers' masked shares."""

    def __init__(self, monitor: Monitor, node: ServerNode, link: PeerLink, party: str) -> None:
        self.monitor = monitor
        self.node = node
        self.link = link
        self.party = party
        self.log = logging.getLogger(LOGGER_NAME)
        self._senders: ThreadPoolExecutor | None = None
        self.forwarding = 0
        """Forwards whose stream has not ended, of any round (at most ``forward.FORWARD_STREAMS``)."""

    def close(self) -> None:
        """With the lock held: drop the rows of E not yet sent."""
        if self._senders is not None:
            self._senders.shutdown(wait=False, cancel_futures=True)

    # intake (under the lock)

    def precheck_share(self, rnd: RoundRun, w: int, phase: str) -> None:
        """Worker w may start sending its masked share now: it is marked in flight."""
        if phase != M.SHARE_MASKED:
            raise Rejected("out-of-phase", f"a worker sends {M.SHARE_MASKED} to S1, not {phase}")
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

    def accept_share(self, rnd: RoundRun, w: int, msg: Message) -> None:
        """S1 takes worker w's masked share."""
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

    def forward_watch(self, rnd: RoundRun, w: int, buf: np.ndarray) -> RowForward | None:
        """With the lock held, as worker w's share starts to arrive on the bulk lane: a ``RowForward`` that
        streams its row of E to S0 meanwhile (from when S1 holds the round's triple), if S0's lane streams,
        the row has two pieces or more, w had no forward yet this round and fewer than
        ``forward.FORWARD_STREAMS`` forwards run; else None (the row goes whole once the share is taken)."""
        st = rnd.streamed
        lane = self.link.peer.lane
        if (not rnd.uses_triple or not rnd.intake_open or not forward.worth_forwarding(rnd.plan.d)
                or lane is None or not lane.streams or w in st.forwarded
                or self.forwarding >= forward.FORWARD_STREAMS):
            return None

        def triple() -> TripleShare1 | None:
            with self.monitor:
                state = self.node.current
                return state.triple if state is not None and state.plan.round_id == rnd.round_id else None
        def release() -> None:
            self.forwarding -= 1
        f = RowForward(self.monitor, rnd, w, buf, triple, self.link.peer.send_stream, release)
        self.forwarding += 1
        st.forwards[w] = f
        return f

    def declined(self, rnd: RoundRun) -> None:
        """A worker declined ``rnd``: the intake may be complete."""
        rnd.close_when_all_answered()
        self.monitor.notify()

    # the round

    def confirm(self, rnd: RoundRun) -> None:
        """S1, before any share is used: S0 must hold the same round request (equal digests). S0 answers
        with its own digest and aborts on a mismatch; so does S1. An operator who opens the two servers with
        different rules, workers or parameters gets an aborted round, not a mixed one."""
        try:
            reply = self.link.peer.client.control("confirm-request", rnd.round_id, {"sha256": rnd.digest},
                                                  timeout=self.link.peer_timeout_s + 5.0)
        except RemoteRejected as exc:
            raise RoundAborted(f"S0 did not confirm the request of round {rnd.round_id}: {exc}") from None
        theirs = reply.get("sha256")
        if theirs != rnd.digest:
            raise RoundAborted(f"the servers hold different requests for round {rnd.round_id} "
                               f"(S0 {str(theirs)[:12]}, S1 {rnd.digest[:12]})")
        self.link.use_bulk(reply.get("bulk"))
        with self.monitor:
            rnd.confirmed = True
            self.monitor.notify()

    def share_and_open(self, rnd: RoundRun) -> None:
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
        new_rows = gram = agree = seed = project = False

        def look() -> bool:
            """Close the intake at its deadline; is there work to do, or is there none left?"""
            nonlocal share_s, new_rows, gram, agree, seed, project
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
                return True
            if agreed and (not plan.validity or projector is not None):
                return True                     # every row opened and in the Gram share, projections done
            if now >= seed_due:
                raise PeerTimeout(f"{self.link.peer_name} sent no {M.VALIDITY_SEED} within "
                                  f"{self.link.peer_timeout_s:g} s")
            return False

        def wake() -> float:
            return rnd.share_deadline if rnd.intake_open else seed_due
        while True:
            with self.monitor:
                while not self.monitor.wait_until(look, wake):
                    pass                        # a time to look again, not a deadline: look() decides
                start, workers = st.opened, list(st.order[st.opened:])
                triple = self.node.current.triple if rnd.uses_triple else None
            if not (new_rows or gram or agree or seed or project):
                break
            if agree:
                self._agree(rnd, share_s)
                agreed, seed_due = True, time.monotonic() + self.link.peer_timeout_s
            if seed:
                with self.link.phase(rnd, "validity"):
                    with self.monitor:
                        self.node.receive_validity_seed(rnd.inbox[M.VALIDITY_SEED].popleft())
                        joint = self.node.current.validity_seed
                    slot = {w: k for k, w in enumerate(st.order)}
                    rows = np.array([slot[w] for w in rnd.participants], dtype=np.int64)
                    assert st.rows is not None
                    projector = streaming.Projector(st.rows, rows, joint, plan.center, plan.chunk_bytes)
            if new_rows:
                with self.link.phase(rnd, open_phase):
                    assert st.rows is not None
                    for k, w in enumerate(workers, start):
                        if self._forwarded(st, w):
                            continue
                        e = streaming.opening_row(st.rows[k], triple, st.position[w], plan.center)
                        msg = streaming.opening_message(rnd.round_id, plan.open_kind, w, e)
                        del e
                        while len(sends) > SEND_THREADS:
                            sends.popleft().result()
                        sends.append(self._sender().submit(self.link.send, rnd, msg))
                        del msg
                    with self.monitor:
                        st.opened = start + len(workers)
            if self._gram_due(st, not rnd.intake_open):
                with self.link.phase(rnd, open_phase):
                    assert st.rows is not None and st.row_gram is not None
                    done = st.row_gram.done
                    upto = min(st.opened, done + streaming.BLOCK_ROWS)
                    st.row_gram.add(st.rows, upto)
                    if st.u is not None:
                        st.u[done:upto] = streaming.center_products(st.rows[done:upto], plan.center)
            elif projector is not None and not projector.done:
                with self.link.phase(rnd, "validity"):
                    projector.step()
        if sends or st.forwards:
            with self.link.phase(rnd, open_phase):
                while sends:
                    sends.popleft().result()    # every row is with S0 before the comparisons or the view
                self._await_forwards(rnd)
        rnd.seconds["share"] += share_s if share_s is not None else timer.seconds
        if rnd.uses_triple:
            self._complete_opening(rnd, projector)

    def _agree(self, rnd: RoundRun, share_s: float | None = None) -> None:
        """S1, its intake closed: the participants are the workers whose share it holds; it tells S0, with its
        fresh contribution to the check's projection seed (the shares are fixed now)."""
        with self.link.phase(rnd, "agree"):
            with self.monitor:
                rnd.participants = self.node.agree(None, rnd.spec.minimum(rnd.request.f), rnd.spec.needs(rnd.request.f))
                msgs = [self.node.participants_message()]
                if rnd.plan.validity:
                    msgs.append(self.node.validity_seed_message(prg.fresh_seed()))
            for msg in msgs:
                self.link.send(rnd, msg)
        event(self.log, "shares-closed", round=rnd.round_id, phase="share", received=len(rnd.received),
              expected=len(rnd.plan.worker_ids), seconds=None if share_s is None else round(share_s, 6),
              opened=rnd.streamed.opened)

    def _forwarded(self, st: Streamed, w: int) -> bool:
        """w's row of E is being (or was) forwarded while its share arrived (``forward``); a forward that
        failed is forgotten here, and the caller sends the row whole."""
        with self.monitor:
            f = st.forwards.get(w)
            if f is not None and f.error is not None:
                del st.forwards[w]
                return False
            return f is not None

    def _await_forwards(self, rnd: RoundRun) -> None:
        """Every taken share's forwarded row is with S0; a forward that failed is replaced by the row whole."""
        st, plan = rnd.streamed, rnd.plan
        for k, w in enumerate(list(st.order)):
            with self.monitor:
                f = st.forwards.get(w)
            if f is None:
                continue
            deadline = time.monotonic() + self.link.peer_timeout_s
            with self.monitor:
                def over(f: RowForward = f) -> bool:
                    rnd.check_alive()
                    return f.done.is_set()
                if not self.monitor.wait_until(over, deadline):
                    raise PeerTimeout(f"{self.link.peer_name} did not take the forwarded row of worker {w} within "
                                      f"{self.link.peer_timeout_s:g} s")
                triple = self.node.current.triple
            if f.error is not None:
                event(self.log, "forward-failed", level=logging.WARNING, round=rnd.round_id, worker=w,
                      error=str(f.error)[:200])
                assert st.rows is not None
                e = streaming.opening_row(st.rows[k], triple, st.position[w], plan.center)
                self.link.send(rnd, streaming.opening_message(rnd.round_id, plan.open_kind, w, e))

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

    def _complete_opening(self, rnd: RoundRun, projector: streaming.Projector | None) -> None:
        """The node's state after steps 2-3 for the participants (plan order), as ``open_masked``/``accumulate``
        and ``project`` leave it in process: S1's Gram share from the streamed rows, and with the check on,
        the projections of its input shares under the joint seed."""
        st, plan = rnd.streamed, rnd.plan
        with self.link.phase(rnd, "open" if rnd.reveal else "validity"), self.monitor:
            state = self.node.current
            assert st.row_gram is not None
            slot = {w: k for k, w in enumerate(st.order)}
            rows = np.array([slot[w] for w in state.participants or ()], dtype=np.int64)
            vv = np.dot(plan.center, plan.center) if plan.center is not None else None
            h = st.row_gram.share(rows, None if st.u is None else st.u[rows], vv)
            self.node.state = streaming.complete(state, h, None if projector is None else projector.proj,
                                                 None if st.weighted is None else st.weighted.total)

    def open_view(self, rnd: RoundRun) -> None:
        """S1 opens the distances/norms with S0's share of them (an empty view when the rule opens none)."""
        if not rnd.reveal:
            with self.monitor:
                self.node.open_view(None)
            return
        with self.link.phase(rnd, "distances"):
            view_msg = self.link.wait(rnd, M.VIEW_SHARE)
            with self.monitor:
                self.node.open_view(view_msg)

    def rule(self, rnd: RoundRun) -> None:
        """S1 applies the rule and sends the public weights (and the workers it rejected) to S0."""
        with self.link.phase(rnd, "rule"):
            with self.monitor:
                weights_msg = self.node.choose(rnd.spec, rnd.request.f, dict(rnd.request.options))
            self.link.send(rnd, weights_msg)
