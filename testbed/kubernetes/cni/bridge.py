"""flannel's node bridge: pods on the node's `cni0` in the node's pod range (vxlan and host-gw).

Shared by the two flannel backends; what differs between them is how other nodes' pod
ranges are reached (testbed.kubernetes.cni.vxlan, testbed.kubernetes.cni.hostgw).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from testbed.kubernetes.cni.base import CniPlugin, sysctl
from testbed.plan.addresses import NodePlan, Plan, PodPlan


class FlannelBridge(CniPlugin):
    """The part of flannel every backend shares: cni0, its ports, the pods' addresses.
    A backend's setup_node is bridge_node plus how it reaches other nodes' pod ranges."""

    def bridge_node(self, plan: Plan, node: NodePlan, pods: Sequence[PodPlan]) -> list[str]:
        """The node's cni0 bridge with its pods' veths on it."""
        pod_net = ipaddress.IPv4Network(node.pod_cidr)
        cmds = [
            "ip link add cni0 type bridge",
            f"ip link set cni0 address {node.vtep_mac.replace('02:cb:06', '02:cb:07')} "
            f"mtu {plan.mtu}",
            f"ip addr add {node.cni0_ip}/{pod_net.prefixlen} dev cni0",
            "ip link set cni0 up",
            # br_netfilter: bridged pod-to-pod traffic must see kube-proxy's rules (hairpin,
            # ClusterIP)
            f"[ -e /proc/sys/net/bridge ] && {sysctl('net.bridge.bridge-nf-call-iptables', 1)} "
            "|| true",
        ]
        attach = [line for pod in pods for line in self.attach_pod(plan, pod)]
        # grouped by tool, so each group runs as one `ip -batch` / `bridge -batch`
        return cmds + [c for c in attach if c.startswith("ip ")] + \
            [c for c in attach if not c.startswith("ip ")] + \
            (["iptables-restore --noflush <<'FLANNEL'\n" + masq_rules(plan.pod_cidr, node.pod_cidr)
              + "FLANNEL"] if plan.ip_masq else [])

    def setup_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        return self.pod_eth0(plan, pod) + [f"ip route add default via {pod.gateway} dev eth0"]

    def attach_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        # hairpin: a pod reaching its own Service may be DNATed back to itself, out the port the
        # packet came in on (the bridge CNI's hairpinMode, which flannel turns on)
        return [f"ip link set {pod.veth} mtu {plan.mtu} master cni0 up",
                f"bridge link set dev {pod.veth} hairpin on"]


MASQ = '-m comment --comment "flanneld masq"'


def masq_rules(cluster_cidr: str, pod_cidr: str) -> str:
    """flanneld's --ip-masq rules for one node, as an iptables-restore input (flannel's
    trafficmngr masqRules): pods' traffic leaving the cluster's pod range takes the node's
    address, so the VPC, which does not know the overlay, can answer it; traffic kube-proxy
    marked for masquerading (0x4000) is left to kube-proxy; pod-to-pod traffic and traffic
    arriving for this node's pods (a NodePort with externalTrafficPolicy Local) keep their
    addresses."""
    return "\n".join([
        "*nat",
        ":FLANNEL-POSTRTG - [0:0]",
        f"-A POSTROUTING {MASQ} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {MASQ} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {pod_cidr} -d {cluster_cidr} {MASQ} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {cluster_cidr} -d {pod_cidr} {MASQ} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {cluster_cidr} -d {pod_cidr} {MASQ} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {cluster_cidr} ! -d 224.0.0.0/4 {MASQ} "
        "-j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {cluster_cidr} -d {cluster_cidr} {MASQ} "
        "-j MASQUERADE --random-fully",
        "COMMIT",
        "",
    ])
