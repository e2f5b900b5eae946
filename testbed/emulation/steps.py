"""What each step of the control plane's clock (testbed.kubernetes.lifecycle.ACTIONS) does on
the running cluster: Steps.<action>(target, timing), called by the ControlPlane with its lock
held, returning False when there was nothing left to do (the pod was gone already, ready
again, ...): the timeline marks those skipped.
"""

from __future__ import annotations

from typing import Any, Protocol

from testbed.kubernetes import pods as scheduling
from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.dataplane.model import EndpointConditions
from testbed.kubernetes.kubelet import ReadinessProber
from testbed.spec.model import Timing


class ControlPlane(Protocol):
    """What the steps use of testbed.emulation.control_plane.ControlPlane."""

    cluster: Any
    states: scheduling.PodStates
    prober: ReadinessProber | None
    published: dict[str, EndpointConditions] | None
    pod_servers: dict[str, Any]
    rescheduled: dict[str, list[str]]

    def server_running(self, pod: str) -> bool: ...
    def kill_server(self, name: str) -> None: ...
    def scheduler(self) -> Any: ...
    def endpoints_changed(self) -> None: ...
    def register(self, name: str) -> None: ...
    def deregister(self, name: str) -> None: ...
    def add_pod(self, deployment: str, node: str | None = None) -> str: ...

EXIT_POLL_S = 0.1               # how often a SIGTERMed server is looked at until it exits


class Steps:
    """The steps' effects, one method per action. cp: the control plane whose cluster and
    states they change"""

    def __init__(self, cp: ControlPlane):
        self.cp = cp

    def pod_terminating(self, pod: str, t: Timing) -> None:
        self.cp.states.terminating_pods.add(pod)

    def endpoints(self, target: str, t: Timing) -> None:
        cp = self.cp
        if cp.published is not None:
            cp.published = scheduling.endpoint_conditions(cp.cluster.plan, cp.states,
                                                          instant=False)
        cp.endpoints_changed()

    def lb_register(self, pod: str, t: Timing) -> bool:
        s = self.cp.states
        if pod in s.removed_pods | s.terminating_pods | s.not_ready_pods:
            return False   # it changed again meanwhile: the controller registers what is ready
        self.cp.register(pod)
        return True

    def lb_deregister(self, pod: str, t: Timing) -> bool:
        s = self.cp.states
        if not t.instant and pod not in s.removed_pods | s.terminating_pods | s.not_ready_pods:
            return False   # ready again meanwhile
        self.cp.deregister(pod)
        return True

    def pre_stop(self, pod: str, t: Timing) -> None:
        pass   # a preStop sleep: the server goes on as it was; the timeline shows when

    def sigterm(self, pod: str, t: Timing) -> None:
        server = self.cp.pod_servers.get(pod)
        if server is not None and server.poll() is None:
            server.terminate()   # it stops listening and finishes what it was answering
        self._await_exit(pod, t)

    def _await_exit(self, pod: str, t: Timing) -> None:
        """Once the SIGTERMed server has exited, the kubelet deletes the pod (not waiting for
        the grace period's end)."""
        cp = self.cp
        if pod in cp.states.removed_pods:
            return
        clock = cp.scheduler()
        if cp.server_running(pod):
            clock.at(EXIT_POLL_S, {"action": "await-exit", "target": pod, "quiet": True},
                     lambda: self._await_exit(pod, t))
            return
        clock.at(0, {"event": "remove-pod", "action": "pod-deleted", "target": pod,
                     "by": "kubelet", "early": True}, lambda: self.pod_deleted(pod, t))
        clock.at(t.endpoint_updates_batch_period_s,
                 {"event": "remove-pod", "action": "endpoints", "target": pod,
                  "by": "endpointslice-controller"}, lambda: self.endpoints(pod, t))

    def sigkill(self, pod: str, t: Timing) -> bool:
        if not self.cp.server_running(pod):
            return False   # it exited after SIGTERM
        self.cp.kill_server(pod)
        return True

    def pod_deleted(self, name: str, t: Timing) -> bool:
        """The pod is gone: no endpoint, no VPC route, no server, no namespace."""
        cp = self.cp
        c, plan, states = cp.cluster, cp.cluster.plan, cp.states
        if name in states.removed_pods:
            return False   # deleted already: its server exited before the grace period's end
        pod = plan.pod(name)
        states.removed_pods.add(name)
        for some in (states.failed_pods, states.terminating_pods, states.not_ready_pods):
            some.discard(name)
        if cp.prober is not None:
            cp.prober.remove(name)
        if plan.overlay == "vpc-native" and pod.node not in states.failed_nodes:
            c.controller.remove_pod_route(name)
        if t.instant:
            self.endpoints(name, t)   # at once (published too on a realistic cluster)
        cp.kill_server(name)
        if pod.node not in states.failed_nodes:
            c.hosts.run_script(pod.node, plugin_for(plan).detach_pod(plan, pod))
        c.hosts.remove_host(name)   # the pod's namespace, and its veth pair with it
        return True

    def container_crashed(self, pod: str, t: Timing) -> None:
        self.cp.kill_server(pod)
        self.cp.states.failed_pods.add(pod)

    def pod_not_ready(self, pod: str, t: Timing) -> None:
        if pod not in self.cp.states.removed_pods:
            self.cp.states.not_ready_pods.add(pod)

    def pod_ready(self, pod: str, t: Timing) -> None:
        self.cp.states.not_ready_pods.discard(pod)

    def node_down(self, node: str, t: Timing) -> None:
        cp = self.cp
        cp.cluster.hosts.run_script(node, ["ip link set eth0 down"])
        cp.states.failed_nodes.add(node)
        for pod in scheduling.pods_on_node(cp.cluster.plan, cp.states, node):
            cp.kill_server(pod.name)   # the node's pods die with it
            if cp.prober is not None:
                cp.prober.remove(pod.name)   # and its kubelet: nobody probes them
            if not t.instant:
                cp.states.failed_pods.add(pod.name)

    def node_not_ready(self, node: str, t: Timing) -> None:
        states = self.cp.states
        states.not_ready_nodes.add(node)
        for pod in self.cp.cluster.plan.pods:
            if pod.node == node and pod.name not in states.removed_pods:
                states.not_ready_pods.add(pod.name)

    def evict(self, node: str, t: Timing) -> None:
        """The node's pods are deleted (a dead node cannot run their preStop or SIGTERM: they
        go at once, where upstream would leave them Terminating until the node returns) and
        the ReplicaSet recreates them on the other nodes."""
        cp = self.cp
        lost = [p for p in cp.cluster.plan.pods
                if p.node == node and p.name not in cp.states.removed_pods]
        for pod in lost:
            self.pod_deleted(pod.name, t)
        if not t.instant and lost:
            self.endpoints(node, t)
        made = [cp.add_pod(pod.deployment) for pod in lost]
        cp.rescheduled.setdefault(node, []).extend(made)
