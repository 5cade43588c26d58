"""S0, S1 and the dealer as OS processes on loopback, for Flower clients to act as the workers.

``FlowerServers`` is ``deploy.local.LocalDeployment`` without worker processes: it makes every party's
key and certificate in that party's own folder (both server CAs played by the launcher), writes each
party's TOML file, starts the dealer, S0 and S1 (each its own process, mutual TLS), and leaves the
workers to the Flower ClientApps: virtual client ``i`` (Flower's ``partition-id``) is ``worker:i`` and
reads ``worker_config(i)``; the ServerApp acts as both operators with ``operator_configs()``, whose
``[admission] workers`` lists the worker ids S0 and S1 admit (``SecRobust`` drops a reply bound to any
other worker instead of opening a round the servers refuse). With ``split_operators=True`` it also starts
S1's approval service (``deploy.approval``; a policy that allows every rule at the servers' minimum
cohort) and ``operator_configs()`` is operator:S0's file alone, naming the service, as in a deployment of
two organisations. Nothing here imports Flower.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..deploy.config import load as load_config
from ..deploy.config import to_toml
from ..deploy.local import LOOPBACK, Child, LocalDeployment, LocalOptions, free_ports
from ..deploy.operator import Operator
from ..pki.certs import operator_party, tls_name, worker_party

SERVER_PARTIES = ("dealer", "S0", "S1")
WORKER_CONFIG_TEMPLATE = "worker-{partition-id}"
"""How a worker's folder and TOML stem are named: ``tls_name(worker_party(i))``."""


class FlowerServers(LocalDeployment):
    """The dealer, S0 and S1 as processes; ``n_workers`` worker identities whose keys the Flower
    clients use (no worker process is started)."""

    def __init__(self, n_workers: int, workdir: str | os.PathLike[str] | None = None,
                 options: LocalOptions | None = None, *, split_operators: bool = False) -> None:
        super().__init__(n_workers, workdir, options)
        self.split_operators = bool(split_operators)

    def _start(self) -> None:
        super()._start()
        admitted = tuple(range(self.n_workers))
        for server in (0, 1):
            path = self.config_file(operator_party(server))
            cfg = dataclasses.replace(load_config(path), workers=admitted)
            path.write_text(to_toml(cfg, relative_to=path.parent))
        if self.split_operators:
            self._start_approval()

    def _start_approval(self) -> None:
        from ..deploy.approval import Policy, provision
        from ..rules.registry import rule_names
        from .launch import APPROVAL, wait_approval

        o = self.options
        listen = f"{LOOPBACK}:{free_ports(1)[0]}"
        policy = Policy(rules=rule_names(), min_cohort=o.min_participants, max_rounds=1 << 30,
                        max_share_window_s=max(600.0, o.share_window_s), test_seeds=o.insecure_test_seeds)
        path = provision(self.cert_dir, listen, policy)
        self.addresses[APPROVAL] = listen
        self._add(APPROVAL, ["--config", str(path), "--port-file", str(self.workdir / "state" / "approval.port")])
        self._spawn(self.children[APPROVAL])
        cfg = load_config(self.config_file(operator_party(0)))
        wait_approval(self, Operator([cfg.identity()], cfg.peers["S0"], None, None, approval=listen,
                                     connect_timeout=o.connect_timeout_s))

    def _spawn(self, child: Child) -> None:
        if child.name in SERVER_PARTIES:
            super()._spawn(child)
        elif child.name == "approval":
            from .launch import spawn_approval

            spawn_approval(self, child)

    def wait_workers_ready(self, timeout: float | None = None) -> None:
        """No worker process: a Flower client reaches the servers when its first round asks it to share."""

    def worker_config(self, worker_id: int) -> Path:
        """The TOML file of ``worker:<worker_id>`` (its key, certificates and the servers' addresses)."""
        return self.config_file(worker_party(worker_id))

    def worker_config_template(self) -> str:
        """``worker_config(i)`` with ``{partition-id}`` for i: what ``SecRobustMod(worker_config=...)`` takes."""
        sample = str(self.worker_config(0))
        stem = tls_name(worker_party(0))
        return sample.replace(stem, WORKER_CONFIG_TEMPLATE)

    def operator_configs(self) -> list[Path]:
        """The TOML files of ``operator:S0`` and ``operator:S1`` for ``SecRobust(operators=...)``; with split
        operators, ``operator:S0``'s alone (it names S1's approval service)."""
        if self.split_operators:
            return [self.config_file(operator_party(0))]
        return [self.config_file(operator_party(0)), self.config_file(operator_party(1))]

    def server_pids(self) -> dict[str, int]:
        """{dealer, S0, S1: process id} of the running server processes."""
        return {name: self.children[name].proc.pid for name in (*SERVER_PARTIES, "approval")
                if self.children.get(name) is not None and self.children[name].proc is not None}


__all__ = ["FlowerServers", "SERVER_PARTIES", "WORKER_CONFIG_TEMPLATE"]


def main(argv: list[str] | None = None) -> None:
    """``python -m secrobust.flower.servers --dir DIR``: the same as ``secrobust flower-servers``."""
    import sys

    from ..cli import main as cli_main

    cli_main(["flower-servers", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
