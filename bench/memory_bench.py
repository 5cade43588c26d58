"""Peak memory of each server in one in-process round, against its n x d share matrix (issue 23, target 3).

In process every party shares one address space, so the process's peak RSS (printed too) is that of all of
them together. Each server's own peak is accounted for here: every method call on S0's and S1's node is
wrapped, and for the call the server's peak is taken as
    held before the call + the call's transient peak,   and   held after the call,
where "held" is the bytes of the NumPy arrays reachable from the node's state (each buffer once) plus the
messages waiting for it in the channel (rows of E in flight count as S0's, shares in flight as S1's), and
the transient peak is tracemalloc's peak of NumPy's allocations during the call (NumPy reports its buffers
to tracemalloc; the kernel's threads allocate for the caller) above the level at its start. That bounds the
server's peak from above: buffers freed during a call are counted until its end. Workers' encodings and
shares and the dealer's triple are the other parties' and are not counted.
Usage (refuses to start when less than --min-free-gib of memory is available):
    .venv/bin/python bench/memory_bench.py [--n 50] [--d 1000000 2000000] [--min-free-gib 14]
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import sys
import time
import tracemalloc
from functools import wraps

import numpy as np

import secrobust
from secrobust import api

_SKIP = (type, type(os), type(len), type(lambda: 0))


def held_bytes(root: object, seen_buffers: set[int] | None = None) -> int:
    """Bytes of the distinct NumPy buffers reachable from root through attributes, dicts and sequences."""
    seen, buffers, total, stack = set(), set() if seen_buffers is None else seen_buffers, 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP) or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in buffers:
                buffers.add(id(base))
                total += base.nbytes
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
            stack.extend(obj)
        else:
            if hasattr(obj, "__dict__"):
                stack.extend(vars(obj).values())
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


class Accounting:
    def __init__(self) -> None:
        self.peak = {"S0": 0, "S1": 0}
        self.where = {"S0": "", "S1": ""}
        self.channel = None

    def in_flight(self, name: str) -> int:
        box = getattr(self.channel, "_boxes", {}).get(name, ())
        return held_bytes(list(box))

    def held(self, node) -> int:
        return held_bytes(node) + self.in_flight(node.name)

    def note(self, name: str, value: int, where: str) -> None:
        if value > self.peak[name]:
            self.peak[name], self.where[name] = value, where

    def wrap(self, node) -> None:
        for attr in dir(type(node)):
            if attr.startswith("__") or not inspect.isfunction(getattr(type(node), attr, None)):
                continue
            fn = getattr(node, attr)

            def wrapped(*args, _fn=fn, _attr=attr, **kwargs):
                before = self.held(node)
                level = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    self.note(node.name, before + tracemalloc.get_traced_memory()[1] - level, _attr)
                    self.note(node.name, self.held(node), _attr + " (after)")
            setattr(node, attr, wraps(fn)(wrapped))


def vm_hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_gib() -> float:
    with open("/proc/meminfo") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) for line in fh}
    return info["MemAvailable"] / 2**20


def measure(n: int, d: int, f: int) -> dict:
    x = np.random.default_rng(0).standard_normal((n, d)) * (1.0 / np.sqrt(d))
    acc = Accounting()
    channel_type = api.InMemoryChannel

    class Recorded(channel_type):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            acc.channel = self

    runner = api.Cluster()
    acc.wrap(runner.s0)
    acc.wrap(runner.s1)
    api.InMemoryChannel = Recorded
    rss0 = vm_hwm()
    tracemalloc.start(1)
    t0 = time.perf_counter()
    try:
        runner.run_round(x, "krum", f)
    finally:
        tracemalloc.stop()
        api.InMemoryChannel = channel_type
    return {"n": n, "d": d, "share_matrix": 8 * n * d, "peak": acc.peak, "where": acc.where,
            "process_hwm": vm_hwm(), "process_hwm_before": rss0, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--d", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--f", type=int, default=None)
    ap.add_argument("--min-free-gib", type=float, default=14.0)
    args = ap.parse_args()
    print(f"# secrobust {secrobust.__version__}, numpy {np.__version__}; {args.n} workers; Krum; each server's peak "
          "(state + in-flight messages + a call's transient NumPy peak) against its n x d share matrix 8nd")
    for d in args.d:
        free = available_gib()
        if free < args.min_free_gib:
            print(f"memory_bench: only {free:.1f} GiB available, below --min-free-gib {args.min_free_gib}; "
                  f"d = {d} not run", file=sys.stderr)
            sys.exit(2)
        r = measure(args.n, d, args.f if args.f is not None else args.n // 5)
        m = r["share_matrix"]
        print(f"n={args.n} d={d}: 8nd = {m / 2**20:.0f} MiB; "
              + "; ".join(f"{s} peak {r['peak'][s] / 2**20:.0f} MiB = {r['peak'][s] / m:.2f}x (in {r['where'][s]})"
                          for s in ("S0", "S1"))
              + f"; whole process VmHWM {r['process_hwm'] / 2**20:.0f} MiB (before the round "
                f"{r['process_hwm_before'] / 2**20:.0f} MiB, the input x included); {r['seconds']:.0f} s; "
                f"{free:.1f} GiB available at the start", flush=True)


if __name__ == "__main__":
    main()
