"""kube-proxy on the emulated nodes: the plan's services and live endpoints, rendered by
testbed.kubernetes.dataplane.iptables.rules, applied in each node's namespace the way kube-proxy applies them.

At start each node gets one atomic `iptables-restore --noflush` holding its whole state,
including the jumps from the built-in chains (a fresh namespace has none, so they are written
once, in the same transaction, instead of upstream's rule-by-rule EnsureRule). When endpoints
change, each node gets a partial restore that rewrites only the changed services' chains.
For externalTrafficPolicy=Local services each node also runs kube-proxy's health-check server
(testbed.kubernetes.dataplane.healthserver) on the service's healthCheckNodePort, which the cloud LB probes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from testbed.kubernetes.dataplane.iptables import rules as kp
from testbed.errors import EnvironmentProblem
from testbed.plan.addresses import Plan
from testbed.paths import REPO

NAMESPACE = "default"


def service_ports(plan: Plan, live_pods=None) -> list:
    """The plan's services as kube-proxy's model: one ServicePort each, with the endpoints of
    the pods that are alive (live_pods: names; None = every pod of the plan)."""
    out = []
    for svc in plan.services:
        eps = tuple(kp.Endpoint(p.ip, svc.target_port, p.node) for p in plan.pods
                    if p.name in svc.endpoints and (live_pods is None or p.name in live_pods))
        out.append(kp.ServicePort(
            namespace=NAMESPACE, name=svc.name, port_name="", protocol=svc.protocol,
            cluster_ip=svc.cluster_ip, port=svc.port, target_port=svc.target_port,
            node_port=svc.node_port, load_balancer_ips=(svc.vip,) if svc.vip else (),
            external_traffic_policy=svc.external_traffic_policy,
            session_affinity_seconds=svc.session_affinity_timeout if svc.session_affinity == "ClientIP" else None,
            health_check_node_port=svc.health_check_node_port, endpoints=eps))
    return out


def node_context(plan: Plan, node: str) -> kp.NodeContext:
    # kube-proxy's --cluster-cidr: the pod range in classic mode; in container-native mode
    # pods live in the VPC ranges (aws-vpc-cni clusters set it to the VPC CIDR)
    n = plan.node(node)
    cluster_cidr = plan.pod_cidr if plan.mode == "nodeport" else None
    return kp.NodeContext(node_name=node, node_ip=n.ip, cluster_cidr=cluster_cidr)


def with_jump_rules(text: str) -> str:
    """The restore input with the jumps from the built-in chains added before each table's
    COMMIT (for a fresh namespace, whose built-in chains are empty)."""
    out, table = [], None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT" and table:
            out += [r.rule_text() for r in kp.JUMP_RULES if r.table == table]
        out.append(line)
    return "\n".join(out) + "\n"


def render_node_rules(plan: Plan, node: str) -> str:
    """What `cnlb render kube-proxy` prints: the node's first sync, jumps included."""
    return with_jump_rules(kp.render(service_ports(plan), node_context(plan, node)))


def health_state(plan: Plan, node: str, live_pods=None) -> dict:
    """The health-check server's view for one node: local endpoints per Local service."""
    services = []
    for svc in plan.services:
        if svc.health_check_node_port:
            local = [p for p in plan.pods if p.name in svc.endpoints and p.node == node
                     and (live_pods is None or p.name in live_pods)]
            services.append({"namespace": NAMESPACE, "name": svc.name,
                             "port": svc.health_check_node_port, "local_endpoints": len(local)})
    return {"services": services}


class KubeProxy:
    """kube-proxy on every node of a running cluster.

    cluster: the Cluster (for namespaces, the plan and which pods are alive)
    backend: iptables backend: auto (the machine's default), nft or legacy
    """

    def __init__(self, cluster, backend: str = "auto"):
        self.cluster = cluster
        self.backend = backend
        self.applied: dict = {}        # node -> the service ports last applied there
        self.health_servers: dict = {}  # node -> Popen
        self.sync_times: list = []      # (node, seconds, kind) for the record

    def live_pods(self) -> set:
        c = self.cluster
        return {p.name for p in c.plan.pods} - c.failed_pods - c.removed_pods

    def sync_all(self) -> None:
        services = service_ports(self.cluster.plan, self.live_pods())
        for node in self.cluster.plan.nodes:
            if node.name in self.cluster.failed_nodes:
                continue
            self.sync_node(node.name, services)
        self._sync_health()

    def sync_node(self, node: str, services) -> None:
        ctx = node_context(self.cluster.plan, node)
        old = self.applied.get(node)
        if old is None:
            text, kind = with_jump_rules(kp.render(services, ctx)), "full"
        else:
            text, kind = kp.render_partial(old, services, ctx), "partial"
        t0 = time.time()
        try:
            kp.apply(self._runner(node), text, backend=self.backend, ensure_jumps=False)
        except kp.RestoreError as exc:
            raise EnvironmentProblem(f"kube-proxy on {node}: {exc}") from None
        self.sync_times.append((node, round(time.time() - t0, 4), kind))
        self.applied[node] = services

    def _runner(self, node: str):
        host = self.cluster.host(node)

        def run(argv, stdin_bytes):
            proc = host.popen(list(argv), stdin=subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, err = proc.communicate(stdin_bytes, timeout=120)
            return proc.returncode, err.decode(errors="replace")
        return run

    def _sync_health(self) -> None:
        plan = self.cluster.plan
        if not any(s.health_check_node_port for s in plan.services):
            return
        live = self.live_pods()
        for node in plan.nodes:
            if node.name in self.cluster.failed_nodes:
                continue
            path = self.cluster.state.file(f"health-{node.name}.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(health_state(plan, node.name, live), fh)
            os.replace(tmp, path)   # the server re-reads on change; never sees half a file
            if node.name not in self.health_servers:
                self.health_servers[node.name] = self.cluster.host(node.name).popen(
                    [sys.executable, "-m", "testbed.kubernetes.dataplane.healthserver", "--state", path],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    cwd=REPO)
        self._wait_health_listening()

    def _wait_health_listening(self, timeout: float = 10.0) -> None:
        plan = self.cluster.plan
        ports = sorted({s.health_check_node_port for s in plan.services if s.health_check_node_port})
        for node in self.health_servers:
            deadline = time.time() + timeout
            while True:
                out = self.cluster.sh(node, "ss -Hltn").stdout
                if all(f":{p} " in out for p in ports):
                    break
                if time.time() > deadline:
                    raise EnvironmentProblem(f"kube-proxy health server on {node} not listening on {ports}")
                time.sleep(0.1)
