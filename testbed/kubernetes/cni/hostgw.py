"""flannel's host-gw backend: other nodes' pod ranges routed via those nodes (no encapsulation).

It needs every node in one L2 subnet: the next hop of a remote pod range is the remote node.
"""

from __future__ import annotations

from collections.abc import Sequence

from testbed.kubernetes.cni.bridge import FlannelBridge
from testbed.plan.addresses import NodePlan, Plan, PodPlan


class HostGw(FlannelBridge):
    """flannel with `backend: host-gw`: plain routes, one per remote node's pod range."""

    name = "host-gw"

    def setup_node(self, plan: Plan, node: NodePlan, pods: Sequence[PodPlan],
                   offloads_off: bool) -> list[str]:
        return self.bridge_node(plan, node, pods) + self.remote_ranges(plan, node, offloads_off)

    def remote_ranges(self, plan: Plan, node: NodePlan, offloads_off: bool) -> list[str]:
        """Other nodes' pod ranges, as this backend reaches them."""
        return [f"ip route add {other.pod_cidr} via {other.ip} dev eth0"
                for other in plan.nodes if other.name != node.name]
