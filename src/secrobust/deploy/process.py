"""Running one role in this process: start its services, serve until told to stop, stop cleanly.

SIGTERM and SIGINT stop a party gracefully; with ``SECROBUST_PARENT_PID`` set (the local launcher
sets it), a party also stops when that process is gone, so no party outlives its launcher.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from ..transport.grpc import Endpoint
from ..transport.grpc.gate import CallLimits
from ..transport.grpc import logs
from ..transport.grpc.logs import LOGGER_NAME, event
from ..transport.lane import BulkServer
from .config import PartyConfig
from .dealer import DealerRuntime
from .server.forward import FORWARD_STREAMS
from .server.runtime import ServerRuntime
from .worker import UpdateSource, WorkerRuntime

PARENT_ENV = "SECROBUST_PARENT_PID"


def _stop_event() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    parent = os.environ.get(PARENT_ENV)
    if parent:
        pid = int(parent)

        def watch() -> None:
            while not stop.wait(1.0):
                if os.getppid() != pid:
                    stop.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return stop


MALLOC_ENV = "SECROBUST_MALLOC"
SERVER_MALLOC = "arena_max=1"
_MALLOPT = {"mmap_threshold": -3, "arena_max": -8, "trim_threshold": -1}


def tune_malloc(spec: str | None = None) -> dict[str, int]:
    """Apply glibc ``mallopt`` settings ("arena_max=1,mmap_threshold=33554432"; default: the
    ``SECROBUST_MALLOC`` environment variable if set, else ``SERVER_MALLOC``). Returns what was applied
    ({} without glibc).

    Why one arena: glibc gives each thread that allocates its own heap (up to 8 per core) and keeps what
    is freed there for that heap. A server's 8d-byte buffers (shares, rows of E, aggregate-share replies)
    are allocated by many gRPC threads, so each round left a few of them in every heap, and the peak
    resident set grew round after round (measured at n = 50, d = 1e6: S1 1.0, 1.4, 1.5, 1.6 GB in four
    rounds). With one heap, what one round frees the next one reuses. (A small fixed mmap threshold would
    return every large buffer instead, at one page fault per 4 KB on every allocation: 1.7x the CPU.)"""
    spec = os.environ.get(MALLOC_ENV, SERVER_MALLOC) if spec is None else spec
    out: dict[str, int] = {}
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return out
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        if name in _MALLOPT and libc.mallopt(_MALLOPT[name], int(value)):
            out[name] = int(value)
    return out


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve_listening(cfg: PartyConfig, make: Callable[..., ServerRuntime | DealerRuntime], *,
                    port_file: Path | None = None, stop: threading.Event | None = None) -> None:
    """Run a listening party (S0, S1 or the dealer) until stopped."""
    logs.setup(cfg.party, path=str(cfg.log_file) if cfg.log_file else None)
    log = logging.getLogger(LOGGER_NAME)
    malloc = tune_malloc()
    identity = cfg.identity()
    runtime = make(cfg, identity)
    peer = runtime.peer_name if isinstance(runtime, ServerRuntime) else None   # may stream forwarded rows
    limits = CallLimits.for_workers(len(cfg.workers), peer, FORWARD_STREAMS if peer else 0)
    threads = limits.threads
    endpoint = Endpoint(identity, cfg.listen or "", runtime, limits=limits, accounting=runtime.accounting)
    stop = stop or _stop_event()
    port = endpoint.start()
    bulk = None
    if cfg.role == "server" and cfg.bulk_listen != "off":
        bulk = BulkServer(endpoint, cfg.bulk_listen or f"{(cfg.listen or '').rpartition(':')[0]}:0",
                          max_connections=limits.threads)
        runtime.bulk_port = bulk.start()
    if port_file is not None:
        _write_atomic(Path(port_file), str(port))
    event(log, "started", role=cfg.role, port=port, bulk_port=bulk.port if bulk else None, threads=threads,
          malloc=malloc)
    try:
        while not stop.wait(0.2):
            if runtime.shutdown_requested.is_set():
                break
    finally:
        runtime.close()
        if bulk is not None:
            bulk.stop()
        endpoint.stop(1.0)
        event(log, "stopped", role=cfg.role)


def run_server(cfg: PartyConfig, **kw: object) -> None:
    serve_listening(cfg, ServerRuntime, **kw)  # type: ignore[arg-type]


def run_dealer(cfg: PartyConfig, **kw: object) -> None:
    serve_listening(cfg, DealerRuntime, **kw)  # type: ignore[arg-type]


def run_workers(cfgs: list[PartyConfig], sources: list[UpdateSource], *, out_dirs: list[Path | None] | None = None,
                ready_file: Path | None = None, max_rounds: int | None = None, log_file: Path | None = None,
                stop: threading.Event | None = None) -> None:
    """Run one or more workers (one thread each) until stopped; ``ready_file`` appears once every
    worker has reached both servers."""
    logs.setup(cfgs[0].party if len(cfgs) == 1 else f"workers:{cfgs[0].party}+{len(cfgs) - 1}",
               path=str(log_file or cfgs[0].log_file) if (log_file or cfgs[0].log_file) else None)
    stop = stop or _stop_event()
    out_dirs = out_dirs or [None] * len(cfgs)
    slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
    runtimes = [WorkerRuntime(c, c.identity(), s, out_dir=o, encode_slots=slots)
                for c, s, o in zip(cfgs, sources, out_dirs)]
    ready = threading.Semaphore(0)
    threads = [threading.Thread(target=rt.serve, args=(stop,), kwargs={"max_rounds": max_rounds, "ready": ready.release},
                                name=rt.party, daemon=True) for rt in runtimes]
    for t in threads:
        t.start()
    if ready_file is not None:
        def announce() -> None:
            for _ in runtimes:
                ready.acquire()
            _write_atomic(Path(ready_file), "ready")
        threading.Thread(target=announce, daemon=True).start()
    try:
        while any(t.is_alive() for t in threads) and not stop.wait(0.2):
            pass
    finally:
        stop.set()
        for rt in runtimes:
            rt.close()
        deadline = time.monotonic() + 3.0
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
