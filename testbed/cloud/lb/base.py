"""The cloud load balancer seam: what the cluster and the experiments ask of the load balancer
in front of the cluster (register, deregister, health of targets), whatever implements it.

Adding a kind is adding a module with a `CloudLoadBalancer` subclass and an entry in
`testbed.cloud.lb.LOAD_BALANCERS`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Literal

from testbed.spec.model import Timing

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

    def register_after(self, service: str, target: Target, after_s: float) -> None:
        """Register a target after_s seconds from now (the cloud LB controller's lag: AWS's
        Load Balancer Controller or GCP's NEG controller noticing the new endpoint); returns at
        once. A later call for the same target replaces a pending one where the LB can (the
        L4 LB does); this default runs a timer thread.
        after_s: seconds from now (0: now)"""
        _later(after_s, self.register, service, target)

    def deregister_after(self, service: str, target: Target, after_s: float,
                         drain_s: float | None = None) -> None:
        """Deregister a target after_s seconds from now; returns at once. It then drains: no
        new connections, its established ones keep working for drain_s seconds and are cut
        after (where the LB drains; the L4 LB does).
        after_s: seconds from now (0: now)
        drain_s: the draining time (None: the LB's deregistration delay; 0: cut at once)"""
        _later(after_s, self.deregister, service, target)

    def register_timed(self, service: str, target: Target, timing: Timing) -> None:
        """Register as the cloud's LB controller does under this clock: after
        lb_registration_delay_s (at once when the clock is instant)."""
        self.register_after(service, target,
                            0.0 if timing.instant else timing.lb_registration_delay_s)

    def deregister_timed(self, service: str, target: Target, timing: Timing) -> None:
        """Deregister as the cloud's LB controller does under this clock: after
        lb_deregistration_lag_s (at once when instant), then lb_deregistration_delay_s of
        draining (the LB's own attribute, the same under an instant clock)."""
        self.deregister_after(service, target,
                              0.0 if timing.instant else timing.lb_deregistration_lag_s,
                              timing.lb_deregistration_delay_s)

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


def _later(after_s: float, action: Callable[[str, Target], None], service: str,
           target: Target) -> None:
    """action(service, target) now, or after_s seconds from now in a daemon timer thread."""
    if after_s <= 0:
        action(service, target)
        return
    timer = threading.Timer(after_s, action, (service, target))
    timer.daemon = True
    timer.start()
