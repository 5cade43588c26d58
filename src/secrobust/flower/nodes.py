"""``secrobust flower-nodes``: tie each worker's secrobust identity to a Flower node, by provisioning.

Flower 1.42 authenticates SuperNodes by an EC key whose public half is registered at the SuperLink
(``flower-superlink --enable-supernode-auth``, ``flwr supernode register``); the SuperLink then gives the
node that proves that key one node id, and no other node can take it. For each worker ``i`` of a folder
``secrobust init`` made, ``provision_nodes``

1. makes the node's Flower key in the worker's own folder (``worker-<i>/flower-node`` in OpenSSH format,
   mode 0600, and ``flower-node.pub``; kept if they exist),
2. registers the public key at the SuperLink with ``flwr supernode register`` and learns its node id,
3. writes ``worker-<i>/flower-supernode.txt``: the exact ``flower-supernode ...`` command for that node
   (its key; in ``--node-config`` its worker's TOML file and ``partition-id=<i>``; add a runtime
   ``--port`` when several SuperNodes share a host),

and writes ``node-workers.json`` ({node id: worker id}) at the top of the folder. ``SecRobust`` (via
``secrobust-dir``) reads that file and accepts node ``n``'s train reply only as worker
``node_workers[n]``: a worker key used from any other node, even a valid one, is dropped
(``binding.WorkerBinding``). So a stolen worker key is useless without that worker's Flower node key too.
Nothing here imports Flower; ``flwr`` is run as a command.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..pki.certs import tls_name, worker_party

NODE_WORKERS_FILE = "node-workers.json"
NODE_KEY = "flower-node"


def node_key(folder: Path) -> tuple[Path, Path]:
    """The Flower node key of the worker whose folder this is (made once: P-384, OpenSSH, mode 0600)."""
    key, pub = folder / NODE_KEY, folder / f"{NODE_KEY}.pub"
    if not key.exists():
        private = ec.generate_private_key(ec.SECP384R1())
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
        pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH) + b"\n")
    elif not pub.exists():
        private = serialization.load_ssh_private_key(key.read_bytes(), None)
        pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH) + b"\n")
    return key, pub


def flwr_register(flwr: str, connection: str, env: Mapping[str, str] | None = None) -> Callable[[Path], int]:
    """A function that registers a public key at the SuperLink of ``connection`` and returns its node id."""

    def register(pub: Path) -> int:
        res = subprocess.run([flwr, "supernode", "register", str(pub), connection, "--format", "json"],
                             capture_output=True, text=True, timeout=120, env=None if env is None else dict(env),
                             check=False)
        try:
            out = json.loads(res.stdout)
        except json.JSONDecodeError:
            out = {}
        if res.returncode != 0 or not out.get("success") or not out.get("node-id"):
            raise RuntimeError(f"flwr supernode register {pub} {connection} failed: "
                               f"{(res.stdout + res.stderr).strip()[-800:]}")
        return int(out["node-id"])

    return register


def provision_nodes(folder: Path, workers: list[int], register: Callable[[Path], int], superlink: str, *,
                    root_certificates: Path | None = None, extra_node_config: str = "") -> dict[int, int]:
    """Make, register and pin a Flower node per worker; {node id: worker id}, also in ``node-workers.json``."""
    folder = folder.resolve()
    mapping: dict[int, int] = {}
    path = folder / NODE_WORKERS_FILE
    if path.exists():
        mapping = {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
    for i in workers:
        wdir = folder / tls_name(worker_party(i))
        toml = wdir / f"{tls_name(worker_party(i))}.toml"
        if not toml.is_file():
            raise FileNotFoundError(f"no {toml}: provision worker {i} first ('secrobust init')")
        had_key = (wdir / NODE_KEY).exists()
        key, pub = node_key(wdir)
        known = [n for n, w in mapping.items() if w == i]
        if had_key and known:           # registered before (the SuperLink refuses a key twice): keep its id
            node = known[0]
        else:
            node = register(pub)
        mapping = {n: w for n, w in mapping.items() if w != i}
        mapping[node] = i
        tls = f"--root-certificates {shlex.quote(str(root_certificates))}" if root_certificates else "--insecure"
        node_config = f"partition-id={i} secrobust-worker-config='{toml}'" + \
            (f" {extra_node_config}" if extra_node_config else "")
        quoted = f'"{node_config}"' if not set(node_config) & set('"$`\\') else shlex.quote(node_config)
        (wdir / "flower-supernode.txt").write_text(
            f"flower-supernode {tls} --superlink {superlink} --auth-supernode-private-key {shlex.quote(str(key))} "
            f"--node-config {quoted}\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({str(n): w for n, w in sorted(mapping.items())}, indent=1))
    os.replace(tmp, path)
    return mapping


def read_node_workers(folder: Path) -> dict[int, int] | None:
    """{node id: worker id} from ``folder/node-workers.json``, or None when there is none."""
    path = Path(folder) / NODE_WORKERS_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise TypeError(f"{path} is not a JSON object of node id -> worker id")
    return {int(k): int(v) for k, v in raw.items()}


def default_flwr() -> str:
    """The ``flwr`` command beside this Python, else the one on PATH."""
    here = Path(sys.executable).parent / "flwr"
    return str(here) if here.exists() else "flwr"


__all__ = ["NODE_WORKERS_FILE", "default_flwr", "flwr_register", "node_key", "provision_nodes", "read_node_workers"]
