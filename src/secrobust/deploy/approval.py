"""S1's approval service: ``operator:S1`` opens at S1 only the rounds S1's organisation's policy allows.

Split operators. Each server opens rounds only for its own operator (``operator:S0`` at S0,
``operator:S1`` at S1: ``server.permits``), so whoever holds only ``operator:S0``'s key (a Flower ServerApp,
S0's organisation) cannot open a round at S1 by itself. S1's organisation runs this small service, which
holds ``operator:S1``'s key alone and listens for ``operator:S0`` over mutual TLS (its certificate from S0's
CA, nobody else admitted). Each ``open-round`` it receives is checked against S1's ``Policy`` (rules and
reveal modes allowed, a minimum cohort that the round's own ``min_participants`` must enforce at the
servers, the input validity check on, the workers a round may name, a bound on the share window, a least
DP noise, a rate of rounds, test seeds off) and against replays (a round id not above the last one approved, a triple id
that already ran a round); only then does the service open exactly that request at S1 as
``operator:S1``. A refusal is ``not-permitted`` with ``S1's policy refuses round r: <why>``, and S1 never
hears of the round (the caller's S0 round is then aborted by ``Operator.open_round``).

For the rounds it approved, the service also relays to ``operator:S0``: S1's report without S1's opened
view (the distances stay with S1's organisation), ``abort-round``, and S1's aggregate share (readdressed
as from ``operator:S1``; ``Operator`` checks it against S0's own digest of the aggregate). ``status``
returns S1's last round id and triple pool (the caller names the triples) and the policy.

Configuration (``operator-s1/approval.toml``; paths relative to the file)::

    operator = "operator-s1.toml"   # operator:S1's own file: its key, certificates and S1's address
    listen = "127.0.0.1:7103"       # where operator:S0 reaches the service
    log_file = "approval.jsonl"     # optional: JSON lines, stderr otherwise

    [policy]
    rules = ["krum", "multi-krum"]  # the rules S1 runs (required)
    reveals = ["distances", "weights", "aggregate"]
    min_cohort = 5                  # fewest workers a round names, and the least min_participants it carries
    check_inputs = true             # refuse a round without the input validity check
    workers = "0-9"                 # the workers a round may name (default: operator-s1.toml's [admission])
    max_rounds = 120                # at most this many rounds approved ...
    per_seconds = 3600              # ... in any window of this many seconds
    min_interval_s = 0              # and at least this long between two approved rounds
    max_share_window_s = 600
    min_dp_noise_std = 0.0          # the least DP noise (std on the aggregate) a round may ask for
    test_seeds = false              # tests only: a request's fixed test seed

``operator:S0``'s file names the service under ``[peers]`` as ``"operator:S1" = "host:port"``; an
``Operator`` given that address (``approval=``) reaches S1 only through it.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from ..pki.certs import Identity, operator_party
from ..pki.certs import tls_name as party_dir_name
from ..protocol import messages as M
from ..protocol.messages import Message
from ..rules import modes
from ..rules.registry import rule_names
from ..transport.grpc import (
    Endpoint,
    PartyUnreachable,
    PeerClient,
    Rejected,
    RemoteRejected,
    logs,
)
from ..transport.grpc.errors import CODES
from ..transport.grpc.logs import LOGGER_NAME, event
from ..transport.grpc.tls import MAX_GRPC_MESSAGE
from ..transport.handler import PartyHandler
from .config import PartyConfig, parse_worker_ids, to_toml
from .config import load as load_config
from .rounds import RoundRequest

APPROVAL_PARTY = operator_party(1)
"""The service's identity: S1's operator, whose key it alone holds."""
CLIENT_PARTY = operator_party(0)
"""The only caller it admits: S0's operator (a Flower ServerApp, S0's organisation)."""
APPROVAL_FILE = "approval.toml"
"""The service's file, in operator:S1's folder of a provisioned deployment."""
POLICY_KEYS = ("rules", "reveals", "min_cohort", "check_inputs", "workers", "max_rounds", "per_seconds",
               "min_interval_s", "max_share_window_s", "min_dp_noise_std", "test_seeds")
TOP_KEYS = ("operator", "listen", "log_file", "policy")
KEEP_ROUNDS = 512


class PolicyRefused(ValueError):
    """A round request S1's policy does not allow; the message says which rule it breaks."""


@dataclass(frozen=True)
class Policy:
    """What S1's organisation lets ``operator:S0`` ask of S1. ``workers`` None: any worker S1 admits."""

    rules: tuple[str, ...]
    reveals: tuple[str, ...] = modes.MODES
    min_cohort: int = 5
    check_inputs: bool = True
    workers: tuple[int, ...] | None = None
    max_rounds: int = 120
    per_seconds: float = 3600.0
    min_interval_s: float = 0.0
    max_share_window_s: float = 600.0
    min_dp_noise_std: float = 0.0
    test_seeds: bool = False

    def __post_init__(self) -> None:
        known = set(rule_names())
        bad = [r for r in self.rules if r not in known]
        if not self.rules or bad:
            raise ValueError(f"policy rules must list rules S1 runs ({', '.join(sorted(known))}); "
                             f"got {list(self.rules) if not bad else bad}")
        wrong = [m for m in self.reveals if m not in modes.MODES]
        if not self.reveals or wrong:
            raise ValueError(f"policy reveals are among {list(modes.MODES)}, got {list(self.reveals)}")
        if isinstance(self.min_cohort, bool) or not isinstance(self.min_cohort, int) or self.min_cohort < 2:
            raise ValueError(f"policy min_cohort is an integer >= 2 (a round over one worker reveals its update), "
                             f"got {self.min_cohort!r}")
        for name in ("check_inputs", "test_seeds"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"policy {name} is true or false, got {getattr(self, name)!r}")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise ValueError(f"policy max_rounds is a positive integer, got {self.max_rounds!r}")
        for name in ("per_seconds", "max_share_window_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"policy {name} is a positive number, got {value!r}")
        for name in ("min_interval_s", "min_dp_noise_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"policy {name} is a number >= 0, got {value!r}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], default_workers: tuple[int, ...] = ()) -> Policy:
        """The ``[policy]`` table; ``workers`` defaults to ``default_workers`` (S1's admission list) if any."""
        unknown = sorted(set(raw) - set(POLICY_KEYS))
        if unknown:
            raise ValueError(f"unknown [policy] keys {unknown}; known: {', '.join(POLICY_KEYS)}")
        if "rules" not in raw:
            raise ValueError("[policy] rules is required: the rules S1's organisation lets a round run")
        kw: dict[str, Any] = dict(raw)
        for key in ("rules", "reveals"):
            if key in kw:
                if not isinstance(kw[key], list) or not all(isinstance(v, str) for v in kw[key]):
                    raise TypeError(f"[policy] {key} is a list of names, got {kw[key]!r}")
                kw[key] = tuple(kw[key])
        if "workers" in kw:
            kw["workers"] = parse_worker_ids(kw["workers"])
        elif default_workers:
            kw["workers"] = tuple(default_workers)
        return cls(**kw)

    def describe(self) -> dict[str, Any]:
        """The policy as JSON, for ``status`` (what the caller must ask for)."""
        return {"rules": list(self.rules), "reveals": list(self.reveals), "min_cohort": self.min_cohort,
                "check_inputs": self.check_inputs, "workers": None if self.workers is None else list(self.workers),
                "max_rounds": self.max_rounds, "per_seconds": self.per_seconds,
                "min_interval_s": self.min_interval_s, "max_share_window_s": self.max_share_window_s,
                "min_dp_noise_std": self.min_dp_noise_std, "test_seeds": self.test_seeds}

    def refusal(self, req: RoundRequest) -> str | None:
        """Why ``req`` breaks the policy (the first rule it breaks), or None. Stateless: replays and the rate
        are ``Approvals``'."""
        n = len(req.worker_ids)
        if n < self.min_cohort:
            return f"a cohort of {n} workers is below the policy's minimum of {self.min_cohort}"
        if (req.min_participants or 0) < self.min_cohort:
            return (f"the request's min_participants is {req.min_participants}; it must be at least the policy's "
                    f"minimum cohort {self.min_cohort}, so that S1 aborts a round left with fewer participants")
        if self.workers is not None:
            unknown = sorted(set(req.worker_ids) - set(self.workers))
            if unknown:
                return f"workers {unknown} are not among the workers a round may name"
        if self.check_inputs and req.check_inputs is not True:
            return "the input validity check must be on (check_inputs = true)"
        if req.rule not in self.rules:
            return f"rule {req.rule!r} is not allowed (allowed: {', '.join(self.rules)})"
        if req.reveal not in self.reveals:
            return f"reveal={req.reveal!r} is not allowed (allowed: {', '.join(self.reveals)})"
        if req.share_window_s > self.max_share_window_s:
            return f"a share window of {req.share_window_s:g} s is above the policy's {self.max_share_window_s:g} s"
        if req.dp_noise_std < self.min_dp_noise_std:
            return f"DP noise std {req.dp_noise_std:g} is below the policy's minimum of {self.min_dp_noise_std:g}"
        if req.test_seed is not None and not self.test_seeds:
            return "a fixed test seed is for tests only"
        return None


@dataclass
class Approvals:
    """The policy with its memory: the round ids and triple ids approved (replays) and when (the rate).
    ``clock``: monotonic seconds (tests pass a fake one)."""

    policy: Policy
    clock: Callable[[], float] = time.monotonic
    last_round: int = -1
    times: collections.deque = field(default_factory=collections.deque)
    rounds: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    """{round id: its request} of the last ``KEEP_ROUNDS`` rounds approved."""
    triples: set = field(default_factory=set)

    def approve(self, call_round: int, args: Mapping[str, Any]) -> RoundRequest:
        """The request in ``args`` if S1's policy allows it now, recorded as approved; else PolicyRefused (or
        ValueError for a malformed request). The checks, in order: the request parses and is a valid round,
        the call's round id is the request's, it is no replay, the policy's rules, then the rate."""
        req = RoundRequest.from_json(dict(args))
        r = req.round_id
        if call_round != r:
            raise PolicyRefused(f"the call is for round {call_round} but the request is round {r}'s")
        if r <= self.last_round:
            raise PolicyRefused(f"round {r} is not above round {self.last_round}, the last one approved "
                                "(a replayed or stale request)")
        if req.triple_id is not None and req.triple_id in self.triples:
            raise PolicyRefused(f"triple {req.triple_id!r} already ran an approved round (a replayed request)")
        why = self.policy.refusal(req)
        if why is not None:
            raise PolicyRefused(why)
        now = self.clock()
        while self.times and self.times[0] <= now - self.policy.per_seconds:
            self.times.popleft()
        if len(self.times) >= self.policy.max_rounds:
            raise PolicyRefused(f"rate: {self.policy.max_rounds} rounds were approved in the last "
                                f"{self.policy.per_seconds:g} s, the policy's limit")
        if self.times and now - self.times[-1] < self.policy.min_interval_s:
            raise PolicyRefused(f"rate: the last round was approved {now - self.times[-1]:.1f} s ago; the policy "
                                f"asks {self.policy.min_interval_s:g} s between rounds")
        self.times.append(now)
        self.last_round = r
        if req.triple_id is not None:
            self.triples.add(req.triple_id)
        self.rounds[r] = req
        while len(self.rounds) > KEEP_ROUNDS:
            self.rounds.popitem(last=False)
        return req


@dataclass(frozen=True)
class ApprovalConfig:
    """The service's settings: operator:S1's configuration (identity, S1's address), where it listens, the
    policy, and its log file."""

    operator: PartyConfig
    listen: str
    policy: Policy
    log_file: Path | None = None


def load(path: str | Path) -> ApprovalConfig:
    """Read ``approval.toml`` (ValueError naming what is wrong)."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {', '.join(TOP_KEYS)}")
    for key in ("operator", "listen"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"{path}: {key} = \"...\" is required")
    base = path.resolve().parent

    def rel(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    op = load_config(rel(raw["operator"]))
    if op.party != APPROVAL_PARTY:
        raise ValueError(f"{path}: operator = {raw['operator']!r} is {op.party}'s file; the approval service acts "
                         f"as {APPROVAL_PARTY}")
    try:
        policy = Policy.from_mapping(raw.get("policy", {}), op.workers)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return ApprovalConfig(op, raw["listen"], policy, rel(raw["log_file"]) if raw.get("log_file") else None)


def policy_toml(policy: Policy) -> str:
    """A ``[policy]`` table for ``policy`` (what ``provision`` writes)."""
    def q(values: Any) -> str:
        return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "]"

    lines = ["[policy]", f"rules = {q(policy.rules)}", f"reveals = {q(policy.reveals)}",
             f"min_cohort = {policy.min_cohort}", f"check_inputs = {str(policy.check_inputs).lower()}"]
    if policy.workers is not None:
        lines.append(f"workers = {q(policy.workers)}")
    lines += [f"max_rounds = {policy.max_rounds}", f"per_seconds = {policy.per_seconds:g}",
              f"min_interval_s = {policy.min_interval_s:g}", f"max_share_window_s = {policy.max_share_window_s:g}",
              f"min_dp_noise_std = {float(policy.min_dp_noise_std)!r}", f"test_seeds = {str(policy.test_seeds).lower()}"]
    return "\n".join(lines) + "\n"


def provision(folder: str | Path, listen: str, policy: Policy | None = None) -> Path:
    """Split the operators of the deployment folder ``folder`` (``secrobust init``): write S1's approval
    service's file ``operator-s1/approval.toml`` (listening at ``listen``, with ``policy``; default: every
    rule, the default minimum cohort and rate) and name the service in ``operator-s0/operator-s0.toml``
    under ``[peers]``; without a worker list, the policy lists the workers S1's own file admits. Returns the
    service's file. In a deployment of two organisations, S1's organisation writes its file and S0's
    organisation adds the line."""
    root = Path(folder)
    op0 = root / party_dir_name(CLIENT_PARTY)
    op1 = root / party_dir_name(APPROVAL_PARTY)
    files = [op0 / f"{op0.name}.toml", op1 / f"{op1.name}.toml"]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"{root} is not a provisioned folder: no {', '.join(missing)} ('secrobust init --out DIR')")
    if policy is None:
        policy = Policy(rules=rule_names())
    s1_file = root / party_dir_name("S1") / f"{party_dir_name('S1')}.toml"
    if policy.workers is None and s1_file.is_file() and load_config(s1_file).workers:
        policy = replace(policy, workers=load_config(s1_file).workers)     # the workers S1 admits
    cfg0 = load_config(files[0])
    files[0].write_text(to_toml(replace(cfg0, peers={**cfg0.peers, APPROVAL_PARTY: listen}), relative_to=op0))
    target = op1 / APPROVAL_FILE
    target.write_text("# S1's approval service (secrobust.deploy.approval): operator:S1 opens at S1 only the rounds\n"
                      "# this policy allows operator:S0 to ask for. S1's organisation edits it.\n"
                      f'operator = "{files[1].name}"\nlisten = "{listen}"\n\n' + policy_toml(policy))
    load(target)
    return target


class ApprovalHandler(PartyHandler):
    """The service's ``PartyHandler``: control and fetch calls of ``operator:S0`` only, no protocol messages."""

    party = APPROVAL_PARTY

    def __init__(self, approvals: Approvals, s1: PeerClient) -> None:
        self.approvals = approvals
        self.s1 = s1
        self.lock = threading.Lock()
        self.log = logging.getLogger(LOGGER_NAME)
        self.shutdown_requested = threading.Event()

    def admitted(self, caller: str) -> bool:
        return caller == CLIENT_PARTY

    def permits(self, caller: str, command: str) -> None:
        if command not in ("status", "open-round", "report", "abort-round"):
            raise Rejected("bad-request", f"the approval service has no command {command!r}")

    def max_control_bytes(self, command: str) -> int:
        return MAX_GRPC_MESSAGE if command == "open-round" else 64 << 10

    def max_message_bytes(self, env: Any) -> int:
        return 0

    def precheck(self, env: Any) -> None:
        raise Rejected("not-permitted", "the approval service takes no protocol messages")

    def accept(self, msg: Message, env: Any) -> None:
        raise Rejected("not-permitted", "the approval service takes no protocol messages")

    def _approved(self, round_id: int) -> None:
        with self.lock:
            if round_id not in self.approvals.rounds:
                raise Rejected("not-permitted", f"round {round_id} was not approved here: S1's side of it is S1's "
                               "operator's alone")

    def _forward(self, call: Callable[[], Any]) -> Any:
        """A call to S1 as operator:S1; S1's refusal keeps its code, an unreachable S1 aborts the request."""
        try:
            return call()
        except RemoteRejected as exc:
            code = exc.code if exc.code in CODES else "internal"
            raise Rejected(code, f"S1: {exc}") from None
        except PartyUnreachable as exc:
            raise Rejected("round-aborted", f"the approval service cannot reach S1: {exc}") from None

    def control(self, caller: str, command: str, round_id: int, args: dict[str, Any]) -> dict[str, Any]:
        if command == "status":
            st = self._forward(lambda: self.s1.control("status", timeout=10.0))
            with self.lock:
                last = max(int(st.get("last_round", -1)), self.approvals.last_round)
            return {"party": self.party, "service": "approval", "last_round": last,
                    "triples": st.get("triples", []), "policy": self.approvals.policy.describe()}
        if command == "open-round":
            with self.lock:
                try:
                    req = self.approvals.approve(round_id, args)
                except PolicyRefused as exc:
                    event(self.log, "round-refused", level=logging.WARNING, round=round_id, reason=str(exc))
                    raise Rejected("not-permitted", f"S1's policy refuses round {round_id}: {exc}") from None
                except (ValueError, TypeError) as exc:
                    raise Rejected("bad-request", f"not a valid round request: {exc}") from None
            event(self.log, "round-approved", round=req.round_id, rule=req.rule, f=req.f, reveal=req.reveal,
                  workers=list(req.worker_ids), digest=req.digest())
            return self._forward(lambda: self.s1.control("open-round", req.round_id, req.to_json()))
        self._approved(round_id)
        if command == "report":
            wait = args.get("wait_s", 0.0)
            wait = float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) else 0.0
            wait = min(max(wait, 0.0), 900.0)
            rep = dict(self._forward(lambda: self.s1.control("report", round_id, {"wait_s": wait},
                                                             timeout=wait + 20.0)))
            rep.pop("view", None)           # what S1 opened (the distances) stays with S1's organisation
            return rep
        return self._forward(lambda: self.s1.control("abort-round", round_id,
                                                     {"reason": str(args.get("reason", ""))[:500]}, timeout=10.0))

    def fetch(self, caller: str, round_id: int, phase: str, wait_s: float) -> Message:
        if phase != M.AGGREGATE_SHARE:
            raise Rejected("not-permitted", f"only S1's {M.AGGREGATE_SHARE} is relayed, not {phase!r}")
        self._approved(round_id)
        msg = self._forward(lambda: self.s1.fetch(round_id, phase, wait_s=wait_s))
        return replace(msg, sender=self.party, recipient=caller)

    def close(self) -> None:
        self.s1.close()


class ApprovalService:
    """The service in this process: ``start()`` listens (returns the port), ``stop()``."""

    def __init__(self, config: ApprovalConfig, *, clock: Callable[[], float] = time.monotonic,
                 identity: Identity | None = None) -> None:
        self.config = config
        ident = identity or config.operator.identity()
        s1 = PeerClient(ident, "S1", config.operator.peer("S1"), connect_timeout=config.operator.connect_timeout_s)
        self.handler = ApprovalHandler(Approvals(config.policy, clock), s1)
        self.endpoint = Endpoint(ident, config.listen, self.handler)
        self.port: int | None = None

    def start(self) -> int:
        self.port = self.endpoint.start()
        return self.port

    def stop(self) -> None:
        self.endpoint.stop(1.0)
        self.handler.close()

    def __enter__(self) -> ApprovalService:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(config_path: Path, *, port_file: Path | None = None) -> None:
    """Run the service of ``config_path`` until SIGTERM / SIGINT (or its launcher is gone)."""
    from .process import _stop_event, _write_atomic

    cfg = load(config_path)
    logs.setup(APPROVAL_PARTY, path=str(cfg.log_file) if cfg.log_file else None)
    log = logging.getLogger(LOGGER_NAME)
    service = ApprovalService(cfg)
    stop = _stop_event()
    port = service.start()
    if port_file is not None:
        _write_atomic(Path(port_file), str(port))
    event(log, "started", role="approval", port=port, policy=cfg.policy.describe())
    try:
        while not stop.wait(0.2):
            pass
    finally:
        service.stop()
        event(log, "stopped", role="approval")


def main(argv: list[str] | None = None) -> None:
    """``python -m secrobust.deploy.approval --config approval.toml``: one line on stderr and exit 2 on error."""
    parser = argparse.ArgumentParser(prog="python -m secrobust.deploy.approval",
                                     description="S1's approval service (operator:S1): opens at S1 the rounds "
                                                 "S1's policy allows operator:S0 to ask for.")
    parser.add_argument("--config", required=True, type=Path, help="the service's TOML file (approval.toml)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    ns = parser.parse_args(argv)
    try:
        run(ns.config, port_file=ns.port_file)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()


__all__ = [
    "APPROVAL_FILE",
    "APPROVAL_PARTY",
    "CLIENT_PARTY",
    "ApprovalConfig",
    "ApprovalHandler",
    "ApprovalService",
    "Approvals",
    "Policy",
    "PolicyRefused",
    "load",
    "main",
    "policy_toml",
    "run",
]
