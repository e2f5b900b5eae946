"""The kubelet's readiness prober: every pod's server is asked GET /readyz from its node's
network namespace every `readiness_period_s`; `readiness_failure_threshold` failures in a row
make the pod not ready, `readiness_success_threshold` successes make it ready again (upstream
pkg/kubelet/prober/worker.go). Readiness gates the pod's endpoint (kube-proxy) and, in
container-native mode, its ip target at the load balancer: the control plane acts on changes.

ProbeTracker: one pod's probe results and the readiness they make (pure).
ReadinessProber: the thread that probes every pod when it falls due and reports changes.
http_ok: what counts as a success (an HTTP status of 200-399, as upstream's HTTP probe).
KubeletIptables: the kubelet's own iptables chains on every node (upstream
pkg/kubelet/kubelet_network_linux.go): KUBE-IPTABLES-HINT in mangle, which tells other
components which iptables backend the node uses, and the KUBE-KUBELET-CANARY chains its
canary monitor checks (testbed.kubernetes.dataplane.monitor), making the hint again after a
flush.
"""

from __future__ import annotations

import ctypes
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.kubernetes.dataplane.monitor import (
    CanaryMonitor,
    ensure_chains_script,
    iptables_binary,
    iptables_monitor,
    run_on,
)
from testbed.spec.model import Timing

KUBE_IPTABLES_HINT = "KUBE-IPTABLES-HINT"
KUBE_KUBELET_CANARY = "KUBE-KUBELET-CANARY"
# upstream checks the kubelet's canary every minute, twice kube-proxy's default sync period
# (30 s); the testbed keeps the ratio to the topology's kubeProxy.syncPeriod
KUBELET_CANARY_PERIODS = 2.0
READINESS_PATH = "/readyz"
PROBE_TIMEOUT_S = 1.0          # upstream's timeoutSeconds default
_CLONE_NEWNET = 0x40000000


def http_ok(status_line: bytes) -> bool:
    """Whether an HTTP status line says success (200 <= code < 400, as upstream's prober)."""
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return False
    try:
        code = int(parts[1])
    except ValueError:
        return False
    return 200 <= code < 400


@dataclass
class ProbeTracker:
    """One pod's readiness as its probe results make it (upstream's worker: a result counts
    once it has come `threshold` times in a row; until then the last verdict stands).

    ready: the verdict the kubelet reports
    last: the last probe's result (None before the first)
    run: how many probes in a row gave `last`
    """

    ready: bool
    last: bool | None = None
    run: int = 0

    def observe(self, ok: bool, timing: Timing) -> bool | None:
        """Take one probe result; the new verdict when it changes, else None."""
        self.run = self.run + 1 if ok == self.last else 1
        self.last = ok
        threshold = (timing.readiness_success_threshold if ok
                     else timing.readiness_failure_threshold)
        if self.run >= threshold and ok != self.ready:
            self.ready = ok
            return ok
        return None


@dataclass
class _Probed:
    """A pod the prober asks: where, and when next."""

    pod: str
    netns: str
    ip: str
    port: int
    tracker: ProbeTracker
    next_at: float
    sock: socket.socket | None = field(default=None, repr=False)
    reply: bytes = b""


def enter_netns(path: str) -> None:
    """Move the calling thread into a network namespace (setns(2); Python 3.11 has no
    os.setns). Sockets made afterwards live there; only this OS thread moves."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class ReadinessProber:
    """Probes every pod it is given from its node's namespace, each on its own period.

    timing: the readiness settings (period, initial delay, thresholds)
    on_change: called (pod, ready) from the prober's thread when a verdict changes
    clock: monotonic seconds (tests)
    """

    def __init__(self, timing: Timing, on_change: Callable[[str, bool], None],
                 clock: Callable[[], float] = time.monotonic):
        self.timing = timing
        self.on_change = on_change
        self.clock = clock
        self.probes = 0
        self._pods: dict[str, _Probed] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._netns: str | None = None   # the namespace the thread is in now

    def add(self, pod: str, netns: str, ip: str, port: int, ready: bool,
            started: bool = True) -> None:
        """Probe a pod from now on. netns: its node's namespace file
        ready: its verdict until the probes say otherwise (a cluster's first pods are ready;
            a new pod is not until its first successes)
        started: False for a pod whose container just started: the first probe waits for the
            initial delay"""
        delay = 0.0 if started else self.timing.readiness_initial_delay_s
        with self._lock:
            self._pods[pod] = _Probed(pod, netns, ip, port, ProbeTracker(ready),
                                      self.clock() + delay)
        self._wake.set()
        self._ensure_thread()

    def remove(self, pod: str) -> None:
        """Stop probing a pod (deleted, or its node died with its kubelet)."""
        with self._lock:
            self._pods.pop(pod, None)   # a probe in flight is closed by probe_all

    def ready(self, pod: str) -> bool | None:
        """The pod's verdict (None: not probed)."""
        with self._lock:
            probed = self._pods.get(pod)
            return probed.tracker.ready if probed else None

    def stop(self) -> None:
        """End the thread; nothing is probed any more."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        with self._lock:
            for probed in self._pods.values():
                if probed.sock is not None:
                    probed.sock.close()
            self._pods.clear()

    # -- the thread ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._stopping or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(target=self._loop, name="kubelet-prober", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping:
            now = self.clock()
            with self._lock:
                due = [p for p in self._pods.values() if p.next_at <= now]
                nxt = min((p.next_at for p in self._pods.values()), default=None)
            if not due:
                self._wake.wait(None if nxt is None else max(nxt - now, 0.01))
                self._wake.clear()
                continue
            results = self.probe_all(due)
            for probed, ok in results:
                self.report(probed.pod, ok)

    def report(self, pod: str, ok: bool) -> None:
        """One probe's result for a pod: its next probe is a period later; a change of
        verdict goes to on_change (the prober's thread; tests call it directly)."""
        with self._lock:
            probed = self._pods.get(pod)
            if probed is None:
                return
            probed.next_at = self.clock() + self.timing.readiness_period_s
            self.probes += 1
            change = probed.tracker.observe(ok, self.timing)
        if change is not None and not self._stopping:
            self.on_change(pod, change)

    def probe_all(self, due: list[_Probed]) -> list[tuple[_Probed, bool]]:
        """GET /readyz on each pod at once (non-blocking sockets, each made in its node's
        namespace), waiting at most PROBE_TIMEOUT_S; (pod, success) for each."""
        sel = selectors.DefaultSelector()
        results: dict[str, bool] = {}
        try:
            for probed in due:
                try:
                    sel.register(self._connect(probed), selectors.EVENT_WRITE, probed)
                except OSError:
                    results[probed.pod] = False
            deadline = self.clock() + min(PROBE_TIMEOUT_S, self.timing.readiness_period_s)
            while len(results) < len(due) and not self._stopping:
                left = deadline - self.clock()
                if left <= 0:
                    break
                for key, events in sel.select(left):
                    verdict = self._step(key.data, events, sel)
                    if verdict is not None:
                        results[key.data.pod] = verdict
                        sel.unregister(key.fileobj)
        finally:
            for probed in due:
                if probed.sock is not None:
                    probed.sock.close()
                    probed.sock = None
            sel.close()
        return [(p, results.get(p.pod, False)) for p in due]

    def _connect(self, probed: _Probed) -> socket.socket:
        if self._netns != probed.netns:
            enter_netns(probed.netns)
            self._netns = probed.netns
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        probed.sock, probed.reply = sock, b""
        code = sock.connect_ex((probed.ip, probed.port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        return sock

    @staticmethod
    def _step(probed: _Probed, events: int, sel: selectors.BaseSelector) -> bool | None:
        """Advance one probe: connected -> send the request; readable -> read the status line.
        The verdict once known, else None."""
        sock = probed.sock
        assert sock is not None
        try:
            if events & selectors.EVENT_WRITE:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    return False   # refused: nothing listens
                sock.send(f"GET {READINESS_PATH} HTTP/1.0\r\nHost: {probed.ip}\r\n"
                          "User-Agent: kube-probe\r\n\r\n".encode())
                sel.modify(sock, selectors.EVENT_READ, probed)
                return None
            chunk = sock.recv(4096)
        except OSError:
            return False
        probed.reply += chunk
        if b"\r\n" in probed.reply or not chunk:
            return http_ok(probed.reply.split(b"\r\n", 1)[0])
        return None


class KubeletIptables:
    """The kubelets' iptables chains on every live node of a running cluster: upstream's
    syncIPTablesRules (KUBE-IPTABLES-HINT in mangle) at start and whenever the
    KUBE-KUBELET-CANARY monitor finds its canary gone. IPv4 only; no KUBE-FIREWALL chain
    (its rule guards against route_localnet, which the testbed's kube-proxy never sets).

    cluster: the running cluster (plan, failed_nodes, host)
    backend: the cluster's iptables backend (auto, legacy, nft)
    interval: seconds between canary checks (KUBELET_CANARY_PERIODS x kubeProxy.syncPeriod)
    """

    def __init__(self, cluster: object, backend: str, interval: float):
        self.cluster = cluster
        self.iptables = iptables_binary(backend)
        hint = [("mangle", KUBE_IPTABLES_HINT)]
        self.monitor: CanaryMonitor = iptables_monitor(
            "kubelet", KUBE_KUBELET_CANARY, interval, cluster, self.iptables, self.live_nodes,
            self.sync_iptables_rules, also=hint)

    def live_nodes(self) -> list[str]:
        plan, failed = self.cluster.plan, self.cluster.failed_nodes   # type: ignore[attr-defined]
        return [n.name for n in plan.nodes if n.name not in failed]

    def sync_iptables_rules(self, node: str) -> None:
        """upstream syncIPTablesRules: the hint chain (the canaries follow in the monitor)."""
        run_on(self.cluster, node, ["sh", "-s"],
               ensure_chains_script(self.iptables, [("mangle", KUBE_IPTABLES_HINT)]))

    @classmethod
    def started(cls, cluster: object, backend: str) -> KubeletIptables:
        """Every node's chains made and watched (in the monitor's thread), every
        KUBELET_CANARY_PERIODS x the topology's kubeProxy.syncPeriod."""
        timing: Timing = cluster.topo.kubernetes   # type: ignore[attr-defined]
        kubelets = cls(cluster, backend, KUBELET_CANARY_PERIODS * timing.sync_period_s)
        kubelets.start()
        return kubelets

    def start(self) -> None:
        """Make every node's chains and watch them, in the monitor's thread."""
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.stop()
