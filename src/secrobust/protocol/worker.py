"""The worker's step: secret-share an encoded update between the two servers.

Worker i sends its 16-byte seed s_i to S0 (S0's share is PRG(s_i)) and x_i - PRG(s_i) to S1.
S0 sees a seed independent of x_i; S1 sees a uniformly random vector.
"""

from __future__ import annotations

import numpy as np

from .. import prg, sharing
from .messages import SHARE_MASKED, SHARE_SEED, Message


def worker_name(worker_id: int) -> str:
    return f"worker:{worker_id}"


def share_label(round_id: int, worker_id: int) -> str:
    return prg.label("share", round_id, "worker", worker_id)


def share_update(round_id: int, worker_id: int, encoded: np.ndarray, seed: bytes) -> tuple[Message, Message]:
    """(message to S0 with the seed, message to S1 with the masked vector) for one encoded update."""
    x = np.asarray(encoded)
    if x.dtype != np.uint64 or x.ndim != 1:
        raise ValueError(f"a worker shares one encoded uint64 vector, got {x.dtype} of shape {x.shape}")
    seed, masked = sharing.share_compressed(x, seed, share_label(round_id, worker_id))
    sender = worker_name(worker_id)
    to_s0 = Message(SHARE_SEED, round_id, sender, "S0", fields={"worker": worker_id, "seed": seed, "d": int(x.size)})
    to_s1 = Message(SHARE_MASKED, round_id, sender, "S1", fields={"worker": worker_id}, arrays={"x1": masked})
    return to_s0, to_s1
