"""The two servers' steps of one round (docs/protocol.md: the one-way opening), as functions of explicit state.

S0's share of worker i's encoded update is X0_i = PRG(k_i), where k_i (which S0 hands the worker) is
derived from the dealer's seed of the mask A0: so X0 = A0. S1 holds X1 = X - X0. With Y = X - v (v the
public center, 0 unless cclip), Y1 = X1 - v and the dealer's C = A0 A0^T + A0 A1^T + A1 A0^T = C0 + C1:
  2. S1 alone opens E = Y1 - A1 to S0, one row per worker as its share arrives (uniform: A1 is a
     one-time pad S0 never sees);
  3. H0 = 2 A0 E^T + C0 and H1 = Y1 Y1^T + C1; since Y = A0 + E + A1, H0 + H1 symmetrised is Y Y^T
     (steps 2-3 by rows and row blocks: ``protocol.streaming``, which sets ``h`` via ``complete``);
  4. S0 sends its share of D_ij = H_ii + H_jj - H_ij - H_ji (and/or of H_ii) to S1, who opens it;
  5. S1 runs the rule on what it opened and sends the public weights w to S0;
  6. each server sends its share of sum_i w_i x_i to the other; only that aggregate is revealed.
Between the servers this moves 8nd bytes once, in one direction, plus O(n^2 + d). The "diag" variant
replaces every matrix product by a row-wise inner product when the rule needs only norms. Nothing here
samples randomness or does I/O.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from ..circuits import validity
from ..errors import (
    DuplicateWorker,
    MalformedMessage,
    RoundAborted,
    UnexpectedMessage,
    UnknownWorker,
)
from ..gates import arith, dealer
from ..gates.arith import Budget
from ..gates.compare import AndSource, Party
from ..gates.dealer import TripleLedger, TripleShare0, TripleShare1, TripleSpec
from ..primitives import prg, ring, sharing
from ..rules import modes, sizing
from ..rules.spec import SecureRule
from ..rules.view import DISTANCES, Choice, View, view_range, view_words
from .messages import (
    AGGREGATE_SHARE,
    MASKED_OPEN,
    PARTICIPANTS,
    SHARE_KEY,
    SHARE_MASKED,
    VALIDITY_MASKED_OPEN,
    VALIDITY_SEED,
    VIEW_SHARE,
    WEIGHTS,
    Message,
)
from .offline import triple_from_message
from .worker import finish_aggregate, worker_name

SERVER_NAMES = ("S0", "S1")


@dataclass(frozen=True, eq=False)
class RoundPlan:
    """Public parameters both servers fix before a round starts."""

    round_id: int
    worker_ids: tuple[int, ...]
    d: int
    frac_bits: int
    reveal: tuple[str, ...]
    center: np.ndarray | None = None
    triple_id: str | None = None
    chunk_bytes: int = dealer.DEFAULT_CHUNK_BYTES
    validity: bool = True
    norm_bound: int | None = None
    """The validity check's norm bound in scaled units (``validity.scaled_bound``); None is B = 2^27."""
    mode: str = modes.DEFAULT_MODE
    """What the round reveals (``rules.modes.MODES``): the view to S1, only the weights, or only the aggregate."""
    rule_budget: Budget = Budget()
    """The dealer material of the rule's circuit on shares (modes "weights" and "aggregate")."""
    weighted_sum: bool = True
    """With mode "aggregate": the rule's circuit yields shared weights, summed with the dealer's vector
    correlation; False when it yields the aggregate share itself (coordinate-wise rules)."""

    @classmethod
    def build(cls, round_id: int, worker_ids: tuple[int, ...], d: int, frac_bits: int, needs: tuple[str, ...],
              center: np.ndarray | None, triple_id: str | None, chunk_bytes: int, validity: bool, bound: int,
              reveal: str, rule: "SecureRule | None", f: int, options: dict) -> "RoundPlan":
        """The plan both servers (and the in-process run) derive from a round's public parameters: the triple
        id only when the round uses a triple, and with the rule on shares (``rule``, from
        ``modes.secure_rule``) the mode and the dealer material of its circuit for all ``worker_ids``
        (enough for fewer, after dropouts)."""
        modes.check_checked(rule, validity)
        budget = Budget()
        if rule is not None:
            budget = sizing.budget(rule.name, len(worker_ids), f, options, view_range(bound, center), d,
                                    frac_bits)
        return cls(round_id, worker_ids, d, frac_bits, needs, center,
                   triple_id if needs or validity or rule is not None else None, chunk_bytes, validity, bound,
                   reveal if rule is not None else modes.DEFAULT_MODE, budget,
                   rule is None or rule.output == "weights")

    @property
    def on_shares(self) -> bool:
        """The rule runs in 2PC on the shared view instead of S1 opening it."""
        return self.mode != modes.DEFAULT_MODE

    @property
    def bound(self) -> int:
        return validity.params().bound if self.norm_bound is None else self.norm_bound

    @functools.cached_property
    def view_range(self) -> int:
        """The largest entry of the rule's view for accepted inputs (``rules.view.view_range``)."""
        return view_range(self.bound, self.center)

    @property
    def triple_kind(self) -> str | None:
        """A gram triple when the rule opens distances; otherwise a diag triple when it opens norms or the
        input validity check needs the workers' squared norms; none for an unchecked mean."""
        if DISTANCES in self.reveal:
            return "gram"
        return "diag" if self.reveal or self.validity or not self.rule_budget.is_empty() else None

    @property
    def open_kind(self) -> str:
        """A masked opening that only serves the validity check is booked as part of it."""
        return MASKED_OPEN if self.reveal else VALIDITY_MASKED_OPEN

    def triple_spec(self) -> TripleSpec | None:
        kind = self.triple_kind
        if kind is None:
            return None
        if self.triple_id is None:
            raise ValueError("a round that opens distances or norms, or checks its inputs, needs a triple id")
        n = len(self.worker_ids)
        return TripleSpec(self.triple_id, n, self.d, kind, validity.and_words(n) if self.validity else 0,
                          self.rule_budget, self.mode == "aggregate" and self.weighted_sum)


@dataclass(frozen=True, eq=False)
class ServerState:
    party: int
    plan: RoundPlan
    inputs: Mapping[int, np.ndarray] = field(default_factory=dict)
    share_master: bytes | None = None
    """S0's seed for the workers' keys when the round has no triple (an unchecked mean)."""
    participants: tuple[int, ...] | None = None
    triple: TripleShare0 | TripleShare1 | None = None
    h: np.ndarray | None = None
    """This server's share of H without C, once every participant's row of E is in (``streaming.complete``)."""
    view: View | None = None
    choice: Choice | None = None
    validity_own: bytes | None = None
    validity_seed: bytes | None = None
    proj: np.ndarray | None = None
    checked: bool = False
    rejected: Mapping[int, str] = field(default_factory=dict)
    agreed: tuple[int, ...] | None = None
    """The participants of the masked opening (before the validity check removes any)."""
    u_dot_e: np.ndarray | None = None
    """S0, reveal="aggregate": u^T E over the opened rows (``streaming.WeightedRows``)."""
    shared_weights: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """reveal="aggregate": this server's weight shares over the plan's rows, its center-weight share, and
    the peer's masked weights delta (= w_peer - u_peer)."""
    rule_aggregate: np.ndarray | None = None
    """A coordinate-wise rule's output: this server's share of the aggregate at scale 2^(F+W)."""

    @property
    def name(self) -> str:
        return SERVER_NAMES[self.party]

    @property
    def peer(self) -> str:
        return SERVER_NAMES[1 - self.party]

    def positions(self) -> np.ndarray:
        """Row positions of the participants in the plan's worker list (= rows of the triple)."""
        order = {w: i for i, w in enumerate(self.plan.worker_ids)}
        return np.array([order[w] for w in self._participants()], dtype=np.int64)

    def _participants(self) -> tuple[int, ...]:
        if self.participants is None:
            raise UnexpectedMessage(f"{self.name}: the participant set is not agreed yet")
        return self.participants


def new_round(party: int, plan: RoundPlan, share_master: bytes | None = None) -> ServerState:
    """A fresh round; S0 of a round without a triple needs ``share_master`` for the workers' keys."""
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party!r}")
    if len(set(plan.worker_ids)) != len(plan.worker_ids):
        raise ValueError("the plan lists a worker id twice")
    if plan.validity:
        validity.check_dimension(plan.d)
    if party == 0 and plan.triple_kind is None and share_master is None:
        raise ValueError("S0 needs a share master seed for a round without a triple")
    master = prg.check_seed(share_master) if party == 0 and plan.triple_kind is None else None
    return ServerState(party, plan, share_master=master)


def _expect(state: ServerState, msg: Message, kind: str, sender: str) -> None:
    if msg.round_id != state.plan.round_id:
        raise UnexpectedMessage(f"{state.name}: message for round {msg.round_id}, this is round {state.plan.round_id}")
    if msg.kind != kind:
        raise UnexpectedMessage(f"{state.name}: expected {kind}, got {msg.kind}")
    if msg.sender != sender:
        raise UnexpectedMessage(f"{state.name}: {kind} must come from {sender}, came from {msg.sender}")
    if msg.recipient != state.name:
        raise UnexpectedMessage(f"{state.name}: message addressed to {msg.recipient}")


# Step 1: S0 hands out the keys of its shares; each worker sends S1 its masked update.

def _input_master(state: ServerState) -> bytes:
    if state.party != 0:
        raise UnexpectedMessage("only S0 holds the workers' share keys")
    if state.share_master is not None:
        return state.share_master
    if not isinstance(state.triple, TripleShare0):
        raise UnexpectedMessage(f"S0: round {state.plan.round_id} has no triple yet, so no share keys")
    return state.triple.seed_a0


def share_key_message(state: ServerState, worker: int) -> Message:
    """S0 -> worker: the key k_i of S0's share X0_i = PRG(k_i) (= row i of the dealer's mask A0)."""
    if worker not in state.plan.worker_ids:
        raise UnknownWorker(f"S0: worker {worker} is not expected in round {state.plan.round_id}")
    key = sharing.input_key(_input_master(state), state.plan.worker_ids.index(worker))
    return Message(SHARE_KEY, state.plan.round_id, "S0", worker_name(worker),
                   fields={"worker": worker, "key": key, "d": state.plan.d})


def receive_share(state: ServerState, msg: Message) -> ServerState:
    """S1 records one worker's masked update, checking who sent what."""
    worker = msg.fields.get("worker")
    if state.party != 1:
        raise UnexpectedMessage("S0 receives no shares from the workers (it hands out their keys)")
    if isinstance(worker, bool) or not isinstance(worker, int):
        raise MalformedMessage(f"{state.name}: share without an integer worker id")
    _expect(state, msg, SHARE_MASKED, worker_name(worker))
    if worker not in state.plan.worker_ids:
        raise UnknownWorker(f"{state.name}: worker {worker} is not expected in round {state.plan.round_id}")
    if worker in state.inputs:
        raise DuplicateWorker(f"{state.name}: worker {worker} already sent its share for round {state.plan.round_id}")
    if state.participants is not None:
        raise UnexpectedMessage(f"{state.name}: share from worker {worker} arrived after the participants were fixed")
    x1 = msg.arrays.get("x1")
    if x1 is None or x1.dtype != np.uint64 or x1.shape != (state.plan.d,):
        got = "nothing" if x1 is None else f"{x1.dtype} {x1.shape}"
        raise MalformedMessage(f"S1: worker {worker} sent {got}, expected uint64 ({state.plan.d},)")
    return replace(state, inputs={**state.inputs, worker: x1})


def participants_message(state: ServerState) -> Message:
    """S1 -> S0: the workers whose shares arrived (S0 holds every worker's share already, as a key)."""
    if state.party != 1:
        raise UnexpectedMessage("only S1 announces the participants")
    ids = [w for w in state.plan.worker_ids if w in state.inputs]
    return Message(PARTICIPANTS, state.plan.round_id, "S1", "S0", fields={"workers": ids})


def agree_participants(state: ServerState, s1_msg: Message | None, min_n: int, requirement: str = "") -> ServerState:
    """Participants = workers whose masked share reached S1, in plan order (S0 takes S1's list); abort if too few."""
    if state.party == 1:
        if s1_msg is not None:
            raise UnexpectedMessage("S1 fixes the participants from the shares it holds")
        agreed = tuple(w for w in state.plan.worker_ids if w in state.inputs)
    else:
        if s1_msg is None:
            raise UnexpectedMessage("S0 takes the participants from S1's list")
        _expect(state, s1_msg, PARTICIPANTS, "S1")
        theirs = s1_msg.fields.get("workers")
        if not isinstance(theirs, list) or not all(isinstance(w, int) and not isinstance(w, bool) for w in theirs):
            raise MalformedMessage("S0: participant list is not a list of worker ids")
        if len(set(theirs)) != len(theirs) or not set(theirs) <= set(state.plan.worker_ids):
            raise MalformedMessage("S0: S1's participant list repeats a worker or names one outside the plan")
        agreed = tuple(w for w in state.plan.worker_ids if w in set(theirs))
    if len(agreed) < min_n:
        raise RoundAborted(f"round {state.plan.round_id}: only {len(agreed)} workers reached both servers; "
                           f"the rule needs {requirement or f'at least {min_n}'}")
    return replace(state, participants=agreed, agreed=agreed)


# Step 0 (delivered): the triple.

def receive_triple(state: ServerState, msg: Message, ledger: TripleLedger) -> ServerState:
    """Accept the dealer's triple for this round's plan; a triple id seen before is refused."""
    _expect(state, msg, msg.kind, "dealer")
    triple = triple_from_message(msg)
    _check_triple(state, triple)
    ledger.claim(triple.spec.triple_id)
    return replace(state, triple=triple)


def install_triple(state: ServerState, triple: TripleShare0 | TripleShare1) -> ServerState:
    """Use a triple part delivered before this round opened (a network server's offline pool, which
    claimed its id in the ledger on delivery and hands each part out once)."""
    _check_triple(state, triple)
    if state.triple is not None:
        raise UnexpectedMessage(f"{state.name}: round {state.plan.round_id} already has its triple")
    return replace(state, triple=triple)


def _check_triple(state: ServerState, triple: TripleShare0 | TripleShare1) -> None:
    want = state.plan.triple_spec()
    if want is None or triple.spec != want:
        raise UnexpectedMessage(f"{state.name}: triple {triple.spec} does not match the round's plan {want}")
    if (state.party == 0) != isinstance(triple, TripleShare0):
        raise UnexpectedMessage(f"{state.name}: got the other server's part of the triple")


# Steps 2-3: S1 opens E row by row, both accumulate their share of H (``protocol.streaming``).

def _weighted_rows(state: ServerState, rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    """This server's share of X[rows, start:stop] (row indices among the participants)."""
    if state.party == 0:
        return sharing.input_rows(_input_master(state), state.positions()[rows], start, stop)
    workers = state._participants()
    out = np.empty((len(rows), stop - start), dtype=np.uint64)
    for r, i in enumerate(rows):
        out[r] = state.inputs[workers[i]][start:stop]
    return out


def _c_share(state: ServerState) -> np.ndarray:
    t = state.triple
    pos = state.positions()
    if isinstance(t, TripleShare0):
        c = dealer.c0_share(t.seed_c0, t.spec)
    else:
        c = t.c1
    return c[np.ix_(pos, pos)] if c.ndim == 2 else c[pos]


def gram_share(state: ServerState) -> np.ndarray:
    """This server's share of H once every participant's row of E is in."""
    if state.h is None:
        raise UnexpectedMessage(f"{state.name}: the masked openings are not complete")
    return state.h + _c_share(state)


# The input validity check (``secrobust.circuits.validity``): a joint seed, projections, comparisons on shares.

def validity_seed_message(state: ServerState, seed: bytes) -> tuple[ServerState, Message]:
    """Send this server's fresh contribution to the projections' seed, once every share is fixed."""
    state._participants()
    if not state.plan.validity or state.validity_own is not None:
        raise UnexpectedMessage(f"{state.name}: no validity seed is due")
    msg = Message(VALIDITY_SEED, state.plan.round_id, state.name, state.peer, fields={"seed": prg.check_seed(seed)})
    return replace(state, validity_own=msg.fields["seed"]), msg


def receive_validity_seed(state: ServerState, msg: Message) -> ServerState:
    _expect(state, msg, VALIDITY_SEED, state.peer)
    theirs = msg.fields.get("seed")
    if state.validity_own is None or state.validity_seed is not None:
        raise UnexpectedMessage(f"{state.name}: validity seed out of order")
    if not isinstance(theirs, bytes) or len(theirs) not in (16, 32):
        raise MalformedMessage(f"{state.name}: the validity seed must be 16 or 32 bytes")
    s0, s1 = (state.validity_own, theirs) if state.party == 0 else (theirs, state.validity_own)
    return replace(state, validity_seed=validity.joint_seed(state.plan.round_id, s0, s1))


def validity_party(state: ServerState) -> Party:
    """This server's side of the comparisons; the generator returns the public accept flags."""
    if state.checked or state.proj is None or state.triple is None or state.triple.seed_and is None:
        raise UnexpectedMessage(f"{state.name}: the validity check is not ready (projections or bit triples missing)")
    diag = gram_share(state)
    diag = np.diagonal(diag).copy() if diag.ndim == 2 else diag
    p = validity.params()
    center = state.plan.center
    norms = validity.norm_share(state.party, diag, state.proj[:, -1] if center is not None else None, center)
    t = state.triple
    source = AndSource.for_party(state.party, t.spec.triple_id, t.spec.and_words, t.seed_and,
                                 t.and_c1 if isinstance(t, TripleShare1) else None)
    return validity.check_circuit(state.party, state.proj[:, : p.projections], norms, p, source, state.plan.norm_bound)


def accept_workers(state: ServerState, flags: np.ndarray) -> ServerState:
    """Keep the workers that passed; a rejected worker is out of the round (no weight, no aggregate share)."""
    workers = state._participants()
    ok = np.asarray(flags, dtype=bool)
    if ok.shape != (len(workers),):
        raise MalformedMessage(f"{state.name}: {ok.size} validity flags for {len(workers)} participants")
    idx = np.flatnonzero(ok)
    h = state.h
    if h is not None:
        h = h[np.ix_(idx, idx)] if h.ndim == 2 else h[idx]
    rejected = {**state.rejected, **{w: validity.REASON for w, good in zip(workers, ok) if not good}}
    return replace(state, participants=tuple(workers[i] for i in idx), h=h, proj=None, checked=True,
                   rejected=rejected)


# Step 4: S0 sends its share of the view; S1 opens it.

def _view_shares(state: ServerState) -> dict[str, np.ndarray]:
    return view_words(gram_share(state), state.plan.reveal)


def view_share_message(state: ServerState) -> Message:
    if state.party != 0:
        raise UnexpectedMessage("only S0 sends its view share; S1 opens it")
    return Message(VIEW_SHARE, state.plan.round_id, "S0", "S1", arrays=_view_shares(state))


def open_view(state: ServerState, msg: Message) -> ServerState:
    """S1 adds S0's shares to its own: it learns the distances (and/or norms) and nothing else."""
    if state.party != 1:
        raise UnexpectedMessage("only S1 opens the view")
    _expect(state, msg, VIEW_SHARE, "S0")
    own = _view_shares(state)
    if set(msg.arrays) != set(own):
        raise MalformedMessage(f"S1: view share holds {sorted(msg.arrays)}, expected {sorted(own)}")
    opened = {}
    for key, mine in own.items():
        theirs = msg.arrays[key]
        if theirs.dtype != np.uint64 or theirs.shape != mine.shape:
            raise MalformedMessage(f"S1: view share {key} must be uint64 of shape {mine.shape}")
        opened[key] = ring.decode(mine + theirs, 2 * state.plan.frac_bits)
    return replace(state, view=View(**opened))


def empty_view(state: ServerState) -> ServerState:
    """Rules that open nothing (the mean) skip steps 2-4."""
    if state.plan.reveal:
        raise UnexpectedMessage(f"{state.name}: this round opens {state.plan.reveal}")
    return replace(state, view=View())


# Steps 4-5 on shares (reveal="weights" or "aggregate"): the rule's circuit replaces S1's opening.

def rule_party(state: ServerState, rule: SecureRule, f: int, options: dict) -> Party:
    """This server's side of the rule on the shared view (``rules.modes``). Returns the opened ring weights
    and center weight (n + 1,) with reveal="weights"; with reveal="aggregate" (weights (plan rows,), center
    weight, the peer's w - u), after one more exchange: each server's weight shares over the plan's rows,
    masked by the dealer's uniform u (S0) or u' (S1)."""
    plan = state.plan
    if not plan.on_shares:
        raise UnexpectedMessage(f"{state.name}: round {plan.round_id} runs no rule on shares")
    if plan.rule_budget.is_empty():
        src = arith.Dealt.empty(state.party)
    elif state.triple is None:
        raise UnexpectedMessage(f"{state.name}: round {plan.round_id} has no triple for its rule on shares")
    else:
        src = state.triple.rule_source()
    view = view_words(gram_share(state), rule.needs) if rule.needs else {}
    n = len(state._participants())
    rows = np.arange(n)
    out = yield from _at_least_one_round(rule.circuit(state.party, view, n, f, options, plan.view_range,
                                                      src, inputs=lambda a, b: _weighted_rows(state, rows, a, b),
                                                      d=plan.d, frac_bits=plan.frac_bits))
    if rule.output == "aggregate":
        return out
    w, cw = out
    if plan.mode == "weights":
        opened = yield from arith.open_ring(state.party, np.append(w, cw))
        return rule.publish(opened, n, f, options)
    full = np.zeros(len(plan.worker_ids), dtype=np.uint64)
    full[state.positions()] = w
    u, _ = state.triple.vector_parts()
    mine = full - u
    peer = yield mine
    if not isinstance(peer, np.ndarray) or peer.dtype != np.uint64 or peer.shape != mine.shape:
        raise ValueError(f"masked weights must be uint64 of shape {mine.shape}")
    return full, np.uint64(cw), peer


def _at_least_one_round(circuit: Party) -> Party:
    """``circuit``, or one exchange of empty arrays if it needs no round, so both servers always step."""
    try:
        msg = next(circuit)
    except StopIteration as stop:
        peer = yield np.zeros(0, dtype=np.uint64)
        if not isinstance(peer, np.ndarray) or peer.size:
            raise ValueError("expected an empty opening")
        return stop.value
    while True:
        peer = yield msg
        try:
            msg = circuit.send(peer)
        except StopIteration as stop:
            return stop.value


def apply_rule_output(state: ServerState, out) -> ServerState:
    """Take the rule circuit's result: public weights ("weights") or this server's shares ("aggregate")."""
    if state.plan.mode == "weights":
        n = len(state._participants())
        values = np.asarray(out, dtype=np.float64)
        if values.shape != (n + 1,):
            raise MalformedMessage(f"{state.name}: {values.size} opened weights for {n} participants")
        return replace(state, choice=Choice(values[:n], float(values[n])))
    if not state.plan.weighted_sum:
        share = np.asarray(out, dtype=np.uint64)
        if share.shape != (state.plan.d,):
            raise MalformedMessage(f"{state.name}: the rule's aggregate share has shape {share.shape}")
        return replace(state, rule_aggregate=share)
    return replace(state, shared_weights=out)


# Step 5: the public weights.

def weights_message(state: ServerState, choice: Choice, dropped: tuple[int, ...] = ()) -> tuple[ServerState, Message]:
    """S1's public weights; ``dropped`` lists workers S1 excluded because their opened view was impossible."""
    if state.party != 1:
        raise UnexpectedMessage("only S1, the rule server, chooses the weights")
    w = np.asarray(choice.weights, dtype=np.float64)
    if w.shape != (len(state._participants()),) or not np.isfinite(w).all() or not np.isfinite(choice.center_weight):
        raise ValueError(f"S1: the rule returned weights of shape {w.shape}, expected ({len(state._participants())},) finite")
    fields: dict = {"center_weight": float(choice.center_weight), "participants": participants_digest(state)}
    if dropped:
        fields["rejected"] = list(dropped)
    msg = Message(WEIGHTS, state.plan.round_id, "S1", "S0", fields=fields, arrays={"weights": w})
    rejected = {**state.rejected, **{w_id: validity.VIEW_REASON for w_id in dropped}}
    return replace(state, choice=Choice(w, float(choice.center_weight)), rejected=rejected), msg


def participants_digest(state: ServerState) -> str:
    """A short hash of the round's final participants, so S0 can confirm it weights the same rows as S1."""
    text = ",".join(str(w) for w in state._participants())
    return hashlib.sha256(f"{state.plan.round_id}|{text}".encode()).hexdigest()[:32]


def receive_weights(state: ServerState, msg: Message) -> ServerState:
    _expect(state, msg, WEIGHTS, "S1")
    if msg.fields.get("participants") != participants_digest(state):
        raise UnexpectedMessage("S0: S1's weights are for another set of participants (the servers disagree on "
                                "who passed the input validity check)")
    w = msg.arrays.get("weights")
    cw = msg.fields.get("center_weight")
    n = len(state._participants())
    if w is None or w.dtype != np.float64 or w.shape != (n,) or not np.isfinite(w).all():
        raise MalformedMessage(f"S0: weights must be {n} finite float64 values")
    if isinstance(cw, bool) or not isinstance(cw, (int, float)) or not np.isfinite(cw):
        raise MalformedMessage("S0: center weight must be a finite number")
    dropped = msg.fields.get("rejected", [])
    if not isinstance(dropped, list) or not set(dropped) <= set(state._participants()):
        raise MalformedMessage("S0: rejected workers must be a list of participants")
    rejected = {**state.rejected, **{w_id: validity.VIEW_REASON for w_id in dropped}}
    return replace(state, choice=Choice(np.array(w), float(cw)), rejected=rejected)


# Step 6: the aggregate.

def aggregate_share(state: ServerState, noise: np.ndarray | None = None) -> np.ndarray:
    """Share of sum_i w_i x_i at scale 2^(F+W) (plus this server's noise, already at that scale); only the
    rows with a non-zero weight are read."""
    if state.plan.mode == "aggregate":
        out = state.rule_aggregate if not state.plan.weighted_sum else _shared_weights_sum(state)
        if out is None:
            raise UnexpectedMessage(f"{state.name}: the rule on shares has not finished")
        return out if noise is None else out + noise
    if state.choice is None:
        raise UnexpectedMessage(f"{state.name}: no weights yet")
    w = ring.encode_weights(state.choice.weights)
    rows = np.flatnonzero(w)
    out = np.zeros(state.plan.d, dtype=np.uint64)
    if len(rows):
        for start, stop in dealer.chunk_columns(len(rows), state.plan.d, state.plan.chunk_bytes):
            out[start:stop] = np.matmul(w[rows], _weighted_rows(state, rows, start, stop))
    if noise is not None:
        out += noise
    return out


def _shared_weights_sum(state: ServerState) -> np.ndarray:
    """reveal="aggregate": this server's share of sum_i w_i x_i + w_v v with w shared.

    X = X0 + X1 with X0 = A0 (S0's) and E = X1 - v - A1 opened to S0; a worker outside the opening counts as
    x1_i = a1_i + v, e_i = 0, w_i = 0. With the dealer's u, u' and r0 + c1 = u^T A1 + u'^T A0:
      S0: (w0 + w1 - u')^T X0 + u^T E + (sum u) v + r0 + w_v0 v
      S1: (w1 + w0 - u)^T X1 + c1 + w_v1 v
    These add up to w^T X + w_v v: -u'^T X0 + u'^T A0 = 0 and u^T (E + A1 - X1) = -(sum u) v."""
    if state.shared_weights is None:
        raise UnexpectedMessage(f"{state.name}: no shared weights yet")
    full, cw, peer_delta = state.shared_weights
    coef = full + peer_delta
    plan = state.plan
    n, d = len(plan.worker_ids), plan.d
    center = plan.center
    out = np.zeros(d, dtype=np.uint64)
    if state.party == 0:
        master = _input_master(state)
        for start, stop in dealer.chunk_columns(n, d, plan.chunk_bytes):
            out[start:stop] = np.matmul(coef, sharing.input_rows(master, np.arange(n), start, stop))
        u, r0 = state.triple.vector_parts()
        out += r0
        if state.u_dot_e is not None:
            out += state.u_dot_e
        if center is not None:
            out += u.sum(dtype=np.uint64) * center
    else:
        _, c1 = state.triple.vector_parts()
        out += c1
        order = {w: i for i, w in enumerate(plan.worker_ids)}
        opened = [order[w] for w in state.agreed or ()]
        for pos in opened:
            if coef[pos]:
                out += coef[pos] * state.inputs[plan.worker_ids[pos]]
        missing = np.setdiff1d(np.arange(n), opened)
        rows = missing[coef[missing] != 0]
        if rows.size:
            t = state.triple
            for start, stop in dealer.chunk_columns(rows.size, d, plan.chunk_bytes):
                a1 = dealer.mask_columns(t.seed_a1, t.spec, 1, start, stop, rows)
                out[start:stop] += np.matmul(coef[rows], a1)
            if center is not None:
                out += coef[rows].sum(dtype=np.uint64) * center
    if center is not None:
        out += cw * center
    return out


def aggregate_message(state: ServerState, share: np.ndarray) -> Message:
    return Message(AGGREGATE_SHARE, state.plan.round_id, state.name, state.peer, arrays={"share": share})


def reveal_aggregate(state: ServerState, own_share: np.ndarray, peer_msg: Message) -> np.ndarray:
    """sum_i w_i x_i + w_v v, decoded from the two shares."""
    _expect(state, peer_msg, AGGREGATE_SHARE, state.peer)
    theirs = peer_msg.arrays.get("share")
    if theirs is None or theirs.dtype != np.uint64 or theirs.shape != own_share.shape:
        raise MalformedMessage(f"{state.name}: aggregate share must be uint64 of shape {own_share.shape}")
    choice = state.choice if state.choice is not None else Choice(np.zeros(0))
    return finish_aggregate(own_share + theirs, state.plan.frac_bits, state.plan.center, choice)


MAX_GAUSSIAN = 8.58
"""prg.gaussian draws from 53-bit uniforms, so |z| <= sqrt(2 * 53 ln 2) < 8.58."""


def max_noise_std(frac_bits: int) -> float:
    """The largest DP noise std whose shares cannot wrap: each server's noise stays below 2^61 at the
    aggregate's scale 2^(F+W), so both noises plus an aggregate below 2^59 stay below 2^63."""
    return 2.0 ** (61 - frac_bits - ring.WEIGHT_FRAC_BITS) / MAX_GAUSSIAN


def check_noise_std(std: float, frac_bits: int) -> None:
    if not (np.isfinite(std) and std >= 0):
        raise ValueError(f"dp_noise_std must be finite and >= 0, got {std}")
    if std > max_noise_std(frac_bits):
        raise ValueError(f"dp_noise_std {std:g} is above {max_noise_std(frac_bits):.6g}, the largest the aggregate's "
                         f"fixed point holds at frac_bits={frac_bits} (the noise would wrap in Z_2^64); lower "
                         "frac_bits for more noise")


def noise_share(seed: bytes, purpose: str, d: int, std: float, frac_bits: int) -> np.ndarray:
    """N(0, std^2) per coordinate from a keystream, encoded at the aggregate's scale 2^(F+W)."""
    check_noise_std(std, frac_bits)
    z = prg.gaussian(seed, purpose, d) * std
    return np.rint(z * 2.0 ** (frac_bits + ring.WEIGHT_FRAC_BITS)).astype(np.int64).view(np.uint64)
