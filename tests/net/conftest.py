"""Fixtures of the network tests: certificates, an in-process endpoint with a recording handler, and
a multi-process loopback deployment that is always torn down."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from secrobust.pki.ceremony import make_deployment_certs
from secrobust.pki.certs import Identity, party_dir, party_paths, standard_parties
from secrobust.transport.grpc import Endpoint, PeerClient
from secrobust.transport.grpc.errors import Rejected
from secrobust.transport.handler import PartyHandler


class RecordingHandler(PartyHandler):
    """A PartyHandler for transport tests: admits S0, S1 and worker:0, accepts round 1 only, keeps what arrives."""

    party = "S0"

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.limit = 1 << 31
        self.lock = threading.Lock()

    def admitted(self, caller: str) -> bool:
        return caller in ("S1", "worker:0", "worker:1", "dealer")

    def max_message_bytes(self, env: Any) -> int:
        return self.limit

    def precheck(self, env: Any) -> None:
        if env.round_id != 1:
            raise Rejected("wrong-round", f"round {env.round_id} is not open; round 1 is")

    def accept(self, msg: Any, env: Any) -> None:
        with self.lock:
            self.received.append(msg)

    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> Any:
        with self.lock:
            for msg in reversed(self.received):
                if msg.kind == phase and msg.round_id == round_id:
                    from secrobust.protocol.messages import Message
                    return Message(msg.kind, round_id, "S0", caller, dict(msg.fields), dict(msg.arrays))
        raise Rejected("not-found", "nothing to fetch")

    def control(self, caller: str, command: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        return {"caller": caller, "command": command, "args": args}


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_deployment_certs(out, standard_parties(2) + ["worker:7"])
    return out


@pytest.fixture(scope="session")
def rogue_cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two other CAs that issue certificates with the very same party names."""
    out = tmp_path_factory.mktemp("rogue")
    make_deployment_certs(out, standard_parties(2))
    return out


def identity(cert_dir: Path, party: str) -> Identity:
    return Identity.load(party_paths(party_dir(cert_dir, party), party))


@pytest.fixture()
def endpoint(cert_dir: Path) -> Iterator[tuple[Endpoint, RecordingHandler, str]]:
    handler = RecordingHandler()
    ep = Endpoint(identity(cert_dir, "S0"), "127.0.0.1:0", handler)
    port = ep.start()
    try:
        yield ep, handler, f"127.0.0.1:{port}"
    finally:
        ep.stop(0)


@pytest.fixture()
def client_for(cert_dir: Path, endpoint: tuple[Endpoint, RecordingHandler, str]) -> Iterator[Any]:
    made: list[PeerClient] = []

    def make(party: str, *, peer: str = "S0", certs: Path | None = None, connect_timeout: float = 2.0) -> PeerClient:
        c = PeerClient(identity(certs or cert_dir, party), peer, endpoint[2], connect_timeout=connect_timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
