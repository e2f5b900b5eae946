"""Cloud load balancers: the interface (base.py) and one module per kind: l4 (the VPC
controller's OpenFlow balancer), l7 (HAProxy, an HTTP proxy LB).

    CloudLoadBalancer.register(service, target) / deregister(service, target)
    CloudLoadBalancer.targets(service) -> list[TargetHealth]
    CloudLoadBalancer.wait_ready(expected, timeout); .target_kind: instance | ip
"""

from __future__ import annotations

from collections.abc import Callable

from testbed.cloud.lb.base import CloudLoadBalancer, Target, TargetHealth, TargetKind, target_kind
from testbed.cloud.lb.l4 import L4LoadBalancer
from testbed.cloud.lb.l7 import L7LoadBalancer
from testbed.cloud.vpc_controller import ControllerProcess

# kind -> how to make one for a running cluster: (its VPC controller, its target kind)
LoadBalancerFactory = Callable[[ControllerProcess, TargetKind], CloudLoadBalancer]

LOAD_BALANCERS: dict[str, LoadBalancerFactory] = {
    "l4": L4LoadBalancer,
    "l7": L7LoadBalancer,     # HAProxy in its own host: an HTTP proxy LB (ALB, GCLB)
}
DEFAULT = "l4"


def load_balancer_kind(kind: str) -> LoadBalancerFactory:
    """The factory of a load balancer kind; ValueError naming the known kinds if unknown."""
    try:
        return LOAD_BALANCERS[kind]
    except KeyError:
        raise ValueError(f"no cloud load balancer kind {kind!r} — one of "
                         f"{', '.join(sorted(LOAD_BALANCERS))}") from None


__all__ = ["CloudLoadBalancer", "DEFAULT", "LOAD_BALANCERS", "L4LoadBalancer",
           "L7LoadBalancer", "LoadBalancerFactory", "Target", "TargetHealth", "TargetKind",
           "load_balancer_kind", "target_kind"]
