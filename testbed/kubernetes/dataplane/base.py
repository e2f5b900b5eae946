"""The seam every service data plane (kube-proxy mode) plugs into: ServiceDataPlane.

A mode renders a node's state from the services and their endpoints (pure: text in, text out),
applies that text on a node, whole or as a change, keeps every node in step with the cluster,
and runs kube-proxy's servers on every node (health-check node ports, /healthz on 10256,
/metrics on 10249). Syncs come at once (sync_all) or paced as upstream paces them
(request_sync: at most one per min sync period, runner.BoundedFrequencyRunner). iptables is the
one mode today; a second one (nftables, IPVS, eBPF) is one module subclassing ServiceDataPlane
and one entry in testbed.kubernetes.dataplane.registry. What a mode needs of the running
cluster is ClusterView. A mode also says whether this machine can run it (unavailable(): the
kernel may lack a module) and what a fresh node's first sync loads (render_first).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from testbed.kubernetes.dataplane.healthserver import DEFAULT_HEALTH_TIMEOUT_S
from testbed.kubernetes.dataplane.metrics import ProxyMetrics
from testbed.kubernetes.dataplane.model import (
    HealthState,
    NodeContext,
    ServicePort,
    health_check_state,
    node_context,
    service_ports,
)
from testbed.kubernetes.dataplane.runner import BoundedFrequencyRunner
from testbed.plan.addresses import Plan

# run(argv, stdin_bytes) -> (returncode, stderr): the caller decides where commands run
# (a Mininet host, `ip netns exec`, ...).
CommandRunner = Callable[[Sequence[str], bytes | None], tuple[int, str]]

# Nodes loaded at once: a load is a CPU-bound tool in its own namespace (nothing shared), so
# one per CPU keeps every CPU busy without making each load wait for a turn.
APPLY_THREADS = max(2, os.cpu_count() or 1)


class ApplyError(RuntimeError):
    """A node's data plane refused the text it was given to load."""


class NodeHost(Protocol):
    """A node's shell, where the data plane starts its commands (a Mininet host)."""

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]: ...


class ServerProcess(Protocol):
    """A server process the cluster started for the data plane (Popen-like)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class StateFiles(Protocol):
    """The cluster's state directory, where the health-check servers' files live."""

    def file(self, name: str) -> str: ...


class ClusterView(Protocol):
    """What a data plane uses of a running cluster (testbed.emulation's Cluster has it)."""

    @property
    def plan(self) -> Plan:
        """The plan: nodes, services, pods."""

    @property
    def failed_nodes(self) -> set[str]:
        """Names of the nodes that are down (not synced)."""

    @property
    def state(self) -> StateFiles:
        """The cluster's state directory."""

    def live_pods(self) -> set[str]:
        """Names of the pods that are alive: the endpoints that exist."""

    def host(self, name: str) -> NodeHost:
        """The node (or any host) `name`, to start commands in."""

    def sh(self, host: str, command: str,
           timeout: float = ...) -> subprocess.CompletedProcess[str]:
        """Run a shell command on `host` and wait for it."""

    def launch_node_servers(self, module: str, args_by_node: Mapping[str, Sequence[str]]
                            ) -> Mapping[str, ServerProcess]:
        """Start `python -m module ARGS...` in each node (node -> its args), standard library
        only, all forked from one warm interpreter; node -> its server process."""


class ServiceDataPlane(ABC):
    """kube-proxy in one mode, on every node of a running cluster.

    cluster: the running cluster (ClusterView)
    backend: the mode's userspace flavour where it has one (iptables: auto, legacy or nft)
    min_sync_period_s: request_sync's pacing (upstream --iptables-min-sync-period, 1 s); by
        default the topology's `kubernetes: minSyncPeriod` when the cluster has one
    """

    mode: ClassVar[str]  # the registry's name for it, e.g. "iptables"

    def __init__(self, cluster: ClusterView, backend: str = "auto",
                 min_sync_period_s: float | None = None):
        self.cluster = cluster
        self.backend = backend
        self.health_servers: dict[str, ServerProcess] = {}  # node -> kube-proxy's servers
        self.sync_times: list[tuple[str, float, str]] = []  # (node, seconds, kind) per sync
        if min_sync_period_s is None:
            timing = getattr(getattr(cluster, "topo", None), "kubernetes", None)
            min_sync_period_s = float(getattr(timing, "min_sync_period_s", 1.0))
        self.min_sync_period_s = min_sync_period_s
        # upstream --iptables-sync-period: canary checks and the retry after a failed sync
        timing = getattr(getattr(cluster, "topo", None), "kubernetes", None)
        self.sync_period_s = float(getattr(timing, "sync_period_s", 30.0))
        self.health_timeout_s = DEFAULT_HEALTH_TIMEOUT_S  # upstream: 2 x --sync-period
        self.metrics: dict[str, ProxyMetrics] = {}   # node -> its kube-proxy's metrics
        self.last_updated: dict[str, float] = {}     # node -> last successful sync (epoch s)
        self.oldest_pending_queued: dict[str, float] = {}   # node -> oldest unsynced request
        self.node_eligible: dict[str, bool] = {}     # node -> False while being deleted
        # What a sync brings the nodes to; the control plane may replace it (endpoints with
        # ready / serving / terminating conditions).
        self.services_source: Callable[[], list[ServicePort]] = lambda: service_ports(
            self.cluster.plan, self.cluster.live_pods())
        self.sync_lock = threading.RLock()   # one sync at a time (upstream's proxier.mu)
        # Taken before sync_lock by a paced sync: the lock of whoever services_source reads
        # (the control plane's), which its own callers hold when they call sync_all — so every
        # sync takes the two in one order (a paced sync reading the endpoints while a service
        # change waits for sync_lock would otherwise deadlock).
        self.source_lock: AbstractContextManager[Any] = contextlib.nullcontext()
        self.runner: BoundedFrequencyRunner | None = None

    # --- pure: a node's state as text, from services and endpoints ------------------------------

    @staticmethod
    @abstractmethod
    def render(services: Sequence[ServicePort], node: NodeContext) -> str:
        """The node's whole state for `services`: what a full sync loads."""

    @staticmethod
    @abstractmethod
    def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                       node: NodeContext) -> str:
        """What takes a node holding render(old) to the state of render(new): a partial sync."""

    @classmethod
    def render_first(cls, services: Sequence[ServicePort], node: NodeContext) -> str:
        """What a fresh node's first sync loads: render() plus whatever a node that has
        nothing of the mode yet needs (iptables: the jumps from the built-in chains). `cnlb
        render kube-proxy` prints it."""
        return cls.render(services, node)

    @classmethod
    def unavailable(cls) -> str | None:
        """Why the mode cannot run on this machine ("kernel lacks ip_vs"), or None when it
        can. Checked before a cluster is built and shown by `cnlb doctor`; a reason that
        starts with "kernel lacks" is the one an integration test may be "not run" for."""
        return None

    @staticmethod
    def health_state(services: Sequence[ServicePort], node_name: str) -> HealthState:
        """What the node's health-check node port server reports (the same in every mode)."""
        return health_check_state(services, node_name)

    # --- effects, on the running cluster --------------------------------------------------------

    @abstractmethod
    def apply_text(self, node: str, text: str) -> None:
        """Load `text` (render's or render_partial's) on `node`; raises ApplyError."""

    def apply_many(self, texts: Mapping[str, str]) -> dict[str, float | ApplyError]:
        """apply_text on several nodes at once. texts: node -> its text
        Returns node -> the seconds its load took, or the ApplyError it raised."""

        def load(node: str) -> float | ApplyError:
            t0 = time.time()
            try:
                self.apply_text(node, texts[node])
            except ApplyError as exc:
                return exc
            return time.time() - t0
        with ThreadPoolExecutor(max_workers=min(APPLY_THREADS, len(texts) or 1)) as pool:
            return dict(zip(texts, pool.map(load, texts), strict=True))

    @abstractmethod
    def sync_all(self, services: Sequence[ServicePort] | None = None) -> None:
        """Bring every live node to `services` (default: services_source(), the cluster's
        services and live endpoints) at once: whole on a node that has nothing yet, partially
        after; start or update kube-proxy's servers. Raises EnvironmentProblem when a node
        refused its load (the others are synced all the same)."""

    def live_nodes(self) -> list[str]:
        """The plan's nodes that are not down, in plan order."""
        return [n.name for n in self.cluster.plan.nodes if n.name not in self.cluster.failed_nodes]

    # --- paced syncs (upstream's Sync() and its BoundedFrequencyRunner) ------------------------

    def request_sync(self) -> None:
        """Ask for a sync as soon as min_sync_period_s allows (upstream's Proxier.Sync()):
        requests coalesce, two may run back to back (burst), then one per period. Returns at
        once; the sync runs in a background thread. Until it has run, each node's /healthz
        counts the request as queued (503 once it waited past the health timeout)."""
        now = time.time()
        queued = [n for n in self.live_nodes() if n not in self.oldest_pending_queued]
        for node in self.live_nodes():
            self.metrics.setdefault(node, ProxyMetrics()) \
                .sync_proxy_rules_last_queued_timestamp_seconds = now
        for node in queued:   # QueuedUpdate: only the oldest request counts
            self.oldest_pending_queued[node] = now
        self.write_states(queued)
        if self.runner is None:
            self.runner = BoundedFrequencyRunner("sync-runner", self._paced_sync,
                                                 self.min_sync_period_s)
            self.runner.start()
        self.runner.run()

    def _paced_sync(self) -> None:
        try:
            with self.source_lock:
                self.sync_all()
        except Exception:
            if self.runner is not None:   # upstream: RetryAfter(syncPeriod) on failure
                self.runner.retry_after(self.sync_period_s)
            raise

    def wait_synced(self, timeout: float = 10.0) -> bool:
        """Wait until every requested sync has been applied on the live nodes (what an e2e
        test waits for after changing endpoints); False if one is still pending at timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            runner = self.runner
            pending = any(n in self.oldest_pending_queued for n in self.live_nodes())
            if not pending and (runner is None or not runner.due()):
                return True
            time.sleep(0.02)
        return False

    def stop_sync_runner(self) -> None:
        """Stop the paced syncs' thread (after the sync in progress); request_sync restarts it."""
        if self.runner is not None:
            self.runner.stop()
            self.runner = None

    def set_node_eligible(self, node: str, eligible: bool) -> None:
        """Upstream SyncNode: a node being deleted (or tainted ToBeDeletedByClusterAutoscaler)
        answers 503 on /healthz, so LBs drain it before it goes."""
        self.node_eligible[node] = eligible
        self.write_states([node])

    @abstractmethod
    def write_states(self, nodes: Sequence[str]) -> None:
        """Rewrite the state files the servers of `nodes` answer from."""

    # --- by node name, for callers that hold the cluster ---------------------------------------

    def context(self, node: str) -> NodeContext:
        """The plan's node `node` as render sees it."""
        return node_context(self.cluster.plan, node)

    def render_node(self, node: str, services: Sequence[ServicePort]) -> str:
        """render() for the plan's node `node`."""
        return self.render(services, self.context(node))

    def render_change(self, node: str, old: Sequence[ServicePort],
                      new: Sequence[ServicePort]) -> str:
        """render_partial() for the plan's node `node`."""
        return self.render_partial(old, new, self.context(node))
