"""Linux network namespaces with rate-limited links, made and removed by the process that uses them.

``Links`` builds, on this machine, one namespace per party plus one ``switch`` namespace that holds a
bridge. Each party has one veth pair to the bridge (its access link), and S0 and S1 also get a veth pair
between them (the S0<->S1 link), with host routes so that S0 and S1 reach each other's address over
that pair and every other party over their access link. Every link is shaped in both directions with a
token bucket (``tc qdisc ... tbf``) on the egress of each of its two ends: a link of R bit/s carries R
each way (full duplex). There is no added latency (netem is not available).

Nothing outside the namespaces it creates is touched: the veth pairs are created with both ends
already inside their namespaces, the addresses come from ``SUBNET`` (checked unused on the host), and
``close`` kills any process still inside the namespaces (the processes the caller started there) and
deletes the namespaces, which deletes their links and qdiscs. ``close`` runs from ``with``, from
``atexit`` and is idempotent; ``guard_signals`` turns SIGTERM/SIGHUP into an exception so ``finally``
blocks run on those too.

``enter(party)`` moves the calling thread into a party's namespace (``setns``), so a launcher can play a
party (the operators) without a process of its own; ``leave()`` returns it to the namespace it came from.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

SUBNET = ipaddress.ip_network("10.231.0.0/16")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
PREFIX = "srn"


@dataclass(frozen=True)
class Profile:
    """Link rates in Mbit/s: each worker's access link, each server's (S0, S1, dealer, operator) access
    link, and the S0<->S1 link; 0 leaves a link unshaped (the veth's own speed)."""

    name: str
    worker_mbit: float
    server_mbit: float
    s0s1_mbit: float

    def rate_mbit(self, link: str) -> float:
        """The rate of the link named ``link`` (``Links.link_names``)."""
        if link == "S0-S1":
            return self.s0s1_mbit
        return self.worker_mbit if link.startswith("w") else self.server_mbit

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "worker_mbit": self.worker_mbit, "server_mbit": self.server_mbit,
                "s0s1_mbit": self.s0s1_mbit}


PROFILES: dict[str, Profile] = {
    "1g": Profile("1g", 1000, 1000, 1000),
    "200m": Profile("200m", 200, 200, 200),
    "10g-100m": Profile("10g-100m", 100, 10000, 10000),
    "unshaped": Profile("unshaped", 0, 0, 0),
}


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def missing_tools() -> str | None:
    """Why namespaces with shaped links cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns add, tc)"
    for tool in ("ip", "tc"):
        if _run("sh", "-c", f"command -v {tool}", check=False).returncode != 0:
            return f"`{tool}` (iproute2) is not installed"
    return None


def subnet_in_use() -> list[str]:
    """Host addresses and routes (in this namespace) that fall in ``SUBNET``."""
    hits = []
    for cmd in (("ip", "-j", "-4", "addr", "show"), ("ip", "-j", "-4", "route", "show", "table", "all")):
        for entry in json.loads(_run(*cmd).stdout or "[]"):
            infos = entry.get("addr_info", [entry])
            for info in infos:
                addr = info.get("local") or info.get("dst")
                if not addr or addr == "default":
                    continue
                try:
                    net = ipaddress.ip_network(addr if "/" in addr else f"{addr}/{info.get('prefixlen', 32)}",
                                               strict=False)
                except ValueError:
                    continue
                if net.overlaps(SUBNET):
                    hits.append(f"{' '.join(cmd[3:])}: {addr}")
    return hits


def stale_namespaces() -> list[str]:
    """Namespaces named like ours whose creating process is gone (left by a run that was SIGKILLed)."""
    out = []
    for name in _run("ip", "netns", "list").stdout.split():
        head = name.split("-", 1)[0]
        if head.startswith(PREFIX) and head[len(PREFIX):].isdigit() and not Path(f"/proc/{head[len(PREFIX):]}").exists():
            out.append(name)
    return out


def _bits(mbit: float) -> int:
    return round(mbit * 1e6)


def _tbf(rate_bit: int) -> list[str]:
    """tbf arguments for ``rate_bit``: a bucket of 4 ms at the rate (at least 256 KiB, so a 64 KiB GSO
    packet always fits) and a queue of 50 ms (at least 1 MiB)."""
    bps = rate_bit / 8
    burst = max(int(bps * 0.004), 256 * 1024)
    limit = max(int(bps * 0.05), 1 << 20, 2 * burst)
    return ["tbf", "rate", f"{rate_bit}bit", "burst", str(burst), "limit", str(limit)]


class Links:
    """Namespaces for ``parties`` (e.g. S0, S1, dealer, operator, w0, w1, ...) on a switch, shaped by ``profile``."""

    def __init__(self, parties: Iterable[str], profile: Profile, *, tag: str | None = None) -> None:
        self.parties = list(parties)
        if len(set(self.parties)) != len(self.parties):
            raise ValueError("party names must be distinct")
        if len(self.parties) > 250 * 200:
            raise ValueError("too many parties for the subnet")
        self.profile = profile
        self.tag = tag or f"{PREFIX}{os.getpid()}"
        self.created: list[str] = []
        self.addresses = {p: str(SUBNET.network_address + 256 * (1 + i // 250) + 1 + i % 250)
                          for i, p in enumerate(self.parties)}
        self._home: int | None = None
        self._closed = False

    # names

    def ns(self, party: str) -> str:
        """The namespace of ``party`` (``switch`` for the bridge's)."""
        return f"{self.tag}-{party}"

    def exec_prefix(self, party: str) -> list[str]:
        """argv prefix that runs a command inside ``party``'s namespace."""
        return ["ip", "netns", "exec", self.ns(party)]

    def link_names(self) -> list[str]:
        """Every shaped link: one access link per party, and ``S0-S1``."""
        return [*self.parties, *(["S0-S1"] if {"S0", "S1"} <= set(self.parties) else [])]

    def _ends(self) -> dict[str, tuple[tuple[str, str], tuple[str, str]]]:
        """Per link: ((namespace, device) whose egress is the link's "up" direction, ... "down")."""
        sw = self.ns("switch")
        ends = {p: ((self.ns(p), "link0"), (sw, f"p{i}")) for i, p in enumerate(self.parties)}
        if "S0-S1" in self.link_names():
            ends["S0-S1"] = ((self.ns("S0"), "s0s1"), (self.ns("S1"), "s0s1"))
        return ends

    # lifecycle

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the namespaces, links, addresses, routes and qdiscs (removing all of them on failure)."""
        used = subnet_in_use()
        if used:
            raise RuntimeError(f"{SUBNET} is in use on this host ({used}); refusing to build namespaces")
        atexit.register(self.close)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        if (NETNS_DIR / name).exists():
            raise RuntimeError(f"namespace {name} already exists")
        _run("ip", "netns", "add", name)
        self.created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _open(self) -> None:
        sw = self.ns("switch")
        self._add_ns(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        prefix = SUBNET.prefixlen
        for i, p in enumerate(self.parties):
            ns = self.ns(p)
            self._add_ns(ns)
            _run("ip", "link", "add", "link0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", sw)
            _run("ip", "-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.addresses[p]}/{prefix}", "dev", "link0")
            _run("ip", "-n", ns, "link", "set", "link0", "up")
        if "S0-S1" in self.link_names():
            s0, s1 = self.ns("S0"), self.ns("S1")
            _run("ip", "link", "add", "s0s1", "netns", s0, "type", "veth", "peer", "name", "s0s1", "netns", s1)
            for ns, me, other in ((s0, "S0", "S1"), (s1, "S1", "S0")):
                _run("ip", "-n", ns, "link", "set", "s0s1", "up")
                _run("ip", "-n", ns, "route", "add", f"{self.addresses[other]}/32", "dev", "s0s1",
                     "src", self.addresses[me])
        for link, ends in self._ends().items():
            rate = _bits(self.profile.rate_mbit(link))
            if rate == 0:
                continue
            for ns, dev in ends:
                _run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *_tbf(rate))

    def close(self) -> None:
        """Kill what still runs inside the namespaces, then delete them (and with them every link and qdisc)."""
        if self._closed:
            return
        self._closed = True
        self.leave()
        self._kill_inside(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while self._pids_inside() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._kill_inside(signal.SIGKILL)
        for name in reversed(self.created):
            _run("ip", "netns", "del", name, check=False)
        self.created = [n for n in self.created if (NETNS_DIR / n).exists()]
        atexit.unregister(self.close)

    def remaining(self) -> list[str]:
        """Namespaces of this object that still exist (empty after ``close``)."""
        names = set(_run("ip", "netns", "list").stdout.split())
        return sorted(n for n in names if n.startswith(f"{self.tag}-"))

    def _pids_inside(self) -> list[int]:
        me = os.getpid()
        pids: list[int] = []
        for name in self.created:
            out = _run("ip", "netns", "pids", name, check=False).stdout.split()
            pids.extend(int(p) for p in out if p.isdigit() and int(p) != me)
        return pids

    def _kill_inside(self, sig: int) -> None:
        for pid in self._pids_inside():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # the calling thread's namespace

    def enter(self, party: str) -> None:
        """Move the calling thread into ``party``'s namespace (call before it opens any socket or thread)."""
        libc = ctypes.CDLL(None, use_errno=True)
        if self._home is None:
            self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(NETNS_DIR / self.ns(party), os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.ns(party)}")
        finally:
            os.close(fd)

    def leave(self) -> None:
        """Return the calling thread to the namespace it was in before ``enter``."""
        if self._home is None:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self._home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(self._home)
        self._home = None

    # counters

    def counters(self, only: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Bytes each shaped link's qdiscs have passed so far, per link and direction ("up": from the party
        to the switch, for S0-S1 from S0 to S1; "down": the other way). These are the bytes the token
        buckets count: Ethernet frames with their IP, TCP and TLS overhead. ``only``: these links only."""
        ends = self._ends() if only is None else {link: self._ends()[link] for link in only}
        by_dev: dict[tuple[str, str], int] = {}
        for ns in {ns for pair in ends.values() for ns, _ in pair}:
            for q in json.loads(_run("tc", "-n", ns, "-s", "-j", "qdisc", "show").stdout or "[]"):
                if q.get("kind") == "tbf":
                    by_dev[(ns, q["dev"])] = int(q.get("bytes", 0))
        return {link: {"up": by_dev.get(up, 0), "down": by_dev.get(down, 0)} for link, (up, down) in ends.items()}


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have spent so far (user, nice, system, irq, softirq)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def busiest(counted: dict[str, dict[str, int]], profile: Profile) -> dict[str, Any]:
    """The link direction whose bytes take longest at its rate, and that time (the link floor)."""
    best: dict[str, Any] = {"floor_s": 0.0}
    for link, ways in counted.items():
        rate = profile.rate_mbit(link) * 1e6 / 8
        if rate == 0:
            continue
        for way, nbytes in ways.items():
            if nbytes / rate > best["floor_s"]:
                best = {"link": link, "direction": way, "bytes": nbytes, "rate_mbit": profile.rate_mbit(link),
                        "floor_s": nbytes / rate}
    return best


def guard_signals() -> None:
    """SIGINT raises KeyboardInterrupt (also when started from a background job, which inherits SIGINT
    ignored), SIGTERM and SIGHUP raise SystemExit, all in the main thread, so ``with``/``finally``
    clean-up runs."""
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
