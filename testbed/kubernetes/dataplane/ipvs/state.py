"""A node's IPVS-mode state, pure: what upstream's ipvs syncProxyRules builds for each service port
before it calls the kernel — the virtual servers with their real servers, the entries of every
ipset, and the addresses bound to the kube-ipvs0 dummy device.

Per service port, as upstream:
- a virtual server on the ClusterIP:port, its address on kube-ipvs0 (real servers: the cluster's
  endpoints; this node's only under internalTrafficPolicy=Local);
- one per external IP and per load-balancer IP (bound to kube-ipvs0 unless the node has the
  address), with this node's endpoints under externalTrafficPolicy=Local;
- one per node address on the NodePort (not bound: the node has it). Upstream makes one for
  every local address unless --nodeport-addresses narrows it; the testbed's kube-proxy runs as
  with --nodeport-addresses=<node IP>/32, so the node's address only;
- under a Local policy with no local endpoint the cluster's endpoints are used (upstream
  PR 97081: a pod on this node still reaches the service; external traffic gets no answer);
- ClientIP session affinity is the virtual server's persistence (-p timeout);
- the scheduler is rr (upstream's default).
Upstream's differences kept out on purpose: no loadBalancerSourceRanges (the FW and SOURCE sets
stay empty), no graceful termination of real servers (a removed endpoint's real server is
deleted at once, where upstream sets its weight to 0 and deletes it once its connections end).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from testbed.kubernetes.dataplane.ipvs import ipsets as S
from testbed.kubernetes.dataplane.model import (
    Endpoint,
    NodeContext,
    ServicePort,
    categorize_endpoints,
)

DEFAULT_SCHEDULER = "rr"
DUMMY_DEVICE = "kube-ipvs0"
PROTOCOL_FLAGS = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}


@dataclass(frozen=True, order=True)
class VirtualServer:
    """One IPVS service: address:port of a protocol, its scheduler, its persistence.

    persistence_s: ClientIP affinity's timeout (ipvsadm -p), None without affinity
    """

    protocol: str
    address: str
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    persistence_s: int | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies the virtual server in the kernel (protocol, address, port)."""
        return (self.protocol, self.address, self.port)

    def service_args(self) -> str:
        """"-t 10.96.0.10:80": the virtual server as ipvsadm names it."""
        return f"{PROTOCOL_FLAGS[self.protocol]} {self.address}:{self.port}"

    def options(self) -> str:
        """"-s rr" and "-p T" with persistence, as `ipvsadm -S -n` writes them."""
        out = f"-s {self.scheduler}"
        if self.persistence_s is not None:
            out += f" -p {self.persistence_s}"
        return out


@dataclass(frozen=True, order=True)
class RealServer:
    """One destination of a virtual server: a pod's address and port, masquerading (NAT)
    forwarding and weight 1 as upstream adds them."""

    address: str
    port: int
    weight: int = 1

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class NodeState:
    """Everything the IPVS mode holds on one node.

    virtual_servers: key -> (the virtual server, its real servers in order)
    sets: ipset name -> its entries (every set of ipsets.IPSETS, empty ones too)
    bound: the addresses on kube-ipvs0
    """

    virtual_servers: dict[tuple[str, str, int], tuple[VirtualServer, tuple[RealServer, ...]]]
    sets: dict[str, frozenset[str]]
    bound: frozenset[str]
    node: NodeContext = field(compare=False)

    def has(self, set_name: str) -> bool:
        """Whether a set has entries (upstream writes a set's rule only then)."""
        return bool(self.sets.get(set_name))


def real_servers(svc: ServicePort, node_name: str, only_local: bool) -> tuple[RealServer, ...]:
    """Upstream syncEndpoint's choice: the Cluster endpoints, or the local ones when the policy
    is Local and there are some (else the Cluster ones, PR 97081)."""
    on_node = categorize_endpoints(svc, node_name)
    eps: Iterable[Endpoint] = on_node.cluster_endpoints
    if only_local and on_node.local_endpoints:
        eps = on_node.local_endpoints
    return tuple(sorted({RealServer(ep.ip, ep.port) for ep in eps}))


def node_state(services: Sequence[ServicePort], node: NodeContext,
               scheduler: str = DEFAULT_SCHEDULER) -> NodeState:
    """The node's IPVS-mode state for `services` (upstream's syncProxyRules loop, pure)."""
    vss: dict[tuple[str, str, int], tuple[VirtualServer, tuple[RealServer, ...]]] = {}
    sets: dict[str, set[str]] = {s.name: set() for s in S.IPSETS}
    bound: set[str] = set()

    def add_vs(svc: ServicePort, address: str, port: int, only_local: bool) -> None:
        vs = VirtualServer(svc.protocol, address, port, scheduler, svc.session_affinity_seconds)
        vss[vs.key] = (vs, real_servers(svc, node.node_name, only_local))

    for svc in sorted(services, key=lambda s: (s.port_name_string, s.protocol)):
        if not svc.proxied:
            continue
        proto = svc.proto
        for ep in svc.endpoints:   # hairpin: a local pod reaching itself through the service
            if ep.is_local(node.node_name):
                sets[S.KUBE_LOOP_BACK].add(S.ip_port_ip(ep.ip, proto, ep.port, ep.ip))
        assert svc.cluster_ip is not None   # proxied
        sets[S.KUBE_CLUSTER_IP].add(S.ip_port(svc.cluster_ip, proto, svc.port))
        add_vs(svc, svc.cluster_ip, svc.port, svc.internal_policy_local)
        bound.add(svc.cluster_ip)
        for ip in svc.external_ips:
            name = S.KUBE_EXTERNAL_IP_LOCAL if svc.external_policy_local else S.KUBE_EXTERNAL_IP
            sets[name].add(S.ip_port(ip, proto, svc.port))
            add_vs(svc, ip, svc.port, svc.external_policy_local)
            if ip != node.node_ip:   # an address the node has is not bound again
                bound.add(ip)
        for ip in svc.load_balancer_ips:
            entry = S.ip_port(ip, proto, svc.port)
            sets[S.KUBE_LOAD_BALANCER].add(entry)
            if svc.external_policy_local:
                sets[S.KUBE_LOAD_BALANCER_LOCAL].add(entry)
            add_vs(svc, ip, svc.port, svc.external_policy_local)
            if ip != node.node_ip:
                bound.add(ip)
            if svc.load_balancer_source_ranges:
                _source_range_entries(sets, svc, ip, node)
        if svc.node_port:
            every, local = S.NODE_PORT_SETS[proto]
            entry = (S.ip_port(node.node_ip, proto, svc.node_port) if proto == "sctp"
                     else str(svc.node_port))
            sets[every].add(entry)
            if svc.external_policy_local:
                sets[local].add(entry)
            add_vs(svc, node.node_ip, svc.node_port, svc.external_policy_local)
        if svc.external_policy_local and svc.health_check_node_port:
            sets[S.KUBE_HEALTH_CHECK_NODE_PORT].add(str(svc.health_check_node_port))
    sets[S.KUBE_IPVS_IPS] = set(bound)
    return NodeState(vss, {k: frozenset(v) for k, v in sets.items()}, frozenset(bound), node)


def _source_range_entries(sets: dict[str, set[str]], svc: ServicePort, ip: str,
                          node: NodeContext) -> None:
    """loadBalancerSourceRanges of one LB IP: the IP:port in KUBE-LOAD-BALANCER-FW (whose rule
    sends it to KUBE-SOURCE-RANGES-FIREWALL), each allowed CIDR in -SOURCE-CIDR and, when a
    range holds the node's IP, the VIP itself as a source in -SOURCE-IP (upstream's
    allowFromNode: a node reaching a VIP bound to itself has it as source)."""
    proto = svc.proto
    sets[S.KUBE_LOAD_BALANCER_FW].add(S.ip_port(ip, proto, svc.port))
    for cidr in svc.load_balancer_source_ranges:
        sets[S.KUBE_LOAD_BALANCER_SOURCE_CIDR].add(S.ip_port_net(ip, proto, svc.port, cidr))
    if svc.source_ranges_contain(node.node_ip):
        sets[S.KUBE_LOAD_BALANCER_SOURCE_IP].add(S.ip_port_ip(ip, proto, svc.port, ip))
