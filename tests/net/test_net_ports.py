"""Ports of a test deployment: picked together, and a start whose port another process took first picks new
ones. Before, each of the three ports came from its own ``bind(0)`` and was released at once, so about one
deployment start in 5,000 gave two servers the same port, and another process (the other xdist worker, a
bulk lane binding port 0) could take one before its server bound it: the start failed with "Address already
in use", and every test of that module with it."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from deployments import test_options as options

from secrobust.deploy import local
from secrobust.deploy.local import LocalDeployment, free_ports

from .helpers import assert_same_result, oracle


def test_the_ports_of_one_call_are_distinct():
    assert all(len(set(free_ports(3))) == 3 for _ in range(200))


@pytest.fixture
def taken():
    """A port held by another process's listener (here: this test's socket) while the deployment starts."""
    with socket.socket() as s:
        s.bind((local.LOOPBACK, 0))
        s.listen()
        yield s.getsockname()[1]


def handing_out_first(port: int, monkeypatch) -> list[list[int]]:
    """``free_ports`` that hands the dealer ``port`` on its first call, then the real thing."""
    calls: list[list[int]] = []

    def ports(n: int) -> list[int]:
        got = free_ports(n)
        if not calls:
            got[0] = port
        calls.append(got)
        return got
    monkeypatch.setattr(local, "free_ports", ports)
    return calls


def test_a_server_that_loses_its_port_is_started_again_on_fresh_ports(tmp_path, taken, monkeypatch):
    calls = handing_out_first(taken, monkeypatch)
    with LocalDeployment(5, tmp_path, options(workers_per_process=5)) as dep:
        assert len(calls) == 2 and calls[0][0] == taken
        assert dep.addresses["dealer"] == f"{local.LOOPBACK}:{calls[1][0]}"
        lost = (tmp_path / "logs" / "dealer.attempt1.log").read_text()
        assert local.PORT_TAKEN in lost and f"{local.LOOPBACK}:{taken}" in lost
        assert not (tmp_path / "logs" / "dealer.attempt2.log").exists()
        x = np.random.default_rng(0).normal(size=(5, 16))
        _, want = oracle(dep, x, "mean", 0)
        assert_same_result(dep.aggregate(x, "mean", 0), want)
    assert all(not c.alive for c in dep.children.values())


def test_without_a_second_attempt_the_start_fails_and_names_the_port(tmp_path, taken, monkeypatch):
    handing_out_first(taken, monkeypatch)
    monkeypatch.setattr(local, "START_ATTEMPTS", 1)
    dep = LocalDeployment(2, tmp_path, options(min_participants=2))
    with pytest.raises(RuntimeError, match="dealer exited") as err:
        dep.start()
    assert str(taken) in str(err.value)
    assert all(not c.alive for c in dep.children.values())


def test_a_server_that_fails_for_another_reason_is_not_retried(tmp_path, monkeypatch):
    calls = handing_out_first(free_ports(1)[0], monkeypatch)
    monkeypatch.setattr(LocalDeployment, "_write_configs", broken_dealer_config(LocalDeployment._write_configs))
    dep = LocalDeployment(2, tmp_path, options(min_participants=2))
    with pytest.raises(RuntimeError, match="dealer exited"):
        dep.start()
    assert len(calls) == 1


def broken_dealer_config(write):
    def wrapped(self) -> None:
        write(self)
        self.config_file("dealer").write_text("not toml [")
    return wrapped
