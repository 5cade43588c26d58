"""``secrobust flower-servers`` / ``python -m secrobust.flower.servers``: the dealer, S0 and S1 of a folder
``secrobust init --local-keys`` made start with mutual TLS, answer the operators, and all stop on SIGTERM;
a folder that is not provisioned is one clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flower_apps import wait_ready

from secrobust.deploy.config import load as load_config
from secrobust.deploy.local import free_ports
from secrobust.deploy.operator import Operator

ROOT = Path(__file__).resolve().parents[2]


def provision(folder: Path, workers: int) -> None:
    """``secrobust init --local-keys`` with S0, S1 and the dealer on free loopback ports."""
    s0, s1, dealer = free_ports(3)
    subprocess.run([sys.executable, "-m", "secrobust.cli", "init", "--out", str(folder), "--workers", str(workers),
                    "--local-keys", "--s0", f"127.0.0.1:{s0}", "--s1", f"127.0.0.1:{s1}",
                    "--dealer", f"127.0.0.1:{dealer}"], check=True, capture_output=True, timeout=120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:        # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_flower_servers_start_answer_and_stop(tmp_path):
    folder = tmp_path / "dep"
    provision(folder, 3)
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "secrobust.flower.servers", "--dir", str(folder),
                             "--ready-file", str(ready)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    pids: list[int] = []
    try:
        info = wait_ready(proc, ready)
        assert set(info["parties"]) == {"dealer", "S0", "S1"}
        pids = [p["pid"] for p in info["parties"].values()]
        assert all(_alive(pid) for pid in pids)
        # the operators reach all three over mutual TLS at the addresses of the folder's files
        cfgs = [load_config(folder / name / f"{name}.toml") for name in ("operator-s0", "operator-s1")]
        peers = cfgs[0].peers
        op = Operator([c.identity() for c in cfgs], peers["S0"], peers["S1"], peers["dealer"])
        try:
            assert set(op.status()) == {"S0", "S1"}
            op.dealer.control("status", timeout=10.0)
        finally:
            op.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "ready: secrobust-dir" in out
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for pid in pids:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_flower_servers_on_a_folder_that_is_not_provisioned_is_one_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "secrobust.cli", "flower-servers", "--dir", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2
    assert "not a provisioned folder" in res.stderr and "secrobust init" in res.stderr
    assert "Traceback" not in res.stderr


def test_flower_servers_refuses_a_party_it_does_not_start(tmp_path):
    res = subprocess.run([sys.executable, "-m", "secrobust.cli", "flower-servers", "--dir", str(tmp_path),
                          "--party", "worker:0"], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "dealer, S0, S1 and/or approval" in res.stderr


def test_flower_tls_makes_a_ca_and_the_superlinks_certificate(tmp_path):
    """``secrobust flower-tls``: Flower's own TLS files, the SuperLink's certificate naming each address, the
    keys 0600; a second call into the same folder and an address with a port are one-line errors."""
    import stat
    import subprocess
    import sys

    from cryptography import x509

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "secrobust.cli", "flower-tls", *argv], capture_output=True,
                              text=True, timeout=120, check=False)

    done = cli("--out", str(tmp_path / "tls"), "--address", "127.0.0.1", "--address", "superlink.example")
    assert done.returncode == 0, done.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "superlink.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example"]
    for key in ("ca.key", "superlink.key"):
        assert stat.S_IMODE((tmp_path / "tls" / key).stat().st_mode) == 0o600
    again = cli("--out", str(tmp_path / "tls"), "--address", "127.0.0.1")
    assert again.returncode == 2 and "exist already" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    port = cli("--out", str(tmp_path / "tls2"), "--address", "127.0.0.1:9093")
    assert port.returncode == 2 and "without a port" in port.stderr
