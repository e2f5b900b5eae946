"""Pods as the Kubernetes control plane sees them (pure): which pods are alive, on which node
a new pod goes, what a node's failure takes with it, which targets a healthy cloud load
balancer serves from, and the endpoint conditions the EndpointSlice controller publishes
(ready, serving, terminating). Making it so (namespaces, servers, routes) is the emulation's
part; when each change happens is testbed.kubernetes.lifecycle's.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

from testbed.kubernetes.dataplane.model import EndpointConditions
from testbed.plan.addresses import Plan, PodPlan
from testbed.spec.model import Topology


@dataclass
class PodStates:
    """What happened to the plan's pods and nodes since the cluster was built.

    failed_pods: pods whose server crashed (still endpoints until they are removed, or until
        the kubelet reports them not ready)
    removed_pods: pods deleted (no endpoints any more, their namespace gone)
    failed_nodes: nodes that died (their pods are rescheduled on the others)
    terminating_pods: pods deleted but not gone yet (their grace period: preStop, SIGTERM)
    not_ready_pods: pods whose Ready condition is false (readiness probe, crashed container,
        a NotReady node)
    not_ready_nodes: failed nodes the node lifecycle controller has marked NotReady
    """

    failed_pods: set[str] = field(default_factory=set)
    removed_pods: set[str] = field(default_factory=set)
    failed_nodes: set[str] = field(default_factory=set)
    terminating_pods: set[str] = field(default_factory=set)
    not_ready_pods: set[str] = field(default_factory=set)
    not_ready_nodes: set[str] = field(default_factory=set)


def live_pods(plan: Plan, states: PodStates) -> set[str]:
    """Pods neither failed nor removed nor terminating: running, and not being deleted."""
    return ({p.name for p in plan.pods} - states.failed_pods - states.removed_pods
            - states.terminating_pods)


def endpoint_conditions(plan: Plan, states: PodStates, instant: bool
                        ) -> dict[str, EndpointConditions]:
    """The conditions of every pod that has an endpoint, as the EndpointSlice controller
    publishes them (upstream: ready = pod Ready and not terminating; serving = pod Ready;
    terminating = deletionTimestamp set).

    instant: the testbed's picture without a clock: a failed or deleted pod has no endpoint at
        all. Otherwise a crashed pod keeps its endpoint (ready until the kubelet says otherwise)
        and a terminating one stays, serving while its readiness holds."""
    out = {}
    for p in plan.pods:
        if p.name in states.removed_pods:
            continue
        if instant:
            if p.name not in states.failed_pods and p.name not in states.terminating_pods:
                out[p.name] = EndpointConditions(True, True, False)
            continue
        ready = p.name not in states.not_ready_pods
        terminating = p.name in states.terminating_pods
        out[p.name] = EndpointConditions(ready and not terminating, ready, terminating)
    return out


def find_pod(plan: Plan, states: PodStates, name: str) -> PodPlan:
    """A pod that has not been removed; KeyError if there is none of that name."""
    pod = next((p for p in plan.pods if p.name == name), None)
    if pod is None or name in states.removed_pods:
        raise KeyError(f"no pod named {name}")
    return pod


def deployment_port(topo: Topology, deployment: str) -> int:
    """The port a new pod of the deployment serves on (its pod template's containerPort: a
    deployment scaled to 0 replicas still has one); KeyError if there is no such deployment."""
    found = next((d for d in topo.deployments if d.name == deployment), None)
    if found is None:
        raise KeyError(f"no deployment named {deployment}")
    return found.container_port


def place_pod(plan: Plan, states: PodStates, node: str | None,
              max_pods_per_node: int) -> str:
    """The node a new pod goes to: the healthy node with the fewest live pods, unless given.
    node: the node asked for (None: the scheduler picks); KeyError if it is not healthy
    max_pods_per_node: ENI address slots per node (container-native mode); ValueError if full"""
    healthy = [n.name for n in plan.nodes if n.name not in states.failed_nodes]
    live = live_pods(plan, states)
    if node is None:
        node = min(healthy, key=lambda n: _pods_on(plan, n, live))
    elif node not in healthy:
        raise KeyError(f"no healthy node named {node}")
    if plan.mode == "container-native" and _pods_on(plan, node, live) >= max_pods_per_node:
        raise ValueError(f"node {node} has no free ENI address slot (maxPodsPerNode="
                         f"{max_pods_per_node})")
    return node


def _pods_on(plan: Plan, node: str, live: Set[str]) -> int:
    return sum(1 for p in plan.pods if p.node == node and p.name in live)


def check_node_can_fail(plan: Plan, states: PodStates, name: str) -> None:
    """KeyError if the node is unknown or already failed; ValueError if it is the last one."""
    if name not in {n.name for n in plan.nodes} or name in states.failed_nodes:
        raise KeyError(f"no healthy node named {name}")
    if len(states.failed_nodes) + 1 >= len(plan.nodes):
        raise ValueError("cannot fail the last healthy node")


def pods_on_node(plan: Plan, states: PodStates, node: str) -> list[PodPlan]:
    """The live pods a node runs (what its failure takes with it)."""
    live = live_pods(plan, states)
    return [p for p in plan.pods if p.node == node and p.name in live]


def expected_in_service(plan: Plan, states: PodStates, service: str) -> set[str]:
    """Backends a healthy LB serves from: every pod (ip targets), every node (instance
    targets, Cluster), or only nodes with a local endpoint (instance targets, Local)."""
    svc = next(s for s in plan.services if s.name == service)
    gone = (states.failed_pods | states.removed_pods | states.terminating_pods
            | states.not_ready_pods)
    live = [p for p in plan.pods if p.name in svc.endpoints and p.name not in gone]
    if plan.mode == "container-native":
        return {p.name for p in live}
    if svc.external_traffic_policy == "Local":
        return {p.node for p in live} - states.failed_nodes
    return {n.name for n in plan.nodes} - states.failed_nodes


def lbs_selecting(plan: Plan, deployment: str) -> list[str]:
    """The LoadBalancer services (their LBs are named after them) whose pods are this
    deployment's."""
    return [lb.service for lb in plan.load_balancers
            if next(s for s in plan.services if s.name == lb.service).selector == deployment]
