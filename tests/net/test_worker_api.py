"""A worker's own process submits its update with ``secrobust.deploy.Worker(config).submit(update)``, and a
worker process whose inbox file is missing says which file it expected.

Deployment 1: the dealer, S0 and S1 as processes and no worker process at all; six ``Worker`` objects in
this process share their updates for rounds the operators open, and the round equals the in-process
``secrobust.aggregate`` on those updates, bit for bit. Deployment 2: every worker a process reading its
inbox; a worker without its file declines the round naming the path, in its log, in the servers'
reports and in the error of a round that fails for it."""

from __future__ import annotations

import numpy as np
import pytest

import secrobust
from secrobust.deploy import Worker
from secrobust.deploy.local import LocalDeployment, LocalOptions
from secrobust.deploy.rounds import RoundRequest
from secrobust.deploy.worker import (
    MissingUpdate,
    WorkerInput,
    directory_source,
    encode_owned,
)
from secrobust.flower.servers import FlowerServers
from secrobust.pki.certs import tls_name, worker_party
from secrobust.primitives import prg, ring, sharing
from secrobust.protocol.worker import share_update

from .helpers import Background, assert_same_result, in_process, log_records

N = 6
D = 40
WINDOW = 20.0


def _updates(seed: int, n: int = N, d: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d) * 0.5 + 0.1 * rng.normal(size=(n, d))
    x[0] = -3.0 * x[0]
    return x


def _open(dep: LocalDeployment, rule: str, f: int, *, n: int = N, d: int = D, window: float = WINDOW) -> RoundRequest:
    """Open a round for workers 0..n-1 at both servers, as the operators do (they know n and d, no update)."""
    assert dep.operator is not None
    r = dep.operator.next_round_id()
    request = dep.operator.with_triples(RoundRequest(round_id=r, worker_ids=tuple(range(n)), d=d, rule=rule, f=f,
                                                     share_window_s=window))
    dep.operator.open_round(request)
    return request


def _report(dep: LocalDeployment, round_id: int) -> dict:
    return dep.operator.clients["S1"].control("report", round_id, {"wait_s": 60.0}, timeout=90.0)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    dep = FlowerServers(N, tmp_path_factory.mktemp("api"),
                        LocalOptions(share_window_s=WINDOW, peer_timeout_s=15.0, connect_timeout_s=2.0))
    with dep:
        yield dep


@pytest.fixture(scope="module")
def workers(servers):
    made = [Worker(servers.worker_config(i)) for i in range(N)]
    yield made
    for w in made:
        w.close()


def test_workers_submit_through_the_api_and_the_round_equals_the_in_process_one(servers, workers):
    for rule, f, seed in (("krum", 1, 1), ("mean", 0, 2)):      # two rounds: the same Worker objects go on
        x = _updates(seed)
        subs = [Background(w.submit, x[i], timeout=90.0) for i, w in enumerate(workers)]
        request = _open(servers, rule, f)
        got = servers.operator.collect(request, n=N, wait_s=WINDOW + 120.0)
        outcomes = [s.result() for s in subs]
        want = in_process(request.round_id, x, rule, f)
        got.stats.seconds.setdefault("encode", 0.0)            # no launcher encoded anything: the workers did
        assert_same_result(got, want)
        for i, out in enumerate(outcomes):                      # each worker got the round's aggregate and weights
            assert out.status == "done" and out.round_id == request.round_id
            assert np.array_equal(out.aggregate, want.aggregate) and np.array_equal(out.weights, want.weights)
            assert tuple(out.participants) == tuple(range(N))


def test_an_update_the_encoder_refuses_raises_and_declines_the_round_at_both_servers(servers, workers):
    x = _updates(3)
    subs = [Background(w.submit, x[i] if i != 5 else x[i][:-1], timeout=90.0) for i, w in enumerate(workers)]
    request = _open(servers, "mean", 0)
    got = servers.operator.collect(request, n=N, wait_s=WINDOW + 120.0)
    with pytest.raises(ValueError, match=f"worker 5, round {request.round_id}: update has dimension {D - 1}"):
        subs[5].result()
    for s in subs[:5]:
        assert s.result().status == "done"
    want = in_process(request.round_id, x, "mean", 0, drop={5: "both"})
    assert_same_result(got, want, bytes_too=False)
    assert _report(servers, request.round_id)["declined"] == {"5": f"update has dimension {D - 1}, the round has d={D}"}


def test_directory_source_names_the_missing_file_and_sits_out_only_when_told(tmp_path):
    source = directory_source(tmp_path, "worker:3")
    with pytest.raises(MissingUpdate) as info:
        source(7, D)
    want = tmp_path / "round-7" / "worker-3.npy"
    assert info.value.path == want and str(want) in info.value.strerror
    (tmp_path / "round-7").mkdir()
    (tmp_path / "round-7" / "worker-3.json").write_text('{"skip": ["S0", "S1"]}')
    assert source(7, D) is None                                   # simulated absence: contacts nobody
    np.save(want, np.ones(D))
    assert source(7, D).skip == ("S0", "S1")


def test_a_worker_masks_its_own_encoding_in_place_and_never_a_ring_row_it_was_handed():
    """Masking in place keeps one d-vector per worker; a ring row is the caller's array (``fixed_source`` hands
    the same one every round), so it is copied, and the message is the same either way."""
    key = bytes(range(16))
    ring_row = np.arange(D, dtype=np.uint64)
    inp = WorkerInput(ring_row, ring=True)
    encoded, owned = encode_owned(inp, D, ring.DEFAULT_FRAC_BITS)
    assert not owned
    masked = share_update(1, 3, encoded, key, in_place=owned)
    assert np.array_equal(ring_row, np.arange(D, dtype=np.uint64))
    assert np.array_equal(masked.arrays["x1"], ring_row - prg.ring_stream(key, sharing.INPUT_PURPOSE, D))

    update = np.full(D, 0.25)
    encoded, owned = encode_owned(WorkerInput(update), D, ring.DEFAULT_FRAC_BITS)
    assert owned
    want = share_update(1, 4, encoded.copy(), key).arrays["x1"]
    masked = share_update(1, 4, encoded, key, in_place=owned)
    assert masked.arrays["x1"] is encoded and np.array_equal(encoded, want)
    assert np.array_equal(update, np.full(D, 0.25))


@pytest.fixture(scope="module")
def inbox_dep(tmp_path_factory):
    dep = LocalDeployment(N, tmp_path_factory.mktemp("inbox"),
                          LocalOptions(share_window_s=WINDOW, peer_timeout_s=15.0, connect_timeout_s=2.0))
    with dep:
        yield dep


def _write_inbox(dep: LocalDeployment, round_id: int, x: np.ndarray, ids) -> None:
    folder = dep.updates_dir / f"round-{round_id}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        np.save(folder / f"{tls_name(worker_party(i))}.npy", x[i])


def test_a_missing_inbox_file_is_named_in_the_report_and_the_workers_log(inbox_dep):
    dep = inbox_dep
    x = _updates(4)
    r = dep.operator.next_round_id()
    _write_inbox(dep, r, x, range(N - 1))                        # worker 5's file is missing
    request = _open(dep, "mean", 0)
    got = dep.operator.collect(request, n=N, wait_s=WINDOW + 120.0)
    assert_same_result(got, in_process(r, x, "mean", 0, drop={5: "both"}), bytes_too=False)
    path = dep.updates_dir / f"round-{r}" / "worker-5.npy"
    rep = _report(dep, r)
    assert rep["declined"] == {"5": f"cannot read its update: no update file {path} (it must exist when round {r} opens)"}
    assert rep["seconds"]["share"] < WINDOW / 2                  # the decline closed the intake: no waiting it out
    missing = [rec for rec in log_records(dep, "worker-5") if rec["event"] == "update-missing"]
    assert [(m["round"], m["path"]) for m in missing] == [(r, str(path))]


def test_a_round_without_inbox_files_fails_naming_each_expected_file(inbox_dep):
    dep = inbox_dep
    r = dep.operator.next_round_id()
    request = _open(dep, "krum", 1)                              # nobody wrote any file for this round
    with pytest.raises(secrobust.RoundAborted) as info:
        dep.operator.collect(request, n=N, wait_s=WINDOW + 120.0)
    message = str(info.value)
    assert "only 0 workers reached both servers" in message
    for i in range(N):
        path = dep.updates_dir / f"round-{r}" / f"worker-{i}.npy"
        assert f"worker {i} declined: cannot read its update: no update file {path}" in message
    x = _updates(5)                                              # the next round, with its files, runs as usual
    _write_inbox(dep, dep.operator.next_round_id(), x, range(N))
    request = _open(dep, "krum", 1)
    got = dep.operator.collect(request, n=N, wait_s=WINDOW + 120.0)
    assert_same_result(got, in_process(request.round_id, x, "krum", 1), bytes_too=False)
