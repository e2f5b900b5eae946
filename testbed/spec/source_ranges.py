"""A service's `loadBalancerSourceRanges` against the rest of the topology: what the kube-proxy
mode can enforce.

The iptables, nftables and IPVS modes write upstream's firewall (KUBE-FW- / firewall- chains,
the KUBE-LOAD-BALANCER-FW sets); the cloud LB filters too (testbed.cloud.fabric, the VPC
controller's and HAProxy's own filter). The eBPF mode has no source-range map in its programs
(Cilium's lb4_src_range), so a topology that asks for both is refused rather than run open.
"""

from __future__ import annotations

from testbed.spec.fields import Reader
from testbed.spec.model import Topology

EBPF_FIX = ("use --proxy-mode iptables, nftables or ipvs, or remove loadBalancerSourceRanges "
            "(the ebpf mode does not enforce them)")


def ebpf_problem(proxy_mode: str, ranges: tuple[str, ...]) -> str | None:
    """Why this kube-proxy mode cannot run a service with these source ranges (None: it can)."""
    if proxy_mode == "ebpf" and ranges:
        return ("the ebpf kube-proxy mode has no source-range filter (Cilium's lb4_src_range "
                "map is not modelled)")
    return None


def check_source_ranges(r: Reader, topology: Topology) -> None:
    """Each service whose loadBalancerSourceRanges the topology's kube-proxy mode cannot
    enforce, as one problem at the field."""
    for svc in topology.services:
        why = ebpf_problem(topology.kube_proxy.mode, svc.load_balancer_source_ranges)
        if why:
            r.problem(("services", svc.name, "loadBalancerSourceRanges"), why, EBPF_FIX)
