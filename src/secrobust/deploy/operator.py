"""The operators: open rounds at the servers and read their public outcome.

Each server has its own operator, ``operator:S0`` and ``operator:S1`` (``certs.operator_party``), and
admits control commands from its own only: S1's report, with the distances S1 opened, goes to S1's
operator alone. An ``Operator`` holds the identities of one or both: a local launcher holds both and
runs whole rounds; in a deployment of two organisations each runs its own side (``sides``), or
``operator:S0`` alone runs whole rounds through S1's approval service (``approval=``, split operators:
``deploy.approval`` opens at S1, as ``operator:S1``, only what S1's policy allows, and relays S1's report
without S1's view and S1's aggregate share). With both sides,
it sends each server the same RoundRequest (S0 first, then S1, so S0 is ready for the dealer's part
when S1 asks for the triple), waits for both servers' reports, fetches both aggregate shares like any
worker (both at once, asked while the round runs), and rebuilds what ``secrobust.aggregate`` returns. It sees what the servers make public
(the weights unless the round's ``reveal`` is "aggregate", the aggregate, the workers rejected by the input validity check and why, the workers that
declined the round and why, traffic, timings) and, through ``operator:S1``, S1's opened view (only with
``reveal="distances"``: in the other modes S1 opens none).

Triples. The operator names the triple of every round and the triples to prefetch for the next
``prefetch`` rounds (``with_triples``): it reads the servers' offline pools (``status``), reuses for
round r the pooled triple that the servers hold for round r with the round's (n, d, kind, bit-triple
words, rule material, weighted-sum correlation), and names fresh random ids for the rest. Everything the request does not name is discarded by
the servers. The operator keeps no state of its own, so a new operator (the ``round`` command) continues
the pool. Every rule takes a triple while the input validity check is on (the mean a "diag" one).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterable

import numpy as np

from .. import api
from ..errors import RoundAborted
from ..pki.certs import SERVER_IDS, Identity, operator_party, operator_server
from ..protocol import messages as M
from ..protocol.messages import Message
from ..protocol.worker import reconstruct
from ..rules.view import Choice, View
from ..transport.channel import Stats
from ..transport.grpc import PartyUnreachable, PeerClient, RemoteRejected
from ..transport.peer import Peer
from .pool import rule_words
from .rounds import MAX_PREFETCH, RoundRequest, fresh_triple_id


class NetworkStats(Stats):
    """``Stats`` as the in-process run counts them (protocol messages, ``Message.to_bytes`` lengths; the
    share keys the workers fetch from S0 included), plus what only a deployment has: wire bytes with
    the gRPC framing, the aggregate-share downloads (by the operator, and by the workers that fetched
    theirs before the operator collected the stats), and each server's phase timings."""

    def __init__(self) -> None:
        super().__init__()
        self.wire_bytes_received: dict[str, int] = {}
        self.delivered_bytes: dict[str, int] = {}
        self.server_seconds: dict[str, dict[str, float]] = {}

    def as_dict(self) -> dict:
        out = super().as_dict()
        out.update(wire_bytes_received=dict(self.wire_bytes_received), delivered_bytes=dict(self.delivered_bytes),
                   server_seconds={k: dict(v) for k, v in self.server_seconds.items()})
        return out


class RoundFailed(RoundAborted):
    """A round ended without an aggregate; ``reports`` holds what each server said."""

    def __init__(self, message: str, reports: dict[str, Any]) -> None:
        super().__init__(message)
        self.reports = reports


class Operator:
    """Round control over mutual TLS: to each server whose operator identity we hold, with that identity
    (and to the dealer, for its traffic report)."""

    def __init__(self, identities: Identity | Iterable[Identity], s0: str | None, s1: str | None,
                 dealer: str | None = None, *, connect_timeout: float = 5.0, prefetch: int = 1,
                 approval: str | None = None) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 0 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch is the number of rounds to request triples ahead for, 0 to {MAX_PREFETCH}; "
                             f"got {prefetch!r}")
        self.prefetch = prefetch
        own = operator_identities(identities)
        addresses = {"S0": s0, "S1": s1}
        missing = [name for name in own if not addresses[name]]
        if missing:
            raise ValueError(f"no address for {' and '.join(missing)}")
        self.clients = {name: PeerClient(ident, name, str(addresses[name]), connect_timeout=connect_timeout)
                        for name, ident in own.items()}
        self.relayed: frozenset[str] = frozenset()
        """The servers reached through the other organisation's approval service rather than directly."""
        if approval:
            if list(own) != ["S0"]:
                raise ValueError(f"S1's approval service is asked by {operator_party(0)} alone; this operator holds "
                                 f"{', '.join(operator_party(SERVER_IDS.index(n)) for n in own)}")
            self.clients["S1"] = PeerClient(own["S0"], operator_party(1), approval, connect_timeout=connect_timeout)
            self.relayed = frozenset({"S1"})
        self.sides = tuple(name for name in SERVER_IDS if name in self.clients)
        """The servers this operator runs rounds at, in protocol order (S1 through its approval service when
        ``approval`` is given: split operators, ``deploy.approval``)."""
        self.servers = {name: Peer(client, bulk=(M.AGGREGATE_SHARE,)) for name, client in self.clients.items()}
        """Our servers with the bulk lanes their ``status`` announces, for the aggregate shares."""
        self.last_reports: dict[str, dict[str, Any]] = {}
        """The servers' reports of the last round ``collect`` or ``outcome`` read."""
        ident = own["S1"] if "S1" in own else own["S0"]
        self.dealer = PeerClient(ident, "dealer", dealer, connect_timeout=connect_timeout) if dealer else None

    @property
    def both(self) -> bool:
        """Whether this operator runs rounds at both servers (with both operator identities, or with
        operator:S0's and S1's approval service): it can rebuild the result."""
        return self.sides == SERVER_IDS

    def close(self) -> None:
        for peer in self.servers.values():
            peer.close()
        if self.dealer is not None:
            self.dealer.close()

    def status(self) -> dict[str, dict[str, Any]]:
        out = {name: c.control("status", timeout=10.0) for name, c in self.clients.items()}
        for name, st in out.items():
            self.servers[name].use_lane(st.get("bulk"))
        return out

    def _fetch_share(self, name: str, round_id: int, wait_s: float = 30.0) -> Message:
        msg = self.servers[name].fetch(round_id, M.AGGREGATE_SHARE, wait_s=wait_s)
        if name in self.relayed:    # S1's share as the approval service relays it (checked against S0's digest)
            msg = replace(msg, sender=name, recipient=self.clients["S0"].identity.party)
        return msg

    def next_round_id(self, statuses: dict[str, dict[str, Any]] | None = None) -> int:
        """One more than the last round id any of our servers opened (each keeps it in its state_dir)."""
        return max(int(s["last_round"]) for s in (statuses or self.status()).values()) + 1

    def with_triples(self, request: RoundRequest, statuses: dict[str, dict[str, Any]] | None = None) -> RoundRequest:
        """``request`` with its triple id and prefetch list (``assign_triples`` on the servers' pools)."""
        return assign_triples(request, statuses or self.status(), self.prefetch)

    def open_round(self, request: RoundRequest) -> None:
        """Open the round at our servers, S0 first; if S1 refuses, S0's round is not left waiting for shares."""
        args = request.to_json()
        opened: list[str] = []
        for name in self.sides:
            try:
                self.clients[name].control("open-round", request.round_id, args)
            except (RemoteRejected, PartyUnreachable) as exc:
                if opened:
                    self.abort(request.round_id, f"{name} did not open it: {exc}", skip=name)
                raise
            opened.append(name)

    def reports(self, round_id: int, wait_s: float) -> dict[str, dict[str, Any]]:
        """Our servers' reports once the round is over at each. A server that does not answer raises
        PartyUnreachable naming it, after the round is aborted at the other server (if we are its operator
        too), so the next round can start as soon as the lost server is back."""
        out: dict[str, dict[str, Any]] = {}
        for name, client in self.clients.items():
            try:
                out[name] = client.control("report", round_id, {"wait_s": wait_s}, timeout=wait_s + 30.0)
            except PartyUnreachable as exc:
                self.abort(round_id, f"the operator cannot reach {name}: {exc.detail}", skip=name)
                raise
        return out

    def outcome(self, round_id: int, wait_s: float) -> dict[str, dict[str, Any]]:
        """Our servers' reports once the round is over there; RoundFailed (naming the workers that declined
        and why) unless it finished at every one of them."""
        reps = self.reports(round_id, wait_s)
        self.last_reports = reps
        for name, rep in reps.items():
            if rep["status"] == "running":
                raise RoundFailed(f"round {round_id} is still running at {name} after {wait_s:g} s", reps)
        failed = {name: rep for name, rep in reps.items() if rep["status"] != "done"}
        if failed:
            raise _failure(round_id, failed, reps)
        return reps

    def abort(self, round_id: int, reason: str, *, skip: str | None = None) -> None:
        """Ask the servers (but ``skip``) to abort ``round_id`` if it is still running there (best effort)."""
        for name, client in self.clients.items():
            if name == skip:
                continue
            try:
                client.control("abort-round", round_id, {"reason": reason}, timeout=5.0)
            except (RemoteRejected, PartyUnreachable):
                pass

    def collect(self, request: RoundRequest, *, n: int, wait_s: float = 600.0) -> api.AggregateResult:
        """Wait for the round and return what ``secrobust.aggregate`` returns for it.

        Needs both operator identities. Raises PartyUnreachable when a server could not be reached (by us
        or by the other server), and RoundFailed (a RoundAborted) with the servers' reasons, and the
        reasons of the workers that declined the round, when the round aborted otherwise.
        """
        if not self.both:
            raise ValueError("rebuilding a round's result needs the operators of both S0 and S1")
        # Both aggregate shares are fetched at once, and from a server we reach directly the fetch is asked
        # before the round ends (the server holds it until then): the reply starts when the round ends, not
        # after the reports, and the two downloads overlap (each shares its server's egress with the workers').
        pool = ThreadPoolExecutor(len(SERVER_IDS), thread_name_prefix="operator-fetch")
        fetches: dict[str, Future[Message]] = {
            name: pool.submit(self._fetch_share, name, request.round_id, wait_s)
            for name in SERVER_IDS if name not in self.relayed}
        try:
            reps = self.outcome(request.round_id, wait_s)
            if reps["S0"]["aggregate_sha256"] != reps["S1"]["aggregate_sha256"]:
                raise RoundFailed("the two servers reconstructed different aggregates", reps)
            for name in SERVER_IDS:
                if name not in fetches:
                    fetches[name] = pool.submit(self._fetch_share, name, request.round_id)
            m0, m1 = fetches["S0"].result(), fetches["S1"].result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        out, weights, participants = reconstruct(m0, m1)
        digest = hashlib.sha256(np.ascontiguousarray(out, dtype="<f8").tobytes()).hexdigest()
        if digest != reps["S0"]["aggregate_sha256"]:
            raise RoundFailed("the rebuilt aggregate differs from the servers' own", reps)
        rep1 = reps["S1"]
        if rep1["participants"] != participants or (rep1["weights"] is None) != (weights is None) or (
                weights is not None and not np.array_equal(np.array(rep1["weights"]), weights)):
            raise RoundFailed("S1's report and the aggregate shares disagree on weights or participants", reps)
        if reps["S0"]["rejected"] != rep1["rejected"]:
            raise RoundFailed("the two servers rejected different workers", reps)
        if any(rep.get("reveal") != request.reveal for rep in reps.values()):
            raise RoundFailed(f"the servers ran another reveal mode than the request's {request.reveal!r}", reps)
        hidden = request.reveal == "aggregate"
        if hidden and (weights is not None or any(rep["weights"] is not None for rep in reps.values())):
            raise RoundFailed("a server published weights in a round with reveal='aggregate'", reps)
        view = View(**{k: np.array(v, dtype=np.float64) for k, v in rep1.get("view", {}).items()})
        positions = {w: i for i, w in enumerate(request.worker_ids)}
        idx = tuple(positions[w] for w in participants)
        rejected = {positions[int(w)]: reason for w, reason in rep1["rejected"].items()}
        stats = self._stats(request.round_id, self.reports(request.round_id, 0.0), request.triple_id)
        choice = None if weights is None else Choice(weights, float(rep1["center_weight"]))
        return api.make_result(out, choice, view, idx, n, stats, request.rule, request.f, rejected, request.reveal)

    def _stats(self, round_id: int, reps: dict[str, dict[str, Any]], triple_id: str | None = None) -> NetworkStats:
        stats = NetworkStats()
        receivers = dict(reps)
        if self.dealer is not None:
            try:
                receivers["dealer"] = self.dealer.control("report", round_id, {"triple_id": triple_id}, timeout=10.0)
            except (RemoteRejected, PartyUnreachable):
                pass
        if "dealer" not in receivers and "S1" in reps:
            # the dealer is down (a round served from the pool): S1's own count of its triple request
            row = reps["S1"]["traffic"]["by_peer"].get("dealer")
            if row and row["messages_sent"]:
                receivers["dealer"] = {"traffic": {"by_peer": {"S1": {
                    "received": row["sent"], "messages_received": row["messages_sent"],
                    "wire_received": row["wire_sent"], "sent": 0}}}}
        for receiver, rep in receivers.items():
            for peer, row in rep["traffic"]["by_peer"].items():
                if row["messages_received"]:
                    stats.bytes_sent[peer] += row["received"]
                    stats.bytes_received[receiver] += row["received"]
                    stats.messages_sent[peer] += row["messages_received"]
                    stats.bytes_between[(peer, receiver)] += row["received"]
                    stats.wire_bytes_received[receiver] = (stats.wire_bytes_received.get(receiver, 0)
                                                           + row["wire_received"])
                if receiver in ("S0", "S1") and peer not in ("S0", "S1", "dealer") and row["sent"]:
                    stats.delivered_bytes[peer] = stats.delivered_bytes.get(peer, 0) + row["sent"]
        for peer, row in reps.get("S0", {}).get("key_traffic", {}).get("by_peer", {}).items():
            # S0's share keys, fetched by the workers: protocol messages, counted as the in-process run does
            if row["messages_sent"]:
                stats.bytes_sent["S0"] += row["sent"]
                stats.bytes_received[peer] += row["sent"]
                stats.messages_sent["S0"] += row["messages_sent"]
                stats.bytes_between[("S0", peer)] += row["sent"]
                stats.wire_bytes_received[peer] = stats.wire_bytes_received.get(peer, 0) + row["wire_sent"]
        for name, rep in reps.items():
            stats.server_seconds[name] = dict(rep["seconds"])
            for phase, sec in rep["seconds"].items():
                stats.seconds[phase] = max(stats.seconds.get(phase, 0.0), float(sec))
        return stats


def operator_identities(identities: Identity | Iterable[Identity]) -> dict[str, Identity]:
    """{server: its operator's identity}, in protocol order; ValueError for any other party or a repeat."""
    given = [identities] if isinstance(identities, Identity) else list(identities)
    out: dict[str, Identity] = {}
    for ident in given:
        index = operator_server(ident.party)
        if index is None:
            raise ValueError(f"an operator is {operator_party(0)} or {operator_party(1)}, not {ident.party!r}")
        if SERVER_IDS[index] in out:
            raise ValueError(f"{ident.party} is given twice")
        out[SERVER_IDS[index]] = ident
    if not out:
        raise ValueError(f"an operator needs the identity of {operator_party(0)}, {operator_party(1)} or both")
    return {name: out[name] for name in SERVER_IDS if name in out}


def assign_triples(request: RoundRequest, statuses: dict[str, dict[str, Any]], prefetch: int) -> RoundRequest:
    """``request`` with the triple of its round and ``prefetch`` triples for the next rounds: for each of
    these round ids, the pooled triple that every server in ``statuses`` holds (pending or delivered; an
    operator of one organisation sees its own server's pool only) for that round with
    the request's (n, d, kind, bit-triple words, rule material, weighted-sum correlation), else a fresh
    random id: a triple made for another reveal mode, rule circuit or cohort size is never named. A round that uses no triple (a
    mean without the input validity check) gets neither."""
    plan = request.plan()
    if plan.triple_kind is None:
        return replace(request, triple_id=None, prefetch=())
    spec = replace(plan, triple_id="unnamed").triple_spec()
    assert spec is not None
    shape = (spec.n, spec.d, spec.kind, spec.and_words, rule_words(spec), spec.vector)

    def usable(name: str) -> dict[str, dict[str, Any]]:
        return {e["triple_id"]: e for e in statuses[name].get("triples", ())
                if e["state"] in ("pending", "ready")
                and (e["n"], e["d"], e["kind"], e.get("and_words", 0), e.get("rule", [0, 0, 0]),
                     e.get("vector", False)) == shape}

    pools = [usable(name) for name in SERVER_IDS if name in statuses]
    by_round: dict[int, str] = {}
    for tid, entry in sorted(pools[-1].items()):
        if all(tid in pool and pool[tid]["round_id"] == entry["round_id"] for pool in pools):
            by_round.setdefault(int(entry["round_id"]), tid)
    rid = request.round_id
    later = range(rid + 1, rid + 1 + prefetch)
    return replace(request, triple_id=by_round.get(rid) or fresh_triple_id(rid),
                   prefetch=tuple((r, by_round.get(r) or fresh_triple_id(r)) for r in later))


def _failure(round_id: int, failed: dict[str, dict[str, Any]], reps: dict[str, Any]) -> Exception:
    """The most specific error for an aborted round: an unreachable party if one was the cause."""
    for rep in failed.values():
        err = rep.get("error") or {}
        if err.get("type") == "PartyUnreachable":
            return PartyUnreachable(err.get("party", "?"), err.get("address", "?"),
                                    f"{err.get('detail', '')} (reported by {rep['party']} in round {round_id})")
    why = declined_note(reps)
    for rep in failed.values():
        if (rep.get("error") or {}).get("type") not in ("PeerAborted", None):
            return RoundFailed(f"round {round_id} aborted at {rep['party']}: {rep['reason']}{why}", reps)
    first = next(iter(failed.values()))
    return RoundFailed(f"round {round_id} aborted at {first['party']}: {first['reason']}{why}", reps)


def declined(reps: dict[str, dict[str, Any]]) -> dict[int, str]:
    """{worker id: reason} of the workers that told a server why they sent nothing this round."""
    out: dict[int, str] = {}
    for rep in reps.values():
        for w, reason in (rep.get("declined") or {}).items():
            out.setdefault(int(w), str(reason))
    return dict(sorted(out.items()))


def declined_note(reps: dict[str, dict[str, Any]]) -> str:
    """``; worker 3 declined: <reason>; ...`` for an error message, or "" when no worker declined."""
    return "".join(f"; worker {w} declined: {reason}" for w, reason in declined(reps).items())
