"""Steps 2-3 of ``protocol.server`` by rows: S1 opens E one worker at a time, as its share arrives, and
both servers accumulate their Gram share in row blocks while the other uploads continue.

This is the only way a round opens E: the in-process run (``secrobust.api``, through ``S1Rows``/``S0Rows``
on ``protocol.nodes``) and the deployment send the same messages, so once the last share is in, a round
is about one block of Gram work away from its distances. Ring arithmetic is exact, so neither the order
in which rows arrive nor the block sizes change a single bit of H. Pure functions of arrays: no I/O, no
randomness, no clock.

Notation as in ``protocol.server``: worker i has plan position p_i (its row of the triple); S0's input
share of x_i is a0_{p_i} (row p_i of the dealer's A0, PRG of the key S0 handed worker i); S1 holds
x1_i = x_i - a0_{p_i}; a1_p is row p of S1's mask A1; v is the public center (0 unless cclip);
C = A0 A0^T + A0 A1^T + A1 A0^T = C0 + C1. Then:

  * S1, as x1_i arrives:  e_i = x1_i - v - a1_{p_i}  ->  S0 (one ``open_kind`` message per worker,
    8d bytes: in all 8nd bytes, as the chunked opening). e_i is uniform: a1_{p_i} is a one-time pad
    that S0 never sees.
  * S1 keeps its rows in arrival order in one matrix X (row k = the k-th share in) and accumulates
    G1 = X X^T by row blocks: once rows [s, t) are in,
        G1[s:t, :t] = X[s:t] X[:t]^T,   G1[:s, s:t] = G1[s:t, :s]^T,
    (t - s) t d multiply-adds per block, about n^2 d / 2 in all, as the symmetric chunked product.
    The center is never subtracted from the stored rows: with u_k = <x1_k, v>,
        Y1 Y1^T = X X^T - u 1^T - 1 u^T + <v, v> 1 1^T.
  * S0 keeps A0 for every planned position (n_plan x d, the dealer's mask: known before any share)
    and, for each block b of arriving rows, fills the columns of their positions:
        G0[:, p_b] = 2 A0 E_b^T
    (n_plan |b| d each; n_plan n d in all, as the chunked product).
  * "diag" triples (rules that open norms only, and the checked mean): G1_k = <x1_k, x1_k> (center as
    above: - 2 u_k + <v, v>), G0_p = 2 <a0_p, e_p>, row by row.
  * With the participants fixed (the workers whose share reached S1, in plan order), S1's share of H
    without C is G1 at their arrival slots, S0's is G0 at their positions (``state.h`` of
    ``protocol.server``, set by ``complete``), since
        H0 + H1 = 2 A0 E^T + Y1 Y1^T + C, symmetrised = Y Y^T  (Y = A0 + E + A1).

The input validity check projects each server's input share (S1: x1_k, S0: a0_p; plus <x, v> for a
center) with the round's joint seed, which the servers still fix after every share arrived, so no
worker can adapt to the projections. "Arrived" means at S1: S1 closes its intake, fixes the participants
and sends its seed contribution while rows of E may still be on their way to S0, and both servers
project (``Projector``, column chunk by column chunk) while the last rows travel; only the comparisons
wait for every row.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..circuits import validity
from ..errors import MalformedMessage, RoundAborted, UnexpectedMessage
from ..gates import dealer
from ..gates.dealer import TripleShare0, TripleShare1
from ..primitives import kernel
from .messages import Message
from .server import RoundPlan, ServerState

BLOCK_ROWS = 16
"""Rows per Gram block at most: few enough that the last block (the work left once the last share is in)
stays small."""
SLICE_COLUMNS = 1 << 16
"""Columns of a block of rows of E that S0 copies together (16 x 2^16 words = 8 MB at most)."""
MIN_BLOCK = 8
"""Rows per Gram block at least while more rows are coming: a product with fewer rows is bound by reading
the stored n x d matrix once per block (a single row costs about 3x its share of an 8-row block)."""


# S1: the opening of one row, and its Gram share by row blocks.

def opening_row(x1: np.ndarray, t: TripleShare1, position: int, center: np.ndarray | None) -> np.ndarray:
    """e = x1 - v - a1_position (a fresh vector; x1 is left as it is)."""
    return opening_columns(x1, t, position, center, 0)


def opening_columns(x1_part: np.ndarray, t: TripleShare1, position: int, center: np.ndarray | None,
                    start: int) -> np.ndarray:
    """Columns [start, start + len(x1_part)) of ``opening_row``: e is column-wise, so S1 can open a share's
    columns as they arrive, and the pieces of a row concatenate to the whole row."""
    stop = start + len(x1_part)
    e = dealer.mask_columns(t.seed_a1, t.spec, 1, start, stop, np.array([position]))[0]
    np.subtract(x1_part, e, out=e)
    if center is not None:
        e -= center[start:stop]
    return e


def opening_message(round_id: int, kind: str, worker: int, e: np.ndarray) -> Message:
    """S1 -> S0: worker's row of E (kind: the plan's ``open_kind``)."""
    return Message(kind, round_id, "S1", "S0", fields={"worker": int(worker)}, arrays={"e": e})


def read_opening(msg: Message, worker_ids: tuple[int, ...], seen, d: int) -> tuple[int, np.ndarray]:
    """S0: (worker, e) from S1's row message, checked: a planned worker not seen before, d words."""
    worker = msg.fields.get("worker")
    if isinstance(worker, bool) or not isinstance(worker, int) or worker not in worker_ids:
        raise UnexpectedMessage(f"S0: masked opening for worker {worker!r}, who is not in the round")
    if worker in seen:
        raise UnexpectedMessage(f"S0: a second masked opening for worker {worker}")
    e = msg.arrays.get("e")
    if e is None or e.dtype != np.uint64 or e.shape != (d,) or set(msg.arrays) != {"e"}:
        raise MalformedMessage(f"S0: a masked opening row must be uint64 of shape ({d},)")
    return worker, e


def _gram_buffer(size: int, kind: str) -> np.ndarray:
    """Zeros for a Gram share of ``size`` rows: (size, size) for a gram triple, (size,) for a diag one."""
    if kind not in ("gram", "diag"):
        raise ValueError(f"triple kind is gram or diag, not {kind!r}")
    return np.zeros((size, size) if kind == "gram" else size, dtype=np.uint64)


class RowGram:
    """S1's X X^T (or its diagonal) for the rows of X in arrival order, accumulated block by block."""

    def __init__(self, capacity: int, kind: str) -> None:
        self.kind = kind
        self.g = _gram_buffer(capacity, kind)
        self.done = 0

    def add(self, x: np.ndarray, stop: int) -> None:
        """Take rows [done, stop) of x (rows [0, done) were taken before)."""
        s = self.done
        if not s <= stop <= x.shape[0]:
            raise ValueError(f"rows [{s}, {stop}) of {x.shape[0]}")
        if stop == s:
            return
        if self.kind == "diag":
            self.g[s:stop] = kernel.rowdot(x[s:stop], x[s:stop])
        else:
            part = kernel.matmul_t(x[s:stop], x[:stop])
            self.g[s:stop, :stop] = part
            self.g[:s, s:stop] = part[:, :s].T
        self.done = stop

    def share(self, slots: np.ndarray, u: np.ndarray | None, vv: np.uint64 | None) -> np.ndarray:
        """S1's share of H without C1, for the rows at ``slots`` (in that order): Y1 Y1^T from X X^T with
        u = <x1_slot, v> at those slots and vv = <v, v> (None without a center)."""
        if np.any(slots >= self.done):
            raise UnexpectedMessage("S1: a participant's row is not in the Gram share yet")
        if self.kind == "diag":
            h = self.g[slots].copy()
            if u is not None:
                h -= u + u
                h += vv
            return h
        h = self.g[np.ix_(slots, slots)]
        if u is not None:
            h -= u[:, None]
            h -= u[None, :]
            h += vv
        return h


def center_products(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    """<x_k, v> mod 2^64 for each row of x (as ``protocol.server``'s projections compute them)."""
    return np.matmul(x, center)


# S0: the columns of its Gram share, from the rows of E.

class ColumnGram:
    """S0's 2 A0 E^T (or its diagonal), A0 holding every planned position, filled as rows of E arrive."""

    def __init__(self, n_plan: int, kind: str) -> None:
        self.kind = kind
        self.g = _gram_buffer(n_plan, kind)
        self.filled: set[int] = set()

    def add(self, a0: np.ndarray, positions: list[int], e_rows: list[np.ndarray]) -> None:
        """Take the rows of E of the workers at ``positions`` (a block; each position once per round)."""
        if len(positions) != len(e_rows) or not set(positions).isdisjoint(self.filled):
            raise UnexpectedMessage("S0: a masked opening row for a position that has one already")
        if not positions:
            return
        pos = np.asarray(positions, dtype=np.int64)
        if self.kind == "diag":
            part = np.array([kernel.rowdot(a0[p:p + 1], e[None, :])[0] for p, e in zip(positions, e_rows)],
                            dtype=np.uint64)
        else:
            # column slices of the block, so the rows of E are never copied whole
            part = np.zeros((a0.shape[0], len(e_rows)), dtype=np.uint64)
            for c in range(0, a0.shape[1], SLICE_COLUMNS):
                block = np.stack([e[c:c + SLICE_COLUMNS] for e in e_rows])
                part += kernel.matmul_t(a0[:, c:c + SLICE_COLUMNS], block)
        part += part
        if self.kind == "diag":
            self.g[pos] = part
        else:
            self.g[:, pos] = part
        self.filled.update(positions)

    def share(self, positions: np.ndarray) -> np.ndarray:
        """S0's share of H without C0 for the participants at ``positions`` (plan order)."""
        if not set(positions.tolist()) <= self.filled:
            raise UnexpectedMessage("S0: a participant's masked opening row has not arrived")
        return self.g[np.ix_(positions, positions)] if self.kind == "gram" else self.g[positions].copy()


def weighted_sum(plan) -> bool:
    """reveal="aggregate" with shared weights: S0 needs u^T E (not when the rule's circuit yields the aggregate
    share itself, as the coordinate-wise rules' do)."""
    return plan.mode == "aggregate" and getattr(plan, "weighted_sum", True)


class WeightedRows:
    """S0, reveal="aggregate": u^T E over the rows of E as they arrive, u the dealer's mask of S0's weight
    shares (``TripleShare0.vector_parts``), for ``protocol.server``'s sum with shared weights."""

    def __init__(self, t: TripleShare0) -> None:
        self.u, _ = t.vector_parts()
        self.total = np.zeros(t.spec.d, dtype=np.uint64)

    def add(self, positions: list[int], e_rows: list[np.ndarray]) -> None:
        for p, e in zip(positions, e_rows):
            if self.u[p]:
                self.total += self.u[p] * e


def s0_rows(t: TripleShare0, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A0's rows at ``positions`` (= S0's input shares of those workers), whole rows (expanded into ``out``
    when given)."""
    return dealer.mask_columns(t.seed_a0, t.spec, 0, 0, t.spec.d, positions, out)


# The validity check's projections, and the finished state.

class Projector:
    """This server's shares of the projections <r_j, x_k> (and, with a center, <x_k, v>) for the rows of x at
    ``rows`` (in that order), one column chunk (about ``chunk_bytes`` of rows) per ``step``, so a server can
    take rows of E between chunks: ``proj`` is that of ``protocol.server`` after the last chunk. The seed is
    the round's joint seed, fixed after every share arrived."""

    def __init__(self, x: np.ndarray, rows: np.ndarray, seed: bytes, center: np.ndarray | None,
                 chunk_bytes: int = dealer.DEFAULT_CHUNK_BYTES) -> None:
        self.x, self.rows, self.seed, self.center = x, np.asarray(rows, dtype=np.int64), seed, center
        self.leading = bool(np.array_equal(self.rows, np.arange(len(self.rows))))
        """The rows are x's first ones in order (every worker took part): chunks are views, not copies."""
        self.lam = validity.params().projections
        self.chunks = dealer.chunk_columns(len(self.rows), x.shape[1], chunk_bytes)
        self.next = 0
        self.proj = np.zeros((len(self.rows), self.lam + (center is not None)), dtype=np.uint64)

    @property
    def done(self) -> bool:
        return self.next == len(self.chunks)

    def step(self) -> None:
        start, stop = self.chunks[self.next]
        part = self.x[:len(self.rows), start:stop] if self.leading else self.x[self.rows, start:stop]
        self.proj[:, :self.lam] += validity.project_columns(part, self.seed, self.lam, start)
        if self.center is not None:
            self.proj[:, self.lam] += np.matmul(part, self.center[start:stop])
        self.next += 1

    def run(self) -> np.ndarray:
        while not self.done:
            self.step()
        return self.proj


def project_rows(x: np.ndarray, rows: np.ndarray, seed: bytes, center: np.ndarray | None,
                 chunk_bytes: int = dealer.DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """``Projector(...).run()``: all chunks at once."""
    return Projector(x, rows, seed, center, chunk_bytes).run()


def complete(state: ServerState, h: np.ndarray, proj: np.ndarray | None,
             u_dot_e: np.ndarray | None = None) -> ServerState:
    """The server state after steps 2-3 for the agreed participants: its share of H without C (``RowGram``
    or ``ColumnGram``), with the check on its projections (``Projector``), and with reveal="aggregate"
    S0's u^T E (``WeightedRows``)."""
    if (u_dot_e is not None) != (state.party == 0 and weighted_sum(state.plan)):
        raise ValueError(f"{state.name}: u^T E is S0's, with reveal='aggregate' only")
    n = len(state._participants())
    want = (n, n) if state.plan.triple_kind == "gram" else (n,)
    if h.shape != want or (state.plan.validity and (proj is None or proj.shape[0] != n)):
        raise ValueError(f"{state.name}: Gram share of shape {h.shape} for {n} participants")
    if state.triple is None:
        raise UnexpectedMessage(f"{state.name}: no triple for round {state.plan.round_id}")
    if state.h is not None:
        raise UnexpectedMessage(f"{state.name}: the masked openings were already taken")
    return replace(state, h=h, proj=proj if state.plan.validity else None, u_dot_e=u_dot_e)


# One round's rows at one server, from the first share to ``complete``.

class S1Rows:
    """S1's masked shares in arrival order (row k of one n_plan x d matrix is the k-th share in), how many
    of them were opened to S0 (``open``), and its Gram share of the opened rows by blocks of ``MIN_BLOCK``
    to ``BLOCK_ROWS`` (with <x1_k, v> for a center)."""

    def __init__(self, plan: RoundPlan, rows: np.ndarray | None = None) -> None:
        """``rows``: an n_plan x d uint64 matrix to hold the shares (one kept across rounds saves mapping fresh
        pages each round); a new one if None."""
        n = len(plan.worker_ids)
        self.plan = plan
        self.position = {w: i for i, w in enumerate(plan.worker_ids)}
        if rows is not None and (rows.dtype != np.uint64 or rows.shape != (n, plan.d) or not rows.flags.c_contiguous):
            raise ValueError(f"S1's share matrix must be a contiguous uint64 array of shape {(n, plan.d)}")
        self.rows = np.empty((n, plan.d), dtype=np.uint64) if rows is None else rows
        self.order: list[int] = []
        self.opened = 0
        kind = plan.triple_kind
        self.gram = RowGram(n, kind) if kind else None
        self.u = np.zeros(n, dtype=np.uint64) if kind and plan.center is not None else None

    def take(self, worker: int, x1: np.ndarray) -> np.ndarray:
        """Copy ``worker``'s share into the next row (unless it is that row already) and return that row."""
        slot = len(self.order)
        row = self.rows[slot]
        if not _same_memory(row, x1):
            row[...] = x1
        self.order.append(worker)
        return row

    def open(self, triple: TripleShare1) -> list[Message]:
        """The rows of E (``opening_message``) of the shares taken since the last call, in arrival order."""
        plan = self.plan
        out = []
        for k in range(self.opened, len(self.order)):
            w = self.order[k]
            out.append(opening_message(plan.round_id, plan.open_kind, w,
                                       opening_row(self.rows[k], triple, self.position[w], plan.center)))
        self.opened = len(self.order)
        return out

    def gram_due(self, closed: bool, min_rows: int = MIN_BLOCK) -> bool:
        """A block of at least ``min_rows`` opened rows is ready for the Gram share (any size once no more
        shares come)."""
        waiting = self.opened - self.gram.done if self.gram is not None else 0
        return waiting >= min_rows or (closed and waiting > 0)

    def add_block(self) -> None:
        """The next opened rows, ``BLOCK_ROWS`` at most, into the Gram share."""
        done = self.gram.done
        upto = min(self.opened, done + BLOCK_ROWS)
        self.gram.add(self.rows, upto)
        if self.u is not None:
            self.u[done:upto] = center_products(self.rows[done:upto], self.plan.center)

    def slots(self, workers: tuple[int, ...]) -> np.ndarray:
        """The arrival slot of each of ``workers``."""
        slot = {w: k for k, w in enumerate(self.order)}
        return np.array([slot[w] for w in workers], dtype=np.int64)

    def share(self, workers: tuple[int, ...]) -> np.ndarray:
        """S1's share of H without C1 for ``workers`` (plan order), every opened row in the Gram share."""
        while self.gram_due(True):
            self.add_block()
        rows = self.slots(workers)
        center = self.plan.center
        vv = np.dot(center, center) if center is not None else None
        return self.gram.share(rows, None if self.u is None else self.u[rows], vv)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b are the same words (same start, shape and strides), as a share built in its slot is."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides and a.dtype == b.dtype)


class S0Rows:
    """S0's A0 for every planned position, the columns of its Gram share 2 A0 E^T filled from S1's rows of
    E as they come (by blocks of at most ``BLOCK_ROWS``), u^T E with reveal="aggregate", and the workers
    whose row came, in arrival order."""

    def __init__(self, plan: RoundPlan, triple: TripleShare0, a0: np.ndarray | None = None) -> None:
        """``a0``: an n_plan x d uint64 matrix to expand A0 into (kept across rounds, as S1's rows); new if None."""
        n = len(plan.worker_ids)
        self.plan = plan
        self.position = {w: i for i, w in enumerate(plan.worker_ids)}
        self.a0: np.ndarray | None = s0_rows(triple, np.arange(n), a0)
        self.gram = ColumnGram(n, plan.triple_kind)
        self.weighted = WeightedRows(triple) if weighted_sum(plan) else None
        self.order: list[int] = []
        self.listed: set[int] | None = None
        """S1's participants, once S0 has them: a row of anyone else aborts the round."""

    def take(self, msgs: list[Message]) -> None:
        """S1's rows of E (each checked by ``read_opening``: a planned worker, once, d words)."""
        plan = self.plan
        for start in range(0, len(msgs), BLOCK_ROWS):
            seen = set(self.order)
            opened = []
            for msg in msgs[start:start + BLOCK_ROWS]:
                w, e = read_opening(msg, plan.worker_ids, seen, plan.d)
                if self.listed is not None and w not in self.listed:
                    raise RoundAborted("S1 opened the row of a worker it did not list as a participant")
                seen.add(w)
                opened.append((self.position[w], e))
            positions, rows = [p for p, _ in opened], [e for _, e in opened]
            self.gram.add(self.a0, positions, rows)
            if self.weighted is not None:
                self.weighted.add(positions, rows)
            self.order.extend(plan.worker_ids[p] for p in positions)

    def check_listed(self, participants: tuple[int, ...]) -> None:
        """S1 opened no row of a worker it did not list as a participant (nor will: later rows are checked)."""
        self.listed = set(participants)
        extra = set(self.order) - self.listed
        if extra:
            raise RoundAborted(f"S1 opened the rows of {sorted(extra)} but did not list them as participants")

    def share(self, positions: np.ndarray) -> np.ndarray:
        """S0's share of H without C0 for the participants at ``positions``; A0 is let go (the aggregate share
        expands again the few rows it weights)."""
        self.a0 = None
        return self.gram.share(positions)

    @property
    def u_dot_e(self) -> np.ndarray | None:
        return None if self.weighted is None else self.weighted.total
