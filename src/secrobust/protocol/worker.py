"""The worker's step: secret-share an encoded update between the two servers.

S0 hands worker i a 16-byte key k_i (SHARE_KEY); S0's share of x_i is x0_i = PRG(k_i), which is also
row i of the dealer's mask A_0. The worker sends x_i - x0_i to S1 (SHARE_MASKED) and nothing to S0.
S0 sees nothing from the worker; S1 sees a uniformly random vector; the worker learns k_i, a key
chosen before it had an update and used for nothing else.
"""

from __future__ import annotations

import numpy as np

from ..errors import MalformedMessage, UnexpectedMessage
from ..primitives import prg, sharing
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
    pad = prg.ring_stream(prg.check_seed(key), sharing.INPUT_PURPOSE, x.size)
    masked = np.subtract(x, pad, out=x if in_place else pad)
    return Message(SHARE_MASKED, round_id, worker_name(worker_id), "S1", fields={"worker": worker_id},
                   arrays={"x1": masked})
