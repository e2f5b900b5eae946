"""aws-vpc-cni's model: pods get VPC addresses the fabric routes to their node.

A pod has a VPC address as a /32 and its default route via 169.254.1.1 (a static neighbour:
the node-side veth); the node has a /32 route per pod on the pod's veth. The VPC controller
knows every pod address and routes it to the node.
"""

from __future__ import annotations

from collections.abc import Sequence

from testbed.kubernetes.cni.base import CniPlugin
from testbed.plan.addresses import NodePlan, Plan, PodPlan


class VpcNative(CniPlugin):
    """AWS VPC CNI style: no overlay, no bridge; the VPC knows the pods."""

    name = "vpc-native"

    def setup_node(self, plan: Plan, node: NodePlan, pods: Sequence[PodPlan],
                   offloads_off: bool) -> list[str]:
        cmds: list[str] = []
        for pod in pods:
            cmds += self.attach_pod(plan, pod)
        return cmds

    def setup_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        return self.pod_eth0(plan, pod) + [
            f"ip route add {pod.gateway} dev eth0 scope link",
            f"ip route add default via {pod.gateway} dev eth0",
            f"ip neigh replace {pod.gateway} lladdr {pod.veth_mac} dev eth0 nud permanent"]

    def attach_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        return [f"ip link set {pod.veth} up",
                f"ip route add {pod.ip}/32 dev {pod.veth} scope link",
                f"ip neigh replace {pod.ip} lladdr {pod.mac} dev {pod.veth} nud permanent"]

    def detach_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        return [f"ip route del {pod.ip}/32 dev {pod.veth} 2>/dev/null || true"]
