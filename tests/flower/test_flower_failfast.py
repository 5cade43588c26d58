"""SecRobust's settings from the run config, its checks at start, rounds that cannot run, per-node errors,
a NumPyClient app's message, and each round's outcome as a MetricRecord (issue 21): against real S0, S1
and dealer processes, with the ServerApp and ClientApps in this process (``run_inprocess``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flower_apps import run_strategy, stepping_client
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from secrobust.deploy.local import LocalOptions
from secrobust.flower import FlowerServers, SecRobust, SecRobustMod
from secrobust.flower.strategy import SecRobustError, operator_files

N = 6
D = 12
BYZ = 0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    srv = FlowerServers(N, tmp_path_factory.mktemp("failfast"),
                        LocalOptions(share_window_s=20.0, peer_timeout_s=15.0, connect_timeout_s=2.0))
    with srv:
        yield srv


def _client(srv: FlowerServers, *before) -> ClientApp:
    return stepping_client(srv, D, BYZ, *before)


def _numpy_client_app(srv: FlowerServers) -> ClientApp:
    class Client(NumPyClient):
        def fit(self, parameters, config):
            return [p + 1.0 for p in parameters], 10, {}

    return ClientApp(client_fn=lambda context: Client().to_client(),
                     mods=[SecRobustMod(worker_config=srv.worker_config_template())])


def _run(srv: FlowerServers, client: ClientApp, nodes: int = N, rounds: int = 2, **kw):
    strategy = SecRobust(srv.operator_configs(), kw.pop("rule", "krum"), kw.pop("f", 1), fraction_evaluate=0.0,
                         **kw)
    return strategy, run_strategy(strategy, client, nodes, rounds, D)


# settings from the run config


def test_without_secrobust_dir_the_error_says_what_to_set(monkeypatch):
    monkeypatch.delenv("SECROBUST_DIR", raising=False)
    with pytest.raises(SecRobustError, match="secrobust-dir") as err:
        SecRobust.from_run_config({"rule": "krum", "f": 1, "secrobust-dir": ""})
    assert "--run-config" in str(err.value) and "secrobust init" in str(err.value)
    with pytest.raises(SecRobustError, match="no .*operator-s0"):
        operator_files("/nonexistent/folder")


def test_settings_come_from_the_run_config(servers):
    cfg = {"secrobust-dir": str(servers.cert_dir), "rule": "multi-krum", "f": 1, "reveal": "weights",
           "rule-options": '{"m": 2}', "share-window-s": 33.0, "min-participants": 0, "skip-failed-rounds": True,
           "node-wait-s": 7.5, "hide-weights": True, "unrelated-key": 3}
    s = SecRobust.from_run_config(cfg, fraction_evaluate=0.0)
    assert (s.rule, s.f, s.reveal, s.rule_options, s.share_window_s) == ("multi-krum", 1, "weights", {"m": 2}, 33.0)
    assert s.min_participants is None and s.skip_failed_rounds and s.node_wait_s == 7.5 and s.hide_weights
    assert [p.resolve() for p in s._operators] == [p.resolve() for p in servers.operator_configs()]
    for bad in ({"f": "2"}, {"skip-failed-rounds": "yes"}, {"rule-options": "[1]"}, {"rule": "krumm"}):
        with pytest.raises(SecRobustError, match="run config|settings"):
            SecRobust.from_run_config({**cfg, **bad})


# checks at start


def test_unreachable_servers_stop_the_run_before_any_node_trains(tmp_path):
    from tests.flower.test_flower_launch import provision

    provision(tmp_path / "dep", 3)          # provisioned, nothing started
    s = SecRobust.from_run_config({"secrobust-dir": str(tmp_path / "dep"), "f": 1})
    try:
        with pytest.raises(SecRobustError, match="S0 does not answer over mutual TLS.*flower-servers"):
            s.preflight(grid=None)          # type: ignore[arg-type]  # the servers are checked first
    finally:
        s.close()


def test_too_few_nodes_for_the_rule_is_one_error_at_start(servers):
    trained = []
    app = _client(servers, lambda msg, ctx, nxt: (trained.append(1), nxt(msg, ctx))[1])
    with pytest.raises(SecRobustError, match=r"f=1 needs n >= 2f \+ 3 \(5 participants\), but only 4 SuperNodes "
                       r"connected within 0.5 s"):
        _run(servers, app, nodes=4, f=1, node_wait_s=0.5)
    # more than the servers admit: no need to wait for nodes
    with pytest.raises(SecRobustError, match=r"f=2 .*\(7 participants\), but the servers admit only 6 workers"):
        _run(servers, app, f=2)
    assert trained == []                    # no node was asked to train
    # fewer nodes pinned to admitted workers than the rule needs: no need to wait either
    s = SecRobust(servers.operator_configs(), "krum", 1, node_workers={11: 0, 12: 1, 13: 2, 14: 99},
                  fraction_evaluate=0.0)
    try:
        with pytest.raises(SecRobustError, match=r"\(5 participants\), but only 3 admitted workers have a node "
                           r"pinned to them"):
            s.preflight(grid=None)          # type: ignore[arg-type]  # raises before asking the grid
    finally:
        s.close()


def test_min_available_nodes_follows_the_rule_and_min_participants(servers):
    s = SecRobust(servers.operator_configs(), "krum", 1, min_participants=6, fraction_evaluate=0.0)
    assert s.minimum_nodes()[0] == 6
    s = SecRobust(servers.operator_configs(), "krum", 1, fraction_evaluate=0.0)
    assert s.minimum_nodes()[0] == 5        # krum's 2f + 3, and the servers' default of 5
    s = SecRobust(servers.operator_configs(), "multi-krum", 1, options={"m": 6}, fraction_evaluate=0.0)
    assert s.minimum_nodes() == (6, "rule 'multi-krum' with f=1 needs at least 6 participants (multi-krum's m = 6) "
                                    "(6 participants)")
    strategy, _ = _run(servers, _client(servers), rounds=1)
    assert strategy.min_available_nodes == 5 and strategy.min_train_nodes == 5


# a round that cannot run, per-node errors, the NumPyClient app


def test_a_numpy_client_app_fails_the_run_with_what_to_change(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    with pytest.raises(SecRobustError) as err:
        _run(servers, _numpy_client_app(servers))
    text = str(err.value)
    assert "server round 1 failed" in text and "only 0 of the 6 nodes" in text
    assert "NumPyClient" in text and "@app.train()" in text
    assert "multi-krum needs" not in text and "skip-failed-rounds" in text
    warned = [r for r in caplog.records if r.name == "secrobust.flower" and r.levelno == logging.WARNING]
    assert len({r.getMessage().split(":")[0] for r in warned if "train failed" in r.getMessage()}) == N  # each node


def test_skip_failed_rounds_goes_on_with_the_model_unchanged(servers, caplog):
    caplog.set_level(logging.WARNING, logger="secrobust.flower")
    strategy, result = _run(servers, _numpy_client_app(servers), skip_failed_rounds=True)
    assert [r.error is not None for r in strategy.history] == [True, True]
    assert np.array_equal(result.arrays.to_numpy_ndarrays()[0], np.zeros(D))
    assert strategy.round_metrics[1]["secrobust-failed"] == 1
    assert any("skip-failed-rounds" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# results in Flower's channels


def test_each_round_is_a_metric_record_and_a_log_line(servers, caplog):
    caplog.set_level(logging.INFO, logger="secrobust.flower")
    strategy, result = _run(servers, _client(servers), reveal="weights")
    for r in (1, 2):
        m = strategy.round_metrics[r]
        assert m["secrobust-workers"] == list(range(N))
        weights = m["secrobust-weights"]
        assert len(weights) == N and weights[BYZ] == 0.0 and sum(weights) == pytest.approx(1.0)
        assert BYZ not in m["secrobust-selected-workers"] and BYZ in m["secrobust-excluded-workers"]
        assert m["secrobust-participants"] == N and m["secrobust-seconds"] > 0
        assert m["secrobust-total-seconds"] > m["secrobust-seconds"]          # with the train stage
        assert "secrobust-declined-workers" not in m        # none declined
        # in the train metrics Flower keeps (and logs as "Aggregated MetricRecord")
        assert result.train_metrics_clientapp[r]["secrobust-weights"] == weights
    lines = [r.getMessage() for r in caplog.records if r.name == "secrobust.flower" and "server round" in r.getMessage()]
    assert len(lines) == 2 and all("weights [0.0," in line and "selected" in line for line in lines)
    assert not np.array_equal(result.arrays.to_numpy_ndarrays()[0], np.zeros(D))


def test_hidden_weights_stay_out_of_metrics_and_logs(servers, caplog, tmp_path):
    import json

    caplog.set_level(logging.INFO, logger="secrobust.flower")
    strategy, _ = _run(servers, _client(servers), rounds=1, reveal="weights", hide_weights=True,
                       history_file=str(tmp_path / "h.json"))
    m = strategy.round_metrics[1]
    assert "secrobust-weights" not in m and "secrobust-selected-workers" not in m
    assert any("weights hidden" in r.getMessage() for r in caplog.records if r.name == "secrobust.flower")
    (line,) = json.loads((tmp_path / "h.json").read_text())["rounds"]
    assert line["weights"] is None and line["selected"] is None and line["workers"] == list(range(N))


def test_the_history_is_one_json_file_beside_the_serverapps_checkpoints(servers, tmp_path, monkeypatch):
    """history-file relative to the ServerApp's working directory (where Flower's checkpoint guide saves the
    model), {run_id} replaced by Flower's run id; rewritten whole after each round and at the end, with the
    run's status; a failed run's file says so, with the error."""
    import json

    monkeypatch.chdir(tmp_path)
    template = "checkpoints/secrobust-history-{run_id}.json"
    strategy, _ = _run(servers, _client(servers), reveal="weights", history_file=template)
    (path,) = (tmp_path / "checkpoints").glob("secrobust-history-*.json")
    doc = json.loads(path.read_text())
    assert path.name == f"secrobust-history-{doc['flwr_run_id']}.json" and strategy.history_path() == path
    assert doc["format"] == "secrobust-flower-history/1" and doc["status"] == "finished" and doc["error"] is None
    assert (doc["rule"], doc["f"], doc["reveal"], doc["check_inputs"]) == ("krum", 1, "weights", True)
    assert [r["server_round"] for r in doc["rounds"]] == [1, 2]
    for line, rec in zip(doc["rounds"], strategy.history):
        assert line["workers"] == list(range(N)) and line["nodes"] == list(rec.node_ids)
        assert line["weights"] == [float(v) for v in rec.result.weights] and line["weights"][BYZ] == 0.0
        assert line["selected"] == [w for w, v in zip(line["workers"], line["weights"]) if v > 0]
        assert BYZ not in line["selected"] and line["declined"] == {} and line["rejected"] == {}
        assert line["error"] is None and line["seconds"]["round"] > 0
        assert line["seconds"]["total"] == pytest.approx(line["seconds"]["train"] + line["seconds"]["round"], abs=1e-3)
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    s = SecRobust.from_run_config({"secrobust-dir": str(servers.cert_dir), "history-file": template})
    assert str(s.history_file) == template

    failed = tmp_path / "failed.json"
    with pytest.raises(SecRobustError):
        _run(servers, _numpy_client_app(servers), history_file=str(failed))
    doc = json.loads(failed.read_text())
    assert doc["status"] == "failed" and "server round 1 failed" in doc["error"] and "NumPyClient" in doc["error"]
    assert [r["server_round"] for r in doc["rounds"]] == [1] and "NumPyClient" in doc["rounds"][0]["error"]


def test_flower_nodes_pins_each_node_and_the_strategy_enforces_it(tmp_path):
    """secrobust flower-nodes' provisioning with a stand-in for the SuperLink's registration: one key per
    worker (0600, OpenSSH), registered once, node-workers.json read by from_run_config as node_workers."""
    import json
    import shlex
    import stat

    from secrobust.flower.nodes import provision_nodes
    from tests.flower.test_flower_launch import provision

    folder = tmp_path / "dep"
    provision(folder, 3)
    registered = []

    def register(pub):
        registered.append(pub.read_text())
        return 7000 + len(registered)

    mapping = provision_nodes(folder, [0, 1, 2], register, "127.0.0.1:9093", root_certificates=tmp_path / "ca.crt")
    assert mapping == {7001: 0, 7002: 1, 7003: 2} and len(set(registered)) == 3
    assert all(p.startswith("ecdsa-sha2-nistp384 ") for p in registered)
    key = folder / "worker-1" / "flower-node"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    argv = shlex.split((folder / "worker-1" / "flower-supernode.txt").read_text())
    assert argv[:2] == ["flower-supernode", "--root-certificates"] and argv[argv.index("--superlink") + 1] == \
        "127.0.0.1:9093" and argv[argv.index("--auth-supernode-private-key") + 1] == str(key.resolve())
    assert argv[argv.index("--node-config") + 1] == \
        f"partition-id=1 secrobust-worker-config='{(folder / 'worker-1' / 'worker-1.toml').resolve()}'"
    # again: the keys and their registration are kept (the SuperLink refuses a key twice)
    assert provision_nodes(folder, [0, 1, 2], register, "127.0.0.1:9093") == mapping and len(registered) == 3
    s = SecRobust.from_run_config({"secrobust-dir": str(folder), "f": 1})
    assert s.node_workers == mapping
    assert SecRobust.from_run_config({"secrobust-dir": str(folder)}, node_workers=None).node_workers is None
    (folder / "node-workers.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SecRobustError, match="node pinning"):
        SecRobust.from_run_config({"secrobust-dir": str(folder)})
