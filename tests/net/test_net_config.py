"""Party configuration from TOML and flags, and the deployment commands on the main CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from secrobust.cli import app
from secrobust.deploy.config import PartyConfig, load, parse_worker_ids, to_toml


def test_toml_round_trips_and_flags_override(tmp_path):
    cfg = PartyConfig(party="S0", key=tmp_path / "s0.key", certs={"S0": tmp_path / "s0.s0.pem"},
                      cas={"S0": tmp_path / "ca-s0.pem", "S1": tmp_path / "ca-s1.pem"},
                      listen="127.0.0.1:7100", peers={"S0": "127.0.0.1:7100", "S1": "127.0.0.1:7101",
                                                     "dealer": "127.0.0.1:7102"},
                      workers=(0, 1, 2), state_dir=tmp_path / "state", peer_timeout_s=12.0)
    path = tmp_path / "s0.toml"
    path.write_text(to_toml(cfg))
    assert load(path) == cfg
    moved = load(path, S1="127.0.0.1:7999", workers="0-4,9", peer_timeout_s=3.0)
    assert moved.peers["S1"] == "127.0.0.1:7999" and moved.workers == (0, 1, 2, 3, 4, 9)
    assert moved.peer_timeout_s == 3.0 and moved.role == "server"


def test_relative_paths_are_read_from_the_toml_folder(tmp_path):
    (tmp_path / "w.toml").write_text('party = "worker:3"\ninbox = "in"\n[peers]\nS0 = "127.0.0.1:1"\n'
                                     'S1 = "127.0.0.1:2"\n[tls]\ndir = "c"\ncert_s1 = "other/w.pem"\n')
    cfg = load(tmp_path / "w.toml")
    assert cfg.role == "worker" and cfg.inbox == tmp_path / "in"
    assert cfg.key == tmp_path / "c" / "worker-3.key"
    assert cfg.certs == {"S0": tmp_path / "c" / "worker-3.s0.pem", "S1": tmp_path / "other" / "w.pem"}
    assert cfg.cas == {"S0": tmp_path / "c" / "ca-s0.pem", "S1": tmp_path / "c" / "ca-s1.pem"}


@pytest.mark.parametrize(("text", "message"), [
    ('party = "S0"\n[tls]\ndir = "t"\n', "listen address"),
    ('party = "S1"\nlisten = "127.0.0.1:1"\n[tls]\ndir = "t"\n', "no address for S0"),
    ('party = "operator:S1"\n[peers]\nS0 = "127.0.0.1:1"\n[tls]\ndir = "t"\n', "no address for S1"),
    ('party = "S0"\nlisten = "x"\n', "TLS key is missing"),
    ('party = "S0"\nlisten = "x"\n[tls]\nkey = "k"\ncert_s0 = "c"\n', "CA certificate of S0 is missing"),
    ('party = "worker:1"\n[peers]\nS0 = "a:1"\nS1 = "a:2"\n[tls]\nkey = "k"\ncert_s0 = "c"\nca_s0 = "a"\n'
     'ca_s1 = "b"\n', "needs cert_s0 and cert_s1"),
    ('party = "S0"\nlisten = "x"\n[tls]\ncert = "a"\nkey = "b"\nca = "c"\n', "one CA per server organisation"),
    ('party = "S0"\nport = 3\n', "unknown keys"),
    ('party = "operator"\n[tls]\ndir = "t"\n', "none of S0, S1"),
])
def test_incomplete_configurations_say_what_is_missing(tmp_path, text, message):
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load(tmp_path / "p.toml")


def test_worker_id_ranges():
    assert parse_worker_ids("0-2, 5") == (0, 1, 2, 5)
    assert parse_worker_ids([3, 1]) == (3, 1)
    with pytest.raises(ValueError):
        parse_worker_ids("1,1")


def test_the_main_cli_has_the_deployment_commands():
    result = CliRunner().invoke(app, ["--help"])
    for command in ("ca", "keygen", "sign", "certs", "init", "dealer", "server", "worker", "round"):
        assert command in result.output
    bad = CliRunner().invoke(app, ["server", "--party", "2"])
    assert bad.exit_code == 2 and "--party is 0 or 1" in bad.output


def test_init_writes_loadable_files_and_the_round_command_checks_its_side_first(tmp_path):
    result = CliRunner().invoke(app, ["init", "--out", str(tmp_path), "--workers", "6", "--s0", "s0.example.org:7100"])
    assert result.exit_code == 0, result.output
    s0 = load(tmp_path / "s0" / "s0.toml")
    assert s0.listen == "0.0.0.0:7100" and s0.peers["S0"] == "s0.example.org:7100" and s0.workers == tuple(range(6))
    assert s0.key == tmp_path / "s0" / "s0.key" and s0.certs == {"S0": tmp_path / "s0" / "s0.s0.pem"}
    w1 = load(tmp_path / "worker-1" / "worker-1.toml")
    assert w1.inbox == tmp_path / "worker-1" / "inbox" and set(w1.certs) == {"S0", "S1"}
    again = CliRunner().invoke(app, ["init", "--out", str(tmp_path), "--workers", "6"])
    assert again.exit_code == 2 and "exists" in again.stderr
    op1 = str(tmp_path / "operator-s1" / "operator-s1.toml")
    alone = CliRunner().invoke(app, ["round", "--config", op1, "--d", "4", "--workers", "0-5"])
    assert alone.exit_code == 2 and "--request FILE" in alone.stderr
    wrong = CliRunner().invoke(app, ["round", "--config", str(tmp_path / "s0" / "s0.toml"), "--d", "4",
                                     "--workers", "0-5"])
    assert wrong.exit_code == 2 and "not an operator's" in wrong.stderr
    missing = CliRunner().invoke(app, ["round", "--config", str(tmp_path / "operator-s0" / "operator-s0.toml"),
                                       "--d", "4", "--workers", "0-5"])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr     # no key made yet: keygen comes first
    bad = CliRunner().invoke(app, ["round", "--config", str(tmp_path / "operator-s0" / "operator-s0.toml"),
                                   "--d", "0", "--workers", "0-5"])
    assert bad.exit_code == 2 and "d >= 1" in bad.stderr                 # checked before any key or connection


def test_the_upload_pace_is_read_from_timeouts_round_trips_and_must_be_positive(tmp_path):
    from dataclasses import replace

    from secrobust.transport.grpc.pace import UPLOAD_GRACE_S, UPLOAD_MIN_RATE

    base = ('party = "S1"\nlisten = "127.0.0.1:1"\n[peers]\nS0 = "127.0.0.1:1"\nS1 = "127.0.0.1:2"\n'
            'dealer = "127.0.0.1:3"\n[tls]\ndir = "c"\n[timeouts]\n')
    path = tmp_path / "s1.toml"
    path.write_text(base)
    cfg = load(path)
    assert (cfg.upload_grace_s, cfg.upload_min_rate) == (UPLOAD_GRACE_S, UPLOAD_MIN_RATE)
    assert "upload_grace_s =" not in to_toml(cfg)           # defaults are not written out
    path.write_text(base + "upload_grace_s = 12\nupload_min_rate = 250000\n")
    slow = load(path)
    assert (slow.upload_grace_s, slow.upload_min_rate) == (12.0, 250000.0)
    path.write_text(to_toml(slow))
    assert load(path) == slow
    for bad in ("upload_grace_s = 0", "upload_min_rate = -1", "upload_min_rate = inf", 'upload_grace_s = "5"',
                "upload_grace_s = true"):
        path.write_text(base + bad + "\n")
        with pytest.raises(ValueError, match="upload_"):
            load(path)
    with pytest.raises(ValueError, match="upload_min_rate"):
        replace(cfg, upload_min_rate=float("nan")).check()
