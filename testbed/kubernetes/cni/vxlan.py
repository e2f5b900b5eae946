"""flannel's vxlan backend: other nodes' pod ranges through a kernel VXLAN device.

`flannel.<VNI>` carries pod traffic between nodes; remote ranges are routed onlink via the
remote VTEP's address, with static neighbour and FDB entries, as flannel's vxlan backend
writes them. The plan's MTU (1450) leaves room for VXLAN's 50 bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from testbed.kubernetes.cni.base import OFFLOADS_OFF
from testbed.kubernetes.cni.bridge import FlannelBridge
from testbed.plan.addresses import NodePlan, Plan, PodPlan


class Vxlan(FlannelBridge):
    """flannel with `backend: vxlan`: an overlay the VPC never sees into."""

    name = "vxlan"

    def setup_node(self, plan: Plan, node: NodePlan, pods: Sequence[PodPlan],
                   offloads_off: bool) -> list[str]:
        return self.bridge_node(plan, node, pods) + self.remote_ranges(plan, node, offloads_off)

    def remote_ranges(self, plan: Plan, node: NodePlan, offloads_off: bool) -> list[str]:
        """Other nodes' pod ranges, as this backend reaches them."""
        dev = f"flannel.{plan.vxlan_vni}"
        pod_net = ipaddress.IPv4Network(node.pod_cidr)
        cmds = [
            f"ip link add {dev} type vxlan id {plan.vxlan_vni} local {plan.node(node.name).ip} "
            f"dev eth0 dstport {plan.vxlan_port} nolearning",
            f"ip link set {dev} address {node.vtep_mac} mtu {plan.mtu} up",
            f"ip addr add {pod_net.network_address}/32 dev {dev}",
        ]
        if offloads_off:
            cmds.append(f"ethtool -K {dev} {OFFLOADS_OFF} >/dev/null 2>&1 || true")
        others = [o for o in plan.nodes if o.name != node.name]
        remote = {o.name: ipaddress.IPv4Network(o.pod_cidr).network_address for o in others}
        # grouped by tool, so each group runs as one `ip -batch` / `bridge -batch`
        cmds += [f"ip neigh replace {remote[o.name]} lladdr {o.vtep_mac} dev {dev} nud permanent"
                 for o in others]
        cmds += [f"bridge fdb append {o.vtep_mac} dev {dev} dst {o.ip}" for o in others]
        cmds += [f"ip route add {o.pod_cidr} via {remote[o.name]} dev {dev} onlink"
                 for o in others]
        return cmds
