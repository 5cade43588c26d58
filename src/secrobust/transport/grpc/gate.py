"""Caps on concurrent calls per certificate, so that no caller can hold a party's handler threads.

gRPC serves every call on one thread pool. Without caps, one worker certificate with 40 long polls in
flight (or a handler stuck on a bad deadline) takes the threads the other server, the dealer and the
operator need, and the round fails. The pool is sized ``workers_total + reserved``: workers together
never hold more than ``workers_total`` threads (each at most ``per_worker``), so ``reserved`` threads
are always left for the protocol's own parties (each at most ``per_party``). A call over a cap is
refused at once with ``busy``; it never waits for a thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ...pki.certs import worker_index
from .errors import Rejected

PER_WORKER = 3
"""A worker makes one call at a time to a server (poll, key, share, aggregate); one more may be ending."""
PER_PARTY = 16
"""The other server (rows of E in flight, control), the dealer (prefetched triples), an operator."""
PROTOCOL_PARTIES = 3
"""Non-worker callers a party admits at most: the other server, the dealer and its operator."""


@dataclass(frozen=True)
class CallLimits:
    per_worker: int
    workers_total: int
    per_party: int
    reserved: int
    streamer: str | None = None
    """A party that may hold ``streams`` calls more than ``per_party`` (the other server's forwarded rows)."""
    streams: int = 0

    @classmethod
    def for_workers(cls, n_workers: int, streamer: str | None = None, streams: int = 0) -> "CallLimits":
        """Room for every worker's call at once twice over, plus all the protocol parties' calls (and the
        ``streams`` more that ``streamer`` may hold)."""
        return cls(PER_WORKER, 2 * n_workers + 8, PER_PARTY, PROTOCOL_PARTIES * PER_PARTY + streams,
                   streamer, streams)

    def cap(self, caller: str, worker: bool) -> int:
        """The calls ``caller`` may have in progress at once."""
        if worker:
            return self.per_worker
        return self.per_party + (self.streams if caller == self.streamer else 0)

    @property
    def threads(self) -> int:
        return self.workers_total + self.reserved


class CallGate:
    """``enter(caller)`` takes one of the caller's slots (or raises ``Rejected("busy")``); call the
    returned function once the call is over."""

    def __init__(self, limits: CallLimits, is_worker: Callable[[str], bool] | None = None) -> None:
        self.limits = limits
        self._is_worker = is_worker or (lambda name: worker_index(name) is not None)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._workers = 0
        self._others = 0

    def enter(self, caller: str) -> Callable[[], None]:
        worker = self._is_worker(caller)
        cap = self.limits.cap(caller, worker)
        with self._lock:
            if self._calls[caller] >= cap:
                raise Rejected("busy", f"{caller} already has {cap} calls in progress here (the most it may have)")
            if worker and self._workers >= self.limits.workers_total:
                raise Rejected("busy", f"workers already have {self.limits.workers_total} calls in progress here")
            if not worker and self._others >= self.limits.reserved:
                raise Rejected("busy", f"{self.limits.reserved} calls of the protocol parties are in progress here")
            self._calls[caller] += 1
            if worker:
                self._workers += 1
            else:
                self._others += 1
        done = False

        def release() -> None:
            nonlocal done
            with self._lock:
                if done:
                    return
                done = True
                self._calls[caller] -= 1
                if not self._calls[caller]:
                    del self._calls[caller]
                if worker:
                    self._workers -= 1
                else:
                    self._others -= 1
        return release

    def in_progress(self, caller: str) -> int:
        with self._lock:
            return self._calls[caller]
