"""The round driver: one thread per opened round runs the steps in the in-process runner's order, with the
server's own steps (``S0Steps`` or ``S1Steps``) where the two differ, and ends the round done or aborted."""

from __future__ import annotations

import hashlib
import logging
import threading

import numpy as np

from ...errors import ProtocolError
from ...protocol import messages as M
from ...protocol.nodes import ServerNode
from ...protocol.server import noise_share
from ...rules import modes
from ...transport.grpc import Accounting
from ...transport.grpc.errors import PartyUnreachable
from ...transport.grpc.logs import LOGGER_NAME, Timer, event
from .link import PeerLink
from .offline import OfflinePool
from .run import PeerAborted, RoundRun, Rounds, traffic
from .s0 import S0Steps
from .s1 import S1Steps
from .sync import Monitor


class RoundDriver:
    """Runs each opened round on its own thread, from the request confirmation to the archived outcome."""

    def __init__(self, monitor: Monitor, rounds: Rounds, node: ServerNode, link: PeerLink,
                 steps: S0Steps | S1Steps, offline: OfflinePool, index: int, party: str,
                 accounting: Accounting) -> None:
        self.monitor = monitor
        self.rounds = rounds
        self.node = node
        self.link = link
        self.steps = steps
        self.offline = offline
        self.index = index
        self.party = party
        self.accounting = accounting
        self.log = logging.getLogger(LOGGER_NAME)

    def start(self, rnd: RoundRun) -> None:
        threading.Thread(target=self._run, args=(rnd,), name=f"{self.party}-round-{rnd.round_id}",
                         daemon=True).start()

    def _run(self, rnd: RoundRun) -> None:
        """The round's steps in the order of ``secrobust.api.Cluster.run_round``, with steps 2-3 streamed by
        rows while the shares arrive (``protocol.streaming``); any failure aborts it."""
        total = Timer()
        try:
            self.steps.confirm(rnd)
            if rnd.uses_triple:                 # S0 hands out no key before it (its shares are the triple's A0)
                self.offline.install(rnd, self.link.enter(rnd, "offline"))
            self.steps.share_and_open(rnd)
            if rnd.plan.validity:
                self._check_inputs(rnd)
            if rnd.on_shares is not None:
                self._rule_on_shares(rnd)       # instead of S1 opening the view and choosing the weights
            else:
                self.steps.open_view(rnd)
                self.steps.rule(rnd)
                self._record_rejected(rnd)
            share, out = self._aggregate(rnd)
            self._finish(rnd, share, out)
            event(self.log, "round-done", round=rnd.round_id, phase="done", participants=len(rnd.participants),
                  rejected=len(rnd.rejected), seconds=round(total.seconds, 6),
                  bytes=traffic(self.accounting, rnd)["sent"])
        except Exception as exc:
            self._abort(rnd, exc)
        finally:
            with self.monitor:
                rnd.streamed.release()
                if self.node.state is not None and self.node.state.plan is rnd.plan:
                    self.node.state = None      # the round's shares are not needed any more
                self.rounds.archive(rnd)
                self.offline.round_over(rnd)
                self.monitor.notify()
            self.offline.after_round(rnd)

    def _check_inputs(self, rnd: RoundRun) -> None:
        """The check's comparison rounds, one message each way per round, until both servers hold the
        accept flags; rejected workers leave the round, which aborts if too few passed."""
        with self.link.phase(rnd, "validity"):
            with self.monitor:
                msg = self.node.validity_start()
            while msg is not None:
                self.link.send(rnd, msg)
                peer_msg = self.link.wait(rnd, M.VALIDITY_OPEN)
                with self.monitor:
                    msg = self.node.validity_step(peer_msg)
            self._record_rejected(rnd)
            with self.monitor:
                self.node.check_enough(rnd.spec, rnd.request.f)
                rnd.participants = self.node.current.participants or ()

    def _record_rejected(self, rnd: RoundRun) -> None:
        """Take the node's rejected workers into the round's report, one ``worker-rejected`` event each."""
        with self.monitor:
            new = {w: reason for w, reason in self.node.rejected.items() if w not in rnd.rejected}
            rnd.rejected.update(new)
        for w, reason in sorted(new.items()):
            event(self.log, "worker-rejected", level=logging.WARNING, round=rnd.round_id, phase=rnd.phase, worker=w,
                  reason=reason)

    def _rule_on_shares(self, rnd: RoundRun) -> None:
        """reveal="weights" or "aggregate": the rule's circuit on the shared view, one ``rule-open`` message
        each way per round (as the check's comparisons), until both servers hold the public weights
        ("weights") or their shares of them ("aggregate"). No view share and no weights message: S1 opens
        nothing. The number of rounds depends on the participants left, so the peer's count is fixed when
        this server's own circuit ends (``PeerSequence.rule_finished``); a peer that ends its circuit
        earlier (its next message arrives instead of an opening) aborts the round at once."""
        req = rnd.request
        with self.link.phase(rnd, "rule"):
            with self.monitor:
                msg = self.node.rule_start(rnd.on_shares, req.f, dict(req.options))
            steps = 0
            while msg is not None:
                self.link.send(rnd, msg)
                steps += 1
                peer_msg = self.link.wait(rnd, M.RULE_OPEN, gone=lambda: rnd.peer_seq.rule_over)
                with self.monitor:
                    msg = self.node.rule_step(peer_msg)
            with self.monitor:
                rnd.peer_seq.rule_finished(steps)
        event(self.log, "rule-done", round=rnd.round_id, phase="rule", reveal=rnd.mode, steps=steps)

    def _aggregate(self, rnd: RoundRun) -> tuple[np.ndarray, np.ndarray]:
        """This server's aggregate share (plus its DP noise), exchanged with the peer's: (share, aggregate)."""
        req = rnd.request
        with self.link.phase(rnd, "aggregate"):
            noise = None
            if req.dp_noise_std:
                seed, label = req.noise_seed(self.index)
                noise = noise_share(seed, label, req.d, req.dp_noise_std, req.frac_bits)
            with self.monitor:
                share = self.node.aggregate_share(noise)
                share_msg = self.node.aggregate_message(share)
            self.link.send(rnd, share_msg)
            peer_share = self.link.wait(rnd, M.AGGREGATE_SHARE)
            with self.monitor:
                out = self.node.reveal(share, peer_share)
        return share, out

    def _finish(self, rnd: RoundRun, share: np.ndarray, out: np.ndarray) -> None:
        st = self.node.current
        with self.monitor:
            choice = st.choice
            assert choice is not None or rnd.plan.mode == "aggregate"
            if choice is not None and rnd.mode != "aggregate":
                rnd.weights = np.asarray(choice.weights, dtype=np.float64)
            # with the weights shared, the center's part is inside the aggregate shares already
            rnd.center_weight = float(choice.center_weight) if choice is not None else 0.0
            if st.view is not None and rnd.mode == modes.DEFAULT_MODE:
                rnd.view = {k: v for k in ("distances", "norms") if (v := getattr(st.view, k)) is not None}
            rnd.own_share = share
            rnd.aggregate_digest = hashlib.sha256(np.ascontiguousarray(out, dtype="<f8").tobytes()).hexdigest()
            rnd.phase = "done"
            rnd.status = "done"
            self.monitor.notify()

    def _abort(self, rnd: RoundRun, exc: BaseException) -> None:
        with self.monitor:
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
            self.monitor.notify()
        level = logging.WARNING if isinstance(exc, ProtocolError) else logging.ERROR
        event(self.log, "round-aborted", level=level, round=rnd.round_id, phase=rnd.phase, reason=rnd.reason,
              error=rnd.error.get("type"))
        if level == logging.ERROR:
            self.log.error("unexpected error in round %s", rnd.round_id, exc_info=exc)
        if not told_by_peer and not (isinstance(exc, PartyUnreachable) and exc.party == self.link.peer_name):
            try:
                self.link.peer.client.control("abort-round", rnd.round_id, {"reason": rnd.reason}, timeout=3.0)
            except ProtocolError:
                pass
