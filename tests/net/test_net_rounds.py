"""Rounds over a real deployment: dealer, S0, S1 and 7 workers, each its own OS process, mutual TLS on
loopback. Every result is compared with the in-process run (the oracle), bit for bit."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from deployments import running

import secrobust
from secrobust.circuits import validity
from secrobust.deploy.local import LocalDeployment
from secrobust.pki.ceremony import make_deployment_certs
from secrobust.primitives import ring
from secrobust.protocol import messages as M
from secrobust.protocol.messages import Message
from secrobust.protocol.worker import share_update
from secrobust.transport.grpc import RemoteRejected, wire

from .helpers import (
    Background,
    FakeWorker,
    assert_same_result,
    log_records,
    oracle,
    pooled,
)

N_WORKERS = 7
WINDOW = 3.0


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    yield from running(LocalDeployment, N_WORKERS, tmp_path_factory.mktemp("dep"))


def _updates(seed: int, n: int = 6, d: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) * 0.5 + 0.1 * rng.normal(size=(n, d))
    x[0] = -3.0 * x[0]
    return x


RULES = [("mean", 0, {}), ("krum", 1, {}), ("multi-krum", 1, {"m": 3}), ("geomed", 1, {"iterations": 4}),
         ("mda", 1, {}), ("norm-clip", 1, {"tau": 0.8}), ("cclip", 1, {"tau": 0.5}),
         ("cclip", 1, {"center": "x1"})]


@pytest.mark.parametrize(("rule", "f", "options"), RULES, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(RULES)])
def test_every_rule_gives_the_in_process_result_exactly(dep, rule, f, options):
    x = _updates(len(rule))
    options = {k: (x[1] * 0.5 if v == "x1" else v) for k, v in options.items()}
    _, want = oracle(dep, x, rule, f, **options)
    got = dep.aggregate(x, rule, f, **options)
    assert_same_result(got, want)
    assert got.stats.as_dict()["delivered_bytes"]


def test_the_next_rounds_triple_is_issued_before_that_round_opens_and_used_from_the_pool(dep):
    dep.aggregate(_updates(30), "krum", 1)            # also asks the dealer for the next round's triple
    nxt = dep.operator.next_round_id()
    tid = pooled(dep, nxt)                            # delivered to both servers before the round opens
    x = _updates(31)
    _, want = oracle(dep, x, "multi-krum", 1, m=3)    # another rule, the same (n, d, kind): same triple
    got = dep.aggregate(x, "multi-krum", 1, m=3)
    assert_same_result(got, want)                     # byte counts too: the round is charged for its triple
    for name in ("S0", "S1"):
        report = dep.operator.clients[name].control("report", nxt)
        assert report["triple"]["triple_id"] == tid and report["triple"]["prefetched"]
        assert report["triple"]["ready_at_open"] and report["traffic"]["by_peer"]["dealer"]["messages_received"] == 1
        opened = [r for r in log_records(dep, name) if r["event"] == "round-open" and r["round"] == nxt]
        pooled_at = [r for r in log_records(dep, name) if r["event"] == "triple-pooled" and r["triple_id"] == tid]
        assert len(opened) == 1 and opened[0]["triple_id"] == tid and len(pooled_at) == 1
        assert pooled_at[0]["ts"] < opened[0]["ts"] and pooled_at[0]["round"] == nxt
    issued = [r for r in log_records(dep, "dealer") if r["event"] == "triple-issued" and r["triple_id"] == tid]
    assert len(issued) == 1 and issued[0]["round"] == nxt
    s1_open = next(r for r in log_records(dep, "S1") if r["event"] == "round-open" and r["round"] == nxt)
    assert issued[0]["ts"] < s1_open["ts"]
    assert got.stats.seconds["offline"] < 0.5         # no wait for the dealer in that round
    # S0 expanded the pooled triple's A0 (its input shares) before the round opened, off its clock
    assert dep.operator.clients["S0"].control("report", nxt)["triple"]["a0_ahead"] is True
    first = dep.operator.clients["S0"].control("report", nxt - 1)["triple"]
    assert "a0_ahead" in first


def test_a_pooled_triple_for_another_shape_is_discarded_and_never_used(dep):
    dep.aggregate(_updates(32), "krum", 1)
    nxt = dep.operator.next_round_id()
    stale = pooled(dep, nxt)
    x = _updates(33, d=41)                            # another d: the pooled triple does not fit
    _, want = oracle(dep, x, "krum", 1)
    assert_same_result(dep.aggregate(x, "krum", 1), want)
    for name in ("S0", "S1"):
        assert [r["round"] for r in log_records(dep, name)
                if r["event"] == "triple-discarded" and r["triple_id"] == stale] == [nxt]
        assert stale not in {e["triple_id"] for e in dep.operator.status()[name]["triples"]}
    from secrobust.deploy.rounds import RoundRequest
    r = dep.operator.next_round_id()
    for request in (RoundRequest(r, tuple(range(6)), 40, "krum", 1, triple_id=stale),
                    RoundRequest(r, tuple(range(6)), 40, "krum", 1, triple_id="r-fresh", prefetch=((r + 1, stale),))):
        with pytest.raises(RemoteRejected) as info:
            dep.operator.open_round(request)
        assert info.value.code == "duplicate" and info.value.party == "S0" and "never reused" in info.value.reason
    assert dep.operator.next_round_id() == r         # nothing was opened
    x = _updates(34)
    assert_same_result(dep.aggregate(x, "krum", 1), oracle(dep, x, "krum", 1)[1])


def test_small_column_chunks_and_a_byzantine_worker_outside_the_encoder(dep):
    """The opening streams one row per worker whatever chunk_bytes is; the projections and the aggregate
    share run in several column chunks."""
    x = _updates(3, d=3000)
    x[2] = 1e9
    r, want = oracle(dep, x, "krum", 1, unchecked=[2], chunk_bytes=6 * 8 * 700)
    got = dep.aggregate(x, "krum", 1, unchecked=[2], chunk_bytes=6 * 8 * 700)
    assert_same_result(got, want)
    opened = [rec for rec in log_records(dep, "S0") if rec["event"] == "received" and rec["round"] == r
              and rec["phase"] == M.MASKED_OPEN]
    assert len(opened) == 6 and all(rec["bytes"] > 8 * 3000 for rec in opened)


def _wrapped_row(x: np.ndarray) -> np.ndarray:
    """A Byzantine ring vector: the other workers' mean plus 2^63 in every coordinate (K = 2^31 in
    encode(t) + K 2^32). Its norm and distances wrap to those of the mean, so without the check Krum picks
    it; the check's projections see the wrap-around."""
    return ring.encode(x[1:].mean(axis=0), ring.DEFAULT_FRAC_BITS) + np.uint64(1 << 63)


def test_a_byzantine_worker_process_sending_wrapped_ring_elements_is_rejected_by_both_servers(dep):
    x = _updates(50)
    rows = {0: _wrapped_row(x)}
    _, unchecked = oracle(dep, x, "krum", 1, ring_rows=rows, check_inputs=False)
    got = dep.aggregate(x, "krum", 1, ring_rows=rows, check_inputs=False)
    assert_same_result(got, unchecked)
    assert got.weights[0] == 1 and "validity" not in got.stats.seconds   # the worker process sent the row
    r, want = oracle(dep, x, "krum", 1, ring_rows=rows)
    got = dep.aggregate(x, "krum", 1, ring_rows=rows)
    assert_same_result(got, want)
    assert got.rejected == want.rejected == {0: validity.REASON}
    assert got.weights[0] == 0 and got.participants == (1, 2, 3, 4, 5) and np.isnan(got.distances[0]).all()
    assert np.array_equal(got.aggregate, secrobust.aggregate(x, "krum", 1, ring_rows=rows).aggregate)
    for name in ("S0", "S1"):
        report = dep.operator.clients[name].control("report", r)
        assert report["rejected"] == {"0": validity.REASON} and report["seconds"]["validity"] > 0
        logged = [rec for rec in log_records(dep, name) if rec["event"] == "worker-rejected" and rec["round"] == r]
        assert [(rec["worker"], rec["reason"]) for rec in logged] == [(0, validity.REASON)]


def test_a_tighter_norm_bound_is_enforced_by_both_servers(dep):
    """The DP setting: norm_bound = C rejects a worker above C that the encoder would take, as in process."""
    x = _updates(53)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[3] *= 1.5
    _, want = oracle(dep, x, "multi-krum", 1, norm_bound=1.0)
    got = dep.aggregate(x, "multi-krum", 1, norm_bound=1.0)
    assert_same_result(got, want)
    assert got.rejected == {3: validity.REASON} and got.weights[3] == 0


def test_the_mean_checks_its_inputs_with_a_diag_triple_from_the_pool(dep):
    x = _updates(51)
    r, want = oracle(dep, x, "mean", 0)
    got = dep.aggregate(x, "mean", 0)
    assert_same_result(got, want)                     # bytes too: the dealer's diag triple with its bit triples
    assert got.stats.messages_sent["dealer"] == 2 and got.stats.seconds["validity"] > 0
    tid = pooled(dep, r + 1)                          # the mean prefetched the next round's triple
    assert {e["triple_id"]: e["kind"] for e in dep.operator.status()["S1"]["triples"]}[tid] == "diag"
    x = _updates(52)
    _, want = oracle(dep, x, "mean", 0)
    assert_same_result(dep.aggregate(x, "mean", 0), want)
    used = dep.operator.clients["S0"].control("report", r + 1)["triple"]
    assert used["triple_id"] == tid and used["prefetched"]
    _, want = oracle(dep, x, "mean", 0, check_inputs=False)
    got = dep.aggregate(x, "mean", 0, check_inputs=False)
    assert_same_result(got, want)
    assert "dealer" not in got.stats.bytes_sent and "validity" not in got.stats.seconds


def test_protocol_messages_above_their_limits_are_refused_before_they_are_read(dep):
    from secrobust.deploy.server.sequence import HEADER_SLACK, SMALL_MESSAGE
    from secrobust.transport.grpc import PeerClient

    dep.aggregate(_updates(53), "krum", 1)            # S1's last round has n = 6 workers
    r = dep.operator.next_round_id() - 1
    limit = HEADER_SLACK + 16 * validity.and_words(6)
    impostor = PeerClient(dep.identity("S0"), "S1", dep.addresses["S1"],
                          connect_timeout=3.0)

    def refused(msg: Message) -> RemoteRejected:
        with pytest.raises(RemoteRejected) as info:
            impostor.send(msg)
        return info.value

    def opening(words: int) -> Message:
        return Message(M.VALIDITY_OPEN, r, "S0", "S1", {"step": 0}, {"x": np.zeros(words, dtype=np.uint64)})

    try:
        err = refused(opening(limit // 8 + 1))
        assert err.code == "too-large" and f"limit of {limit} bytes" in err.reason
        assert refused(opening(2 * validity.and_words(6))).code == "out-of-phase"  # the largest honest one fits
        err = refused(Message(M.VALIDITY_SEED, r, "S0", "S1", {"seed": b"\x00" * SMALL_MESSAGE}))
        assert err.code == "too-large" and f"limit of {SMALL_MESSAGE} bytes" in err.reason
    finally:
        impostor.close()
    x = _updates(54)
    assert_same_result(dep.aggregate(x, "krum", 1), oracle(dep, x, "krum", 1)[1])


def test_dp_noise_with_a_test_seed_is_the_in_process_noise(dep):
    x = _updates(4)
    want = secrobust.aggregate(x, "multi-krum", 1, insecure_test_seed=11, dp_noise_std=0.01)
    got = dep.aggregate(x, "multi-krum", 1, insecure_test_seed=11, dp_noise_std=0.01)
    assert_same_result(got, want, bytes_too=False)


def test_bad_parameters_raise_the_in_process_errors_before_anything_starts(dep):
    with pytest.raises(ValueError, match="needs n >= 2f \\+ 3"):
        dep.aggregate(_updates(1), "krum", 2)
    with pytest.raises(ValueError, match="unknown rule"):
        dep.aggregate(_updates(1), "medoid", 0)
    with pytest.raises(ValueError, match="NaN"):
        dep.aggregate(np.full((6, 4), np.nan), "mean", 0)


def test_a_worker_that_never_shows_up_is_left_out(dep):
    x = _updates(5)
    _, want = oracle(dep, x, "krum", 1, drop={4: "both"})
    got = dep.aggregate(x, "krum", 1, absent=[4], share_window_s=WINDOW)
    assert_same_result(got, want)
    assert got.participants == (0, 1, 2, 3, 5) and np.isnan(got.distances[4]).all()


@pytest.mark.parametrize("where", ["S0", "S1"])
def test_a_worker_whose_share_reaches_one_server_only_is_left_out(dep, where):
    x = _updates(6)
    _, want = oracle(dep, x, "geomed", 1, drop={3: where})
    got = dep.aggregate(x, "geomed", 1, drop={3: where}, share_window_s=WINDOW)
    assert_same_result(got, want)
    assert 3 not in got.participants


def test_a_worker_that_dies_in_the_middle_of_its_upload_is_left_out(dep):
    x = _updates(7, d=300_000) * 0.1               # within the encoder's norm bound 2^(27-F)
    _, want = oracle(dep, x, "mda", 1, drop={5: "S1"})
    fake = FakeWorker(dep, 5)
    try:
        run = Background(dep.aggregate, x, "mda", 1, absent=[5], share_window_s=WINDOW)
        info = fake.wait_open()
        to_s1 = fake.share(info["round_id"], x[5])
        out = wire.encode(to_s1)
        assert out.envelope.chunk_count >= 2
        first = next(wire.chunks(out))
        with pytest.raises(RemoteRejected) as err:
            fake.s1.send_raw([first.SerializeToString()])
        assert err.value.code == "malformed-stream"
        got = run.result()
    finally:
        fake.close()
        run.thread.join(120.0)
    assert_same_result(got, want)


def test_a_worker_that_leaves_after_sharing_still_counts(dep):
    x = _updates(8)
    _, want = oracle(dep, x, "krum", 1)
    fake = FakeWorker(dep, 2)
    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[2], share_window_s=WINDOW)
        info = fake.wait_open()
        fake.s1.send(fake.share(info["round_id"], x[2]))
        got = run.result()
    finally:
        fake.close()
        run.thread.join(120.0)
    assert_same_result(got, want)


def test_too_few_workers_for_f_aborts_the_round_with_the_rule_requirement(dep):
    x = _updates(9)
    with pytest.raises(secrobust.RoundAborted, match="only 4 workers reached both servers.*2f \\+ 3"):
        dep.aggregate(x, "krum", 1, absent=[1, 2], share_window_s=WINDOW)
    got = dep.aggregate(x, "krum", 1)
    assert_same_result(got, oracle(dep, x, "krum", 1)[1], bytes_too=False)


def test_bad_messages_get_specific_errors_while_the_servers_keep_serving(dep):
    x = _updates(10)
    _, want = oracle(dep, x, "krum", 1)
    fake = FakeWorker(dep, 1)
    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[1], share_window_s=WINDOW + 5)
        r = fake.wait_open()["round_id"]
        to_s1 = fake.share(r, x[1])

        def code(client, msg_or_raw):
            with pytest.raises(RemoteRejected) as info:
                if isinstance(msg_or_raw, list):
                    client.send_raw(msg_or_raw)
                elif isinstance(msg_or_raw, wire.Outgoing):
                    client.send_encoded(msg_or_raw)
                else:
                    client.send(msg_or_raw)
            return info.value.code

        assert code(fake.s0, [b"\x08\x96\x01\xff\xff"]) == "malformed-protobuf"
        assert code(fake.s1, Message(M.SHARE_MASKED, r + 5, "worker:1", "S1", to_s1.fields, to_s1.arrays)) \
            == "wrong-round"
        assert code(fake.s1, Message(M.SHARE_MASKED, r, "worker:1", "S1", to_s1.fields,
                                     {"x1": np.zeros(x.shape[1] + 1, dtype=np.uint64)})) == "wrong-size"
        assert code(fake.s1, Message(M.SHARE_MASKED, r, "worker:1", "S1", {"worker": 2}, to_s1.arrays)) \
            == "sender-mismatch"
        assert code(fake.s1, Message(M.WEIGHTS, r, "worker:1", "S1", {}, {"weights": np.ones(3)})) == "out-of-phase"
        # S0 takes nothing from a worker: it hands out keys
        assert code(fake.s0, Message(M.SHARE_MASKED, r, "worker:1", "S0", to_s1.fields, to_s1.arrays)) \
            == "not-permitted"
        assert code(fake.s0, Message(M.WEIGHTS, r, "worker:1", "S0", {}, {"weights": np.ones(3)})) == "not-permitted"
        big = Message(M.SHARE_MASKED, r, "worker:1", "S0", to_s1.fields, {"x1": np.zeros(1000, dtype=np.uint64)})
        assert code(fake.s0, big) == "too-large"
        junk = b"SRB1\x05\x00\x00\x00{bad}"
        import hashlib

        from secrobust.transport.grpc import secrobust_pb2 as pb
        env = pb.Envelope(version=M.VERSION, round_id=r, sender="worker:1", recipient="S1", phase=M.SHARE_MASKED,
                          seq=1, message_id=os.urandom(16), total_bytes=len(junk), chunk_count=1,
                          sha256=hashlib.sha256(junk).digest())
        assert code(fake.s1, [pb.Chunk(envelope=env, index=0, data=junk).SerializeToString()]) == "malformed-message"

        share_out = wire.encode(to_s1)
        fake.s1.send_encoded(share_out)
        assert code(fake.s1, share_out) == "replay"
        assert code(fake.s1, to_s1) == "duplicate"
        got = run.result()
        assert code(fake.s1, to_s1) == "out-of-phase"
    finally:
        fake.close()
        run.thread.join(120.0)
    assert_same_result(got, want)


def test_a_share_key_goes_to_its_own_worker_only_and_once(dep):
    """S0's share of worker i is PRG(k_i): S1 (or an operator it runs) holding k_i would hold both shares of
    x_i. S0 serves k_i only to the certificate worker:i, only while the share phase is open, only once; the
    request cannot name another worker, S1 serves no keys, and no key reaches a log or report."""
    from secrobust.transport.grpc import PeerClient
    from secrobust.transport.grpc import secrobust_pb2 as pb

    x = _updates(19)
    _, want = oracle(dep, x, "krum", 1)
    fake = FakeWorker(dep, 3)
    other = FakeWorker(dep, 4)
    as_party = {name: PeerClient(dep.identity(name), "S0", dep.addresses["S0"],
                                 connect_timeout=3.0) for name in ("S1", "dealer")}

    def code(fn) -> str:
        with pytest.raises(RemoteRejected) as info:
            fn()
        return info.value.code

    try:
        run = Background(dep.aggregate, x, "krum", 1, absent=[3], share_window_s=WINDOW + 5)
        r = fake.wait_open()["round_id"]
        for client in (as_party["S1"], as_party["dealer"], dep.operator.clients["S0"]):
            assert code(lambda: client.fetch(r, M.SHARE_KEY, wait_s=0)) == "not-permitted"
        claim = pb.FetchRequest(version=M.VERSION, round_id=r, requester="worker:3", phase=M.SHARE_KEY,
                                timeout_s=0.0).SerializeToString()
        assert code(lambda: other.s0.call_raw("Fetch", claim)) == "sender-mismatch"   # worker 4 posing as 3
        assert code(lambda: fake.s1.fetch(r, M.SHARE_KEY, wait_s=0)) == "not-permitted"  # S1 holds no keys
        assert code(lambda: fake.s0.fetch(r + 1, M.SHARE_KEY, wait_s=0)) == "wrong-round"
        msg = fake.s0.fetch(r, M.SHARE_KEY, wait_s=10)
        assert (msg.sender, msg.recipient, msg.fields["worker"], msg.fields["d"]) == ("S0", "worker:3", 3, 40)
        key = msg.fields["key"]
        assert code(lambda: fake.s0.fetch(r, M.SHARE_KEY, wait_s=0)) == "duplicate"
        fake.s1.send(share_update(r, 3, ring.encode(x[3], ring.DEFAULT_FRAC_BITS), key))
        got = run.result()
        assert code(lambda: other.s0.fetch(r, M.SHARE_KEY, wait_s=0)) == "out-of-phase"   # too late, even its own
    finally:
        fake.close()
        other.close()
        for c in as_party.values():
            c.close()
        run.thread.join(120.0)
    assert_same_result(got, want)
    for name in ("S0", "S1"):
        assert key.hex() not in dep.children[name].log.read_text()
        assert key.hex() not in json.dumps(dep.operator.clients[name].control("report", r))


def test_bad_fetch_and_control_calls_get_specific_errors_while_the_servers_keep_serving(dep):
    import grpc

    from secrobust.deploy.rounds import RoundRequest
    from secrobust.transport.grpc import secrobust_pb2 as pb
    from secrobust.transport.grpc.tls import channel_credentials

    dep.aggregate(_updates(40), "krum", 1)
    r = dep.operator.next_round_id() - 1               # a finished round whose shares can be fetched
    fake = FakeWorker(dep, 0)
    op = dep.operator.clients

    def code(fn) -> str:
        with pytest.raises(RemoteRejected) as info:
            fn()
        return info.value.code

    def control(command: str, round_id: int = r, payload: bytes = b"{}", sender: str = "worker:0") -> bytes:
        return pb.ControlRequest(version=M.VERSION, round_id=round_id, sender=sender, command=command,
                                 json=payload).SerializeToString()

    def fetch(**kw) -> bytes:
        base = dict(version=M.VERSION, round_id=r, requester="worker:0", phase=M.AGGREGATE_SHARE, timeout_s=0.0)
        return pb.FetchRequest(**{**base, **kw}).SerializeToString()

    try:
        for name, client in (("S0", fake.s0), ("S1", fake.s1)):
            # Fetch
            assert code(lambda: client.call_raw("Fetch", b"\xff\xff\xff\xff")) == "malformed-protobuf"
            assert code(lambda: client.call_raw("Fetch", fetch(round_id=r + 50))) == "wrong-round"
            assert code(lambda: client.fetch(r + 50, M.AGGREGATE_SHARE, wait_s=0)) == "wrong-round"
            assert code(lambda: client.call_raw("Fetch", fetch(phase=M.WEIGHTS))) == "not-permitted"
            assert code(lambda: client.call_raw("Fetch", fetch(timeout_s=float("nan")))) == "bad-request"
            assert code(lambda: client.call_raw("Fetch", fetch(requester="worker:1"))) == "sender-mismatch"
            assert code(lambda: client.call_raw("Fetch", fetch(version=99))) == "version"
            assert code(lambda: client.fetch(r, M.AGGREGATE_SHARE, wait_s=0, max_bytes=100)) == "too-large"
            # Control
            assert code(lambda: client.call_raw("Control", b"\xff\xff\xff\xff")) == "malformed-protobuf"
            assert code(lambda: client.call_raw("Control", control("status", payload=b"{not json"))) == "bad-request"
            assert code(lambda: client.call_raw("Control", control("status", payload=b"[1, 2]"))) == "bad-request"
            big = b'{"pad": "' + b"x" * (100 << 10) + b'"}'
            assert code(lambda: client.call_raw("Control", control("status", payload=big))) == "too-large"
            assert code(lambda: client.control("status", args={"pad": "x" * (9 << 20)})) == "too-large"
            assert code(lambda: client.call_raw("Control", control("status", sender="worker:1"))) == "sender-mismatch"
            assert code(lambda: client.call_raw("Control", control("report"))) == "not-permitted"
            assert code(lambda: op[name].control("report", r + 50)) == "wrong-round"
            assert code(lambda: op[name].control("launch-missiles", r)) == "bad-request"
            good = RoundRequest(r + 1, tuple(range(6)), 40, "cclip", 1, center=[0.0] * 40, triple_id="t-x").to_json()
            assert code(lambda: op[name].control("open-round", r + 2, good)) == "wrong-round"
            assert code(lambda: op[name].control("open-round", r, {**good, "round_id": r})) == "wrong-round"
            assert code(lambda: op[name].control("open-round", r + 1, {**good, "center": [0.0] * 39})) \
                == "bad-request"
            assert code(lambda: op[name].control("open-round", r + 1, {**good, "d": 0})) == "bad-request"
            assert code(lambda: op[name].control("open-round", r + 1, {**good, "worker_ids": [0, 1, 2, 3, 4, 99]})) \
                == "unknown-party"
            # a request above gRPC's 8 MiB limit is refused by the server's gRPC layer
            ident = dep.identity("worker:0")
            options = [("grpc.ssl_target_name_override", ident.target_for(name)),
                       ("grpc.max_send_message_length", 32 << 20)]
            with grpc.secure_channel(dep.addresses[name], channel_credentials(ident, name), options=options) as ch:
                call = ch.unary_unary("/secrobust.v1.Party/Control", request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
                with pytest.raises(grpc.RpcError) as info:
                    call(control("status", payload=b'{"pad": "' + b"x" * (9 << 20) + b'"}'), timeout=20)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert op[name].control("status")["last_round"] == r      # still serving, nothing opened
        share = fake.s1.fetch(r, M.AGGREGATE_SHARE, wait_s=0)
        assert share.arrays["share"].shape == (40,)
    finally:
        fake.close()
    x = _updates(41)
    assert_same_result(dep.aggregate(x, "krum", 1), oracle(dep, x, "krum", 1)[1])


def test_only_expected_workers_are_admitted(dep):
    make_deployment_certs(dep.cert_dir, ["worker:99"])
    stranger = FakeWorker(dep, 99)
    outsider = FakeWorker(dep, 6)
    x = _updates(12)
    try:
        run = Background(dep.aggregate, x, "mean", 0, absent=[5], share_window_s=WINDOW)
        r = outsider.wait_open()["round_id"]
        for fake in (stranger, outsider):
            with pytest.raises(RemoteRejected) as info:
                fake.key(r, x.shape[1], wait_s=0)
            assert info.value.code == "unknown-party"
            masked = share_update(r, fake.wid, ring.encode(x[0], ring.DEFAULT_FRAC_BITS), bytes(16))
            with pytest.raises(RemoteRejected) as info:
                fake.s1.send(masked)
            assert info.value.code == "unknown-party"
        got = run.result()
        with pytest.raises(RemoteRejected) as info:
            outsider.s0.fetch(r, M.AGGREGATE_SHARE, wait_s=1)
        assert info.value.code == "not-permitted"
    finally:
        stranger.close()
        outsider.close()
        run.thread.join(120.0)
    assert np.array_equal(got.aggregate, secrobust.aggregate(x, "mean", 0, drop={5: "both"}).aggregate)


def test_workers_receive_the_same_aggregate(dep):
    x = _updates(13)
    got = dep.aggregate(x, "multi-krum", 1)
    fake = FakeWorker(dep, 0)
    try:
        r = dep.operator.next_round_id() - 1
        from secrobust.protocol.worker import reconstruct
        out, weights, participants = reconstruct(fake.s0.fetch(r, M.AGGREGATE_SHARE, wait_s=5),
                                                 fake.s1.fetch(r, M.AGGREGATE_SHARE, wait_s=5))
    finally:
        fake.close()
    assert np.array_equal(out, got.aggregate) and np.array_equal(weights, got.weights[list(participants)])


def test_structured_logs_name_party_round_phase_bytes_and_seconds(dep):
    import json

    dep.aggregate(_updates(14), "krum", 1)
    records = [json.loads(line) for line in dep.children["S1"].log.read_text().splitlines() if line.startswith("{")]
    received = [r for r in records if r["event"] == "received"]
    assert received and {"party", "round", "phase", "bytes", "seconds", "sender"} <= set(received[-1])
    assert any(r["event"] == "round-done" for r in records)


def test_the_server_processes_refuse_plaintext_and_foreign_certificates(dep, tmp_path):
    import grpc

    from secrobust.pki.certs import Identity, party_dir, party_paths
    from secrobust.transport.grpc import PartyUnreachable, PeerClient
    from secrobust.transport.grpc import secrobust_pb2 as pb

    for name in ("S0", "S1", "dealer"):
        with grpc.insecure_channel(dep.addresses[name]) as ch:
            call = ch.unary_unary("/secrobust.v1.Party/Control",
                                  request_serializer=pb.ControlRequest.SerializeToString,
                                  response_deserializer=pb.ControlReply.FromString)
            with pytest.raises(grpc.RpcError) as info:
                call(pb.ControlRequest(version=M.VERSION, sender="worker:0", command="status"), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    make_deployment_certs(tmp_path, ["worker:0"])
    rogue = Identity.load(party_paths(party_dir(tmp_path, "worker:0"), "worker:0"))
    trusting = Identity("worker:0", rogue.key_pem, rogue.certs, dep.identity("worker:0").cas)
    client = PeerClient(trusting, "S0", dep.addresses["S0"], connect_timeout=1.0)
    try:
        with pytest.raises(PartyUnreachable):
            client.control("status")
    finally:
        client.close()
    x = _updates(15)
    assert_same_result(dep.aggregate(x, "krum", 1), oracle(dep, x, "krum", 1)[1], bytes_too=False)


def _round_command(dep, x: np.ndarray, *args: str) -> tuple[int, dict]:
    """Run `secrobust round` as the operator on the inputs x (one file per worker); (round id, its JSON)."""
    import json

    from typer.testing import CliRunner

    from secrobust.cli import app

    r = dep.operator.next_round_id()
    folder = dep.updates_dir / f"round-{r}"
    folder.mkdir(parents=True)
    for i in range(len(x)):
        np.save(folder / f"worker-{i}.npy", x[i])
    result = CliRunner().invoke(app, ["round", "--config", str(dep.config_file("operator:S0")),
                                      "--config", str(dep.config_file("operator:S1")),
                                      "--d", str(x.shape[1]), "--workers", f"0-{len(x) - 1}", "--window", "20",
                                      *args])
    assert result.exit_code == 0, result.output
    return r, json.loads(result.output.strip().splitlines()[-1])


def test_the_operator_round_command_runs_a_round_of_the_deployment(dep):
    x = _updates(16)
    r, printed = _round_command(dep, x, "--rule", "multi-krum", "--f", "1")
    want = secrobust.aggregate(x, "multi-krum", 1)
    assert printed["round_id"] == r and printed["weights"] == want.weights.tolist()
    assert printed["aggregate_norm"] == float(np.linalg.norm(want.aggregate))


def test_the_round_command_takes_a_norm_bound(dep):
    x = _updates(17)
    _, printed = _round_command(dep, x, "--rule", "mean", "--norm-bound", "5")
    want = secrobust.aggregate(x, "mean", 0, norm_bound=5.0)
    assert printed["rejected"] == {"0": validity.REASON} and want.rejected == {0: validity.REASON}
    assert printed["weights"] == want.weights.tolist()
