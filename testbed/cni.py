"""The CNI: what each node and pod namespace must be told so pods get addresses and routes.

Pure renderers returning shell command lines, run later as one script per namespace.

classic (nodeport mode, flannel-style): pods sit on the node's `cni0` bridge in the node's pod
  range (10.244.N.0/24); a kernel VXLAN device `flannel.<VNI>` carries pod traffic between nodes
  (remote ranges routed onlink via the remote VTEP's address, with static neighbour and FDB
  entries, as flannel's vxlan backend writes them). MTU 1450 leaves room for VXLAN's 50 bytes.
  With overlay host-gw, remote ranges are routed via the remote node's address instead.
container-native (aws-vpc-cni-style): a pod has a VPC address as a /32, its default route via
  169.254.1.1 (a static neighbour: the node-side veth), and the node a /32 route per pod on the
  veth. The VPC controller knows every pod address and routes it to the node.
"""

from __future__ import annotations

import ipaddress

from .plan import Attachment, NodePlan, Plan, PodPlan

# Offloads the OVS userspace datapath cannot complete: without this, TCP segments leave veths
# with partial checksums and are dropped (DESIGN: "TCP only flows after ethtool -K ...").
OFFLOADS_OFF = "tx off tso off gso off"


def sysctl(key: str, value) -> str:
    return f"echo {value} > /proc/sys/{key.replace('.', '/')}"


def shaping(dev: str, bw=None, delay_ms=0.0, loss_pct=0.0) -> list[str]:
    """tc commands shaping a device's egress: htb for bandwidth, netem under it for delay/loss.
    An explicit quantum keeps htb from warning about (and mis-sizing) fast classes."""
    cmds, parent = [], "root"
    if bw:
        cmds += [f"tc qdisc add dev {dev} root handle 5: htb default 1",
                 f"tc class add dev {dev} parent 5: classid 5:1 htb rate {bw:g}mbit burst 15k quantum 1514"]
        parent = "parent 5:1"
    if delay_ms or loss_pct:
        netem = f"tc qdisc add dev {dev} {parent} handle 10: netem"
        if delay_ms:
            netem += f" delay {delay_ms:g}ms"
        if loss_pct:
            netem += f" loss {loss_pct:g}%"
        cmds.append(netem)
    return cmds


def host_fabric(att: Attachment, offloads_off: bool, links=None) -> list[str]:
    """A node's, client's or LB host's leg on the fabric: address, default gateway, shaping."""
    cmds = [
        "ip link set lo up",
        f"ip addr add {att.ip}/{att.prefixlen} dev eth0",
        "ip link set eth0 up",
        f"ip route add default via {att.gateway} dev eth0",
    ]
    if offloads_off:
        cmds.append(f"ethtool -K eth0 {OFFLOADS_OFF} >/dev/null 2>&1 || true")
    if links is not None:
        cmds += shaping("eth0", links.bw, links.delay_ms, links.loss_pct)
    return cmds


def node_setup(plan: Plan, node: NodePlan, offloads_off: bool, links=None) -> list[str]:
    """Everything a node needs: forwarding, its fabric leg, and its CNI half."""
    cmds = [
        sysctl("net.ipv4.ip_forward", 1),
        # Pod replies and VPC-routed pod traffic arrive on other interfaces than the
        # route back would use; strict reverse-path filtering would drop them.
        sysctl("net.ipv4.conf.all.rp_filter", 0),
        sysctl("net.ipv4.conf.default.rp_filter", 0),
        # No route_localnet: kube-proxy here serves no NodePort on 127.0.0.1 (upstream's
        # --iptables-localhost-nodeports=false), and route_localnet=1 without upstream's
        # KUBE-FIREWALL localnet DROP rule lets others reach the node's 127.0.0.1 services
        # (CVE-2020-8558). tests/unit/test_node_hardening.py holds the pair together.
    ]
    cmds += host_fabric(plan.attachment(node.name), offloads_off, links)
    pods = plan.pods_on(node.name)
    if plan.mode == "nodeport":
        cmds += _classic_node(plan, node, pods, offloads_off)
    else:
        cmds += _native_node(node, pods)
    return cmds


def _classic_node(plan: Plan, node: NodePlan, pods, offloads_off: bool) -> list[str]:
    pod_net = ipaddress.IPv4Network(node.pod_cidr)
    cmds = [
        f"ip link add cni0 type bridge",
        f"ip link set cni0 address {node.vtep_mac.replace('02:cb:06', '02:cb:07')} mtu {plan.mtu}",
        f"ip addr add {node.cni0_ip}/{pod_net.prefixlen} dev cni0",
        "ip link set cni0 up",
        # br_netfilter: bridged pod-to-pod traffic must see kube-proxy's rules (hairpin, ClusterIP)
        f"[ -e /proc/sys/net/bridge ] && {sysctl('net.bridge.bridge-nf-call-iptables', 1)} || true",
    ]
    for pod in pods:
        cmds += _bridge_port(plan, pod)
    if plan.overlay == "vxlan":
        dev = f"flannel.{plan.vxlan_vni}"
        cmds += [
            f"ip link add {dev} type vxlan id {plan.vxlan_vni} local {plan.node(node.name).ip} dev eth0 "
            f"dstport {plan.vxlan_port} nolearning",
            f"ip link set {dev} address {node.vtep_mac} mtu {plan.mtu} up",
            f"ip addr add {pod_net.network_address}/32 dev {dev}",
        ]
        if offloads_off:
            cmds.append(f"ethtool -K {dev} {OFFLOADS_OFF} >/dev/null 2>&1 || true")
        for other in plan.nodes:
            if other.name == node.name:
                continue
            remote = ipaddress.IPv4Network(other.pod_cidr).network_address
            cmds += [
                f"ip neigh replace {remote} lladdr {other.vtep_mac} dev {dev} nud permanent",
                f"bridge fdb append {other.vtep_mac} dev {dev} dst {other.ip}",
                f"ip route add {other.pod_cidr} via {remote} dev {dev} onlink",
            ]
    else:  # host-gw: every node in one L2 subnet, remote pod ranges via the remote node
        for other in plan.nodes:
            if other.name != node.name:
                cmds.append(f"ip route add {other.pod_cidr} via {other.ip} dev eth0")
    return cmds


def _bridge_port(plan: Plan, pod: PodPlan) -> list[str]:
    # hairpin: a pod reaching its own Service may be DNATed back to itself, out the port the
    # packet came in on (the bridge CNI's hairpinMode, which flannel turns on)
    return [f"ip link set {pod.veth} mtu {plan.mtu} master cni0 up",
            f"bridge link set dev {pod.veth} hairpin on"]


def _native_node(node: NodePlan, pods) -> list[str]:
    cmds = []
    for pod in pods:
        cmds += [
            f"ip link set {pod.veth} up",
            f"ip route add {pod.ip}/32 dev {pod.veth} scope link",
            f"ip neigh replace {pod.ip} lladdr {pod.mac} dev {pod.veth} nud permanent",
        ]
    return cmds


def pod_setup(plan: Plan, pod: PodPlan) -> list[str]:
    """A pod's eth0: address, MTU and default route, as its CNI would set them."""
    cmds = ["ip link set lo up", f"ip link set eth0 mtu {plan.mtu}",
            f"ip addr add {pod.ip}/{pod.prefixlen} dev eth0", "ip link set eth0 up"]
    if plan.mode == "nodeport":
        cmds.append(f"ip route add default via {pod.gateway} dev eth0")
    else:
        cmds += [
            f"ip route add {pod.gateway} dev eth0 scope link",
            f"ip route add default via {pod.gateway} dev eth0",
            f"ip neigh replace {pod.gateway} lladdr {pod.veth_mac} dev eth0 nud permanent",
        ]
    return cmds


def pod_on_node(plan: Plan, pod: PodPlan) -> list[str]:
    """The node's half of one pod added while the cluster runs."""
    if plan.mode == "nodeport":
        return _bridge_port(plan, pod)
    return _native_node(plan.node(pod.node), [pod])


def pod_teardown_on_node(plan: Plan, pod: PodPlan) -> list[str]:
    """What a node must forget when one of its pods goes away (container-native /32 route)."""
    if plan.mode == "nodeport":
        return []
    return [f"ip route del {pod.ip}/32 dev {pod.veth} 2>/dev/null || true"]
