"""The emulated cluster's control plane: what the scheduler, the EndpointSlice controller, the
kubelets (with their readiness probers), the node lifecycle controller and the cloud
controller manager do. Pods are added, removed and failed, nodes fail, their servers run, and
endpoints follow everywhere: kube-proxy on every node and, in container-native mode, the VPC's
pod routes and the load balancer's ip targets.

The decisions are pure (testbed.kubernetes.pods: who is where, the endpoint conditions;
testbed.kubernetes.lifecycle: which step comes when, from the topology's `kubernetes:` timing).
This module applies the steps on the running cluster: at once and in order when the timing is
instant, else on the control plane's clock (testbed.emulation.scheduler), every step written
with its time to the state directory's timeline.jsonl.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from mininet.node import Node

from testbed.cloud.lb import CloudLoadBalancer, Target
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.emulation.gates import ReadinessGates
from testbed.emulation.hosts import Hosts
from testbed.emulation.journal import Journal, StateDir
from testbed.emulation.launcher import LaunchedServer
from testbed.emulation.podservers import Launcher, Launchers, PodServer, server_flags
from testbed.emulation.scheduler import Scheduler
from testbed.emulation.steps import Steps
from testbed.errors import EnvironmentProblem
from testbed.kubernetes import lifecycle
from testbed.kubernetes import pods as scheduling
from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.dataplane.model import EndpointConditions
from testbed.kubernetes.kubelet import ReadinessProber
from testbed.kubernetes.lifecycle import Step
from testbed.plan.addresses import Plan, PodPlan, allocate_pod, with_pod
from testbed.spec.model import Timing, Topology

TIMELINE = "timeline.jsonl"     # in the state directory: every step with its time


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
    bgp: Any          # cni.routing bgp: emulation.bgp.BgpRouting (blocks_changed), else None
    progress: Callable[[str], None]

    def host(self, name: str) -> Node: ...


class ControlPlane:
    """The Kubernetes control plane of an emulated cluster (and the cloud's half of it).

    cluster: the Cluster whose hosts, VPC controller, load balancer and kube-proxy it drives
    """

    def __init__(self, cluster: ClusterParts):
        self.cluster = cluster
        self.states = scheduling.PodStates()
        self.pod_servers: dict[str, PodServer] = {}   # pod -> its HTTP server
        self.launchers = Launchers(cluster)   # each started on first use
        # Steps and requests take turns: the clock's thread, the prober's reports and the
        # callers (a notebook, the detached owner, a failover run) all change the same state.
        self.lock = threading.RLock()
        self.clock: Scheduler | None = None       # made when the cluster is up (start_clock)
        self.prober: ReadinessProber | None = None   # realistic timing only
        # The EndpointSlices as last published (realistic timing: the EndpointSlice controller's
        # steps publish them); None: always as the states say now (instant timing).
        self.published: dict[str, EndpointConditions] | None = None
        self.rescheduled: dict[str, list[str]] = {}   # failed node -> the pods made for its own
        self.steps = Steps(self)
        self.gates = ReadinessGates(self)   # pods whose Ready waits for the cloud LB

    @property
    def timing(self) -> Timing:
        """The topology's `kubernetes:` timing."""
        return self.cluster.topo.kubernetes

    # -- what is running -----------------------------------------------------------------------
    def live_pods(self) -> set[str]:
        """Pods neither failed nor removed nor terminating."""
        return scheduling.live_pods(self.cluster.plan, self.states)

    def endpoint_conditions(self) -> dict[str, EndpointConditions]:
        """The endpoints kube-proxy programs: pod -> its conditions, as last published."""
        with self.lock:
            if self.published is not None:
                return dict(self.published)
            return scheduling.endpoint_conditions(self.cluster.plan, self.states,
                                                  self.timing.instant)

    def timeline(self) -> list[dict[str, Any]]:
        """Every step applied so far, with its time (as timeline.jsonl has them)."""
        return list(self.clock.ran) if self.clock else []

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
        t = self.timing
        lag = 0.0 if t.instant else (t.readiness_initial_delay_s + t.readiness_period_s
                                     + t.endpoint_updates_batch_period_s
                                     + t.lb_registration_delay_s)
        timeout = timeout or 30 + lag + 3 * hc.interval_s * (hc.healthy_threshold + 1)
        with self.lock:
            expected = {lb.service: self.expected_in_service(lb.service)
                        for lb in self.cluster.plan.load_balancers}
        self.cluster.lb.wait_ready(expected, timeout)

    # -- pod servers -----------------------------------------------------------------------------
    def start_pod_servers(self, pods: Sequence[PodPlan]) -> None:
        """Start each pod's HTTP server inside its namespace and wait until every one listens
        (one launcher forks them all: see testbed.emulation.podservers)."""
        hosts = self.cluster.hosts
        servers: list[PodServer] = self._launcher().launch(
            [(pod.name, server_flags(pod, hosts.netns_file(pod.name),
                                     self.cluster.plan.services)) for pod in pods])
        for server in servers:
            self.pod_servers[server.pod] = server
        deadline = time.monotonic() + 30 + len(servers) * 0.05
        for server in servers:
            if not server.wait_ready(deadline - time.monotonic()):
                raise EnvironmentProblem(self._not_started(server))

    def _launcher(self) -> Launcher:
        return self.launchers.pods()

    def launch_node_servers(self, module: str, args_by_node: Mapping[str, Sequence[str]]
                            ) -> dict[str, LaunchedServer]:
        """Start `python -m module ARGS...` in each node's namespace (see
        Launchers.launch_node_servers); node -> its server, stopped by teardown."""
        return self.launchers.launch_node_servers(module, args_by_node)

    def _not_started(self, server: PodServer) -> str:
        code = server.poll()
        if code is None:
            return f"pod {server.pod}'s server did not say it was ready in time"
        launcher = self.launchers.pod_launcher
        said = launcher.log_line(server.pod) if launcher else ""
        return f"pod {server.pod}'s server did not start (exit {code})" + \
            (f": {said}" if said else "")

    def kill_server(self, name: str) -> None:
        """SIGKILL the pod's server (if it runs) and forget it. name: the pod's name"""
        proc = self.pod_servers.pop(name, None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


    # -- the clock ---------------------------------------------------------------------------
    def start_clock(self) -> None:
        """Once the cluster is up: the scheduler that applies steps at their time and, with
        realistic timing, the kubelets' readiness prober on every pod (ready to begin with: the
        cluster starts settled)."""
        self.scheduler()
        if self.timing.instant or self.prober is not None:
            return
        with self.lock:
            self.published = scheduling.endpoint_conditions(self.cluster.plan, self.states,
                                                            instant=False)
            self.prober = ReadinessProber(self.timing, self.gates.reported)
            for pod in self.cluster.plan.pods:
                if pod.name in self.live_pods() and pod.node not in self.states.failed_nodes:
                    self._probe(pod, ready=True, started=True)

    def stop_clock(self) -> None:
        """Stop the prober and the scheduler; steps not yet due are dropped (teardown,
        Ctrl-C). Call without holding the lock: a step in progress is waited for."""
        if self.prober is not None:
            self.prober.stop()
        if self.clock is not None and (dropped := self.clock.stop()):
            self.clock.log({"action": "clock-stopped", "dropped": dropped})

    def scheduler(self) -> Scheduler:
        """The control plane's clock (made on first use; its log is the state dir's timeline)."""
        if self.clock is None:
            self.clock = Scheduler(self.cluster.state.file(TIMELINE), self.lock)
        return self.clock

    def _probe(self, pod: PodPlan, ready: bool, started: bool) -> None:
        assert self.prober is not None
        self.prober.add(pod.name, self.cluster.hosts.netns_file(pod.node), pod.ip, pod.port,
                        ready=ready, started=started)

    def _timing(self, instant: bool | None) -> Timing:
        """The cluster's timing, or instant when the caller asks for it (--instant)."""
        if instant and not self.timing.instant:
            return dataclasses.replace(self.timing, mode="instant")
        return self.timing

    def _run_steps(self, event: str, target: str, steps: list[Step], t: Timing) -> list[Step]:
        """Apply an event's steps: in order at once (instant), else each at its time on the
        clock. The event and its plan are written to the timeline first."""
        clock = self.scheduler()
        clock.log({"event": event, "target": target, "timing": t.mode,
                   "plan": [s.to_dict() for s in steps]})
        for step in steps:
            label = {"event": event, **step.to_dict()}
            if t.instant:
                began = time.time()
                done = self._apply(step, t)
                skipped = {"skipped": True} if done is False else {}
                clock.log({**label, **skipped, "took_s": round(time.time() - began, 4)}, began)
            else:
                clock.at(step.at_s, label, functools.partial(self._apply, step, t))
        return steps

    def _apply(self, step: Step, t: Timing) -> bool | None:
        """Do one step (the lock is held: by the clock's thread, or by the caller); False
        when there was nothing left to do (the pod was gone already, ready again, ...)."""
        return getattr(self.steps, step.action.replace("-", "_"))(step.target, t)

    # -- pod lifecycle ---------------------------------------------------------------------------
    def add_pod(self, deployment: str, node: str | None = None) -> str:
        """Schedule a new pod of a deployment (on the node with fewest pods unless given):
        namespace, veth, address, server; then endpoints everywhere (kube-proxy on every node,
        and in container-native mode the VPC route and the LB's ip target). With realistic
        timing the endpoint is published not ready and turns ready when the readiness probe
        first passes; only then is the LB target registered."""
        with self.lock:
            c, plan = self.cluster, self.cluster.plan
            port = scheduling.deployment_port(c.topo, deployment)
            node = scheduling.place_pod(plan, self.states, node, c.topo.vpc.max_pods_per_node)
            pod = allocate_pod(plan, deployment, node, port)
            c.hosts.add_host(pod.name)
            c.hosts.link_pod(pod)
            with_pod(plan, pod)
            c.hosts.run_script(pod.name, plugin_for(plan).setup_pod(plan, pod))
            c.hosts.run_script(node, plugin_for(plan).attach_pod(plan, pod))
            if c.bgp is not None:   # a fresh Calico block is announced by the node's BIRD
                c.bgp.blocks_changed(node)
            self.start_pod_servers([pod])
            if self.prober is not None:   # realistic: not ready until its probe passes
                self.states.not_ready_pods.add(pod.name)
                self._probe(pod, ready=False, started=False)
                if plan.overlay == "vpc-native":
                    c.controller.add_pod_route(pod.name, pod.ip, node)
                self._run_steps("add-pod", pod.name, [
                    Step(self.timing.endpoint_updates_batch_period_s, "endpoints", pod.name,
                         "endpointslice-controller")], self.timing)
                return pod.name
            self.endpoints_changed()
            if plan.overlay == "vpc-native":
                c.controller.add_pod_route(pod.name, pod.ip, node)
            if plan.mode == "container-native":
                self.register(pod.name)
            return pod.name

    def remove_pod(self, name: str, deregister: bool = True,
                   instant: bool | None = None) -> list[Step]:
        """Delete a pod the way Kubernetes does. Instant: endpoints go first (kube-proxy
        everywhere; the LB target and VPC route in container-native mode), then the pod and its
        namespace. Realistic: the pod turns terminating (its endpoint ready=false, serving,
        terminating), preStop, SIGTERM, SIGKILL at the grace period's end, then it is gone; the
        LB target is deregistered after the LB controller's lag. Returns the steps.
        deregister: False when nobody tells the cloud LB (a dead node): it finds out by health
            checks, as it does for the node itself in nodeport mode
        instant: True: at once whatever the topology's timing says"""
        with self.lock:
            t = self._timing(instant)
            plan = self.cluster.plan
            scheduling.find_pod(plan, self.states, name)
            if name in self.states.terminating_pods and not t.instant:
                raise ValueError(f"pod {name} is already terminating")
            steps = lifecycle.delete_pod(t, name, plan.mode == "container-native" and deregister)
            return self._run_steps("remove-pod", name, steps, t)

    def fail_pod(self, name: str, instant: bool | None = None) -> list[Step]:
        """A pod's server crashes. Instant: nothing else changes (the LB's health checks notice
        it in container-native mode; kube-proxy keeps sending to it until the next change
        syncs). Realistic: the kubelet notices at its next relist and the pod turns not ready:
        its endpoint and (container-native) its LB target follow. Returns the steps."""
        with self.lock:
            t = self._timing(instant)
            scheduling.find_pod(self.cluster.plan, self.states, name)
            steps = lifecycle.crash_pod(t, name, self.cluster.plan.mode == "container-native")
            return self._run_steps("fail-pod", name, steps, t)

    def fail_node(self, name: str, instant: bool | None = None) -> list[str]:
        """A node dies: its link goes down and its pods with it. Instant: the pods are
        rescheduled on the remaining nodes at once (Kubernetes evicts and recreates them);
        returns the new pods. Realistic: the node turns NotReady after the node monitor grace
        period (its pods' endpoints not ready), its pods are evicted and recreated after the
        not-ready toleration; returns [] (self.rescheduled[name] has them once made)."""
        with self.lock:
            t = self._timing(instant)
            plan = self.cluster.plan
            scheduling.check_node_can_fail(plan, self.states, name)
            pods = [p.name for p in scheduling.pods_on_node(plan, self.states, name)]
            steps = lifecycle.fail_node(t, name, pods, plan.mode == "container-native")
            self._run_steps("fail-node", name, steps, t)
            return list(self.rescheduled.get(name, []))

    def _readiness_reported(self, pod: str, ready: bool) -> None:
        """The prober's verdict on a pod changed (its thread)."""
        with self.lock:
            if pod in self.states.removed_pods or self.clock is None:
                return
            steps = lifecycle.readiness_changed(self.timing, pod, ready,
                                                self.cluster.plan.mode == "container-native")
            self._run_steps("readiness", pod, steps, self.timing)

    # -- effects shared by the steps -----------------------------------------------------------
    def register(self, name: str) -> None:
        """Register the pod's ip target with the LBs of the services selecting it."""
        pod = self.cluster.plan.pod(name)
        for service in scheduling.lbs_selecting(self.cluster.plan, pod.deployment):
            self.cluster.lb.register(service, Target(pod.name, pod.ip, pod.port))

    def deregister(self, name: str) -> None:
        """Deregister the pod's ip target from the LBs of the services selecting it."""
        pod = self.cluster.plan.pod(name)
        for service in scheduling.lbs_selecting(self.cluster.plan, pod.deployment):
            self.cluster.lb.deregister(service, Target(pod.name, pod.ip, pod.port))

    def endpoints_changed(self) -> None:
        """kube-proxy everywhere: at once (instant), or as its min sync period allows."""
        kube_proxy = self.cluster.kube_proxy
        if kube_proxy is None:
            return
        request_sync = getattr(kube_proxy, "request_sync", None)
        if request_sync is not None and not self.timing.instant:
            request_sync()
        else:
            kube_proxy.sync_all()
