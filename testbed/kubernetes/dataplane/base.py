"""The seam every service data plane (kube-proxy mode) plugs into: ServiceDataPlane.

A mode renders a node's state from the services and their endpoints (pure: text in, text out),
applies that text on a node, whole or as a change, keeps every node in step with the cluster,
and runs kube-proxy's health-check node port servers. iptables is the one mode today; a second
one (nftables, IPVS, eBPF) is one module subclassing ServiceDataPlane and one entry in
testbed.kubernetes.dataplane.registry. What a mode needs of the running cluster is ClusterView.
"""

from __future__ import annotations

import os
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Protocol

from testbed.kubernetes.dataplane.model import (
    HealthState,
    NodeContext,
    ServicePort,
    health_check_state,
    node_context,
)
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


class ServiceDataPlane(ABC):
    """kube-proxy in one mode, on every node of a running cluster.

    cluster: the running cluster (ClusterView)
    backend: the mode's userspace flavour where it has one (iptables: auto, legacy or nft)
    """

    mode: ClassVar[str]  # the registry's name for it, e.g. "iptables"

    def __init__(self, cluster: ClusterView, backend: str = "auto"):
        self.cluster = cluster
        self.backend = backend
        self.health_servers: dict[str, subprocess.Popen[bytes]] = {}  # node -> its server
        self.sync_times: list[tuple[str, float, str]] = []  # (node, seconds, kind) per sync

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
    def sync_all(self) -> None:
        """Bring every live node to the cluster's services and live endpoints (whole on a node
        that has nothing yet, partially after), and start or update the health servers."""

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
