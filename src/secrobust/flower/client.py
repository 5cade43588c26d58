"""The client side: a Flower mod that sends the ClientApp's update to S0 and S1, never to the Flower server.

``secrobust_mod`` (or ``SecRobustMod(worker_config=...)``) goes where ``secaggplus_mod`` goes:
``ClientApp(mods=[secrobust_mod])``. It handles the train messages of ``secrobust.flower.SecRobust`` in
two stages, as ``secaggplus_mod`` handles SecAgg+'s:

1. **train** (the global model in an ArrayRecord): the mod calls the ClientApp's own train function,
   takes the ArrayRecord it returns, computes the update (returned arrays minus the global ones, in the
   record's order, flattened to float64), keeps it in ``Context.state`` (the node's own state, which
   Flower never sends) and answers with the ClientApp's metrics, no arrays, its worker id, and its proof
   of that id for this node and round: its two worker certificates and its signature of the strategy's
   challenge (``binding.sign_binding``; the strategy trusts the proof, not the stated id).
2. **share** (round ``r`` is now open at S0 and S1 with the clients that answered): the mod encodes the
   kept update with the honest encoder and shares it over secrobust's own gRPC with mutual TLS, as the
   worker it is (``worker:<i>``, its key and certificates from its TOML file): S0 hands it the 16-byte
   key of S0's share, S1 receives the update minus that share. Then it forgets the update and answers
   "shared". The aggregate comes back to it as the next round's global model.

With ``one-message`` (nodes pinned to their workers), the strategy opens round ``r`` before training and
sends one **train-share** message: the mod trains, then shares at once (a ClientApp that fails declines
the round at both servers), and answers as the train stage does, with ``share`` = shared or declined.

The Flower server (SuperLink, ServerApp, strategy) never sees an update or a share: the mod refuses a
train message that is not one of these stages, so a FedAvg server cannot ask for the raw update.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from ..deploy.config import load as load_config
from ..deploy.worker import KEY_REPLY_BYTES, WorkerInput, WorkerRuntime, encode_owned
from ..errors import ProtocolError
from ..protocol import messages as M
from ..protocol.worker import share_key, share_update
from ..transport.grpc import PartyUnreachable, RemoteRejected
from . import keys as K
from .binding import CHALLENGE_FIELD, Challenge, sign_binding

ClientAppCallable = Callable[[Message, Context], Message]
WorkerConfig = "str | os.PathLike[str] | Callable[[Context], str | os.PathLike[str]] | None"


def flatten(record: ArrayRecord) -> np.ndarray:
    """The arrays of ``record`` in its order, each flattened, as one float64 vector."""
    parts = [np.asarray(arr.numpy(), dtype=np.float64).reshape(-1) for arr in record.values()]
    return np.concatenate(parts) if parts else np.zeros(0)


def layout(record: ArrayRecord) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of each array of ``record``, in order."""
    return [(key, tuple(arr.shape), str(arr.dtype)) for key, arr in record.items()]


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """``vector`` cut into arrays with the keys, shapes and dtypes of ``like``."""
    out: dict[str, Array] = {}
    start = 0
    for key, arr in like.items():
        ref = arr.numpy()
        stop = start + ref.size
        out[key] = Array(np.asarray(vector[start:stop], dtype=ref.dtype).reshape(ref.shape))
        start = stop
    if start != vector.size:
        raise ValueError(f"a vector of {vector.size} values does not fit the model's {start} parameters")
    return ArrayRecord(out)


class _Runtimes:
    """One WorkerRuntime (two TLS channels) per worker TOML file in this process, reused across rounds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_path: dict[str, WorkerRuntime] = {}
        atexit.register(self.close)

    def get(self, path: str) -> WorkerRuntime:
        with self.lock:
            rt = self.by_path.get(path)
            if rt is None:
                cfg = load_config(Path(path))
                if cfg.role != "worker":
                    raise ValueError(f"{path} is {cfg.party}'s configuration, not a worker's")
                rt = WorkerRuntime(cfg, cfg.identity(), lambda r, d: None)
                self.by_path[path] = rt
            return rt

    def close(self) -> None:
        with self.lock:
            for rt in self.by_path.values():
                rt.close()
            self.by_path.clear()


RUNTIMES = _Runtimes()


class SecRobustMod:
    """A Flower mod: the update of the ClientApp it wraps reaches S0 and S1 only (see the module doc).

    ``worker_config`` is the worker's TOML file (``secrobust init`` or ``FlowerServers`` writes one per
    worker), a callable ``Context -> path``, or None: then ``node_config["secrobust-worker-config"]``,
    ``run_config["secrobust-worker-config"]`` or the environment variable ``SECROBUST_WORKER_CONFIG``.
    ``{partition-id}`` in the path is replaced by the node's partition id (simulations)."""

    def __init__(self, worker_config: Any = None, *, share_wait_s: float = 60.0) -> None:
        self.worker_config = worker_config
        self.share_wait_s = share_wait_s

    # configuration

    def config_path(self, context: Context) -> str:
        spec = self.worker_config
        if callable(spec):
            spec = spec(context)
        if spec is None:
            spec = (context.node_config.get(K.WORKER_CONFIG_KEY) or context.run_config.get(K.WORKER_CONFIG_KEY)
                    or os.environ.get(K.WORKER_CONFIG_ENV))
        if not spec:
            raise ValueError(f"secrobust_mod: no worker configuration; set node_config['{K.WORKER_CONFIG_KEY}'], "
                             f"run_config['{K.WORKER_CONFIG_KEY}'] or ${K.WORKER_CONFIG_ENV}")
        path = str(spec)
        if "{partition-id}" in path:
            if "partition-id" not in context.node_config:
                raise ValueError(f"secrobust_mod: {path} names {{partition-id}} but the node has none")
            path = path.replace("{partition-id}", str(int(context.node_config["partition-id"])))
        return path

    def runtime(self, context: Context) -> WorkerRuntime:
        return RUNTIMES.get(self.config_path(context))

    # the mod

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        cfg = msg.content.config_records.get(K.RECORD)
        stage = None if cfg is None else cfg.get("stage")
        if stage == K.STAGE_TRAIN:
            return self._train(msg, context, call_next, cfg)
        if stage == K.STAGE_SHARE:
            return self._share(msg, context, cfg)
        if stage == K.STAGE_TRAIN_SHARE:
            return self._train_share(msg, context, call_next, cfg)
        raise ValueError("secrobust_mod: a train message must come from secrobust.flower.SecRobust (stage "
                         f"{K.STAGE_TRAIN!r}, {K.STAGE_SHARE!r} or {K.STAGE_TRAIN_SHARE!r}); the update is never "
                         "sent to the Flower server")

    def _train_share(self, msg: Message, context: Context, call_next: ClientAppCallable,
                     cfg: ConfigRecord) -> Message:
        """One message per round: train (``_train``), then share the update in the already open round."""
        round_id = int(cfg["round"])
        rt = self.runtime(context)
        try:
            reply = self._train(msg, context, call_next, cfg)
        except Exception as exc:
            _decline(rt, round_id, f"its ClientApp failed: {exc}")
            raise
        if reply.has_error():
            _decline(rt, round_id, f"its ClientApp failed: {reply.error.reason}")
            return reply
        fields = dict(reply.content.config_records[K.RECORD])
        fields.update(zip(("share", "detail"), self._share_kept(context, rt, round_id, cfg)))
        reply.content.config_records[K.RECORD] = ConfigRecord(fields)
        return reply

    def _train(self, msg: Message, context: Context, call_next: ClientAppCallable, cfg: ConfigRecord) -> Message:
        key = str(cfg.get("arrays-key", "arrays"))
        if key not in msg.content.array_records:
            raise ValueError(f"secrobust_mod: the train message has no ArrayRecord {key!r}")
        sent = msg.content.array_records[key]
        rt = self.runtime(context)
        challenge = Challenge.from_record(cfg) if CHALLENGE_FIELD in cfg else None
        try:
            out = call_next(msg, context)
        except KeyError as exc:
            if "fitins." in str(exc):       # Flower's legacy client_fn path looks for FitIns' records
                raise ValueError(f"secrobust_mod: {K.NUMPY_CLIENT_HINT}") from exc
            raise
        if out.has_error():
            return out
        content = out.content
        sim = content.config_records.get(K.SIM_RECORD)
        ring = bool(sim.get("ring", False)) if sim is not None else False
        unchecked = bool(sim.get("unchecked", False)) if sim is not None else False
        if ring:
            row = content.array_records[K.SIM_RING].to_numpy_ndarrays()[0]
            update = np.asarray(row, dtype=np.uint64).reshape(-1)
        else:
            if key not in content.array_records:
                raise ValueError(f"secrobust_mod: the ClientApp's reply has no ArrayRecord {key!r}")
            got = content.array_records[key]
            if [(k, s) for k, s, _ in layout(got)] != [(k, s) for k, s, _ in layout(sent)]:
                raise ValueError("secrobust_mod: the ClientApp returned arrays of other keys or shapes than it got")
            update = flatten(got) - flatten(sent)
        context.state.array_records[K.STATE] = ArrayRecord({"update": Array(update)})
        context.state.config_records[K.STATE_META] = ConfigRecord(
            {"server-round": int(cfg.get("server-round", 0)), "ring": ring, "unchecked": unchecked})
        reply = RecordDict()
        for name, rec in content.metric_records.items():
            reply.metric_records[name] = rec
        fields: dict[str, Any] = {"stage": K.STAGE_TRAINED, "worker": rt.worker_id, "d": int(update.size)}
        if challenge is not None:
            fields.update(sign_binding(rt.s0.identity, challenge, msg.metadata.dst_node_id))
        reply.config_records[K.RECORD] = ConfigRecord(fields)
        return Message(reply, reply_to=msg)

    def _share(self, msg: Message, context: Context, cfg: ConfigRecord) -> Message:
        round_id = int(cfg["round"])
        rt = self.runtime(context)
        status = self._share_kept(context, rt, round_id, cfg)
        reply = RecordDict()
        reply.config_records[K.RECORD] = ConfigRecord(
            {"stage": status[0], "worker": rt.worker_id, "round": round_id, "detail": status[1]})
        return Message(reply, reply_to=msg)

    def _share_kept(self, context: Context, rt: WorkerRuntime, round_id: int, cfg: ConfigRecord) -> tuple[str, str]:
        """Share the update the train stage kept in ``context.state`` (then forget it); (stage, why not)."""
        pending = context.state.array_records.get(K.STATE)
        meta = context.state.config_records.get(K.STATE_META)
        try:
            if pending is None or meta is None:
                raise ValueError("no update kept from a train stage")
            if int(meta["server-round"]) != int(cfg.get("server-round", 0)):
                raise ValueError(f"the kept update is from server round {meta['server-round']}, "
                                 f"not {cfg.get('server-round')}")
            update = pending["update"].numpy()
            inp = WorkerInput(update, unchecked=bool(meta["unchecked"]), ring=bool(meta["ring"]))
            status = share(rt, round_id, inp, self.share_wait_s)
        except ValueError as exc:
            status = (K.STAGE_DECLINED, str(exc))
            _decline(rt, round_id, str(exc))
        finally:
            context.state.array_records.pop(K.STATE, None)
            context.state.config_records.pop(K.STATE_META, None)
        return status


def _decline(rt: WorkerRuntime, round_id: int, why: str) -> None:
    """Tell both servers this worker sits round ``round_id`` out, and why (best effort: the round goes on
    without it either way)."""
    try:
        rt.decline(round_id, why)
    except Exception:  # noqa: BLE001, S110  (best effort)
        pass


def share(rt: WorkerRuntime, round_id: int, inp: WorkerInput, wait_s: float = 60.0) -> tuple[str, str]:
    """Share ``inp`` in round ``round_id`` as worker ``rt``: S0's share key, then the masked update to S1.
    Returns (STAGE_SHARED, "") or (STAGE_DECLINED, why); raises ValueError for an update the encoder refuses
    (the caller declines the round at both servers)."""
    rt.last_round = min(rt.last_round, round_id - 1)
    try:
        info = rt.wait_for_round(min(wait_s, 10.0))
    except (PartyUnreachable, RemoteRejected) as exc:
        return K.STAGE_DECLINED, f"cannot reach the servers: {exc}"
    if info is None or int(info["round_id"]) != round_id:
        return K.STAGE_DECLINED, f"round {round_id} is not open at both servers"
    if not info.get("expected", False):
        return K.STAGE_DECLINED, f"worker {rt.worker_id} is not expected in round {round_id}"
    d, frac_bits = int(info["d"]), int(info["frac_bits"])
    encoded, owned = encode_owned(inp, d, frac_bits)
    wait = float(info.get("share_deadline_in_s", 30.0)) + 5.0
    try:
        msg = rt.s0.fetch(round_id, M.SHARE_KEY, wait_s=wait, max_bytes=KEY_REPLY_BYTES)
        key = share_key(msg, round_id, rt.worker_id, d)
        rt.servers["S1"].send(share_update(round_id, rt.worker_id, encoded, key, in_place=owned))
    except (RemoteRejected, PartyUnreachable, ProtocolError) as exc:
        return K.STAGE_DECLINED, f"share refused: {exc}"
    rt.last_round = max(rt.last_round, round_id)
    return K.STAGE_SHARED, ""


secrobust_mod = SecRobustMod()
"""The mod with its worker configuration from node_config, run_config or $SECROBUST_WORKER_CONFIG."""

__all__ = ["SecRobustMod", "flatten", "layout", "secrobust_mod", "share", "unflatten"]
