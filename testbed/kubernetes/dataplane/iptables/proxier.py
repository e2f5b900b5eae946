"""kube-proxy's iptables mode on the emulated nodes: the ServiceDataPlane called "iptables".

Renders with rules.py and loads with restore.py, in each node's namespace: the whole state with
the jumps from the built-in chains at the first sync, upstream's partial sync after; runs the
health-check node port server (testbed.kubernetes.dataplane.healthserver) on every node when a
Service has externalTrafficPolicy=Local. docs/kube-proxy.md tells the whole story.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import ClassVar

from testbed.errors import EnvironmentProblem
from testbed.kubernetes.dataplane.base import (
    ApplyError,
    ClusterView,
    CommandRunner,
    ServiceDataPlane,
)
from testbed.kubernetes.dataplane.iptables import rules
from testbed.kubernetes.dataplane.iptables.restore import apply, with_jump_rules
from testbed.kubernetes.dataplane.model import (
    NodeContext,
    ServicePort,
    node_context,
    service_ports,
)
from testbed.paths import REPO
from testbed.plan.addresses import Plan


def render_node_rules(plan: Plan, node: str) -> str:
    """What `cnlb render kube-proxy` prints: the node's first sync, jumps included."""
    ctx = node_context(plan, node)
    return with_jump_rules(rules.render(service_ports(plan), ctx))


class KubeProxy(ServiceDataPlane):
    """kube-proxy in iptables mode on every node of a running cluster.

    cluster: the Cluster (for namespaces, the plan and which pods are alive)
    backend: iptables backend: auto (the machine's default), nft or legacy
    """

    mode: ClassVar[str] = "iptables"

    def __init__(self, cluster: ClusterView, backend: str = "auto"):
        super().__init__(cluster, backend)
        self.applied: dict[str, list[ServicePort]] = {}  # node -> the service ports applied there

    @staticmethod
    def render(services: Sequence[ServicePort], node: NodeContext) -> str:
        return rules.render(services, node)

    @staticmethod
    def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                       node: NodeContext) -> str:
        return rules.render_partial(old, new, node)

    def apply_text(self, node: str, text: str) -> None:
        """iptables-restore --noflush of `text` on `node`; raises RestoreError."""
        apply(self._runner(node), text, backend=self.backend, ensure_jumps=False)

    def sync_all(self) -> None:
        # the EndpointSlices as the control plane published them, conditions included (a
        # cluster view without them: every live pod, ready)
        published = getattr(self.cluster, "endpoint_conditions", None)
        services = service_ports(self.cluster.plan, self.cluster.live_pods(),
                                 published() if published else None)
        self.sync_nodes([n.name for n in self.cluster.plan.nodes
                         if n.name not in self.cluster.failed_nodes], services)
        self._sync_health(services)

    def sync_node(self, node: str, services: list[ServicePort]) -> None:
        """Bring one node to `services` (whole at its first sync, partially after)."""
        self.sync_nodes([node], services)

    def sync_nodes(self, nodes: Sequence[str], services: list[ServicePort]) -> None:
        """Bring these nodes to `services`, all loads at once; a text several nodes share
        (rules.render_key) is rendered once. Raises EnvironmentProblem naming the first node
        (in `nodes` order) whose load failed; the others are loaded all the same."""
        texts, kinds = self._texts(nodes, services)
        results = self.apply_many(texts)
        failed = None
        for node in nodes:
            result = results[node]
            if isinstance(result, ApplyError):
                failed = failed or f"kube-proxy on {node}: {result}"
                continue
            self.sync_times.append((node, round(result, 4), kinds[node]))
            self.applied[node] = services
        if failed:
            raise EnvironmentProblem(failed)

    def _texts(self, nodes: Sequence[str], services: list[ServicePort]
               ) -> tuple[dict[str, str], dict[str, str]]:
        """node -> what it loads now, node -> "full" or "partial"."""
        texts, kinds = {}, {}
        rendered: dict[tuple[int, tuple[str | None, bool, str]], str] = {}
        for node in nodes:
            old, ctx = self.applied.get(node), self.context(node)
            # nodes synced together hold the same `old` list (or None): its id() groups them
            key = (id(old), rules.render_key([*(old or ()), *services], ctx))
            if key not in rendered:
                rendered[key] = (with_jump_rules(self.render(services, ctx)) if old is None
                                 else self.render_partial(old, services, ctx))
            texts[node], kinds[node] = rendered[key], "full" if old is None else "partial"
        return texts, kinds

    def _runner(self, node: str) -> CommandRunner:
        host = self.cluster.host(node)

        def run(argv: Sequence[str], stdin_bytes: bytes | None) -> tuple[int, str]:
            stdin = subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL
            proc = host.popen(list(argv), stdin=stdin, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
            _, err = proc.communicate(stdin_bytes, timeout=120)
            return proc.returncode, err.decode(errors="replace")
        return run

    def _sync_health(self, services: list[ServicePort]) -> None:
        if not any(s.health_check_node_port for s in services):
            return
        for node in self.cluster.plan.nodes:
            if node.name in self.cluster.failed_nodes:
                continue
            path = self.cluster.state.file(f"health-{node.name}.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self.health_state(services, node.name), fh)
            os.replace(tmp, path)   # the server re-reads on change; never sees half a file
            if node.name not in self.health_servers:
                self.health_servers[node.name] = self.cluster.host(node.name).popen(
                    [sys.executable, "-m", "testbed.kubernetes.dataplane.healthserver",
                     "--state", path],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, cwd=REPO)
        self._wait_health_listening(services)

    def _wait_health_listening(self, services: list[ServicePort],
                               timeout: float = 10.0) -> None:
        ports = sorted({s.health_check_node_port for s in services if s.health_check_node_port})
        for node in self.health_servers:
            deadline = time.time() + timeout
            while True:
                out = self.cluster.sh(node, "ss -Hltn").stdout
                if all(f":{p} " in out for p in ports):
                    break
                if time.time() > deadline:
                    raise EnvironmentProblem(
                        f"kube-proxy health server on {node} not listening on {ports}")
                time.sleep(0.1)
