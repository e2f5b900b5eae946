"""flannel's host-gw backend: other nodes' pod ranges routed via those nodes (no encapsulation).

It needs every node in one L2 subnet: the next hop of a remote pod range is the remote node.
"""

from __future__ import annotations

from testbed.kubernetes.cni.bridge import FlannelBridge
from testbed.plan.addresses import NodePlan, Plan


class HostGw(FlannelBridge):
    """flannel with `backend: host-gw`: plain routes, one per remote node's pod range."""

    name = "host-gw"

    def remote_ranges(self, plan: Plan, node: NodePlan, offloads_off: bool) -> list[str]:
        return [f"ip route add {other.pod_cidr} via {other.ip} dev eth0"
                for other in plan.nodes if other.name != node.name]
