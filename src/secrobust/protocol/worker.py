"""The worker's steps: secret-share an encoded update between the two servers, then rebuild the aggregate.

S0 hands worker i a 16-byte key k_i (SHARE_KEY); S0's share of x_i is x0_i = PRG(k_i), which is also
row i of the dealer's mask A_0. The worker sends x_i - x0_i to S1 (SHARE_MASKED) and nothing to S0.
S0 sees nothing from the worker; S1 sees a uniformly random vector; the worker learns k_i, a key
chosen before it had an update and used for nothing else. At the end each server sends its share of the
aggregate with the round's public data (AGGREGATE_SHARE); ``reconstruct`` checks that both state the same
data and adds the shares.
"""

from __future__ import annotations

import numpy as np

from ..errors import MalformedMessage, ProtocolError, UnexpectedMessage
from ..primitives import prg, ring, sharing
from ..rules.view import Choice
from .messages import SHARE_KEY, SHARE_MASKED, Message


def worker_name(worker_id: int) -> str:
    return f"worker:{worker_id}"


def share_key(msg: Message, round_id: int, worker_id: int, d: int) -> bytes:
    """The key in S0's SHARE_KEY message, checked to be for this worker, round and dimension."""
    if msg.kind != SHARE_KEY or msg.sender != "S0" or msg.recipient != worker_name(worker_id):
        raise UnexpectedMessage(f"{worker_name(worker_id)}: expected S0's {SHARE_KEY}, got {msg.kind} from {msg.sender}")
    if msg.round_id != round_id or msg.fields.get("worker") != worker_id or msg.fields.get("d") != d:
        raise UnexpectedMessage(f"{worker_name(worker_id)}: the share key is for round {msg.round_id}, worker "
                                f"{msg.fields.get('worker')!r}, d={msg.fields.get('d')!r}")
    key = msg.fields.get("key")
    if not isinstance(key, bytes) or len(key) not in (16, 32):
        raise MalformedMessage(f"{worker_name(worker_id)}: the share key must be 16 or 32 bytes")
    return key


def share_update(round_id: int, worker_id: int, encoded: np.ndarray, key: bytes, *, in_place: bool = False) -> Message:
    """The message to S1 holding x - PRG(key), for one encoded update and the key S0 handed out.
    ``in_place`` overwrites ``encoded`` with the masked vector (a worker that no longer needs its encoding)."""
    x = np.asarray(encoded)
    if x.dtype != np.uint64 or x.ndim != 1:
        raise ValueError(f"a worker shares one encoded uint64 vector, got {x.dtype} of shape {x.shape}")
    if in_place:
        masked = x
        prg.subtract_ring_stream(prg.check_seed(key), sharing.INPUT_PURPOSE, masked)
    else:
        pad = prg.ring_stream(prg.check_seed(key), sharing.INPUT_PURPOSE, x.size)
        masked = np.subtract(x, pad, out=pad)
    return _share_message(round_id, worker_id, masked)


def _share_message(round_id: int, worker_id: int, masked: np.ndarray) -> Message:
    return Message(SHARE_MASKED, round_id, worker_name(worker_id), "S1", fields={"worker": worker_id},
                   arrays={"x1": masked})


def share_header(round_id: int, worker_id: int, d: int) -> bytes:
    """The first bytes of ``share_update``'s message on the wire (``Message.to_bytes``), up to its vector: what
    S1 expects of worker ``worker_id``'s share in ``round_id`` before its 8d bytes of x1."""
    return _share_message(round_id, worker_id, np.empty(d, dtype=np.uint64)).wire_header()


def finish_aggregate(total: np.ndarray, frac_bits: int, center: np.ndarray | None, choice: Choice) -> np.ndarray:
    """Decode sum_i w_i x_i from scale 2^(F+W) and add the public center's part w_v v."""
    out = ring.decode(total, frac_bits + ring.WEIGHT_FRAC_BITS)
    if center is not None and choice.center_weight:
        out = out + choice.center_weight * ring.decode(center, frac_bits)
    return out


def reconstruct(m0: Message, m1: Message) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """The aggregate from the two servers' AGGREGATE_SHARE messages; both must state the same public data.
    The weights are None when the round kept them shared (``reveal="aggregate"``): the servers send none."""
    if (m0.sender, m1.sender) != ("S0", "S1") or m0.round_id != m1.round_id:
        raise ProtocolError("aggregate shares must come from S0 and S1 for the same round")
    for key in ("participants", "center_weight", "frac_bits", "reveal"):
        if m0.fields.get(key) != m1.fields.get(key):
            raise ProtocolError(f"S0 and S1 disagree on the round's {key}")
    w0, w1 = m0.arrays.get("weights"), m1.arrays.get("weights")
    s0, s1 = m0.arrays.get("share"), m1.arrays.get("share")
    hidden = m0.fields.get("reveal") == "aggregate"
    if hidden and (w0 is not None or w1 is not None):
        raise ProtocolError("a round with reveal='aggregate' publishes no weights")
    if not hidden and (w0 is None or w1 is None or not np.array_equal(w0, w1)):
        raise ProtocolError("S0 and S1 disagree on the public weights")
    if s0 is None or s1 is None or s0.dtype != np.uint64 or s1.dtype != np.uint64 or s0.shape != s1.shape:
        raise ProtocolError("aggregate shares must be two uint64 vectors of one shape")
    c0, c1 = m0.arrays.get("center"), m1.arrays.get("center")
    if (c0 is None) != (c1 is None) or (c0 is not None and not np.array_equal(c0, c1)):
        raise ProtocolError("S0 and S1 disagree on the public center")
    frac_bits = m0.fields["frac_bits"]
    cw = m0.fields["center_weight"]
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not isinstance(cw, (int, float)):
        raise ProtocolError("aggregate share fields frac_bits/center_weight have the wrong type")
    weights = None if hidden else np.array(w0, dtype=np.float64)
    out = finish_aggregate(s0 + s1, frac_bits, c0, Choice(np.zeros(0) if weights is None else weights, float(cw)))
    return out, weights, list(m0.fields["participants"])
