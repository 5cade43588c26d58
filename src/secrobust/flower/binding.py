"""Which worker a Flower node is: bound out of band, never read from what the node says.

A train reply's worker id is the one its **certificates** prove, never the ``worker`` value it carries.
Each round the strategy sends every sampled node a fresh challenge: the run id, the server round and a
16-byte nonce from ``secrets``. The node's ``secrobust_mod`` answers with its two worker certificates
(the one S0's CA issued and the one S1's CA issued, both for ``worker:<i>`` and the same key: what the
servers themselves require of a worker) and an ECDSA signature, with that key, of

    DOMAIN || run id || server round || node id || nonce || worker id      (ids as 8-byte big-endian)

where node id is the Flower node the challenge was addressed to. ``WorkerBinding.bind`` accepts a reply
only if both certificates chain to the two CAs the operators trust, name the same worker and key, are
within their validity, and the signature verifies for *the node the reply came from*, this round's
nonce and that worker. So a node cannot claim another worker's id (it lacks the key), and a signed reply
copied to another node or replayed in another round or run does not verify. Optionally the provisioning
step pins nodes to workers (``node_workers``: node id -> worker id, e.g. from Flower's node
authentication) and lists the worker ids the servers admit (``workers``); a reply outside either is
refused too. Every refusal is a ``BindingRefused`` with the reason, for the strategy to log and to drop
that reply alone. Issue 21's node-bound identities can replace ``WorkerBinding`` behind ``bind``.

No Flower import: the ClientApp side (``sign_binding``) and the strategy side share this module.
"""

from __future__ import annotations

import datetime as dt
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..pki.ceremony import sign_with_key, signed_by
from ..pki.certs import ORGS, Identity, ca_org, common_name, issued_by, worker_index

DOMAIN = b"secrobust/flower/worker-binding/v1\x00"
NONCE_BYTES = 16
U64 = 1 << 64
CHALLENGE_FIELD = "challenge"
"""Key, in the train message's secrobust record, of the packed challenge (run id, round, nonce)."""
SIGNATURE_FIELD = "binding-signature"
CERT_FIELDS = {org: f"binding-cert-{org.lower()}" for org in ORGS}
"""Keys, in the train reply's secrobust record, of the worker's certificate from each organisation's CA."""
MAX_CERT_BYTES = 8192
MAX_SIGNATURE_BYTES = 128


class BindingRefused(ValueError):
    """A reply whose node is bound to no admissible worker; the message is the reason."""


def _u64(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < U64:
        raise BindingRefused(f"{what} must be an integer in [0, 2^64), got {value!r}")
    return value


@dataclass(frozen=True)
class Challenge:
    """What one round's bindings are signed for: the run, the server round and a fresh nonce."""

    run_id: int
    server_round: int
    nonce: bytes

    def __post_init__(self) -> None:
        _u64(self.run_id, "a run id")
        _u64(self.server_round, "a server round")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise BindingRefused(f"a challenge's nonce is {NONCE_BYTES} bytes")

    @classmethod
    def fresh(cls, run_id: int, server_round: int) -> Challenge:
        """A challenge with a nonce from ``secrets`` (unpredictable, so no reply can be signed in advance)."""
        return cls(run_id, server_round, secrets.token_bytes(NONCE_BYTES))

    def encode(self) -> bytes:
        """The challenge as the train message carries it (32 bytes)."""
        return struct.pack(">QQ", self.run_id, self.server_round) + self.nonce

    @classmethod
    def decode(cls, data: Any) -> Challenge:
        """``encode``'s inverse; BindingRefused for anything else."""
        if not isinstance(data, bytes) or len(data) != 16 + NONCE_BYTES:
            raise BindingRefused(f"a challenge is {16 + NONCE_BYTES} bytes")
        run_id, server_round = struct.unpack(">QQ", data[:16])
        return cls(run_id, server_round, data[16:])

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Challenge:
        """The challenge in a train message's secrobust record."""
        if CHALLENGE_FIELD not in record:
            raise BindingRefused("the train message carries no binding challenge")
        return cls.decode(record[CHALLENGE_FIELD])

    def message(self, node_id: int, worker_id: int) -> bytes:
        """The bytes worker ``worker_id`` signs to say it answers from node ``node_id`` in this round."""
        return (DOMAIN + struct.pack(">QQQ", self.run_id, self.server_round, _u64(node_id, "a node id"))
                + self.nonce + struct.pack(">Q", _u64(worker_id, "a worker id")))


def sign_binding(identity: Identity, challenge: Challenge, node_id: int) -> dict[str, bytes]:
    """The fields a worker adds to its train reply: its certificates and its signature binding it to
    ``node_id`` (the node the challenge was addressed to) for ``challenge``."""
    wid = worker_index(identity.party)
    if wid is None:
        raise ValueError(f"only a worker binds itself to a node, not {identity.party!r}")
    out = {SIGNATURE_FIELD: sign_with_key(identity.key_pem, challenge.message(node_id, wid))}
    out.update({CERT_FIELDS[org]: bytes(identity.certs[org]) for org in ORGS})
    return out


class WorkerBinding:
    """The strategy's side: the worker a node's train reply is bound to, or BindingRefused.

    ``cas``: {"S0": PEM, "S1": PEM}, each organisation's CA certificate (as its operator holds it).
    ``workers``: the worker ids the servers admit (None: every certified worker). ``node_workers``:
    {node id: worker id} from provisioning (None: any node may hold any worker's key, the signature binds
    it to the node it answers from)."""

    def __init__(self, cas: Mapping[str, bytes], *, workers: Iterable[int] | None = None,
                 node_workers: Mapping[int, int] | None = None) -> None:
        if set(cas) != set(ORGS):
            raise ValueError(f"a worker binding needs the CA certificates of {' and '.join(ORGS)}")
        for org, pem in cas.items():
            if ca_org(x509.load_pem_x509_certificate(pem)) != org:
                raise ValueError(f"the CA certificate given for {org} is not {org}'s")
        self.cas = {org: bytes(cas[org]) for org in ORGS}
        self.workers = None if workers is None else frozenset(_worker_id(w) for w in workers)
        self.node_workers = None if node_workers is None else check_node_workers(node_workers)

    def bind(self, node_id: int, record: Mapping[str, Any], challenge: Challenge) -> int:
        """The worker id of the reply ``record`` that came from node ``node_id`` in the round of
        ``challenge``; BindingRefused, with the reason, unless the reply proves it as described above."""
        pinned = None
        if self.node_workers is not None:
            pinned = self.node_workers.get(node_id)
            if pinned is None:
                raise BindingRefused(f"node {node_id} is not provisioned for any worker")
        certs = {org: self._certificate(record, org) for org in ORGS}
        names = {org: common_name(pem) for org, (pem, _) in certs.items()}
        if len(set(names.values())) != 1:
            raise BindingRefused(f"its two certificates name different parties: {sorted(set(names.values()))}")
        wid = worker_index(names["S0"])
        if wid is None:
            raise BindingRefused(f"its certificates are {names['S0']!r}'s, not a worker's")
        keys = [cert.public_key() for _, cert in certs.values()]
        if any(k != keys[0] for k in keys[1:]):
            raise BindingRefused(f"its two certificates of worker {wid} are for different keys")
        signature = record.get(SIGNATURE_FIELD)
        if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
            raise BindingRefused("it carries no binding signature")
        if not signed_by(certs["S0"][1], challenge.message(node_id, wid), signature):
            raise BindingRefused(f"the binding signature does not verify for node {node_id}, worker {wid} and "
                                 f"server round {challenge.server_round}'s challenge")
        claim = record.get("worker", wid)
        if isinstance(claim, bool) or not isinstance(claim, int) or claim != wid:
            raise BindingRefused(f"it claims worker {claim!r}, but its binding proves worker {wid}")
        if pinned is not None and pinned != wid:
            raise BindingRefused(f"node {node_id} is provisioned as worker {pinned}, its binding proves worker {wid}")
        if self.workers is not None and wid not in self.workers:
            raise BindingRefused(f"worker {wid} is certified but the servers do not admit it")
        return wid

    def _certificate(self, record: Mapping[str, Any], org: str) -> tuple[bytes, x509.Certificate]:
        pem = record.get(CERT_FIELDS[org])
        if not isinstance(pem, bytes) or not 0 < len(pem) <= MAX_CERT_BYTES:
            raise BindingRefused(f"it carries no worker certificate from {org}'s CA")
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise BindingRefused(f"its certificate from {org}'s CA is not a PEM certificate") from None
        if not issued_by(pem, self.cas[org]):
            raise BindingRefused(f"its certificate from {org} was not issued by {org}'s CA")
        now = dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise BindingRefused(f"its certificate from {org}'s CA is not valid now")
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise BindingRefused(f"its certificate from {org} is a CA's")
        except x509.ExtensionNotFound:
            pass
        return pem, cert


def check_node_workers(node_workers: Mapping[int, int]) -> dict[int, int]:
    """``node_workers`` as {node id: worker id}; ValueError for a non-integer id or a worker pinned to two
    nodes (neither could be told apart from the other)."""
    out: dict[int, int] = {}
    for node, wid in dict(node_workers).items():
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < U64:
            raise ValueError(f"node_workers: a node id is an integer in [0, 2^64), got {node!r}")
        out[node] = _worker_id(wid)
    if len(set(out.values())) != len(out):
        raise ValueError("node_workers pins one worker to two nodes")
    return out


def _worker_id(wid: Any) -> int:
    if isinstance(wid, bool) or not isinstance(wid, int) or wid < 0:
        raise ValueError(f"a worker id is a non-negative integer, got {wid!r}")
    return wid


__all__ = ["CERT_FIELDS", "CHALLENGE_FIELD", "BindingRefused", "Challenge", "NONCE_BYTES", "SIGNATURE_FIELD",
           "WorkerBinding", "check_node_workers", "sign_binding"]
