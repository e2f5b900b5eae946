"""A Service's `externalIPs:` (spec.externalIPs): reading the list, and the checks that keep each
address out of the ranges the cluster and the testbed route themselves.

An external IP is an address the cluster admin routes to a node; kube-proxy serves the
service's ports on it (KUBE-EXT in iptables, the service-ips map in nftables, an IPVS virtual
server, an eBPF frontend). It is on no node's interface. The testbed's VPC routes each one to
the first node (testbed.cloud.fabric, docs/yaml.md).

read_external_ips: the list as written, each address checked on its own (IPv4, not a special
    or testbed range, not twice)
external_ip_clash: what an address collides with in a topology (the VPC, the pod and service
    ranges), or None
check_external_ips: every service's addresses against the topology, and two services serving
    one address on the same port and protocol
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from testbed.spec.fields import Reader, kind_of
from testbed.spec.model import LB_CIDR, SPECIAL_RANGES, Service, Topology
from testbed.spec.yamldoc import Path

FIELD = "externalIPs"
EXAMPLE = "192.0.2.10"   # RFC 5737's first documentation block: no range of the testbed's
FIX = (f"use an address outside the cluster's and the testbed's ranges, like {EXAMPLE} "
       "(192.0.2.0/24 is free)")


def _special(ip: ipaddress.IPv4Address) -> str | None:
    """What an address is when no Service may have it as an external IP."""
    if ip in LB_CIDR:
        return (f"{ip} is in the testbed's load balancer range ({LB_CIDR}): a LoadBalancer "
                "service's VIP goes in loadBalancerIP")
    return next((f"{ip} is in {what}" for net, what in SPECIAL_RANGES if ip in net), None)


def read_external_ips(r: Reader, path: Path, body: Mapping[str, Any]) -> tuple[str, ...] | None:
    """spec.externalIPs as written under a service at path (() when absent); None with the
    problems in r. Each must be an IPv4 address outside the special and testbed ranges,
    written once."""
    raw = body.get(FIELD)
    if raw is None:
        return ()
    fpath = path + (FIELD,)
    if not isinstance(raw, list):
        r.problem(fpath, f"expected a list of addresses, got {kind_of(raw)}",
                  f"write {FIELD}: [{EXAMPLE}]")
        return None
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        ipath = fpath + (i,) if r.has(fpath + (i,)) else fpath
        try:
            if not isinstance(item, str):
                raise ValueError
            ip = ipaddress.IPv4Address(item.strip())
        except ValueError:
            r.problem(ipath, f"{item!r} is not an IPv4 address", f"write {FIELD}: [{EXAMPLE}]")
            continue
        problem = _special(ip)
        if problem:
            r.problem(ipath, problem, FIX)
        elif str(ip) in seen:
            r.problem(ipath, f"{ip} is also {FIELD}[{seen[str(ip)]}]", "write each address once")
        else:
            seen[str(ip)] = i
            out.append(str(ip))
    return tuple(out) if len(out) == len(raw) else None


def external_ip_clash(ip: str, topo: Topology) -> str | None:
    """What the address collides with in this topology: a node's address, the VPC (its nodes
    and container-native pods), the pod range, the service range; None when it is free."""
    addr = ipaddress.IPv4Address(ip)
    vpc = next((s for s in topo.vpc.subnets if addr in s.cidr), None)
    if addr in topo.vpc.cidr:
        where = f"subnet {vpc.name} ({vpc.cidr})" if vpc else f"the VPC ({topo.vpc.cidr})"
        return (f"{ip} is inside {where}, where nodes and container-native pods have their "
                "addresses")
    if addr in topo.cni.pod_cidr:
        return f"{ip} is inside the pod range cni.podCIDR ({topo.cni.pod_cidr})"
    if addr in topo.cni.service_cidr:
        return (f"{ip} is inside the service range cni.serviceCIDR ({topo.cni.service_cidr}), "
                "where ClusterIPs come from")
    return None


def listeners(svc: Service) -> Iterable[tuple[str, int, str]]:
    """(external IP, port, protocol) that the service serves."""
    return ((ip, p.port, p.protocol) for ip in svc.external_ips for p in svc.all_ports)


def clash_with_services(svc: Service, others: Iterable[Service]) -> str | None:
    """Another service serving one of svc's external IPs on the same port and protocol (kube-
    proxy would send the address's traffic to either: upstream leaves that to admission
    control, the testbed refuses it)."""
    taken = {key: o.name for o in others if o.name != svc.name for key in listeners(o)}
    for ip, port, proto in listeners(svc):
        if (ip, port, proto) in taken:
            return (f"{ip} port {port}/{proto} is also an external IP of service "
                    f"'{taken[ip, port, proto]}'")
    return None


def check_external_ips(r: Reader, topo: Topology) -> None:
    """Every service's external IPs against the topology's ranges and the other services."""
    for i, svc in enumerate(topo.services):
        path: Path = ("services", svc.name, FIELD)
        for k, ip in enumerate(svc.external_ips):
            clash = external_ip_clash(ip, topo)
            if clash:
                r.problem(path + (k,) if r.has(path + (k,)) else path, clash, FIX)
        clash = clash_with_services(svc, topo.services[:i])
        if clash:
            r.problem(path, clash, "give one of them another address or port")
