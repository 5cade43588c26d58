"""A Flower simulation with secrobust's S0, S1 and dealer as real processes: what ``secrobust flower-sim`` runs.

``run(SimConfig(...))`` starts ``FlowerServers`` (dealer, S0, S1, each its own process, mutual TLS on
loopback), builds a Flower ServerApp with ``SecRobust`` and a ClientApp with ``secrobust_mod``, and runs
them with Flower's Simulation Engine (``flwr.simulation.run_simulation``, Ray) or in this process
(``backend="inprocess"``, ``secrobust.flower.inprocess``). Client ``i`` (Flower's partition id) is
``worker:i`` and holds the i-th IID part of the training set; the first ``byzantine`` clients are
Byzantine: they train honestly (on flipped labels for ``label-flip``), then replace their update with
``secrobust.train.attacks``' attack of it. Attacks that read the honest updates (alie, ipm, mimic, ...)
get the attacker's own honest update as their estimate of them: a Flower client sees no other client's
update. Ring attacks send their uint64 ring row as it is (``keys.SIM_RECORD``).

The model is ``secrobust.train.models``' (``cnn`` by default), evaluated centrally on the test set after
every round; ``summary.json`` holds flwr's version, the final accuracy, the mean weight per round given
to Byzantine clients (None with ``reveal="aggregate"``), per-round seconds and the processes' memory.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import keys as K

BACKENDS = ("ray", "inprocess")
SIM_MIN_PARTICIPANTS = 2
"""The servers' minimum cohort in a simulation: a test of few clients runs any rule its n allows."""


@dataclass
class SimConfig:
    clients: int = 10
    byzantine: int = 2
    rounds: int = 3
    rule: str = "krum"
    f: int | None = None
    """Byzantine clients the rule tolerates; default ``byzantine``."""
    attack: str = "sign-flip"
    attack_options: dict[str, Any] = field(default_factory=dict)
    reveal: str = "distances"
    options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    model: str = "cnn"
    local_steps: int = 20
    batch_size: int = 32
    lr: float = 0.3
    seed: int = 0
    backend: str = "ray"
    client_cpus: float = 1.0
    """Ray CPUs per ClientApp actor (1: two actors on two cores)."""
    threads: int = 2
    """In-process backend: ClientApps run on this many threads."""
    share_window_s: float = 120.0
    frac_bits: int | None = None
    split_operators: bool = False
    """The ServerApp acts as operator:S0 only; S1's approval service opens S1's half of each round."""

    def check(self) -> "SimConfig":
        from ..params import RoundParams
        from ..primitives import ring
        from ..train import attacks, data, models

        if self.clients < 2:
            raise ValueError(f"--clients must be at least 2, got {self.clients}")
        if not 0 <= self.byzantine < self.clients:
            raise ValueError(f"--byzantine must be in 0..{self.clients - 1}, got {self.byzantine}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.f is not None and self.f < 0:
            raise ValueError(f"--f must be non-negative, got {self.f}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend is {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.dataset not in data.DATASETS:
            raise ValueError(f"--dataset is one of {', '.join(data.DATASETS)}, got {self.dataset!r}")
        if self.model not in models.MODELS:
            raise ValueError(f"--model is one of {', '.join(models.MODELS)}, got {self.model!r}")
        if self.local_steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("--local-steps, --batch-size and --lr must be positive")
        attacks.make_attack(self.attack, **self.attack_options)
        # the round's parameters as every entry point checks them, for the cohort of every client and the
        # servers' minimum the simulation runs them with (2); the model's d is not known yet
        RoundParams.build(self.rule, self.tolerated, self.clients, 1,
                          frac_bits=ring.DEFAULT_FRAC_BITS if self.frac_bits is None else self.frac_bits,
                          reveal=self.reveal, norm_bound=None, min_participants=SIM_MIN_PARTICIPANTS,
                          dp_noise_std=0.0, check_inputs=True, options=self.options)
        return self

    @property
    def tolerated(self) -> int:
        return self.byzantine if self.f is None else self.f


# ---------------------------------------------------------------- data and model (each client process)


@functools.lru_cache(maxsize=2)
def _data(dataset: str, seed: int, clients: int) -> tuple[Any, list[np.ndarray]]:
    import warnings

    from ..train.data import load_dataset, partition_iid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the caller reports a fallback to digits
        ds = load_dataset(dataset, seed=seed)
    parts = partition_iid(len(ds.y_train), clients, np.random.default_rng([seed, 1]))
    return ds, parts


def _model(cfg: SimConfig, ds: Any) -> Any:
    from ..train.models import build_model

    return build_model(cfg.model, ds.input_shape, ds.n_classes, seed=cfg.seed)


def _train(cfg: SimConfig, pid: int, server_round: int, state: dict[str, Any], flip: bool) -> tuple[dict, float, int]:
    """Client ``pid``'s local SGD from the global ``state``: (new state dict, mean loss, examples)."""
    import torch
    import torch.nn.functional as F

    from ..train.data import flip_labels

    torch.set_num_threads(1)
    ds, parts = _data(cfg.dataset, cfg.seed, cfg.clients)
    idx = parts[pid]
    x = torch.from_numpy(ds.x_train[idx])
    y = ds.y_train[idx]
    y = torch.from_numpy(flip_labels(y) if flip else y)
    model = _model(cfg, ds)
    model.load_state_dict(state)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([cfg.seed, 2, pid, server_round])
    size = min(cfg.batch_size, len(idx))
    losses = []
    for _ in range(cfg.local_steps):
        batch = torch.from_numpy(rng.choice(len(idx), size=size, replace=False))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.state_dict(), float(np.mean(losses)), len(idx)


def client_app(cfg: SimConfig, worker_config: str) -> Any:
    """The ClientApp: local training, a Byzantine replacement for the first ``byzantine`` clients, and
    ``SecRobustMod`` in front (the only line that differs from a FedAvg ClientApp)."""
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp

    from ..train import attacks
    from .client import SecRobustMod, flatten, unflatten

    app = ClientApp(mods=[SecRobustMod(worker_config=worker_config)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import torch  # noqa: F401  (flwr's torch conversions look for it in sys.modules)

        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        sent = msg.content["arrays"]
        byzantine = pid < cfg.byzantine
        state, loss, examples = _train(cfg, pid, server_round, sent.to_torch_state_dict(),
                                       byzantine and attacks.flips_labels(cfg.attack))
        out = RecordDict({"metrics": MetricRecord({"train_loss": loss, "num-examples": examples})})
        new = ArrayRecord(state)
        if byzantine and not attacks.flips_labels(cfg.attack):
            own = (flatten(new) - flatten(sent))[None, :]
            rng = np.random.default_rng([cfg.seed, 3, pid, server_round])
            attack = attacks.make_attack(cfg.attack, **cfg.attack_options)
            if attacks.is_ring_attack(cfg.attack):
                row = attack(own, own, rng, _frac_bits(cfg))[0]
                out.array_records[K.SIM_RING] = ArrayRecord([np.asarray(row, dtype=np.uint64)])
                out.config_records[K.SIM_RECORD] = ConfigRecord({"ring": True})
            else:
                new = unflatten(flatten(sent) + np.asarray(attack(own, own, rng))[0], sent)
        out.array_records["arrays"] = new
        return Message(out, reply_to=msg)

    return app


def _frac_bits(cfg: SimConfig) -> int:
    from ..primitives import ring

    return ring.DEFAULT_FRAC_BITS if cfg.frac_bits is None else cfg.frac_bits


# ---------------------------------------------------------------- memory of the process tree


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


class TreeMemory:
    """Peak of the summed RSS of this process and all its descendants (Ray's, the servers'), sampled."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, sum(_rss(p) for p in _tree(os.getpid())))
            if self._stop.wait(self.interval):
                return


# ---------------------------------------------------------------- the run


def run(cfg: SimConfig, out_dir: Path | None = None, *, progress: Any = None) -> dict[str, Any]:
    """Run the simulation; returns the summary (and writes ``out_dir/summary.json``)."""
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp

    from ..deploy.local import LocalOptions
    from ..train.runner import evaluate
    from .servers import FlowerServers
    from .strategy import RoundRecord, SecRobust

    cfg.check()
    say = progress or (lambda text: None)
    if progress is not None:        # the command prints its own lines; Flower's INFO log would bury them
        import logging

        logging.getLogger("flwr").setLevel(logging.WARNING)
    ds, _ = _data(cfg.dataset, cfg.seed, cfg.clients)
    import torch

    x_test, y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    model = _model(cfg, ds)
    initial = ArrayRecord(model.state_dict())
    d = sum(int(a.numpy().size) for a in initial.values())
    accuracy: dict[int, float] = {}
    rounds: list[dict[str, Any]] = []
    train_start: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = evaluate(model, x_test, y_test)
        accuracy[server_round] = acc
        if server_round:
            say(f"round {server_round}: test accuracy {acc:.4f}")
        return MetricRecord({"accuracy": acc, "loss": loss})

    def on_round(rec: RoundRecord) -> None:
        res = rec.result
        weights = None if res is None or res.weights is None else [float(w) for w in res.weights]
        byz = None
        if res is not None and weights is not None:
            byz = float(sum(w for wid, w in zip(rec.worker_ids, weights) if wid < cfg.byzantine))
        rounds.append({"server_round": rec.server_round, "round_id": rec.round_id, "workers": len(rec.worker_ids),
                       "participants": None if res is None else len(res.participants),
                       "rejected": None if res is None else {str(rec.worker_ids[i]): why
                                                             for i, why in res.rejected.items()},
                       "declined": {str(k): v for k, v in rec.declined.items()},
                       "dropped": {str(k): v for k, v in rec.dropped.items()}, "error": rec.error,
                       "byzantine_weight": byz, "weights": weights,
                       "seconds": {"train": round(time.perf_counter() - train_start.get(rec.server_round, 0.0)
                                                  - rec.seconds.get("round", 0.0), 4),
                                   **{k: round(v, 4) for k, v in rec.seconds.items()}}})

    class Timed(SecRobust):
        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
            train_start[server_round] = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

    t0 = time.perf_counter()
    opts = LocalOptions(share_window_s=cfg.share_window_s, peer_timeout_s=120.0, start_timeout_s=300.0,
                        min_participants=SIM_MIN_PARTICIPANTS)
    summary: dict[str, Any]
    with TreeMemory() as tree, FlowerServers(cfg.clients, options=opts, split_operators=cfg.split_operators) as servers:
        startup = time.perf_counter() - t0
        say(f"dealer, S0 and S1 up in {startup:.1f} s; {cfg.clients} clients ({cfg.byzantine} Byzantine, "
            f"{cfg.attack}), {cfg.rule} f={cfg.tolerated}, reveal={cfg.reveal}, d={d}, backend {cfg.backend}")
        strategy = Timed(servers.operator_configs(), cfg.rule, cfg.tolerated, reveal=cfg.reveal, options=cfg.options,
                         frac_bits=_frac_bits(cfg), share_window_s=cfg.share_window_s, on_round=on_round,
                         fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg.clients,
                         min_available_nodes=cfg.clients, min_participants=opts.min_participants,
                         skip_failed_rounds=True)   # summary.json counts failed rounds (failed_rounds)
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds, timeout=3600.0,
                           train_config=ConfigRecord({"lr": cfg.lr}), evaluate_fn=evaluate_fn)

        client = client_app(cfg, servers.worker_config_template())
        t1 = time.perf_counter()
        flower_bytes: dict[str, int] = {}
        try:
            if cfg.backend == "inprocess":
                from .inprocess import run_inprocess

                grid = run_inprocess(server, client, cfg.clients, workers=cfg.threads)
                flower_bytes = {"to_clients": grid.bytes_to_clients, "from_clients": grid.bytes_from_clients}
            else:
                _run_ray(server, client, cfg)
        finally:
            strategy.close()
        run_seconds = time.perf_counter() - t1
        server_peak = {name: _hwm(pid) for name, pid in servers.server_pids().items()}
    per_round = [r["seconds"]["train"] + r["seconds"].get("round", 0.0) for r in rounds]
    byz = [r["byzantine_weight"] for r in rounds]
    summary = {
        "flwr_version": flwr.__version__,
        "final_accuracy": accuracy.get(cfg.rounds),
        # a failed round gave nobody weight: it counts as 0 (``failed_rounds`` says how many)
        "byzantine_weight": None if cfg.reveal == "aggregate" else float(sum(b or 0.0 for b in byz) / cfg.rounds),
        "initial_accuracy": accuracy.get(0),
        "accuracy": {str(k): v for k, v in sorted(accuracy.items())},
        "dataset": ds.name, "d": d, "config": asdict(cfg),
        "rounds": rounds, "failed_rounds": sum(1 for r in rounds if r["error"]),
        "seconds": {"servers_startup": round(startup, 3), "flower_run": round(run_seconds, 3),
                    "per_round": [round(s, 3) for s in per_round],
                    "mean_per_round": round(float(np.mean(per_round)), 3) if per_round else None},
        "memory_bytes": {"peak_rss_this_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                         "peak_rss_servers": server_peak, "peak_rss_process_tree_sampled": tree.peak},
        "flower_bytes": flower_bytes,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


RAY_START_ATTEMPTS = 3
RAY_PORT_WAIT_MS = 300_000
"""How long Ray's start may wait for its GCS server to write its port file (Ray's own default, 30 s, is what
ran out on a loaded 2-core machine: "Timed out waiting for file .../gcs_server_port_...")."""


def _run_ray(server: Any, client: Any, cfg: SimConfig) -> None:
    """Flower's Simulation Engine on Ray; the ClientApp actors import secrobust from this process's path.

    Ray is started here rather than by Flower (which uses a running Ray as it is and shuts it down at the end):
    in its own temporary directory, with its workers at normal priority, a patient wait for its GCS server and,
    should its start still fail, up to ``RAY_START_ATTEMPTS`` times. Only the start is retried; the simulation
    runs once."""
    import shutil
    import sys
    import tempfile

    import ray
    from flwr.simulation import run_simulation

    src = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    pythonpath = os.pathsep.join([*sys.path, os.environ["PYTHONPATH"]])
    # short: Ray's socket paths live under it and a Unix socket path has at most 107 bytes
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    # Ray runs its workers (the ClientApps) at niceness 15: on a machine busy with anything else they got a few
    # per cent of a core and a 2-round test took over 10 minutes; at 0 they get their fair share
    init_args = {"num_cpus": os.cpu_count() or 2, "include_dashboard": False, "logging_level": "ERROR",
                 "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}, "_temp_dir": temp_dir,
                 "_system_config": {"worker_niceness": 0}}
    try:
        start_ray(ray, init_args)
        backend = {"client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": 0.0}, "init_args": {}}
        run_simulation(server_app=server, client_app=client, num_supernodes=cfg.clients, backend_config=backend)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_ray(ray: Any, init_args: dict[str, Any], attempts: int = RAY_START_ATTEMPTS,
              port_wait_ms: int = RAY_PORT_WAIT_MS) -> None:
    """``ray.init(**init_args)``, waiting up to ``port_wait_ms`` for each port file Ray's start waits for, and
    tried again (after ``ray.shutdown()``, which ends what the failed start had started) up to ``attempts``
    times in all. The last failure is raised."""
    for attempt in range(1, attempts + 1):
        try:
            with _patient_port_wait(port_wait_ms):
                ray.init(**init_args)
            return
        except Exception as err:  # Ray's start fails with RuntimeError, TimeoutError, ConnectionError, ...
            ray.shutdown()
            if attempt == attempts:
                raise RuntimeError(f"Ray did not start in {attempts} attempts: {err}") from err
            print(f"Ray's start failed ({err}); starting it again ({attempt + 1} of {attempts})", flush=True)


class _patient_port_wait:
    """Within the block, Ray's start waits up to ``timeout_ms`` for a port file instead of its 30 s default
    (``ray._private.node.wait_for_persisted_port``; a Ray without it is left as it is)."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.original: Any = None

    def __enter__(self) -> None:
        try:
            from ray._private import node
        except ImportError:
            return
        original = getattr(node, "wait_for_persisted_port", None)
        if original is None:
            return
        limit = self.timeout_ms

        def patient(*args: Any, timeout_ms: int = 30_000, **kwargs: Any) -> Any:
            # timeout 0 is a look without waiting (a restarted GCS): kept as it is
            return original(*args, timeout_ms=max(timeout_ms, limit) if timeout_ms > 0 else timeout_ms, **kwargs)

        self.original = original
        node.wait_for_persisted_port = patient

    def __exit__(self, *exc: object) -> None:
        if self.original is not None:
            from ray._private import node

            node.wait_for_persisted_port = self.original
            self.original = None


__all__ = ["BACKENDS", "SimConfig", "client_app", "run"]
