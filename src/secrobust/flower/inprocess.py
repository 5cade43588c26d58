"""Flower's ServerApp and ClientApp in one process, without Ray: a Grid that calls the ClientApp itself.

Flower 1.42's Simulation Engine runs ClientApps on Ray only. ``InProcessGrid`` is a ``flwr.serverapp.Grid``
that delivers each message to the ClientApp of its destination node on a small thread pool, with one
``Context`` per node kept across rounds (as the Simulation Engine keeps them), and every message in
either direction serialised to Flower's protobuf and parsed back (``flwr.common.serde``), so neither side
shares an object with the other and ``bytes_to_clients`` / ``bytes_from_clients`` count what Flower's
links would carry. ``run_inprocess`` runs a ServerApp against ``num_supernodes`` such nodes. The
ServerApp, strategy, ClientApp and mods are the same objects the Simulation Engine runs; only where the
ClientApp executes differs. It is what the default test suite uses (no Ray start, no Ray install).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1001


def _copy(msg: Message) -> tuple[Message, int]:
    """``msg`` through Flower's wire format: a new object, and its size in bytes."""
    data = message_to_proto(msg).SerializeToString()
    proto = ProtoMessage()
    proto.ParseFromString(data)
    return message_from_proto(proto), len(data)


class InProcessGrid(Grid):
    """``num_nodes`` virtual nodes (partition ids 0..n-1) whose ClientApp runs on ``workers`` threads."""

    def __init__(self, client_app: ClientApp, num_nodes: int, *, workers: int = 2, run_id: int = 1,
                 run_config: dict[str, Any] | None = None) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id) if hasattr(Run, "create_empty") else None
        self.run_id = run_id
        self.node_ids = [FIRST_NODE_ID + i for i in range(num_nodes)]
        self.contexts = {nid: Context(run_id=run_id, node_id=nid,
                                      node_config={"partition-id": i, "num-partitions": num_nodes},
                                      state=RecordDict(), run_config=dict(run_config or {}))
                         for i, nid in enumerate(self.node_ids)}
        self.locks = {nid: threading.Lock() for nid in self.node_ids}
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="clientapp")
        self.futures: dict[str, Future] = {}
        self.bytes_to_clients = 0
        self.bytes_from_clients = 0
        self.messages = 0
        self._count = threading.Lock()

    # Grid

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run  # type: ignore[return-value]

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node {msg.metadata.dst_node_id}")
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_run_id"] = self.run_id
            delivered, size = _copy(msg)
            with self._count:
                self.bytes_to_clients += size
                self.messages += 1
            self.futures[msg.metadata.message_id] = self.pool.submit(self._handle, delivered)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in list(message_ids):
            fut = self.futures.get(mid)
            if fut is not None and fut.done():
                del self.futures[mid]
                out.append(fut.result())
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while ids:
            got = list(self.pull_messages(ids))
            replies.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not ids or (end is not None and time.monotonic() > end):
                break
            time.sleep(0.01)
        return replies

    # one node

    def _handle(self, msg: Message) -> Message:
        nid = msg.metadata.dst_node_id
        with self.locks[nid]:
            try:
                reply = self.client_app(msg, self.contexts[nid])
            except Exception as exc:  # as the Simulation Engine: the error travels back as an Error reply
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        back, size = _copy(reply)
        with self._count:
            self.bytes_from_clients += size
        return back

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run_inprocess(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, *, workers: int = 2,
                  run_config: dict[str, Any] | None = None,
                  client_run_config: dict[str, Any] | None = None) -> InProcessGrid:
    """Run ``server_app`` to its end against ``num_supernodes`` in-process nodes; returns the grid (its byte
    counts). ``run_config`` is the ServerApp's, ``client_run_config`` the ClientApps'."""
    grid = InProcessGrid(client_app, num_supernodes, workers=workers, run_config=client_run_config)
    context = Context(run_id=grid.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    # what run_simulation sets in the ServerApp's process: messages it creates take their run and sender from it
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run_id, SUPERLINK_NODE_ID
    try:
        server_app(grid, context)
    finally:
        grid.close()
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    return grid


__all__ = ["InProcessGrid", "run_inprocess"]
