"""The server side: a Flower strategy whose ServerApp is the round's operator towards S0, S1 and the dealer.

``SecRobust`` is Flower's ``FedAvg`` (same sampling, evaluation and metric aggregation) with its training
round replaced. Each round:

1. ``configure_train`` samples the nodes as FedAvg does and sends them the global model, marked as
   secrobust's train stage, with a fresh binding challenge; each client's ``secrobust_mod`` trains, keeps
   its update, answers with its metrics (no arrays) and its worker certificates and signature binding its
   worker id to its node for this round (``binding``).
2. ``aggregate_train`` binds each reply to a worker (``binding.WorkerBinding``: the id its certificates
   prove, never the id it states; a reply without a valid binding, or otherwise malformed, is dropped
   alone with a logged reason), opens a round at S0 and S1 (both operator identities,
   ``deploy.operator.Operator``) for the bound workers, in worker-id order, with the rule, f, options and
   reveal mode given here; sends those nodes the share stage; each shares its update with S0 and S1
   directly; the strategy then fetches the two aggregate shares and the public weights (none with
   ``reveal="aggregate"``), rebuilds the robust aggregate of the updates, and adds it to the global model.

The AggregateResult of every round is kept in ``history`` (and passed to ``on_round``): on the same
updates it is what ``secrobust.aggregate`` returns (tests/flower). The strategy never holds an update.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .. import api
from ..deploy.config import load as load_config
from ..deploy.operator import Operator
from ..deploy.rounds import RoundRequest
from ..errors import ProtocolError, RoundAborted
from ..params import RoundParams
from ..pki.certs import operator_party
from ..primitives import ring
from ..rules import modes
from ..rules.cohort import DEFAULT_MIN_PARTICIPANTS
from ..transport.grpc import PartyUnreachable, RemoteRejected
from . import keys as K
from .binding import (
    CHALLENGE_FIELD,
    BindingRefused,
    Challenge,
    WorkerBinding,
    check_node_workers,
)
from .client import flatten, unflatten

log = logging.getLogger("secrobust.flower")


def _to_flower_console() -> None:
    """Send this logger's INFO lines where Flower's own go (its console handler: the ServerApp's output,
    which ``flwr log`` and ``flwr run --stream`` show), unless the application configured it."""
    if log.handlers:
        return
    try:
        from flwr.common.logger import console_handler
    except ImportError:     # pragma: no cover - flwr without it
        return
    log.addHandler(console_handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


class SecRobustError(RuntimeError):
    """The run cannot go on (settings, servers, nodes, or a round that could not run): the ServerApp stops
    with it, so the run ends ``finished:failed`` with this message."""


OPERATOR_FILES = ("operator-s0/operator-s0.toml", "operator-s1/operator-s1.toml")
"""Where the operators' TOML files are in a folder ``secrobust init`` (or ``FlowerServers``) made."""
DIR_KEY, DIR_ENV = "secrobust-dir", "SECROBUST_DIR"
RUN_CONFIG_KEYS: dict[str, tuple[str, type]] = {
    "rule": ("rule", str), "f": ("f", int), "reveal": ("reveal", str),
    "share-window-s": ("share_window_s", float), "min-participants": ("min_participants", int),
    "check-inputs": ("check_inputs", bool), "norm-bound": ("norm_bound", float),
    "rule-options": ("options", dict), "skip-failed-rounds": ("skip_failed_rounds", bool),
    "node-wait-s": ("node_wait_s", float), "fraction-train": ("fraction_train", float),
    "min-train-nodes": ("min_train_nodes", int), "fraction-evaluate": ("fraction_evaluate", float),
    "hide-weights": ("hide_weights", bool), "history-file": ("history_file", str),
    "one-message": ("one_message", bool),
}
"""``[tool.flwr.app.config]`` key -> (``SecRobust`` keyword, type) that ``SecRobust.from_run_config`` reads.
``min-participants`` and ``norm-bound`` of 0 mean unset; ``rule-options`` is a JSON object as a string."""
NUMPY_CLIENT_HINT = K.NUMPY_CLIENT_HINT
ROUND_ERRORS = (RoundAborted, RemoteRejected, PartyUnreachable, ProtocolError, ValueError)
HISTORY_FORMAT = "secrobust-flower-history/1"
"""The ``format`` of the history file (``SecRobust.history_document``)."""
REPLY_ERRORS = (BindingRefused, ValueError, TypeError, KeyError, OverflowError)
"""What reading one train reply may raise on a Byzantine client's content: that reply is dropped."""


@dataclass
class RoundRecord:
    """One training round as the strategy saw it."""

    server_round: int
    round_id: int | None
    worker_ids: tuple[int, ...]
    """The round's rows, in order: row i of the result is worker ``worker_ids[i]``."""
    node_ids: tuple[int, ...]
    result: api.AggregateResult | None
    error: str | None = None
    declined: dict[int, str] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    """{node id: why} of the train replies left out before the round opened (no valid binding, malformed,
    another dimension, a worker answering from two nodes)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """"round": ``aggregate_train`` (with two messages the secure part: opening, share stage, collecting),
    its parts "share" and "collect"; "train": the train messages out until the replies are in (with one
    message it holds the sharing too); "total": both, the whole server round as the strategy saw it."""


class SecRobust(FedAvg):
    """FedAvg's sampling and evaluation; training rounds aggregated by secrobust's S0 and S1.

    ``operators``: the TOML files of ``operator:S0`` and ``operator:S1`` (the ServerApp rebuilds the
    result, so it holds both), or an ``Operator`` made by the caller. ``rule``, ``f``, ``reveal``,
    ``options`` (rule options, pre-aggregation ``pre=``/``s=``, cclip's ``center``) and the keywords after
    them mean what they mean in ``secrobust.aggregate``; ``insecure_test_seed`` is for tests only (the
    servers must run with ``insecure_test_seeds``). ``share_window_s`` is how long the servers wait for the
    shares once a round is open. Other keywords go to FedAvg (``fraction_train``, ``min_train_nodes``,
    ``fraction_evaluate``, ...). ``weighted_by_key`` only weighs the metrics: the rule decides the weights
    of the updates.

    A reply's worker is the one its certificates and signature prove (``binding``), checked against the
    CA certificates the two operators hold. ``workers``: the worker ids the servers admit (default: the
    operator TOML files' ``[admission] workers`` if they list any, else every certified worker); a
    certified worker outside it is dropped rather than make ``open-round`` fail. ``node_workers``: {Flower
    node id: worker id} from provisioning; when given, a node is accepted only as its pinned worker."""

    def __init__(self, operators: Sequence[str | Path] | Operator, rule: str = "krum", f: int = 0, *,
                 reveal: str = modes.DEFAULT_MODE, options: dict[str, Any] | None = None,
                 frac_bits: int = ring.DEFAULT_FRAC_BITS, dp_noise_std: float = 0.0, check_inputs: bool = True,
                 norm_bound: float | None = None, min_participants: int | None = None,
                 share_window_s: float = 60.0, insecure_test_seed: bytes | int | None = None, prefetch: int = 1,
                 share_timeout_s: float | None = None, workers: Iterable[int] | None = None,
                 node_workers: Mapping[int, int] | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None, skip_failed_rounds: bool = False,
                 node_wait_s: float = 120.0, hide_weights: bool = False,
                 history_file: str | Path | None = None, one_message: bool = False, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.one_message = bool(one_message)
        self._early: tuple[int, RoundRequest, dict[int, int]] | None = None
        _to_flower_console()
        self.history_file = Path(history_file).expanduser() if history_file else None
        self._status, self._error = "running", None
        self._sent_at: float | None = None
        self.skip_failed_rounds = bool(skip_failed_rounds)
        self.node_wait_s = float(node_wait_s)
        self.hide_weights = bool(hide_weights)
        self.round_metrics: dict[int, MetricRecord] = {}
        self.workers = None if workers is None else tuple(workers)
        self.node_workers = None if node_workers is None else check_node_workers(node_workers)
        self._binding: WorkerBinding | None = None
        self._admitted: tuple[int, ...] | None = None
        self._challenge: Challenge | None = None
        self._asked: frozenset[int] = frozenset()
        self.rule, self.f, self.reveal = rule, int(f), modes.check_mode(reveal)
        self.options = dict(options or {})
        api.refuse_seed_option(self.options)
        self.frac_bits, self.dp_noise_std, self.check_inputs = frac_bits, dp_noise_std, check_inputs
        self.norm_bound, self.min_participants = norm_bound, min_participants
        self.policy: dict[str, Any] | None = None
        """S1's approval policy as its service states it (``preflight``), with split operators."""
        self.params = self.round_params()
        self.center = self.params.center
        self.rule_options = {k: v for k, v in self.options.items() if not (rule == "cclip" and k == "center")}
        self.share_window_s = float(share_window_s)
        self.share_timeout_s = share_timeout_s
        self.insecure_test_seed = insecure_test_seed
        self.prefetch = prefetch
        self.on_round = on_round
        self.history: list[RoundRecord] = []
        self._operators = operators
        self._op: Operator | None = operators if isinstance(operators, Operator) else None
        self._grid: Grid | None = None
        self._arrays: ArrayRecord | None = None
        self._config: ConfigRecord | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], **overrides: Any) -> "SecRobust":
        """The strategy ``[tool.flwr.app.config]`` (``context.run_config``) describes: the operators' files
        in ``secrobust-dir`` (else ``$SECROBUST_DIR``) and each key of ``RUN_CONFIG_KEYS`` present; keywords
        given here win (e.g. ``on_round``). One ``SecRobustError`` for a missing folder or a mistyped value."""
        kw: dict[str, Any] = {}
        for key, (name, kind) in RUN_CONFIG_KEYS.items():
            if key not in run_config:
                continue
            raw = run_config[key]
            try:
                if kind is bool:
                    if not isinstance(raw, bool):
                        raise TypeError("true or false")
                    value: Any = raw
                elif kind is dict:
                    value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
                    if not isinstance(value, dict):
                        raise TypeError("a JSON object in a string, e.g. '{\"m\": 3}'")
                elif kind is int:
                    if isinstance(raw, bool) or not isinstance(raw, int):
                        raise TypeError("an integer")
                    value = raw
                else:
                    value = kind(raw)
            except (TypeError, ValueError) as exc:
                raise SecRobustError(f"run config {key} = {raw!r}: expected {exc if isinstance(exc, TypeError) else kind.__name__}") from None
            if name in ("min_participants", "norm_bound") and not value:
                value = None
            kw[name] = value
        kw.update(overrides)
        if "operators" not in kw:
            kw["operators"] = operator_files(run_config.get(DIR_KEY))
            if "node_workers" not in kw:        # secrobust flower-nodes: each Flower node pinned to its worker
                from .nodes import read_node_workers
                try:
                    kw["node_workers"] = read_node_workers(kw["operators"][0].parent.parent)
                except (ValueError, TypeError, OSError) as exc:
                    raise SecRobustError(f"secrobust: the node pinning in {DIR_KEY}: {exc}") from exc
        try:
            return cls(**kw)
        except (ValueError, TypeError) as exc:
            raise SecRobustError(f"SecRobust settings from the run config: {exc}") from exc

    def round_params(self, n: int = 1 << 20, d: int = 1) -> RoundParams:
        """The rounds' public parameters, checked as every entry point checks them (``params.RoundParams``), for
        n workers of dimension d (before the first round: many workers of dimension 1, so that only the
        cohort-free checks apply), with the minimum cohort of ``request_min_participants``."""
        return RoundParams.build(self.rule, self.f, n, d, frac_bits=self.frac_bits, reveal=self.reveal,
                                 norm_bound=self.norm_bound,
                                 min_participants=self.request_min_participants() or DEFAULT_MIN_PARTICIPANTS,
                                 dp_noise_std=self.dp_noise_std, check_inputs=self.check_inputs,
                                 options=self.options)

    def request_min_participants(self) -> int | None:
        """The minimum cohort a round request carries: ``min_participants``, raised to S1's policy's
        ``min_cohort`` (which S1's approval service requires the request to carry); None: the servers' own."""
        floor = int((self.policy or {}).get("min_cohort") or 0)
        return max(self.min_participants or 0, floor) or None

    def minimum_nodes(self) -> tuple[int, str]:
        """(the fewest participants a round may have, why): the rule's minimum at this f, its options (multi-krum's
        m) and ``min_participants`` (the servers' default when unset; S1's policy's minimum cohort if larger)."""
        spec = self.params.spec_with_pre(None)
        need = spec.minimum(self.f)
        return need, f"rule {self.rule!r} with f={self.f} needs {spec.needs(self.f)} ({need} participants)"

    def preflight(self, grid: Grid) -> None:
        """Check what a run needs before any node trains; one ``SecRobustError`` naming what is wrong."""
        try:
            binding = self._worker_binding()
        except (OSError, ValueError, KeyError) as exc:
            raise SecRobustError(f"secrobust: cannot load the operators' files {self._operators}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        op = self.operator
        parties = [(f"S1's approval service ({operator_party(1)} at {op.clients[name].address}, and S1 behind it)"
                    if name in op.relayed else name, op.clients[name]) for name in op.sides]
        if op.dealer is not None:
            parties.append(("dealer", op.dealer))
        statuses = {}
        for name, client in parties:
            try:
                statuses[name] = client.control("status", timeout=10.0)
            except (PartyUnreachable, RemoteRejected, ProtocolError) as exc:
                raise SecRobustError(f"secrobust: {name} does not answer over mutual TLS ({exc}); start the servers "
                                     "('secrobust flower-servers --dir DIR') and check the addresses in the "
                                     "operators' files") from exc
        if op.relayed:
            self._follow_policy(next(st for name, st in statuses.items() if name.startswith("S1's")).get("policy"))
        need, why = self.minimum_nodes()
        admitted = self.binding.workers         # after S1's policy, which may name the workers a round can have
        if admitted is not None and len(admitted) < need:
            raise SecRobustError(f"secrobust: {why}, but the servers admit only {len(admitted)} workers; lower f "
                                 "or admit more workers")
        if self.node_workers is not None:
            pinned = {w for w in self.node_workers.values() if admitted is None or w in admitted}
            if len(pinned) < need:
                raise SecRobustError(f"secrobust: {why}, but only {len(pinned)} admitted workers have a node "
                                     "pinned to them (node-workers.json); lower f or provision more nodes "
                                     "('secrobust flower-nodes')")
        self.min_available_nodes = max(self.min_available_nodes, need)
        self.min_train_nodes = max(self.min_train_nodes, need)
        deadline = time.monotonic() + self.node_wait_s
        while True:
            connected = len(list(grid.get_node_ids()))
            if connected >= need:
                break
            if time.monotonic() >= deadline:
                raise SecRobustError(f"secrobust: {why}, but only {connected} SuperNodes connected within "
                                     f"{self.node_wait_s:g} s (node-wait-s); lower f or start more SuperNodes")
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        log.info("secrobust: %s; %d SuperNodes connected; S0, S1 and the dealer answer; %s; %s", why, connected,
                 "each node pinned to its worker (node-workers)" if self.node_workers is not None
                 else "nodes not pinned: a worker's key is accepted from any node",
                 "operator:S0 here, S1's rounds approved by S1's approval service" if op.relayed else
                 "this ServerApp holds both operators' keys (no S1 approval service: see docs/flower.md)")

    def _follow_policy(self, policy: Any) -> None:
        """Check the run's settings against S1's approval policy before any node trains (one
        ``SecRobustError`` naming what S1's organisation does not allow) and follow its minimum cohort and
        worker list: replies of workers the policy does not let a round name are dropped, not sent to S1."""
        if not isinstance(policy, dict):
            raise SecRobustError("secrobust: S1's approval service states no policy")
        problems = []
        if self.rule not in policy.get("rules", ()):
            problems.append(f"rule {self.rule!r} (it allows {', '.join(policy.get('rules', ())) or 'none'})")
        if self.reveal not in policy.get("reveals", ()):
            problems.append(f"reveal={self.reveal!r} (it allows {', '.join(policy.get('reveals', ()))})")
        if policy.get("check_inputs") and self.check_inputs is not True:
            problems.append("check-inputs = false (it requires the input validity check)")
        window = policy.get("max_share_window_s")
        if isinstance(window, (int, float)) and self.share_window_s > window:
            problems.append(f"share-window-s = {self.share_window_s:g} (at most {window:g})")
        least = policy.get("min_dp_noise_std") or 0.0
        if isinstance(least, (int, float)) and self.dp_noise_std < least:
            problems.append(f"dp_noise_std = {self.dp_noise_std:g} (at least {least:g})")
        if self.insecure_test_seed is not None and not policy.get("test_seeds"):
            problems.append("a fixed test seed")
        if problems:
            raise SecRobustError(f"secrobust: S1's approval policy does not allow {'; '.join(problems)}; change "
                                 "the run config or ask S1's organisation to change its policy")
        self.policy = policy
        self.params = self.round_params()
        allowed = policy.get("workers")
        if allowed is not None:
            mine = self.workers if self.workers is not None else self._admitted
            self.workers = tuple(sorted(set(allowed) & set(mine if mine is not None else allowed)))
            self._binding = None

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Any:
        """``preflight``, then FedAvg's ``start``; with no round aggregated (every one skipped), the result
        holds the initial arrays rather than Flower's empty ArrayRecord. The history file (if any) ends
        with the run's status: ``finished``, or ``failed`` and the error."""
        self._grid = grid
        try:
            self.preflight(grid)
            result = super().start(grid, initial_arrays, *args, **kwargs)
        except BaseException as exc:
            self._save_history("failed", f"{type(exc).__name__}: {exc}")
            raise
        self._save_history("finished")
        if not list(result.arrays.keys()):
            result.arrays = initial_arrays
        return result

    # the operator

    @property
    def operator(self) -> Operator:
        if self._op is None:
            cfgs = [load_config(Path(p)) for p in self._operators]  # type: ignore[union-attr]
            parties = sorted(c.party for c in cfgs)
            approval = cfgs[0].peers.get(operator_party(1)) if parties == [operator_party(0)] else None
            if parties != [operator_party(0), operator_party(1)] and not approval:
                raise ValueError(f"SecRobust needs {operator_party(0)}'s TOML file naming S1's approval service under "
                                 f"[peers] (\"{operator_party(1)}\" = \"host:port\"), or the TOML files of "
                                 f"{operator_party(0)} and {operator_party(1)}; got {parties}")
            peers = {k: v for c in cfgs for k, v in c.peers.items()}
            lists = [set(c.workers) for c in cfgs if c.workers]
            self._admitted = tuple(sorted(set.intersection(*lists))) if lists else None
            self._op = Operator([c.identity() for c in cfgs], peers.get("S0"), None if approval else peers.get("S1"),
                                peers.get("dealer"), connect_timeout=cfgs[0].connect_timeout_s, prefetch=self.prefetch,
                                approval=approval)
        return self._op

    @property
    def binding(self) -> WorkerBinding:
        """How a train reply is bound to a worker: the operators' CA certificates, ``workers`` (or the
        operator files' admission list) and ``node_workers``."""
        return self._worker_binding()

    def _worker_binding(self) -> WorkerBinding:
        if self._binding is None:
            op = self.operator
            if not op.both:
                raise ValueError("SecRobust needs operator:S0 and operator:S1, or operator:S0 and S1's approval "
                                 "service")
            cas = {name: op.clients[name].identity.cas[name] for name in op.sides}
            workers = self.workers if self.workers is not None else self._admitted
            self._binding = WorkerBinding(cas, workers=workers, node_workers=self.node_workers)
        return self._binding

    def close(self) -> None:
        if self._op is not None and not isinstance(self._operators, Operator):
            self._op.close()
            self._op = None

    def summary(self) -> None:
        super().summary()
        log.info("secrobust: rule %s, f=%d, reveal=%s, options %s", self.rule, self.f, self.reveal, self.options)

    # stage 1: train

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._grid, self._arrays, self._config = grid, arrays, config
        self._sent_at = time.perf_counter()
        self._worker_binding()      # a configuration error stops the run here, before any node is asked
        self._challenge = Challenge.fresh(_run_id(grid), server_round)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._early = None
        if self.one_message:
            messages = self._open_early(server_round, messages, flatten(arrays).size)
        self._asked = frozenset(msg.metadata.dst_node_id for msg in messages)
        fields: dict[str, Any] = {"stage": K.STAGE_TRAIN, "server-round": server_round,
                                  "arrays-key": self.arrayrecord_key, CHALLENGE_FIELD: self._challenge.encode()}
        if self._early is not None:
            fields.update(stage=K.STAGE_TRAIN_SHARE, round=self._early[1].round_id)
        for msg in messages:
            msg.content.config_records[K.RECORD] = ConfigRecord(dict(fields))
        return messages

    def _open_early(self, server_round: int, messages: list[Message], d: int) -> list[Message]:
        """One message per node and round: open the round now for the workers the sampled nodes are pinned
        to (``node_workers``), so each node trains and shares in one ClientApp call. Returns the messages to
        send (those to pinned, admitted nodes); the sampled ones unchanged, for the two stages, when the
        nodes are not pinned, too few are, or the round cannot be opened (a WARNING says why)."""
        if self.node_workers is None:
            log.warning("secrobust: one-message needs each node pinned to its worker (node-workers.json, "
                        "'secrobust flower-nodes'); server round %d uses two messages", server_round)
            return messages
        admitted = self.binding.workers
        node_of: dict[int, int] = {}
        kept = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            wid = self.node_workers.get(node)
            if wid is None or (admitted is not None and wid not in admitted) or wid in node_of:
                log.warning("node %s: not sent server round %d: it is not pinned to an admitted worker", node,
                            server_round)
                continue
            node_of[wid] = node
            kept.append(msg)
        need, why = self.minimum_nodes()
        if len(node_of) < need:
            log.warning("secrobust: %s, but only %d sampled nodes are pinned to admitted workers; server round %d "
                        "uses two messages", why, len(node_of), server_round)
            return messages
        try:
            request = self._request(tuple(sorted(node_of)), d)
            self.operator.open_round(request)
        except ROUND_ERRORS as exc:
            log.warning("secrobust: server round %d could not be opened before training (%s: %s); it uses two "
                        "messages", server_round, type(exc).__name__, exc)
            return messages
        self._early = (server_round, request, node_of)
        return kept

    # stage 2: the secure round

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        assert self._grid is not None and self._arrays is not None, "configure_train runs first"
        base = flatten(self._arrays)
        if self._early is not None and self._early[0] == server_round:
            return self._aggregate_early(server_round, list(replies), base, t0)
        dropped: dict[int, str] = {}
        cohort = self._cohort(server_round, list(replies), base.size, dropped)
        wids = tuple(sorted(cohort))
        nodes = tuple(cohort[w][0] for w in wids)
        record = RoundRecord(server_round, None, wids, nodes, None, dropped=dropped)
        metrics = self._metrics([cohort[w][1] for w in wids])
        seconds = record.seconds
        need, why = self.minimum_nodes()
        if len(wids) < need:
            by_reason: dict[str, list[int]] = {}
            for node, reason in sorted(dropped.items()):
                by_reason.setdefault(reason, []).append(node)
            record.error = (f"{why}, but only {len(wids)} of the {len(self._asked)} nodes asked gave a usable train "
                            f"reply" + "".join(f"; node{'s' if len(nodes) > 1 else ''} "
                                               f"{', '.join(map(str, nodes))}: {reason}"
                                               for reason, nodes in by_reason.items()))
            return self._failed(record, t0, metrics)
        try:
            request = self._request(wids, base.size)
            self.operator.open_round(request)
            record.round_id = request.round_id
            t1 = time.perf_counter()
            shared = self._share(server_round, request, cohort)
            seconds["share"] = time.perf_counter() - t1
            record.declined = {w: why for w, why in shared.items() if why}
            t1 = time.perf_counter()
            result = self.operator.collect(request, n=len(wids), wait_s=request.share_window_s + 600.0)
            seconds["collect"] = time.perf_counter() - t1
        except ROUND_ERRORS as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return self._failed(record, t0, metrics)
        return self._succeeded(record, result, base, t0, metrics)

    def _succeeded(self, record: RoundRecord, result: api.AggregateResult, base: np.ndarray, t0: float,
                   metrics: MetricRecord | None) -> tuple[ArrayRecord, MetricRecord]:
        """A round that ran: the new global model and the round's metrics."""
        assert self._arrays is not None
        record.result = result
        self._done(record, t0)
        new = unflatten(base + result.aggregate, self._arrays)
        out = dict(metrics or {})
        mine = self.round_metric(record)
        out.update(mine)
        self.round_metrics[record.server_round] = MetricRecord(mine)
        return new, MetricRecord(out)

    def _aggregate_early(self, server_round: int, replies: list[Message], base: np.ndarray,
                         t0: float) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round opened before training (``one_message``): each node trained and shared in one call. A
        reply whose binding fails (a node using another worker's key, a malformed reply) aborts the round,
        since its share may already be in; a ClientApp that failed declined the round and is left out."""
        assert self._early is not None
        _, request, node_of = self._early
        self._early = None
        dropped: dict[int, str] = {}
        cohort = self._cohort(server_round, replies, base.size, dropped)
        wids = request.worker_ids
        record = RoundRecord(server_round, request.round_id, wids, tuple(node_of[w] for w in wids), None,
                             dropped=dropped)
        metrics = self._metrics([content for _, content in cohort.values()])
        bad = {node: why for node, why in dropped.items() if not why.startswith("its ClientApp failed")}
        if bad:
            self.operator.abort(request.round_id, "a node's reply was refused after the round opened")
            record.error = (f"round {request.round_id} (opened before training) aborted: a share may have come "
                            "from a node that is not its worker's" + "".join(f"; node {n}: {why}"
                                                                           for n, why in sorted(bad.items())))
            return self._failed(record, t0, metrics)
        for wid, (_, content) in cohort.items():
            cfg = content.config_records[K.RECORD]
            if cfg.get("share") != K.STAGE_SHARED:
                record.declined[wid] = str(cfg.get("detail") or "declined")
        try:
            t1 = time.perf_counter()
            result = self.operator.collect(request, n=len(wids), wait_s=request.share_window_s + 600.0)
            record.seconds["collect"] = time.perf_counter() - t1
        except ROUND_ERRORS as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return self._failed(record, t0, metrics)
        return self._succeeded(record, result, base, t0, metrics)

    def _failed(self, record: RoundRecord, t0: float,
                metrics: MetricRecord | None) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """A round that could not run: a WARNING and, unless ``skip_failed_rounds``, ``SecRobustError``."""
        self._done(record, t0)
        if not self.skip_failed_rounds:
            log.error("secrobust: server round %d failed: %s", record.server_round, record.error)
            raise SecRobustError(f"secrobust: server round {record.server_round} failed: {record.error} "
                                 "(skip-failed-rounds = true goes on with the global model unchanged)")
        log.warning("secrobust: server round %d failed, the global model stays (skip-failed-rounds): %s",
                    record.server_round, record.error)
        self.round_metrics[record.server_round] = MetricRecord({"secrobust-failed": 1,
                                                               "secrobust-seconds": record.seconds["round"]})
        return None, metrics

    def round_metric(self, record: RoundRecord) -> dict[str, Any]:
        """A successful round as MetricRecord values (lists of worker ids in the round's row order, weights
        in the same order), logged on one line."""
        res = record.result
        assert res is not None
        wids = record.worker_ids
        worker = lambda row: wids[row] if 0 <= row < len(wids) else row   # noqa: E731
        out: dict[str, Any] = {
            "secrobust-round-id": int(record.round_id or 0),
            "secrobust-participants": len(res.participants),
            "secrobust-rejected": len(res.rejected),
            "secrobust-seconds": float(record.seconds.get("round", 0.0)),
            "secrobust-total-seconds": float(record.seconds.get("total", record.seconds.get("round", 0.0))),
            "secrobust-workers": [int(w) for w in wids],
            "secrobust-declined-workers": sorted(int(w) for w in record.declined),
            "secrobust-rejected-workers": sorted(int(worker(r)) for r in res.rejected),
            "secrobust-dropped-nodes": len(record.dropped),
        }
        weights = None if self.hide_weights or res.weights is None else np.asarray(res.weights, dtype=np.float64)
        if weights is not None:
            out["secrobust-weights"] = [float(v) for v in weights]
            out["secrobust-selected-workers"] = [int(wids[i]) for i in range(min(len(wids), weights.size))
                                                 if weights[i] > 0]
            out["secrobust-excluded-workers"] = [int(wids[i]) for i in range(min(len(wids), weights.size))
                                                 if weights[i] <= 0 and i not in res.rejected]
        out = {k: v for k, v in out.items() if not (isinstance(v, list) and not v)}  # Flower cannot type []
        log.info("secrobust: server round %d (secrobust round %s): %d participants; workers %s; weights %s; "
                 "selected %s; declined %s; rejected %s; %.2f s (%.2f s with training)", record.server_round,
                 record.round_id,
                 len(res.participants), list(wids),
                 "hidden" if weights is None else [round(float(v), 4) for v in weights],
                 out.get("secrobust-selected-workers", "hidden" if weights is None else []),
                 {int(w): why for w, why in record.declined.items()} or "none",
                 {int(worker(r)): why for r, why in res.rejected.items()} or "none", record.seconds.get("round", 0.0),
                 record.seconds.get("total", record.seconds.get("round", 0.0)))
        return out

    def history_line(self, record: RoundRecord) -> dict[str, Any]:
        """What the history file keeps of a round: what it made public (no weights, so no selected workers,
        with ``hide_weights``)."""
        res = record.result
        weights = None if res is None or res.weights is None or self.hide_weights else \
            [float(v) for v in res.weights]
        return {"server_round": record.server_round, "round_id": record.round_id,
                "workers": [int(w) for w in record.worker_ids], "nodes": [int(n) for n in record.node_ids],
                "rule": self.rule, "f": self.f, "reveal": self.reveal, "weights": weights,
                "selected": None if weights is None else [int(record.worker_ids[i]) for i, v in enumerate(weights)
                                                          if v > 0 and i < len(record.worker_ids)],
                "participants": None if res is None else [int(record.worker_ids[i]) for i in res.participants
                                                          if 0 <= i < len(record.worker_ids)],
                "rejected": {} if res is None else {str(record.worker_ids[i] if 0 <= i < len(record.worker_ids)
                                                        else i): why for i, why in res.rejected.items()},
                "declined": {str(w): why for w, why in record.declined.items()},
                "dropped": {str(n): why for n, why in record.dropped.items()}, "error": record.error,
                "seconds": {k: round(v, 4) for k, v in record.seconds.items()}}

    def history_path(self) -> Path | None:
        """The history file: ``history_file`` with ``{run_id}`` replaced by Flower's run id, relative to the
        ServerApp's working directory (under ``flwr run`` on a SuperLink, the directory ``flower-superlink``
        was started in, where Flower's checkpoint guide and ``flwr new``'s apps save their model)."""
        if self.history_file is None:
            return None
        run_id = _run_id(self._grid) if self._grid is not None else 0
        return Path(str(self.history_file).replace("{run_id}", str(run_id))).absolute()

    def history_document(self) -> dict[str, Any]:
        """The run as the history file holds it: the settings, the status (``running``, ``finished`` or
        ``failed`` with its error) and ``history_line`` of every round so far."""
        return {"format": HISTORY_FORMAT, "flwr_run_id": _run_id(self._grid) if self._grid is not None else 0,
                "status": self._status, "error": self._error,
                "rule": self.rule, "f": self.f, "reveal": self.reveal, "options": _jsonable(self.rule_options),
                "check_inputs": self.check_inputs, "share_window_s": self.share_window_s,
                "min_participants": self.request_min_participants(), "one_message": self.one_message,
                "hide_weights": self.hide_weights,
                "split_operators": None if self._op is None else bool(self._op.relayed),
                "rounds": [self.history_line(r) for r in self.history]}

    def _save_history(self, status: str | None = None, error: str | None = None) -> None:
        """Rewrite the history file whole (a temporary file, then a rename: a reader never sees half of it)."""
        if status is not None:
            self._status, self._error = status, error
        path = self.history_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.history_document(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def _done(self, record: RoundRecord, t0: float) -> None:
        now = time.perf_counter()
        record.seconds["round"] = now - t0
        if self._sent_at is not None and self._sent_at <= t0:
            record.seconds["train"] = t0 - self._sent_at     # train messages out until the last reply came in
            record.seconds["total"] = now - self._sent_at
        self.history.append(record)
        self._save_history()
        if self.on_round is not None:
            self.on_round(record)

    def _cohort(self, server_round: int, replies: list[Message], d: int,
                dropped: dict[int, str]) -> dict[int, tuple[int, RecordDict]]:
        """{worker id: (node id, reply content)} of the nodes that trained, kept an update of dimension d and
        proved which worker they are; each other reply is dropped alone, its reason logged (WARNING) and
        put in ``dropped`` under its node id."""
        out: dict[int, tuple[int, RecordDict]] = {}
        nodes_of: dict[int, list[int]] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                reason = msg.error.reason
                if "fitins.parameters" in reason and NUMPY_CLIENT_HINT not in reason:
                    reason = f"{reason} ({NUMPY_CLIENT_HINT})"
                dropped[node] = f"its ClientApp failed: {reason}"
                log.warning("node %s: train failed in server round %d: %s", node, server_round, reason)
                continue
            try:
                wid = self._admit(server_round, node, msg, d)
            except REPLY_ERRORS as exc:
                dropped[node] = str(exc) or type(exc).__name__
                log.warning("node %s: train reply of server round %d dropped: %s", node, server_round,
                            dropped[node])
                continue
            nodes_of.setdefault(wid, []).append(node)
            out[wid] = (node, msg.content)
        for wid, nodes in nodes_of.items():
            if len(nodes) > 1:      # one key on two nodes: neither can be told apart, both sit out
                out.pop(wid)
                for node in nodes:
                    dropped[node] = f"worker {wid}'s binding came from nodes {sorted(nodes)}"
                    log.warning("node %s: train reply of server round %d dropped: %s", node, server_round,
                                dropped[node])
        return out

    def _admit(self, server_round: int, node: int, msg: Message, d: int) -> int:
        """The worker id node ``node``'s train reply ``msg`` is bound to; one of REPLY_ERRORS, with the
        reason, for a reply that is not an honest mod's answer to this round's train message."""
        if node not in self._asked:
            raise BindingRefused("the node was not sent this round's train message")
        cfg = msg.content.config_records.get(K.RECORD)
        if cfg is None or cfg.get("stage") != K.STAGE_TRAINED:
            raise BindingRefused("it is not secrobust_mod's trained stage")
        dim = cfg.get("d")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise BindingRefused(f"its dimension is not an integer: {dim!r}")
        if dim != d:
            raise BindingRefused(f"it kept an update of dimension {dim}, the model has {d}")
        assert self._challenge is not None and self._challenge.server_round == server_round, \
            "configure_train runs first"
        return self.binding.bind(node, cfg, self._challenge)

    def _metrics(self, contents: list[RecordDict]) -> MetricRecord | None:
        with_weight = [c for c in contents if any(self.weighted_by_key in m for m in c.metric_records.values())]
        if not with_weight:
            return None
        try:
            return self.train_metrics_aggr_fn(with_weight, self.weighted_by_key)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:   # a client's metrics are its own: e.g.
            # counts of +1e308 and -1e308 sum to 0.0 and FedAvg's average divides by it
            log.warning("train metrics not aggregated: %s", exc)
            return None

    def _request(self, wids: tuple[int, ...], d: int) -> RoundRequest:
        self.round_params(len(wids), d)
        center = None
        if self.center is not None:
            center = [float(v) for v in np.asarray(self.center, dtype=np.float64).reshape(-1)]
        op = self.operator
        statuses = op.status()
        request = op.with_triples(RoundRequest(
            round_id=op.next_round_id(statuses), worker_ids=wids, d=d, rule=self.rule, f=self.f,
            frac_bits=self.frac_bits, options=self.rule_options, center=center, share_window_s=self.share_window_s,
            dp_noise_std=self.dp_noise_std, test_seed=_test_seed(self.insecure_test_seed), seed_round=0,
            check_inputs=self.check_inputs, norm_bound=self.norm_bound,
            min_participants=self.request_min_participants(), reveal=self.reveal), statuses)
        request.check()
        return request

    def _share(self, server_round: int, request: RoundRequest,
               cohort: dict[int, tuple[int, RecordDict]]) -> dict[int, str]:
        """Send the share stage to the cohort's nodes; {worker id: "" if it shared, else why not}."""
        assert self._grid is not None
        messages = []
        for wid in request.worker_ids:
            content = RecordDict({K.RECORD: ConfigRecord({"stage": K.STAGE_SHARE, "round": request.round_id,
                                                          "server-round": server_round})})
            messages.append(Message(content=content, dst_node_id=cohort[wid][0], message_type=MessageType.TRAIN,
                                    group_id=str(server_round)))
        timeout = self.share_timeout_s if self.share_timeout_s is not None else request.share_window_s + 30.0
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        out = {wid: "no reply" for wid in request.worker_ids}
        by_node = {cohort[w][0]: w for w in request.worker_ids}
        for msg in replies:
            wid = by_node.get(msg.metadata.src_node_id)
            if wid is None:
                continue
            if msg.has_error():
                out[wid] = msg.error.reason
                continue
            cfg = msg.content.config_records.get(K.RECORD)
            out[wid] = "" if cfg is not None and cfg.get("stage") == K.STAGE_SHARED else \
                str(cfg.get("detail", "declined") if cfg is not None else "no secrobust record")
        for wid, why in out.items():
            if why:
                log.warning("worker %d did not share in round %d: %s", wid, request.round_id, why)
        return out


def operator_files(folder: Any = None) -> list[Path]:
    """The operators' TOML files in ``folder`` (``secrobust-dir``; empty or None: ``$SECROBUST_DIR``):
    ``operator:S0``'s alone when it names S1's approval service under ``[peers]`` (split operators), else
    both operators'; ``SecRobustError`` saying what to set when there is none or they are missing."""
    raw = str(folder or "") or os.environ.get(DIR_ENV, "")
    if not raw:
        raise SecRobustError(f"secrobust: no {DIR_KEY}: set it to the folder 'secrobust init' made (the one "
                             f"'secrobust flower-servers --dir' runs), in [tool.flwr.app.config] or with "
                             f"flwr run --run-config \"{DIR_KEY}='/path/to/dir'\" (or ${DIR_ENV} where the ServerApp runs)")
    root = Path(raw).expanduser()
    files = [root / name for name in OPERATOR_FILES]
    if files[0].is_file():
        try:
            split = operator_party(1) in load_config(files[0]).peers
        except (ValueError, OSError) as exc:
            raise SecRobustError(f"secrobust: {files[0]}: {exc}") from exc
        if split:           # operator:S0 alone; S1's rounds go through S1's approval service
            return files[:1]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise SecRobustError(f"secrobust: {DIR_KEY} = {raw!r} has no {' and no '.join(missing)}; it must be the "
                             "folder 'secrobust init --out DIR' made")
    return files


def _run_id(grid: Grid) -> int:
    """The run the grid serves (0 if it names none): part of what each binding is signed for."""
    try:
        run_id = getattr(grid.run, "run_id", 0)
    except (AssertionError, AttributeError):
        return 0
    return run_id if isinstance(run_id, int) and 0 <= run_id < 1 << 64 else 0


def _jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as plain numbers and lists (for the history file)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _test_seed(seed: bytes | int | None) -> int | str | None:
    """The master seed as a RoundRequest carries it: an int as is, bytes as hex."""
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed
    return bytes(seed).hex()


__all__ = ["RUN_CONFIG_KEYS", "RoundRecord", "SecRobust", "SecRobustError", "operator_files"]
