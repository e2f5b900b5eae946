"""Calico-style BGP routing: pods on routed /32s, each node's blocks announced by BGP, no
encapsulation.

The pod side is Calico's (aws-vpc-cni copied it): the pod's /32 on eth0, its default route via
169.254.1.1, answered by the node's end of the veth; the node routes each pod's /32 on its veth.
Addresses come from Calico-style blocks affine to the node (testbed.plan.calico_ipam); the node's
BIRD (testbed.kubernetes.cni.bird renders its config, testbed.emulation.bgp runs it) puts a
blackhole route per block in the node's table and announces the blocks to the other nodes and
to the fabric, which routes them. No VXLAN device, no bridge: a packet to a pod on another node
leaves with its own addresses, TTL one less per router.
"""

from __future__ import annotations

from collections.abc import Sequence

from testbed.kubernetes.cni.vpcnative import VpcNative
from testbed.plan.addresses import NodePlan, Plan, PodPlan

NAT_COMMENT = '-m comment --comment "cali:natOutgoing"'


class CalicoBgp(VpcNative):
    """Calico with BGP networking (no IP-in-IP, no VXLAN): routes only."""

    name = "bgp"

    def setup_node(self, plan: Plan, node: NodePlan, pods: Sequence[PodPlan],
                   offloads_off: bool) -> list[str]:
        cmds = super().setup_node(plan, node, pods, offloads_off)
        if plan.ip_masq:
            cmds.append("iptables-restore --noflush <<'CALICO'\n" + nat_outgoing(plan.pod_cidr)
                        + "CALICO")
        return cmds


def nat_outgoing(pool: str) -> str:
    """The IP pool's natOutgoing (Calico's default for its default pool) as an iptables-restore
    input: a pod's connection to an address outside the pool takes the node's address (felix
    matches the pool with ipsets; one pool needs none). Connections that come in (a client to
    a pod) are answered from the pod's address: NAT only sees a connection's first packet."""
    return "\n".join([
        "*nat",
        ":cali-nat-outgoing - [0:0]",
        f"-A POSTROUTING {NAT_COMMENT} -j cali-nat-outgoing",
        f"-A cali-nat-outgoing -s {pool} ! -d {pool} {NAT_COMMENT} -j MASQUERADE --random-fully",
        "COMMIT",
        "",
    ])
