"""What a security review found in the deployment, each written as the attack first.

* One worker certificate must not be able to hold the servers' handler threads (NaN long polls, a flood
  of ordinary ones): the round after the flood completes.
* A fixed test seed is refused by servers not started for tests (it would make the DP noise known).
* Each server has its own operator; S1's opened view reaches only S1's operator; two servers opened with
  different requests abort instead of mixing them.
* The minimum cohort holds over the network, after dropouts, and a request cannot lower it.
* A worker has one share in flight at a time (each takes an 8d-byte buffer before it is checked), and a
  control command's caller is checked before its JSON body is parsed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import secrobust
from secrobust.deploy.local import LocalDeployment, LocalOptions
from secrobust.deploy.rounds import RoundRequest
from secrobust.protocol import messages as M
from secrobust.transport.grpc import PeerClient, RemoteRejected
from secrobust.transport.grpc import secrobust_pb2 as pb
from secrobust.transport.grpc import wire
from secrobust.transport.grpc.gate import PER_WORKER

from .helpers import Background, FakeWorker, assert_same_result, oracle, refusal_after_the_call_ends

N = 6
WINDOW = 5.0


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = LocalDeployment(N, tmp_path_factory.mktemp("dep"),
                        LocalOptions(share_window_s=20.0, peer_timeout_s=10.0, connect_timeout_s=2.0))
    with d:
        yield d


def _updates(seed: int, d: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=d) + 0.2 * rng.normal(size=(N, d))) * 0.1


def _code(fn) -> str:
    with pytest.raises(RemoteRejected) as info:
        fn()
    return info.value.code


def _control(command: str, payload: bytes, sender: str, round_id: int = 0) -> bytes:
    return pb.ControlRequest(version=M.VERSION, round_id=round_id, sender=sender, command=command,
                             json=payload).SerializeToString()


def test_non_finite_or_negative_waits_are_refused_everywhere(dep):
    fake = FakeWorker(dep, 0)
    op = dep.operator.clients
    try:
        for client, name in ((fake.s0, "S0"), (fake.s1, "S1")):
            for bad in (b"NaN", b"Infinity", b"-Infinity", b"-1", b'"5"', b"true"):
                payload = b'{"wait_s": ' + bad + b"}"
                started = time.monotonic()
                assert _code(lambda: client.call_raw("Control", _control("status", payload, "worker:0"))) \
                    == "bad-request"
                assert time.monotonic() - started < 5.0          # refused at once, no handler held
                assert _code(lambda: op[name].call_raw("Control", _control("report", payload, op[name].identity.party))) \
                    == "bad-request"
            assert _code(lambda: client.call_raw("Control", _control("status", b'{"after": "x"}', "worker:0"))) \
                == "bad-request"
    finally:
        fake.close()


def test_a_flood_of_long_polls_from_one_worker_is_capped_and_the_next_round_completes(dep):
    fake = FakeWorker(dep, 0)
    last = dep.operator.next_round_id() - 1
    outcomes: list[str] = []
    lock = threading.Lock()

    def poll(client: PeerClient) -> None:
        try:
            client.control("status", args={"after": last, "wait_s": 60.0}, timeout=90.0)
            out = "answered"
        except RemoteRejected as exc:
            out = exc.code
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=poll, args=(c,), daemon=True) for c in (fake.s0, fake.s1) for _ in range(40)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            with lock:
                if outcomes.count("busy") >= 2 * (40 - PER_WORKER):
                    break
            time.sleep(0.05)
        with lock:   # all but PER_WORKER per server refused at once (worker 0's own process may hold one too)
            assert outcomes.count("busy") >= 2 * (40 - PER_WORKER)
        x = _updates(1)
        _, want = oracle(dep, x, "krum", 1, drop={0: "both"})
        got = dep.aggregate(x, "krum", 1, absent=[0], share_window_s=WINDOW)
        assert_same_result(got, want)                                 # the protocol still had its threads
        for t in threads:
            t.join(30.0)
        assert not any(t.is_alive() for t in threads)
        assert outcomes.count("answered") <= 2 * PER_WORKER           # the held polls ended with the new round
        assert outcomes.count("busy") + outcomes.count("answered") == 80
    finally:
        fake.close()


def test_a_test_seed_is_refused_by_servers_not_started_for_tests(dep):
    x = _updates(2)
    with pytest.raises(RemoteRejected, match="insecure_test_seeds") as info:
        dep.aggregate(x, "mean", 0, dp_noise_std=0.01, insecure_test_seed=3)
    assert info.value.code == "not-permitted"
    assert dep.aggregate(x, "mean", 0).participants == tuple(range(N))   # and nothing was left open


def test_each_server_admits_only_its_own_operator_and_s1s_view_goes_only_to_operator_s1(dep):
    x = _updates(3)
    dep.aggregate(x, "krum", 1)
    r = dep.operator.next_round_id() - 1
    op0, op1 = dep.operator.clients["S0"], dep.operator.clients["S1"]
    assert op0.identity.party == "operator:S0" and op1.identity.party == "operator:S1"
    crossed = PeerClient(op0.identity, "S1", dep.addresses["S1"], connect_timeout=2.0)
    try:
        assert _code(lambda: crossed.control("report", r)) == "unknown-party"
        assert _code(lambda: crossed.control("open-round", r + 1, {})) == "unknown-party"
    finally:
        crossed.close()
    assert "view" in op1.control("report", r) and "view" not in op0.control("report", r)
    assert np.asarray(op1.control("report", r)["view"]["distances"]).shape == (N, N)


def test_servers_opened_with_different_requests_abort_before_using_a_share(dep):
    x = _updates(4)
    op = dep.operator
    r = op.next_round_id()
    base = op.with_triples(RoundRequest(round_id=r, worker_ids=tuple(range(N)), d=x.shape[1], rule="krum", f=1,
                                        share_window_s=WINDOW))
    other = replace(base, rule="multi-krum")   # same triple, another rule: S1 would pick other weights
    op.clients["S0"].control("open-round", r, base.to_json())
    op.clients["S1"].control("open-round", r, other.to_json())
    reps = op.reports(r, wait_s=30.0)
    for name in ("S0", "S1"):
        assert reps[name]["status"] == "aborted", reps[name]
        assert "different requests" in reps[name]["reason"]
    assert reps["S1"]["view"] == {} and reps["S0"]["participants"] == []
    _, want = oracle(dep, x, "krum", 1)
    assert_same_result(dep.aggregate(x, "krum", 1), want)          # the next round is fine


def test_the_minimum_cohort_holds_over_the_network(dep):
    x = _updates(5)
    with pytest.raises(ValueError, match="at least 5 participants"):
        dep.aggregate(x[:4], "mean", 0)                              # refused before anything starts
    with pytest.raises(ValueError, match="at least 5 participants"):
        dep.aggregate(x[:4], "mean", 0, min_participants=2)           # a request cannot lower the servers' floor
    with pytest.raises(secrobust.RoundAborted, match="at least 5 participants"):
        dep.aggregate(x, "mean", 0, absent=[0, 1], share_window_s=WINDOW)
    with pytest.raises(secrobust.RoundAborted, match="at least 6 participants"):
        dep.aggregate(x, "mean", 0, absent=[0], share_window_s=WINDOW, min_participants=6)
    r = dep.operator.next_round_id()
    small = dep.operator.with_triples(RoundRequest(round_id=r, worker_ids=(0, 1, 2), d=x.shape[1], rule="mean"))
    assert _code(lambda: dep.operator.clients["S0"].control("open-round", r, small.to_json())) == "bad-request"
    got = dep.aggregate(x, "mean", 0, absent=[0], share_window_s=WINDOW)
    assert got.participants == (1, 2, 3, 4, 5)


def test_a_worker_has_one_share_in_flight_at_a_time(dep):
    x = _updates(6, d=300_000)         # 2.4 MB: three chunks of the wire's 1 MiB
    fake = FakeWorker(dep, 5)
    go = threading.Event()
    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[5], share_window_s=WINDOW)
        info = fake.wait_open()
        msg = fake.share(info["round_id"], x[5])
        first = wire.encode(msg)
        again = wire.encode(msg)        # the same share under a fresh message id: no replay, a second upload
        assert first.envelope.chunk_count > 2

        def held():
            chunks = wire.chunks(first)
            yield next(chunks)          # the envelope: S1 prechecks it and takes the worker's upload slot
            go.wait(20.0)
            yield from chunks

        def attempt(channel):
            call = channel.stream_unary("/secrobust.v1.Party/Send", request_serializer=pb.Chunk.SerializeToString,
                                        response_deserializer=pb.Ack.FromString)
            return call(held(), timeout=60.0)

        sending = Background(fake.s1._call, attempt)
        time.sleep(1.0)
        with pytest.raises(RemoteRejected, match="already sending") as info_err:
            fake.s1.send_encoded(again)
        assert info_err.value.code == "duplicate"
        go.set()
        sending.result(60.0)
        got = run.result()
    finally:
        go.set()
        fake.close()
    assert 5 in got.participants


def test_a_control_command_is_refused_by_caller_before_its_body_is_parsed(dep):
    fake = FakeWorker(dep, 1)
    try:
        for client in (fake.s0, fake.s1):
            for command in ("open-round", "report", "shutdown"):
                assert _code(lambda: client.call_raw("Control", _control(command, b"{not json", "worker:1"))) \
                    == "not-permitted"
            assert _code(lambda: client.call_raw("Control", _control("confirm-request", b"{not json", "worker:1"))) \
                == "not-permitted"
    finally:
        fake.close()


def test_a_stalled_grpc_upload_loses_its_slot_and_its_worker_is_dropped(dep):
    """The attack: open a share upload, send the envelope (S1 reserves one of its upload slots), then send
    nothing. S1 cancels the stream once it falls behind the upload pace (5 s of grace, then 1 MB/s), drops
    the worker from the round (a second try is refused: no certificate holds a slot twice), and the round
    goes on without it."""
    from secrobust.transport.grpc import pace

    x = _updates(7, d=300_000)
    fake = FakeWorker(dep, 5)
    go = threading.Event()
    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[5], share_window_s=50.0)
        info = fake.wait_open()
        msg = fake.share(info["round_id"], x[5])
        out = wire.encode(msg)

        def stalled():
            chunks = wire.chunks(out)
            yield next(chunks)
            go.wait(90.0)

        def attempt(channel):
            call = channel.stream_unary("/secrobust.v1.Party/Send", request_serializer=pb.Chunk.SerializeToString,
                                        response_deserializer=pb.Ack.FromString)
            return call(stalled(), timeout=120.0)

        started = time.monotonic()
        with pytest.raises(Exception):
            fake.s1._call(attempt)          # cancelled by S1 once it fell behind
        assert time.monotonic() - started < pace.UPLOAD_GRACE_S + 30
        go.set()
        again = refusal_after_the_call_ends(lambda: fake.s1.send(msg))
        assert again.code == "out-of-phase" and "dropped" in str(again)
        got = run.result()
    finally:
        go.set()
        fake.close()
    assert 5 not in got.participants and len(got.participants) == N - 1


def test_the_dealer_learns_nothing_from_the_servers_status(dep):
    """The dealer is to learn n, d, the triple kind and id only; a server's ``status`` would tell it each
    round's timing and participant counts, so the servers refuse it to the dealer (it never needs it)."""
    dep.aggregate(_updates(8), "krum", 1)
    for name in ("S0", "S1"):
        client = PeerClient(dep.identity("dealer"), name, dep.addresses[name], connect_timeout=2.0)
        try:
            assert _code(lambda: client.control("status", args={"wait_s": 0.0})) == "not-permitted"
            assert _code(lambda: client.call_raw("Control", _control("status", b"{not json", "dealer"))) \
                == "not-permitted"
        finally:
            client.close()
    x = _updates(9)
    _, want = oracle(dep, x, "krum", 1)
    assert_same_result(dep.aggregate(x, "krum", 1), want)        # the dealer still serves the next round
