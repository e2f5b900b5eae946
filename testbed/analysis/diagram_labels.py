"""What the path diagram says: its labels and caption, pure text from the address plan and
from what the variant's kube-proxy ran (testbed.analysis.diagram draws them).

The node's second balancing step is named by the variant's kube-proxy mode (iptables, nftables,
IPVS or eBPF, the eBPF one with Maglev and DSR when the topology or the variant asked for them),
and each node's pod range is the one its CNI really gave it: flannel's podCIDR on cni0, the
Calico IPAM blocks the node claimed under BGP routing, or VPC addresses (container-native).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PlanDict = Mapping[str, Any]                  # an address plan as Plan.to_dict() gives it
Entry = Mapping[str, Any]                     # one entry of a plan's list (node, pod, service...)

MIN_SHARE_DRAWN = 0.005     # flows below this are not drawn (nor said to cross)
MAX_BLOCKS_NAMED = 2        # per node; more are summarised as "+k blocks"
CAPTION_CHARS = 92          # characters of the caption's 4.6 pt type across one paper column
# the data plane registry's mode names as upstream writes them (kube-proxy's --proxy-mode
# values; eBPF for the Cilium-style replacement)
MODE_NAMES = {"iptables": "iptables", "nftables": "nftables", "ipvs": "IPVS", "ebpf": "eBPF"}


@dataclass(frozen=True)
class KubeProxyView:
    """What a variant's kube-proxy ran (testbed.spec.model.KubeProxyConfiguration's fields).

    mode: the data plane registry's name (iptables, nftables, ipvs, ebpf)
    algorithm: the ebpf mode's backend selection, random or maglev
    lb_mode: the ebpf mode's snat or dsr (direct server return)
    """
    mode: str = "iptables"
    algorithm: str = "random"
    lb_mode: str = "snat"

    @property
    def dsr(self) -> bool:
        """Direct server return: only the ebpf mode has it (the others always SNAT)."""
        return self.mode == "ebpf" and self.lb_mode == "dsr"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> KubeProxyView:
        """From a topology's kube_proxy as meta.json holds it (missing fields: the defaults)."""
        d = d or {}
        return cls(mode=str(d.get("mode") or cls.mode),
                   algorithm=str(d.get("algorithm") or cls.algorithm),
                   lb_mode=str(d.get("lb_mode") or cls.lb_mode))


def kube_proxy_label(kube_proxy: KubeProxyView, on_path: bool = True) -> str:
    """The node's kube-proxy strip: its mode, and for eBPF Maglev and DSR when they ran."""
    if not on_path:
        return "kube-proxy (bypassed)"
    what = [MODE_NAMES.get(kube_proxy.mode, kube_proxy.mode)]
    if kube_proxy.mode == "ebpf":
        what += ["Maglev"] if kube_proxy.algorithm == "maglev" else []
        what += ["DSR"] if kube_proxy.dsr else []
    return f"kube-proxy ({', '.join(what)})"


def node_pod_ranges(p: PlanDict, node: Entry) -> list[str]:
    """The node's pod ranges: under BGP routing the IPAM blocks affine to it (Calico's: claimed
    as its pods need addresses, none before), otherwise its podCIDR."""
    if p.get("overlay") == "bgp":
        return [b["cidr"] for b in p.get("blocks") or [] if b.get("node") == node["name"]]
    return [node["pod_cidr"]] if node.get("pod_cidr") else []


def node_pods_label(p: PlanDict, node: Entry, mode: str) -> str:
    """Where the node's pods get their addresses, at the foot of its box."""
    if p.get("overlay") == "bgp":
        blocks = node_pod_ranges(p, node)
        if not blocks:
            return "pods: no BGP block yet"
        named = blocks[:MAX_BLOCKS_NAMED]
        more = len(blocks) - len(named)
        return (f"pods {', '.join(named)}" + (f" +{more} blocks" if more else "")
                + (" (BGP block)" if len(blocks) == 1 else " (BGP)"))
    if mode == "nodeport":
        return f"pods {node['pod_cidr']} on cni0"
    return "pods: VPC addresses (ENI)"


def pod_network_label(p: PlanDict, mode: str, crossing: float) -> str:
    """The band under the nodes: the pod network and the share of requests crossing it."""
    cidr, overlay = p.get("pod_cidr", ""), p.get("overlay", "vxlan")   # vxlan, host-gw or bgp
    blocks = f"/{p.get('block_size', 26)} blocks"
    if overlay == "bgp" and mode != "nodeport":
        return f"no overlay: pod network {cidr}, the fabric learns each node's {blocks} by BGP"
    if overlay == "bgp":
        label = f"pod network {cidr}: BGP routes to {blocks}"
    elif mode != "nodeport":
        return "no overlay: pods hold VPC addresses, the fabric routes each pod's /32"
    elif overlay == "vxlan":
        label = f"pod network {cidr}: VXLAN overlay (flannel.{p.get('vxlan_vni', 1)})"
    else:
        label = f"pod network {cidr}: {overlay} routes"
    return label + (f" — {crossing * 100:.0f}% of requests cross it" if crossing >= MIN_SHARE_DRAWN
                    else " — unused by this traffic")


def percent(share: float) -> str:
    pct = share * 100
    return f"{pct:.0f}%" if pct >= 9.95 or pct == 0 else f"{pct:.1f}%"


def heading_text(mode: str, policy: str, direct: bool = False) -> str:
    """What the variant is, at the top right."""
    return ("client → pod IP:targetPort\n(direct, no LB)" if direct else
            "LB → pod IP:targetPort\n(container-native)" if mode == "container-native" else
            f"LB → node IP:NodePort\nexternalTrafficPolicy {policy}")


def lb_text(lb: Entry | None, svc: Entry | None, mode: str) -> str:
    if not lb:
        return "cloud load balancer (no LoadBalancer service)"
    target = (f"targets: node IP:{svc['node_port']}" if mode == "nodeport" and svc
              else f"targets: pod IP:{svc['target_port']}" if svc else "")
    return f"cloud load balancer   VIP {lb['vip']}:{lb['port']}\n{target}"


def caption(mode: str, policy: str, assumed: list[str], overlay: str = "vxlan",
            dsr: bool = False, max_chars: int = CAPTION_CHARS) -> str:
    """The line at the foot: how to read the arrows, and what was assumed (two lines or more
    when it is longer than max_chars)."""
    parts = ["arrow width ∝ share of requests"]
    if mode == "nodeport":
        parts.append("dashed: VXLAN to another node" if overlay == "vxlan"
                     else "dashed: routed to another node")
        if dsr and policy == "Cluster":
            parts.append("dotted: replies by DSR, no SNAT")
        elif policy == "Cluster":
            parts.append("SNAT to the node")
    if assumed:
        parts.append("assumed: " + ", ".join(assumed))
    return wrap_parts(parts, max_chars)


def wrap_parts(parts: list[str], max_chars: int) -> str:
    """parts joined by '; ', a line break instead where a line would pass max_chars."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) > max_chars:
            lines[-1] += ";"
            lines.append(part)
        else:
            lines[-1] += "; " + part
    return "\n".join(lines)
