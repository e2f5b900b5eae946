"""The emulated cluster's control plane: what the scheduler, the endpoints controller, the
kubelets and the cloud controller manager do. Pods are added, removed and failed, their
servers run, and endpoints follow everywhere: kube-proxy on every node and, in container-native
mode, the VPC's pod routes and the load balancer's ip targets. The decisions are pure
(testbed.kubernetes.pods); this module makes them so on the running cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from mininet.node import Node

from testbed.cloud.lb import CloudLoadBalancer, Target
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.emulation.hosts import Hosts
from testbed.emulation.journal import Journal, StateDir
from testbed.emulation.podservers import Launcher, PodServer, server_flags
from testbed.errors import EnvironmentProblem
from testbed.kubernetes import pods as scheduling
from testbed.kubernetes.cni import plugin_for
from testbed.plan.addresses import Plan, PodPlan, allocate_pod, with_pod
from testbed.spec.model import Topology


class ClusterParts(Protocol):
    """What the control plane uses of the cluster that owns it (testbed.emulation.cluster)."""

    topo: Topology
    plan: Plan
    state: StateDir
    journal: Journal | None
    hosts: Hosts | None
    controller: ControllerProcess | None
    lb: CloudLoadBalancer | None
    kube_proxy: Any   # the service data plane on the nodes (sync_all() when endpoints change)

    def host(self, name: str) -> Node: ...


class ControlPlane:
    """The Kubernetes control plane of an emulated cluster (and the cloud's half of it).

    cluster: the Cluster whose hosts, VPC controller, load balancer and kube-proxy it drives
    """

    def __init__(self, cluster: ClusterParts):
        self.cluster = cluster
        self.states = scheduling.PodStates()
        self.pod_servers: dict[str, PodServer] = {}   # pod -> its HTTP server
        self.launcher: Launcher | None = None   # started with the first pod server

    # -- what is running -----------------------------------------------------------------------
    def live_pods(self) -> set[str]:
        """Pods neither failed nor removed."""
        return scheduling.live_pods(self.cluster.plan, self.states)

    def server_running(self, pod: str) -> bool:
        """Whether the pod's HTTP server runs. pod: the pod's name"""
        proc = self.pod_servers.get(pod)
        return bool(proc and proc.poll() is None)

    def dead_pod_servers(self) -> list[str]:
        """Pods whose server exited although nobody failed the pod (a crash to mend)."""
        return [name for name, proc in self.pod_servers.items()
                if proc.poll() is not None and name not in self.states.failed_pods]

    def restart_pod_servers(self, names: Iterable[str]) -> None:
        """Start the servers of these pods again. names: pods whose server exited"""
        names = list(names)
        for name in names:
            self.pod_servers.pop(name)
        self.start_pod_servers([self.cluster.plan.pod(n) for n in names])

    def expected_in_service(self, service: str) -> set[str]:
        """The targets a healthy LB serves the service from (pods or nodes)."""
        return scheduling.expected_in_service(self.cluster.plan, self.states, service)

    def wait_lb_ready(self, timeout: float = 0.0) -> None:
        """Wait until the cloud LB has every backend that should serve in service (health
        checks need healthy_threshold good answers before a backend takes traffic).
        timeout: 0 = scaled to the checks: 30 s plus a few check intervals"""
        hc = self.cluster.topo.load_balancer.health_check
        timeout = timeout or 30 + 3 * hc.interval_s * (hc.healthy_threshold + 1)
        expected = {lb.service: self.expected_in_service(lb.service)
                    for lb in self.cluster.plan.load_balancers}
        self.cluster.lb.wait_ready(expected, timeout)

    # -- pod servers -----------------------------------------------------------------------------
    def start_pod_servers(self, pods: Sequence[PodPlan]) -> None:
        """Start each pod's HTTP server inside its namespace and wait until every one listens
        (one launcher forks them all: see testbed.emulation.podservers)."""
        hosts = self.cluster.hosts
        servers: list[PodServer] = self._launcher().launch(
            [(pod.name, server_flags(pod, hosts.netns_file(pod.name))) for pod in pods])
        for server in servers:
            self.pod_servers[server.pod] = server
        deadline = time.monotonic() + 30 + len(servers) * 0.05
        for server in servers:
            if not server.wait_ready(deadline - time.monotonic()):
                raise EnvironmentProblem(self._not_started(server))

    def _launcher(self) -> Launcher:
        if self.launcher is None or not self.launcher.alive():
            journal = self.cluster.journal
            assert journal is not None   # a started cluster has one

            def started(servers: list[PodServer]) -> None:   # as Journal.process writes them
                journal.record_many("process", [
                    {"pid": s.pid, "start": s.start_time, "what": f"{s.pod}: podserver",
                     "gentle": True} for s in servers])
            self.launcher = Launcher(self.cluster.state.file("podservers.log"),
                                     lambda pid: journal.process(pid, "pod server launcher"),
                                     started)
        return self.launcher

    def _not_started(self, server: PodServer) -> str:
        code = server.poll()
        if code is None:
            return f"pod {server.pod}'s server did not say it was ready in time"
        said = self.launcher.log_line(server.pod) if self.launcher else ""
        return f"pod {server.pod}'s server did not start (exit {code})" + \
            (f": {said}" if said else "")

    def _kill_server(self, name: str) -> None:
        proc = self.pod_servers.pop(name, None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)

    # -- pod lifecycle ---------------------------------------------------------------------------
    def add_pod(self, deployment: str, node: str | None = None) -> str:
        """Schedule a new pod of a deployment (on the node with fewest pods unless given):
        namespace, veth, address, server; then endpoints everywhere (kube-proxy on every node,
        and in container-native mode the VPC route and the LB's ip target)."""
        c, plan = self.cluster, self.cluster.plan
        template = scheduling.deployment_template(plan, deployment)
        node = scheduling.place_pod(plan, self.states, node, c.topo.vpc.max_pods_per_node)
        pod = allocate_pod(plan, deployment, node, template.port)
        c.hosts.add_host(pod.name)
        c.hosts.link_pod(pod)
        with_pod(plan, pod)
        c.hosts.run_script(pod.name, plugin_for(plan).setup_pod(plan, pod))
        c.hosts.run_script(node, plugin_for(plan).attach_pod(plan, pod))
        self.start_pod_servers([pod])
        self._endpoints_changed()
        if plan.mode == "container-native":
            c.controller.add_pod_route(pod.name, pod.ip, node)
            for service in scheduling.lbs_selecting(plan, pod.deployment):
                c.lb.register(service, Target(pod.name, pod.ip, pod.port))
        return pod.name

    def remove_pod(self, name: str, deregister: bool = True) -> None:
        """Delete a pod the way Kubernetes does: endpoints go first (kube-proxy everywhere; the
        LB target and VPC route in container-native mode), then the pod and its namespace.
        deregister: False when nobody tells the cloud LB (a dead node): it finds out by health
        checks, as it does for the node itself in nodeport mode."""
        c, plan = self.cluster, self.cluster.plan
        pod = scheduling.find_pod(plan, self.states, name)
        self.states.removed_pods.add(name)
        self.states.failed_pods.discard(name)
        if plan.mode == "container-native" and deregister:
            for service in scheduling.lbs_selecting(plan, pod.deployment):
                c.lb.deregister(service, Target(pod.name, pod.ip, pod.port))
            c.controller.remove_pod_route(pod.name)
        self._endpoints_changed()
        self._kill_server(name)
        if pod.node not in self.states.failed_nodes:
            c.hosts.run_script(pod.node, plugin_for(plan).detach_pod(plan, pod))
        c.hosts.remove_host(name)   # the pod's namespace, and its veth pair with it

    def fail_pod(self, name: str) -> None:
        """A pod's server crashes. Nothing else changes: the LB's health checks notice it in
        container-native mode; kube-proxy keeps sending to it until the endpoint is removed
        (as Kubernetes does until the readiness probe fails)."""
        scheduling.find_pod(self.cluster.plan, self.states, name)
        self._kill_server(name)
        self.states.failed_pods.add(name)

    def fail_node(self, name: str) -> list[str]:
        """A node dies: its link goes down and its pods with it; the pods are rescheduled on
        the remaining nodes (Kubernetes evicts and recreates them). Returns the new pods."""
        plan = self.cluster.plan
        scheduling.check_node_can_fail(plan, self.states, name)
        self.cluster.hosts.run_script(name, ["ip link set eth0 down"])
        self.states.failed_nodes.add(name)
        lost = scheduling.pods_on_node(plan, self.states, name)
        for pod in lost:
            self._kill_server(pod.name)
            self.remove_pod(pod.name, deregister=False)
        return [self.add_pod(pod.deployment) for pod in lost]

    def _endpoints_changed(self) -> None:
        if self.cluster.kube_proxy is not None:
            self.cluster.kube_proxy.sync_all()

