"""Canary chains: upstream's utiliptables Monitor (pkg/util/iptables/iptables.go), for every
node of a cluster in one thread.

A component that owns iptables rules makes an empty chain, its canary, in each of a list of
tables (kube-proxy in iptables mode: KUBE-PROXY-CANARY in mangle, nat and filter; the kubelet:
KUBE-KUBELET-CANARY in the same three) and checks every interval that the first table's is still
there. Whatever flushes the tables (a firewall reload, `iptables -F`, someone deleting every
KUBE-* chain) takes the canary with it. The monitor then waits up to 5 s, every 100 ms, for the
other tables' canaries to go too (a flush in progress), says "iptables canary TABLE/CHAIN
deleted", calls the owner's reload (kube-proxy: a full sync; the kubelet: its own chains) and
makes the canaries again.

CanaryMonitor: what is due on each node and doing it (step(), driven by a test with a fake
clock and fake tables); start() runs it in a daemon thread, stop() ends it.
chain_exists_argv, ensure_chains_script: the commands, as upstream's ChainExists / EnsureChain
run them; iptables_monitor: a CanaryMonitor whose checks run those in the cluster's nodes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

CANARY_TABLES = ("mangle", "nat", "filter")   # upstream's order: mangle is checked
FLUSH_TIMEOUT_S = 5.0     # upstream iptablesFlushTimeout
FLUSH_POLL_S = 0.1        # upstream iptablesFlushPollTime


def iptables_binary(backend: str) -> str:
    """The iptables command of a backend: auto (the machine's default), legacy or nft."""
    return "iptables" if backend == "auto" else f"iptables-{backend}"


def chain_exists_argv(iptables: str, table: str, chain: str) -> list[str]:
    """upstream ChainExists: `iptables -w -t TABLE -n -L CHAIN` (exit 0: there)."""
    return [iptables, "-w", "-t", table, "-n", "-L", chain]


def ensure_chains_script(iptables: str, chains: Sequence[tuple[str, str]]) -> str:
    """A shell script making each (table, chain) that is missing (upstream EnsureChain: -N,
    and "already exists" is no error); it exits non-zero if one could not be made."""
    lines = ["set -e"]
    for table, chain in chains:
        lines.append(f"{iptables} -w -t {table} -N {chain} 2>/dev/null || "
                     f"{iptables} -w -t {table} -n -L {chain} >/dev/null")
    return "\n".join(lines) + "\n"


@dataclass
class _Watched:
    """One node: "ensure" (its canaries are to be made) or "watch" (checked when due)."""

    phase: str
    due: float


class CanaryMonitor:
    """utiliptables Monitor on several nodes.

    name: for messages ("kube-proxy", "kubelet")
    canary: the chain (KUBE-PROXY-CANARY)
    tables: where it is made; the first is the one checked every interval
    interval: seconds between checks (kube-proxy: --iptables-sync-period)
    nodes: the nodes to watch now (a failed node drops out; one that comes back starts again)
    exists: (node, table) -> whether the canary is there; None when it could not be told
        (upstream's resource errors: the check counts as "still there")
    ensure: node -> whether the canaries could be made (else tried again an interval later)
    reload: node -> None, the owner's resync after a flush
    clock, sleep: monotonic seconds and sleeping (tests pass fakes)
    """

    def __init__(self, name: str, canary: str, tables: Sequence[str], interval: float,
                 nodes: Callable[[], Sequence[str]],
                 exists: Callable[[str, str], bool | None],
                 ensure: Callable[[str], bool], reload: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.name, self.canary, self.tables = name, canary, tuple(tables)
        self.interval = interval
        self.nodes, self.exists, self.ensure, self.reload = nodes, exists, ensure, reload
        self.clock, self.sleep = clock, sleep
        self.watched: dict[str, _Watched] = {}
        self.reloads: list[tuple[str, float]] = []   # (node, clock) of every reload
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the core -------------------------------------------------------------------------
    def step(self) -> list[str]:
        """Do what is due now on every node; the nodes reloaded."""
        now = self.clock()
        live = list(self.nodes())
        for node in list(self.watched):
            if node not in live:
                del self.watched[node]
        reloaded = []
        for node in live:
            w = self.watched.setdefault(node, _Watched("ensure", now))
            if self._stop.is_set():
                break
            if w.due > now:
                continue
            if w.phase == "ensure":   # upstream: PollImmediateUntil(interval, EnsureChain...)
                if self.ensure(node):
                    w.phase = "watch"
                w.due = now + self.interval
                continue
            if self.exists(node, self.tables[0]) is not False:
                w.due = now + self.interval
                continue
            self._say(f"iptables canary {self.tables[0]}/{self.canary} deleted on {node}")
            if not self._wait_flushed(node):
                self._say(f"inconsistent iptables state detected on {node}")
            self._say(f"reloading after iptables flush on {node}")
            self.reload(node)
            self.reloads.append((node, self.clock()))
            reloaded.append(node)
            w.phase, w.due = "ensure", now   # the canaries are made again at once
            if self.ensure(node):
                w.phase, w.due = "watch", self.clock() + self.interval
        return reloaded

    def _wait_flushed(self, node: str) -> bool:
        """Whether the other tables' canaries went too within FLUSH_TIMEOUT_S."""
        deadline = self.clock() + FLUSH_TIMEOUT_S
        while True:
            if all(self.exists(node, t) is False for t in self.tables[1:]):
                return True
            if self.clock() >= deadline or self._stop.is_set():
                return False
            self.sleep(FLUSH_POLL_S)

    def next_due(self) -> float | None:
        """When step() has something to do next (None: no node watched yet)."""
        return min((w.due for w in self.watched.values()), default=None)

    # --- the thread -----------------------------------------------------------------------
    def start(self) -> None:
        """Run step() when due, in a daemon thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"{self.name}-canary",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (after a reload in progress). Unlike upstream's stopCh, the canaries
        stay: a process that dies leaves them, as kube-proxy's does."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as err:   # a failed check or reload must not end the monitor
                self._say(f"{err}")
            due = self.next_due()
            wait = self.interval if due is None else max(due - self.clock(), 0.01)
            self._stop.wait(min(wait, self.interval))

    def _say(self, message: str) -> None:
        print(f"{self.name}: {message}", file=sys.stderr, flush=True)


def run_on(cluster: Any, node: str, argv: Sequence[str], stdin: str | None = None) -> int:
    """Run argv in `node` (the cluster's host), stdin given; its exit status."""
    proc = cluster.host(node).popen(
        list(argv), stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.communicate(stdin.encode() if stdin is not None else None, timeout=60)
    return proc.returncode


def iptables_monitor(name: str, canary: str, interval: float, cluster: Any, iptables: str,
                     nodes: Callable[[], Sequence[str]], reload: Callable[[str], None],
                     also: Sequence[tuple[str, str]] = ()) -> CanaryMonitor:
    """A CanaryMonitor of `canary` in CANARY_TABLES whose checks and chains are made with
    `iptables` (the cluster's backend) in each node; `also`: (table, chain) made with the
    canaries (the kubelet's first sync of its own chains)."""
    script = ensure_chains_script(iptables, [*also, *((t, canary) for t in CANARY_TABLES)])

    def exists(node: str, table: str) -> bool | None:
        code = run_on(cluster, node, chain_exists_argv(iptables, table, canary))
        return True if code == 0 else False if code == 1 else None

    return CanaryMonitor(name, canary, CANARY_TABLES, interval, nodes, exists,
                         lambda node: run_on(cluster, node, ["sh", "-s"], script) == 0, reload)
