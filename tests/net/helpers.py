"""Helpers of the multi-process tests: a worker played by the test itself, a round run in a thread,
and the comparison with the in-process oracle."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

import secrobust
from secrobust.deploy.local import LocalDeployment, in_process_reference
from secrobust.pki.certs import worker_party
from secrobust.primitives import ring
from secrobust.protocol import messages as M
from secrobust.protocol.messages import Message
from secrobust.protocol.worker import share_key, share_update
from secrobust.transport.grpc import PeerClient
from secrobust.transport.lane import BulkClient


class FakeWorker:
    """Worker ``wid`` driven step by step from the test (its own process sits the round out)."""

    def __init__(self, dep: LocalDeployment, wid: int, party: str | None = None) -> None:
        self.wid = wid
        ident = dep.identity(party or worker_party(wid))
        self.s0 = PeerClient(ident, "S0", dep.addresses["S0"], connect_timeout=3.0)
        self.s1 = PeerClient(ident, "S1", dep.addresses["S1"], connect_timeout=3.0)

    def wait_open(self, after: int = -1, timeout: float = 20.0) -> dict[str, Any]:
        """The public parameters of the next round once it is open at both servers (as a real worker waits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.s0.control("status", args={"after": after, "wait_s": 2.0}).get("round")
            if info and info["intake_open"] and info["round_id"] > after:
                other = self.s1.control("status", args={"after": after, "wait_s": 2.0}).get("round")
                if other and other["intake_open"] and other["round_id"] == info["round_id"]:
                    return info
        raise TimeoutError("no round opened")

    def key(self, round_id: int, d: int, wait_s: float = 20.0) -> bytes:
        """This worker's share key, fetched from S0 (once per round) and checked."""
        return share_key(self.s0.fetch(round_id, M.SHARE_KEY, wait_s=wait_s), round_id, self.wid, d)

    def share(self, round_id: int, update: np.ndarray, frac_bits: int = ring.DEFAULT_FRAC_BITS) -> Message:
        """Fetch the key from S0 and make the masked share for S1, as a worker process does."""
        x = ring.encode(update, frac_bits)
        return share_update(round_id, self.wid, x, self.key(round_id, x.size))

    def close(self) -> None:
        self.s0.close()
        self.s1.close()


def worker_lane(dep: LocalDeployment, wid: int) -> BulkClient:
    """A bulk-lane client to S1 under worker ``wid``'s certificate (the port S1 announces in its status)."""
    port = dep.operator.clients["S1"].control("status")["bulk"]
    return BulkClient(dep.identity(worker_party(wid)), "S1", f"127.0.0.1:{port}", connect_timeout=2.0)


class Background:
    """``dep.aggregate(...)`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn(*args, **kwargs)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 120.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the round did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def assert_same_result(got: secrobust.AggregateResult, want: secrobust.AggregateResult, *, bytes_too: bool = True) -> None:
    """Everything ``aggregate`` returns is identical, bit for bit (timings aside)."""
    assert np.array_equal(got.aggregate, want.aggregate)
    assert np.array_equal(got.weights, want.weights)
    if want.distances is None:
        assert got.distances is None
    else:
        assert np.array_equal(got.distances, want.distances, equal_nan=True)
    assert set(got.revealed) == set(want.revealed)
    for key, value in want.revealed.items():
        assert np.array_equal(got.revealed[key], value, equal_nan=True)
    assert got.participants == want.participants
    assert got.center_weight == want.center_weight
    assert (got.rule, got.f) == (want.rule, want.f)
    assert got.rejected == want.rejected
    if bytes_too:
        assert dict(got.stats.bytes_sent) == dict(want.stats.bytes_sent)
        assert dict(got.stats.bytes_received) == dict(want.stats.bytes_received)
        assert dict(got.stats.messages_sent) == dict(want.stats.messages_sent)
        assert got.stats.servers_bytes() == want.stats.servers_bytes()
        assert set(got.stats.seconds) == set(want.stats.seconds)


def oracle(dep: LocalDeployment, x: np.ndarray, rule: str, f: int, **kw: Any) -> tuple[int, secrobust.AggregateResult]:
    """The in-process run with the round id the deployment will use next, its byte counts as the deployment
    counts them (``secrobust.deploy.local.in_process_reference``)."""
    assert dep.operator is not None
    round_id = dep.operator.next_round_id()
    return round_id, in_process(round_id, x, rule, f, **kw)


def in_process(round_id: int, x: np.ndarray, rule: str, f: int, **kw: Any) -> secrobust.AggregateResult:
    """``secrobust.aggregate`` as round ``round_id`` of a Cluster, with the deployment's byte counts."""
    return in_process_reference(round_id, x, rule, f, **kw)


def pooled(dep: LocalDeployment, round_id: int, timeout: float = 30.0) -> str:
    """The id of the triple both servers hold, delivered, for ``round_id`` (waits for the prefetch to land)."""
    assert dep.operator is not None
    deadline = time.monotonic() + timeout
    while True:
        pools = {name: {e["round_id"]: e for e in st["triples"]} for name, st in dep.operator.status().items()}
        entries = [pools[name].get(round_id) for name in ("S0", "S1")]
        if all(e is not None and e["state"] == "ready" for e in entries):
            assert entries[0]["triple_id"] == entries[1]["triple_id"]  # type: ignore[index]
            return entries[1]["triple_id"]  # type: ignore[index]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no delivered triple for round {round_id} in both pools: {pools}")
        time.sleep(0.05)


def log_records(dep: LocalDeployment, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of one party process."""
    import json

    return [json.loads(line) for line in dep.children[name].log.read_text().splitlines() if line.startswith("{")]


def refusal_after_the_call_ends(send: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The refusal of ``send()`` once the server has ended the worker's earlier upload: a client sees its
    call cut a moment before the server's handler lets go of it, and until then a new upload of the same
    worker is refused as ``duplicate`` (already sending)."""
    from secrobust.transport.grpc import RemoteRejected

    deadline = time.monotonic() + timeout
    while True:
        try:
            send()
        except RemoteRejected as exc:
            if exc.code != "duplicate" or time.monotonic() > deadline:
                return exc
            time.sleep(0.1)
            continue
        raise AssertionError("the server took the upload")
