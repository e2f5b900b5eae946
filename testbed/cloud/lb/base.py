"""The cloud load balancer seam: what the cluster and the experiments ask of the load balancer
in front of the cluster (register, deregister, health of targets), whatever implements it.

Adding a kind is adding a module with a `CloudLoadBalancer` subclass and an entry in
`testbed.cloud.lb.LOAD_BALANCERS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Literal

TargetKind = Literal["instance", "ip"]


def target_kind(mode: str) -> TargetKind:
    """The targets a cluster in this mode registers: nodes' NodePorts (nodeport mode: instance
    targets) or pods' addresses (container-native mode: ip targets)."""
    return "ip" if mode == "container-native" else "instance"


@dataclass(frozen=True)
class Target:
    """One backend a load balancer sends to: a node (instance target) or a pod (ip target).

    name: the node's or pod's name
    ip: where the LB sends (the node's VPC address or the pod's address)
    port: the NodePort (instance) or the pod's port (ip)
    """

    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class TargetHealth:
    """A registered target and what the LB's health checks say of it.

    target: the backend
    in_service: whether the LB sends new connections to it now
    state: the health checker's word for it (initial, healthy, unhealthy, unchecked)
    detail: everything the implementation reports of it, as `cnlb status` shows it
    """

    target: Target
    in_service: bool
    state: str
    detail: Mapping[str, object]


class CloudLoadBalancer(ABC):
    """The cloud load balancer in front of a cluster's LoadBalancer services (one listener per
    service, named after it), as AWS's NLB or a GCLB is to a real cluster.

    target_kind: instance (nodes' NodePorts) or ip (pods' addresses)
    """

    target_kind: TargetKind

    @abstractmethod
    def register(self, service: str, target: Target) -> None:
        """Add a target to a service's LB; it takes traffic once its health checks pass.
        service: the LoadBalancer service's name
        target: the backend to add (registering a known one again keeps its health)"""

    @abstractmethod
    def deregister(self, service: str, target: Target) -> None:
        """Take a target out of a service's LB: no new connections go to it. A target that is
        not registered (any more) is fine: the goal is "not there".
        service: the LoadBalancer service's name
        target: the backend to remove"""

    @abstractmethod
    def targets(self, service: str) -> list[TargetHealth]:
        """The service's registered targets with their health, in the LB's order.
        service: the LoadBalancer service's name"""

    @abstractmethod
    def wait_ready(self, expected: Mapping[str, Set[str]], timeout: float) -> None:
        """Block until every expected target is in service; raise EnvironmentProblem naming
        the missing ones if they are not within the timeout.
        expected: service name -> names of the targets that should take traffic
        timeout: seconds for all of them together"""
