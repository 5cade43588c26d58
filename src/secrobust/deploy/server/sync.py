"""The one Condition a server's parts share, and the one way they wait on it."""

from __future__ import annotations

import threading
import time
from typing import Callable

WAKE_S = 1.0
"""The longest a waiter sleeps before it looks again, notified or not."""


class Monitor:
    """A server's lock and its one Condition: every part changes its state under it and notifies it when a
    waiter may go on; ``closing`` is set once the server stops, and releases every wait."""

    def __init__(self) -> None:
        self.cv = threading.Condition(threading.RLock())
        self.closing = False

    def __enter__(self) -> Monitor:
        self.cv.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cv.__exit__(*exc)

    def notify(self) -> None:
        """Wake every waiter (the lock is held)."""
        self.cv.notify_all()

    def wait_until(self, ready: Callable[[], bool], deadline: float | Callable[[], float] | None = None) -> bool:
        """With the lock held, wait until ``ready()`` holds (True) or the ``time.monotonic()`` ``deadline``
        passes first (False), looking again at every notify and at least every ``WAKE_S``. None waits for
        good; a callable is read before each wait, for a loop whose next wake-up moves with its state."""
        while not ready():
            due = deadline() if callable(deadline) else deadline
            if due is None:
                self.cv.wait(WAKE_S)
                continue
            left = due - time.monotonic()
            if left <= 0:
                return False
            self.cv.wait(min(left, WAKE_S))
        return True
