"""A worker's own Python process as the deployed worker: ``Worker(config).submit(update)``.

The worker process (``secrobust worker``, ``deploy.worker.WorkerRuntime.serve``) reads each round's update
from its inbox. A training process can instead call this API with the update it just computed::

    from secrobust.deploy import Worker

    with Worker("deploy/worker-3/worker-3.toml") as worker:     # the file ``secrobust init`` wrote
        for step in range(100):
            update = train_locally()                             # a float64 vector of length d
            out = worker.submit(update)                          # the next round open at both servers
            apply(out.aggregate)

``submit`` waits for a round that is open at both servers and expects this worker, then does exactly what
the worker process does for it (``WorkerRuntime.participate``: encode, S0's share key, the masked share to
S1, both servers' aggregate shares) and returns the ``WorkerOutcome`` (``round_id``, ``aggregate``,
``weights``, ``participants``). Run either this API or a worker process for one worker id, not both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProtocolError, RoundAborted
from ..transport.grpc.logs import event
from .config import PartyConfig, load
from .worker import WorkerInput, WorkerOutcome, WorkerRuntime

POLL_S = 10.0
"""Longest single status long-poll while waiting for a round (the whole wait is ``submit``'s ``timeout``)."""


class NotExpected(ProtocolError):
    """The round named in ``submit(round_id=...)`` does not expect this worker, or has already passed."""


class Worker:
    """One worker's client of S0 and S1, driven by the caller's own process.

    ``config`` is the worker's TOML file (``secrobust init`` writes one per worker: its key, certificates
    and the servers' addresses; no ``inbox`` needed) or a loaded ``PartyConfig``. ``out_dir`` saves each
    round's aggregate as ``round-<r>.npy``, as ``secrobust worker --out`` does. The TLS channels open
    lazily and are kept across rounds; ``close()`` (or ``with``) closes them.
    """

    def __init__(self, config: str | Path | PartyConfig, *, out_dir: str | Path | None = None) -> None:
        cfg = config if isinstance(config, PartyConfig) else load(Path(config))
        cfg.check()
        if cfg.role != "worker":
            raise ValueError(f"{cfg.party} is not a worker; give a worker's configuration (party = \"worker:<i>\")")
        self._pending: WorkerInput | None = None
        self.runtime = WorkerRuntime(cfg, cfg.identity(), self._source,
                                     out_dir=None if out_dir is None else Path(out_dir))

    @property
    def worker_id(self) -> int:
        return self.runtime.worker_id

    def _source(self, round_id: int, d: int) -> WorkerInput | None:
        return self._pending

    def submit(self, update: Any, *, round_id: int | None = None, timeout: float = 300.0) -> WorkerOutcome:
        """Share ``update`` (a float vector of the round's length d) in a round and return its outcome.

        With ``round_id=None``, the next round open at both servers that expects this worker and is newer
        than the last one this ``Worker`` took part in (rounds that do not expect it are skipped); with a
        round id, that round (``NotExpected`` if it does not expect this worker or is already past).
        Waits up to ``timeout`` seconds for the round to open (``TimeoutError``); then the round's own
        deadlines apply. Returns the outcome with ``aggregate``, ``weights`` (None with
        ``reveal="aggregate"``) and ``participants``. Raises ``ValueError`` when the encoder refuses the
        update (wrong d, NaN, above the range): the worker then declines the round at both servers, with that
        reason, as the inbox worker does; ``RoundAborted`` when a server refused the share or the round
        ended without an aggregate; ``PartyUnreachable`` when a server cannot be reached.
        """
        rt = self.runtime
        inp = WorkerInput(np.asarray(update, dtype=np.float64).reshape(-1))
        if round_id is not None:
            rt.last_round = min(rt.last_round, int(round_id) - 1)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                which = "a round" if round_id is None else f"round {round_id}"
                raise TimeoutError(f"worker {self.worker_id}: {which} did not open at both servers within {timeout:g} s")
            info = rt.wait_for_round(max(0.0, min(POLL_S, left)))
            if info is None:
                continue
            r = int(info["round_id"])
            if round_id is not None and r < round_id:
                rt.last_round = r                   # an older round still open: wait for ours
                continue
            if round_id is not None and r > round_id:
                raise NotExpected(f"round {round_id} has passed: the servers have round {r} open")
            if not info.get("expected", False):
                if round_id is not None:
                    raise NotExpected(f"round {r} does not expect worker {self.worker_id}")
                event(rt.log, "round-skipped", round=r, reason="not expected")
                rt.last_round = r
                continue
            break
        self._pending = inp
        try:
            outcome = rt.participate(info)
        finally:
            self._pending = None
        if outcome.status == "done":
            return outcome
        if outcome.status == "error":               # declined: the encoder refused the update
            raise ValueError(f"worker {self.worker_id}, round {outcome.round_id}: {outcome.detail}")
        event(rt.log, "submit-failed", level=logging.WARNING, round=outcome.round_id, status=outcome.status,
              detail=outcome.detail)
        raise RoundAborted(f"worker {self.worker_id}, round {outcome.round_id}: {outcome.status}: {outcome.detail}")

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["NotExpected", "Worker", "WorkerOutcome"]
