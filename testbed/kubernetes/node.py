"""What a node VM gets: forwarding, its leg on the VPC fabric, shaping, then its CNI half.

Pure renderers returning shell command lines, run later as one script per namespace. Clients
and the LB's host get the same fabric leg (host_fabric) without the rest.
"""

from __future__ import annotations

from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.cni.base import OFFLOADS_OFF, sysctl
from testbed.plan.addresses import Attachment, NodePlan, Plan
from testbed.spec.model import Links


def shaping(dev: str, bw: float | None = None, delay_ms: float = 0.0,
            loss_pct: float = 0.0) -> list[str]:
    """tc commands shaping a device's egress: htb for bandwidth, netem under it for delay/loss.
    An explicit quantum keeps htb from warning about (and mis-sizing) fast classes."""
    cmds, parent = [], "root"
    if bw:
        cmds += [f"tc qdisc add dev {dev} root handle 5: htb default 1",
                 f"tc class add dev {dev} parent 5: classid 5:1 htb rate {bw:g}mbit burst 15k "
                 "quantum 1514"]
        parent = "parent 5:1"
    if delay_ms or loss_pct:
        netem = f"tc qdisc add dev {dev} {parent} handle 10: netem"
        if delay_ms:
            netem += f" delay {delay_ms:g}ms"
        if loss_pct:
            netem += f" loss {loss_pct:g}%"
        cmds.append(netem)
    return cmds


def host_fabric(att: Attachment, offloads_off: bool, links: Links | None = None) -> list[str]:
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


def node_setup(plan: Plan, node: NodePlan, offloads_off: bool,
               links: Links | None = None) -> list[str]:
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
    return cmds + plugin_for(plan).setup_node(plan, node, plan.pods_on(node.name), offloads_off)
