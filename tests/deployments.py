"""One way to run a test deployment (tests/net, tests/flower): processes on loopback with test options, and
the check that none outlives its fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from secrobust.deploy.local import LocalOptions

TEST_OPTIONS: dict[str, Any] = {"share_window_s": 20.0, "peer_timeout_s": 15.0, "connect_timeout_s": 2.0,
                                "insecure_test_seeds": True}
"""Windows long enough for a loaded 2-core machine; test seeds so DP noise can equal the in-process run's."""


def test_options(**overrides: Any) -> LocalOptions:
    return LocalOptions(**{**TEST_OPTIONS, **overrides})


def running(kind: Callable[..., Any], n: int, folder: Path, **overrides: Any) -> Iterator[Any]:
    """``kind(n, folder, options)`` (a ``LocalDeployment`` or ``FlowerServers``) started for a fixture's
    lifetime; afterwards every process it started has exited."""
    with kind(n, folder, test_options(**overrides)) as dep:
        yield dep
    assert all(not c.alive for c in dep.children.values())
