"""S0's own part of a round: it confirms S1's request, hands each worker its share key, adds S1's rows of
E to its Gram share as they arrive, takes S1's participant list, sends its view share and takes the
weights."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ...errors import RoundAborted
from ...pki.certs import worker_index
from ...primitives import prg
from ...protocol import messages as M
from ...protocol import streaming
from ...protocol.messages import Message
from ...protocol.nodes import ServerNode
from ...transport.grpc.errors import PartyUnreachable, Rejected
from ...transport.grpc.logs import LOGGER_NAME, Timer, event
from .link import PeerLink
from .offline import OfflinePool
from .run import PeerTimeout, RoundRun, Rounds
from .sync import Monitor

PROBE_S = 2.0
ROW_IDLE_S = 0.25
"""S0 waits this long for a block of rows of E to fill before it takes fewer."""


class S0Steps:
    """S0's steps of a round that differ from S1's (the round driver runs the rest), its key handout and its
    side of S1's request confirmation."""

    def __init__(self, monitor: Monitor, rounds: Rounds, node: ServerNode, link: PeerLink, offline: OfflinePool,
                 party: str) -> None:
        self.monitor = monitor
        self.rounds = rounds
        self.node = node
        self.link = link
        self.offline = offline
        self.party = party
        self.log = logging.getLogger(LOGGER_NAME)

    def close(self) -> None:
        """Nothing of S0's own to release."""

    # intake (under the lock)

    def precheck_share(self, rnd: RoundRun, w: int, phase: str) -> None:
        raise Rejected("not-permitted", f"a worker sends nothing to S0 (it fetches its {M.SHARE_KEY} "
                       f"there), got {phase}")

    def accept_share(self, rnd: RoundRun, w: int, msg: Message) -> None:
        raise Rejected("not-permitted", "a worker sends nothing to S0")

    def declined(self, rnd: RoundRun) -> None:
        """A worker declined ``rnd``: S0 keeps handing out keys until S1's participant list."""

    def fetch_key(self, caller: str, round_id: int, wait_s: float) -> Message:
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

    def confirm_request(self, round_id: int, args: dict[str, Any], bulk_port: int | None) -> dict[str, Any]:
        """S0's side of ``S1Steps.confirm``: wait (up to the peer timeout) for its own round ``round_id``
        to be open, compare digests, and answer with its own (and the port of its bulk lane)."""
        theirs = args.get("sha256")
        if not isinstance(theirs, str) or len(theirs) != 64:
            raise Rejected("bad-request", "confirm-request carries the request's SHA-256 as 64 hex digits")
        deadline = time.monotonic() + self.link.peer_timeout_s
        with self.monitor:
            self.monitor.wait_until(lambda: self.monitor.closing or (self.rounds.current is not None
                                                                     and self.rounds.current.round_id >= round_id),
                                    deadline)
            rnd = self.rounds.current
            if rnd is None or rnd.round_id != round_id or rnd.finished:
                raise Rejected("wrong-round", f"round {round_id} is not open at {self.party}")
            if theirs != rnd.digest:
                rnd.error = {"type": "PeerAborted", "party": self.link.peer_name}
                rnd.reason = (f"the servers hold different requests for round {round_id} "
                              f"(S0 {rnd.digest[:12]}, S1 {theirs[:12]})")
                rnd.intake_open = False
            else:
                rnd.confirmed = True
            self.monitor.notify()
            return {"sha256": rnd.digest, "bulk": bulk_port}

    # the round

    def confirm(self, rnd: RoundRun) -> None:
        """S0 waits for S1's ``confirm-request`` (``confirm_request``) instead."""

    def share_and_open(self, rnd: RoundRun) -> None:
        """S0's steps 1-3: hand out keys (``fetch_key``) and, as S1's rows of E arrive, fill the columns of its
        Gram share 2 A0 E^T in blocks (at least ``streaming.MIN_BLOCK`` rows, fewer when they are the last ones
        or no row came for ``ROW_IDLE_S``). S1's participant list closes the key handout; S0 answers it with its
        validity seed contribution and, once S1's is in, projects its shares (A0's rows) column chunk by column
        chunk between the last rows. Returns once every participant's row is in."""
        timer = Timer()
        st, plan = rnd.streamed, rnd.plan
        open_phase = "open" if rnd.reveal else "validity"
        if rnd.uses_triple:
            with self.link.phase(rnd, open_phase):
                st.a0 = self.offline.take_a0(rnd.request.triple_id)
                rnd.triple["a0_ahead"] = st.a0 is not None and st.a0.shape == (len(plan.worker_ids), plan.d)
                if not rnd.triple["a0_ahead"]:
                    st.a0 = streaming.s0_rows(self.node.current.triple, np.arange(len(plan.worker_ids)))
                if streaming.weighted_sum(plan):
                    st.weighted = streaming.WeightedRows(self.node.current.triple)
        kind = plan.open_kind
        peer_name, peer_timeout_s = self.link.peer_name, self.link.peer_timeout_s
        agreed = False
        projector: streaming.Projector | None = None
        deadline = rnd.share_deadline + peer_timeout_s
        next_probe = time.monotonic() + PROBE_S
        share_s: float | None = None
        idle_until = 0.0
        seen: int | None = None
        pending = 0
        agree = seed = rows = project = probe = False

        def look() -> bool:
            """Is there work to do, none left, or time to probe S1?"""
            nonlocal idle_until, seen, pending, agree, seed, rows, project, probe
            rnd.check_alive()
            now = time.monotonic()
            pending = len(rnd.inbox[kind])
            if seen is not None and pending > seen:
                idle_until = now + ROW_IDLE_S   # a row came: wait for the block to fill a while longer
            seen = pending
            left = (len(set(rnd.participants) - set(st.order)) if rnd.uses_triple else 0) if agreed else None
            agree = not agreed and bool(rnd.inbox[M.PARTICIPANTS])
            seed = agreed and plan.validity and projector is None and bool(rnd.inbox[M.VALIDITY_SEED])
            rows = pending > 0 and (pending >= streaming.MIN_BLOCK or now >= idle_until
                                    or (left is not None and pending >= left))
            project = projector is not None and not projector.done
            if agree or seed or rows or project:
                return True
            if agreed and left == 0 and (not plan.validity or projector is not None):
                return True                     # every participant's row is in, projections done
            if now >= deadline:
                want = f"rows of E from {peer_name}" if agreed else f"{M.PARTICIPANTS} from {peer_name}"
                raise PeerTimeout(f"no {want} within {peer_timeout_s:g} s")
            if not agreed and not pending and now >= next_probe:
                probe = True
                return True
            return False

        def wake() -> float:
            return idle_until if pending else min(deadline, next_probe if not agreed else deadline)
        while True:
            probe = False
            with self.monitor:
                idle_until, seen = time.monotonic() + ROW_IDLE_S, None
                while not self.monitor.wait_until(look, wake):
                    pass                        # a time to look again, not a deadline: look() decides
                taken = [rnd.inbox[kind].popleft() for _ in range(min(pending, streaming.BLOCK_ROWS))] if rows else []
                if taken:
                    self.monitor.notify()       # room for more rows (``Slots.reserve``)
            if probe:
                self._probe_peer()
                next_probe = time.monotonic() + PROBE_S
                continue
            if not (agree or seed or rows or project):
                break
            if agree:
                share_s = timer.seconds
                self._agree(rnd)
                agreed = True
                deadline = max(deadline, time.monotonic() + peer_timeout_s)
            if seed:
                with self.link.phase(rnd, "validity"):
                    with self.monitor:
                        self.node.receive_validity_seed(rnd.inbox[M.VALIDITY_SEED].popleft())
                        state = self.node.current
                    assert st.a0 is not None
                    projector = streaming.Projector(st.a0, state.positions(), state.validity_seed, plan.center,
                                                    plan.chunk_bytes)
            if taken:
                deadline = max(deadline, time.monotonic() + peer_timeout_s)   # S1 is at work
                with self.link.phase(rnd, open_phase):
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
                with self.link.phase(rnd, "validity"):
                    projector.step()
        rnd.seconds["share"] += share_s if share_s is not None else timer.seconds
        if rnd.uses_triple:
            self._complete_opening(rnd, projector)

    def _agree(self, rnd: RoundRun) -> None:
        """S0 takes S1's participant list (its key handout closes), checks that S1 opened no row of anyone
        else, and answers with its fresh contribution to the check's projection seed."""
        with self.link.phase(rnd, "agree"):
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
                self.link.send(rnd, mine)
        event(self.log, "shares-closed", round=rnd.round_id, phase="share", received=len(rnd.received),
              expected=len(rnd.plan.worker_ids), participants=len(rnd.participants), opened=len(rnd.streamed.order))

    def _probe_peer(self) -> None:
        """S0, waiting for S1: is S1 still there? Its port refusing connections aborts the round at once; a
        slow answer is no proof of anything (S1 may be busy taking 8d-byte uploads on a loaded machine), so
        only the deadline ends the wait then."""
        try:
            self.link.peer.client.control("status", timeout=PROBE_S * 5)
        except PartyUnreachable as exc:
            if exc.detail.startswith("UNAVAILABLE"):
                raise

    def _complete_opening(self, rnd: RoundRun, projector: streaming.Projector | None) -> None:
        """The node's state after steps 2-3 for the participants (plan order), as ``open_masked``/``accumulate``
        and ``project`` leave it in process: S0's Gram share from the streamed rows, and with the check on,
        the projections of its input shares under the joint seed."""
        st = rnd.streamed
        with self.link.phase(rnd, "open" if rnd.reveal else "validity"), self.monitor:
            state = self.node.current
            assert st.col_gram is not None
            h = st.col_gram.share(state.positions())
            st.a0 = None                    # S0's aggregate share re-expands the few weighted rows
            self.node.state = streaming.complete(state, h, None if projector is None else projector.proj,
                                                 None if st.weighted is None else st.weighted.total)

    def open_view(self, rnd: RoundRun) -> None:
        """S0 sends its share of the distances/norms (nothing when the rule opens none)."""
        if not rnd.reveal:
            return
        with self.link.phase(rnd, "distances"):
            with self.monitor:
                view_share = self.node.view_share_message()
            self.link.send(rnd, view_share)

    def rule(self, rnd: RoundRun) -> None:
        """S0 takes S1's public weights (and the workers it rejected)."""
        with self.link.phase(rnd, "rule"):
            weights_msg = self.link.wait(rnd, M.WEIGHTS)
            with self.monitor:
                self.node.receive_weights(weights_msg)
