"""``secrobust flower-sim``: small Flower simulations that train the CNN against real S0, S1 and dealer
processes, in this process and on Flower's Simulation Engine (Ray); the command without the extra; the
100-client run under ``-m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")

from secrobust.cli import main  # noqa: E402


def _sim(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["flower-sim", "--out", str(out), *args])
    assert info.value.code == 0
    return json.loads((out / "summary.json").read_text())


def _check(summary: dict, rounds: int) -> None:
    assert summary["flwr_version"] == "1.42.0"
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert summary["failed_rounds"] == 0 and len(summary["rounds"]) == rounds
    assert all(r["participants"] == r["workers"] for r in summary["rounds"])
    # every client's binding held (Flower's node ids, random on Ray, are what each worker signed)
    assert all(r["workers"] == summary["config"]["clients"] and not r["dropped"] for r in summary["rounds"])


def test_an_inprocess_simulation_trains_and_multi_krum_gives_byzantine_clients_no_weight(tmp_path):
    s = _sim(tmp_path, "--clients", "7", "--byzantine", "2", "--rounds", "2", "--rule", "multi-krum", "--attack",
             "sign-flip", "--attack-option", "scale=8", "--dataset", "digits", "--backend", "inprocess")
    _check(s, 2)
    assert s["byzantine_weight"] == 0.0
    assert s["final_accuracy"] > s["initial_accuracy"] + 0.2
    # no update crossed Flower's links: a client's replies of one round (metrics, the binding's two
    # certificates and signature, the share stage's status) weigh less than half an update (4d bytes)
    assert s["flower_bytes"]["from_clients"] < 7 * 2 * s["d"] * 4


def test_reveal_aggregate_hides_the_weights_so_byzantine_weight_is_null(tmp_path):
    """Also with split operators: the ServerApp holds operator:S0's key only, S1's approval service opens S1's
    half of the round."""
    s = _sim(tmp_path, "--clients", "6", "--byzantine", "1", "--rounds", "1", "--rule", "krum", "--reveal",
             "aggregate", "--attack", "gaussian", "--dataset", "digits", "--model", "logreg", "--backend", "inprocess",
             "--split-operators")
    _check(s, 1)
    assert s["byzantine_weight"] is None and s["rounds"][0]["weights"] is None
    assert s["config"]["split_operators"] is True


def test_flowers_simulation_engine_on_ray(tmp_path):
    pytest.importorskip("ray")
    s = _sim(tmp_path, "--clients", "6", "--byzantine", "1", "--rounds", "2", "--rule", "krum", "--attack",
             "sign-flip", "--attack-option", "scale=8", "--dataset", "digits", "--backend", "ray")
    _check(s, 2)
    assert s["byzantine_weight"] == 0.0


class _FlakyRay:
    """Stands in for the ray module: ``ray.init`` fails ``failures`` times the way a loaded machine made it fail."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[str] = []

    def init(self, **kwargs):
        from ray._private import node

        self.calls.append(f"init {node.wait_for_persisted_port.__name__}")
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")

    def shutdown(self):
        self.calls.append("shutdown")


def test_rays_start_alone_is_retried_with_a_patient_port_wait(capsys):
    pytest.importorskip("ray")
    from ray._private import node

    from secrobust.flower.sim import start_ray

    original = node.wait_for_persisted_port
    ray = _FlakyRay(failures=2)
    start_ray(ray, {"num_cpus": 1})
    assert ray.calls == ["init patient", "shutdown", "init patient", "shutdown", "init patient"]
    assert node.wait_for_persisted_port is original
    assert capsys.readouterr().out.count("starting it again") == 2

    with pytest.raises(RuntimeError, match="Ray did not start in 3 attempts: Timed out waiting for file"):
        start_ray(_FlakyRay(failures=3), {})
    assert node.wait_for_persisted_port is original


def test_the_patient_wait_lengthens_rays_port_file_timeout(monkeypatch):
    pytest.importorskip("ray")
    from ray._private import node

    from secrobust.flower.sim import _patient_port_wait

    seen = []
    monkeypatch.setattr(node, "wait_for_persisted_port", lambda *a, timeout_ms=30_000, **k: seen.append(timeout_ms))
    with _patient_port_wait(300_000):
        node.wait_for_persisted_port("dir", "node", "gcs_server")         # Ray's call: its 30 s default
        node.wait_for_persisted_port("dir", "node", "gcs", timeout_ms=0)  # a look without waiting stays one
    assert seen == [300_000, 0]


@pytest.mark.parametrize("argv,message", [
    (["--clients", "5", "--byzantine", "2", "--rule", "krum"], "needs n >= 2f + 3"),
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--backend", "dask"], "--backend is ray or inprocess"),
])
def test_bad_arguments_are_one_line_with_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["flower-sim", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_without_the_extra_the_command_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['flwr'] = None\n"
            "from secrobust.cli import main\n"
            f"main(['flower-sim', '--out', {str(tmp_path / 'o')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "pip install 'secrobust[flower]'" in proc.stderr


@pytest.mark.slow
def test_a_hundred_clients_on_ray_with_the_mnist_cnn(tmp_path):
    pytest.importorskip("ray")
    s = _sim(tmp_path, "--clients", "100", "--byzantine", "20", "--rounds", "3", "--rule", "multi-krum",
             "--attack", "sign-flip", "--attack-option", "scale=8", "--backend", "ray")
    _check(s, 3)
    assert s["byzantine_weight"] == 0.0
