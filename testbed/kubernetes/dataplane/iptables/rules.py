"""kube-proxy's iptables mode, rendered the way upstream kube-proxy writes it.

This module is pure: it turns a list of service ports (with their endpoints) into the text that
`iptables-restore --noflush` reads, for one node. The only effect, `apply()`, takes the command
runner as an argument, so everything here is tested on text.

Chain layout (nat table), for a student
---------------------------------------
A packet is DNATed to a pod by walking down this tree; each arrow is one `-j` jump::

    PREROUTING / OUTPUT ──► KUBE-SERVICES
        "ns/name:port cluster IP"      -d clusterIP --dport port ──► KUBE-SVC-<hash>
        "ns/name:port loadbalancer IP" -d lbIP      --dport port ──► KUBE-EXT-<hash>
        "ns/name:port external IP"     -d extIP     --dport port ──► KUBE-EXT-<hash>
        last rule: -m addrtype --dst-type LOCAL (a node address) ──► KUBE-NODEPORTS
                        "ns/name:port" --dport nodePort ──► KUBE-EXT-<hash>

    KUBE-EXT-<hash>  the "external destinations" of one service port (NodePort, LB IP, ext IP)
        externalTrafficPolicy=Cluster: mark for masquerade, then ──► KUBE-SVC-<hash>
        externalTrafficPolicy=Local:   pod-CIDR sources ──► KUBE-SVC (as if via the cloud LB),
                                       node-local sources: mark + ──► KUBE-SVC,
                                       everyone else ──► KUBE-SVL-<hash> (no SNAT: client IP kept)

    KUBE-SVC-<hash>  every ready endpoint in the cluster; KUBE-SVL-<hash> only this node's.
        one rule per endpoint: -m statistic --mode random --probability 1/(n-i) ──► KUBE-SEP-<hash>
        (rule i matches with 1/(n-i) of what is left, so each endpoint gets 1/n overall;
         with sessionAffinity=ClientIP, "-m recent --rcheck" rules come first)

    KUBE-SEP-<hash>  one endpoint: mark hairpin traffic (pod to itself) for masquerade,
        then -j DNAT --to-destination podIP:port

    POSTROUTING ──► KUBE-POSTROUTING: packets carrying mark 0x4000 (set by KUBE-MARK-MASQ) get
        the mark cleared and are MASQUERADEd (source becomes the node's address).

Names: <hash> is the first 16 characters of base32(sha256("ns/name:port" + protocol)), and for
KUBE-SEP sha256("ns/name:port" + protocol + "ip:port"); iptables limits chain names to 28
characters. Everything kube-proxy owns starts with KUBE-, so it can be found and removed safely.

The filter table holds what cannot be a NAT: REJECT for services without endpoints, DROP for
Local-policy external traffic on a node without local endpoints, ACCEPT for health-check node
ports, and KUBE-FORWARD, which lets marked (service) traffic through a FORWARD policy of DROP.

Differences from upstream, on purpose (the testbed does not need them): IPv4 only; no
loadBalancerSourceRanges (KUBE-FW-, KUBE-PROXY-FIREWALL), no internalTrafficPolicy, no topology
hints, no terminating-endpoint fallback, no masqueradeAll; NodePorts are not served on 127.0.0.1
(upstream's --iptables-localhost-nodeports=false), so route_localnet is not needed.

Partial sync (upstream since 1.28): KUBE-SERVICES, KUBE-NODEPORTS and the filter table are always
rewritten whole; the per-service chains are written only for services whose spec or endpoints
changed. Unchanged chains are left out of the input entirely -- with --noflush a ":CHAIN" line
would flush the chain -- and the rewritten rules may still jump to them. Chains of services or
endpoints that went away are flushed and deleted with "-X".
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Tuple

# --- names ---------------------------------------------------------------------------------------

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"

SVC_PREFIX = "KUBE-SVC-"  # Cluster policy: all ready endpoints
SVL_PREFIX = "KUBE-SVL-"  # Local policy: this node's ready endpoints
EXT_PREFIX = "KUBE-EXT-"  # external destinations (NodePort, LB IP, external IP)
FW_PREFIX = "KUBE-FW-"  # loadBalancerSourceRanges (named for completeness; not rendered)
SEP_PREFIX = "KUBE-SEP-"  # one endpoint
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

# 1 << 14: upstream's default --iptables-masquerade-bit=14, written with "%#08x".
MASQUERADE_MARK = "0x4000"
# Above this many endpoints upstream drops the per-endpoint comments (40% less text to restore).
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
# sessionAffinityConfig.clientIP.timeoutSeconds default (3 hours).
DEFAULT_AFFINITY_SECONDS = 10800

NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICIES = ("Cluster", "Local")

# --- input model (mirrors upstream's ServicePort / Endpoint) ------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One backend of a service port, as an EndpointSlice lists it.

    ip: the pod's IPv4 address
    port: the pod's port (the service's targetPort, resolved)
    node: name of the node the pod runs on (decides "local" for externalTrafficPolicy=Local)
    ready: only ready endpoints receive traffic
    """

    ip: str
    port: int
    node: str | None = None
    ready: bool = True

    def __post_init__(self) -> None:
        _check_ipv4(self.ip, "endpoint ip")
        _check_port(self.port, "endpoint port")

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of one Service, with its endpoints: the unit kube-proxy programs.

    namespace, name: the Service's namespace and name
    port_name: the port's name ("" for a single unnamed port)
    protocol: TCP, UDP or SCTP
    cluster_ip: the ClusterIP (None or "None" for a headless service: not proxied)
    port: the service port
    target_port: the pod port (informational; each Endpoint carries its own port)
    node_port: the NodePort, or None
    load_balancer_ips: status.loadBalancer.ingress IPs
    external_traffic_policy: "Cluster" (any pod, SNAT) or "Local" (local pods, client IP kept)
    session_affinity_seconds: None, or ClientIP affinity with this timeout
    health_check_node_port: for Local LoadBalancer services, the port the LB probes
    endpoints: the Endpoints of this port
    external_ips: spec.externalIPs
    """

    namespace: str
    name: str
    port_name: str
    protocol: str
    cluster_ip: str | None
    port: int
    target_port: int
    node_port: int | None = None
    load_balancer_ips: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    session_affinity_seconds: int | None = None
    health_check_node_port: int | None = None
    endpoints: tuple[Endpoint, ...] = ()
    external_ips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = service_port_name(self.namespace, self.name, self.port_name)
        if self.protocol.upper() not in PROTOCOLS:
            raise ValueError(f"{where}: protocol {self.protocol!r} is not one of {PROTOCOLS}")
        object.__setattr__(self, "protocol", self.protocol.upper())
        if self.external_traffic_policy not in POLICIES:
            raise ValueError(
                f"{where}: externalTrafficPolicy {self.external_traffic_policy!r} "
                f"is not one of {POLICIES}"
            )
        if self.cluster_ip not in (None, "", "None"):
            _check_ipv4(self.cluster_ip, f"{where}: cluster_ip")
        _check_port(self.port, f"{where}: port")
        for label in ("node_port", "health_check_node_port"):
            if getattr(self, label) is not None:
                _check_port(getattr(self, label), f"{where}: {label}")
        if self.session_affinity_seconds is not None and self.session_affinity_seconds <= 0:
            raise ValueError(f"{where}: session_affinity_seconds must be > 0 (or None)")
        for label in ("load_balancer_ips", "external_ips", "endpoints"):
            object.__setattr__(self, label, tuple(getattr(self, label)))
        for ip in self.load_balancer_ips + self.external_ips:
            _check_ipv4(ip, f"{where}: load balancer / external IP")

    @cached_property
    def port_name_string(self) -> str:
        """Upstream's ServicePortName.String(): "ns/name:port" (or "ns/name" if unnamed)."""
        return service_port_name(self.namespace, self.name, self.port_name)

    @cached_property
    def proto(self) -> str:
        """Lower-case protocol, as used in rules and chain-name hashes."""
        return self.protocol.lower()

    @property
    def proxied(self) -> bool:
        return self.cluster_ip not in (None, "", "None")

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.load_balancer_ips or self.external_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.external_traffic_policy == "Local" and self.externally_accessible

    @cached_property
    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        """Ready endpoints in upstream's order (sorted by "ip:port" string)."""
        return tuple(sorted((ep for ep in self.endpoints if ep.ready), key=str))

    @cached_property
    def svc_chain(self) -> str:
        return service_chain(self.port_name_string, self.proto)

    @cached_property
    def svl_chain(self) -> str:
        return service_local_chain(self.port_name_string, self.proto)

    @cached_property
    def ext_chain(self) -> str:
        return service_external_chain(self.port_name_string, self.proto)

    def sep_chain(self, endpoint: Endpoint) -> str:
        return endpoint_chain(self.port_name_string, self.proto, str(endpoint))


@dataclass(frozen=True)
class NodeContext:
    """The node a ruleset is rendered for.

    node_name: decides which endpoints are local
    node_ip: the node's address (kept for callers; the rules match LOCAL addresses by addrtype)
    cluster_cidr: the pod CIDR (upstream --cluster-cidr, LocalDetector "ClusterCIDR"); None turns
        off the rules that need to tell pod traffic from other traffic
    random_fully: add --random-fully to MASQUERADE (upstream does when iptables >= 1.6.2)
    """

    node_name: str
    node_ip: str
    cluster_cidr: str | None = None
    random_fully: bool = True

    def __post_init__(self) -> None:
        _check_ipv4(self.node_ip, "node_ip")
        if self.cluster_cidr is not None:
            net = ipaddress.ip_network(self.cluster_cidr, strict=False)
            if net.version != 4:
                raise ValueError(f"cluster_cidr {self.cluster_cidr!r}: only IPv4 is supported")
            object.__setattr__(self, "cluster_cidr", str(net))


def _check_ipv4(value: str, what: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IPv4 address") from None


def _check_port(value: int, what: str) -> None:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: {value!r} is not a port number (1-65535)")


# --- chain names ----------------------------------------------------------------------------------


def service_port_name(namespace: str, name: str, port_name: str = "") -> str:
    """"ns/name:port", the string every hash and comment is made from."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


def _hash16(text: str) -> str:
    # 16 base32 characters are 80 bits: encoding the first 10 digest bytes gives exactly the
    # first 16 characters of upstream's base32 of the whole digest, 3x faster.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


@lru_cache(maxsize=1 << 18)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """Upstream's portProtoHash: 16 chars of base32(sha256(name + lower-case protocol))."""
    return _hash16(service_port_name + protocol.lower())


def service_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVC-...: upstream servicePortPolicyClusterChain."""
    return SVC_PREFIX + port_proto_hash(service_port_name, protocol)


def service_local_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVL-...: upstream servicePortPolicyLocalChainName."""
    return SVL_PREFIX + port_proto_hash(service_port_name, protocol)


def service_external_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-EXT-...: upstream serviceExternalChainName."""
    return EXT_PREFIX + port_proto_hash(service_port_name, protocol)


def service_firewall_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-FW-...: upstream serviceFirewallChainName (not rendered here)."""
    return FW_PREFIX + port_proto_hash(service_port_name, protocol)


@lru_cache(maxsize=1 << 18)
def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-...: upstream servicePortEndpointChainName; endpoint is "ip:port"."""
    return SEP_PREFIX + _hash16(service_port_name + protocol.lower() + endpoint)


def is_service_chain(chain: str) -> bool:
    """True for the per-service chains kube-proxy owns (and may delete)."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


@lru_cache(maxsize=None)
def compute_probability(n: int) -> str:
    """Probability for the first of n remaining endpoints, as upstream's "%0.10f" of 1/n."""
    if n < 1:
        raise ValueError(f"compute_probability needs n >= 1, got {n}")
    return f"{1.0 / n:0.10f}"


# --- which endpoints a service uses on this node (upstream CategorizeEndpoints) ------------------


class _Plan(NamedTuple):
    """What one service port needs on one node."""

    cluster_eps: tuple[Endpoint, ...]  # KUBE-SVC members
    local_eps: tuple[Endpoint, ...]  # KUBE-SVL members (Local policy only)
    reachable_eps: tuple[Endpoint, ...]  # every endpoint that gets a KUBE-SEP chain
    has_endpoints: bool  # any ready endpoint anywhere
    has_external_endpoints: bool  # external traffic has somewhere to go on this node


def _plan(svc: ServicePort, node_name: str) -> _Plan:
    ready = svc.ready_endpoints
    local = tuple(ep for ep in ready if ep.node == node_name) if svc.external_policy_local else ()
    has_endpoints = bool(ready)
    has_external = has_endpoints and (bool(local) or not svc.external_policy_local)
    # Ready local endpoints are a subset of the ready cluster endpoints, so the union is `ready`.
    return _Plan(ready, local, ready, has_endpoints, has_external)


def _service_chains(svc: ServicePort, plan: _Plan) -> list[str]:
    """The per-service nat chains this service port owns on this node, in writing order."""
    chains = []
    if plan.has_endpoints and svc.externally_accessible:
        chains.append(svc.ext_chain)
    if plan.cluster_eps:
        chains.append(svc.svc_chain)
    if plan.local_eps:
        chains.append(svc.svl_chain)
    chains.extend(svc.sep_chain(ep) for ep in plan.reachable_eps)
    return chains


# --- rendering ------------------------------------------------------------------------------------


def _sorted_services(services: Iterable[ServicePort]) -> list[ServicePort]:
    """Proxied service ports in a fixed order (upstream walks a map; its tests sort by name)."""
    out = sorted((s for s in services if s.proxied), key=lambda s: (s.port_name_string, s.proto))
    for a, b in zip(out, out[1:]):
        if (a.port_name_string, a.proto) == (b.port_name_string, b.proto):
            raise ValueError(f"service port {a.port_name_string}/{a.proto} is listed twice")
    return out


def _is_large_cluster(services: Sequence[ServicePort]) -> bool:
    return sum(len(s.endpoints) for s in services) > LARGE_CLUSTER_ENDPOINTS_THRESHOLD


class _Buffers:
    """The four line buffers upstream fills: chains are declared before any rule."""

    def __init__(self) -> None:
        self.filter_chains: list[str] = []
        self.filter_rules: list[str] = []
        self.nat_chains: list[str] = []
        self.nat_rules: list[str] = []

    def text(self) -> str:
        lines = ["*filter", *self.filter_chains, *self.filter_rules, "COMMIT"]
        lines += ["*nat", *self.nat_chains, *self.nat_rules, "COMMIT"]
        return "\n".join(lines) + "\n"


def _chain_line(chain: str) -> str:
    return f":{chain} - [0:0]"


def _write_top_level(buf: _Buffers, node: NodeContext) -> None:
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS):
        buf.filter_chains.append(_chain_line(chain))
    for chain in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        buf.nat_chains.append(_chain_line(chain))
    mark = f"{MASQUERADE_MARK}/{MASQUERADE_MARK}"
    masquerade = "-j MASQUERADE --random-fully" if node.random_fully else "-j MASQUERADE"
    buf.nat_rules += [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark} -j RETURN",
        # Clear the mark so a packet that re-enters the stack is not masqueraded twice.
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQUERADE_MARK}",
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT"'
        f" {masquerade}",
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQUERADE_MARK}",
    ]


def _write_entry_rules(buf: _Buffers, svc: ServicePort, plan: _Plan) -> None:
    """KUBE-SERVICES / KUBE-NODEPORTS jumps and the filter verdicts: rewritten on every sync."""
    spn, p = svc.port_name_string, svc.proto
    match = f"-m {p} -p {p}"
    ext = svc.ext_chain
    # Where external traffic that cannot be NATed ends: no endpoints at all, or none local.
    if plan.has_endpoints:
        no_ext = f'"{spn} has no local endpoints"', "DROP"
    else:
        no_ext = f'"{spn} has no endpoints"', "REJECT"

    if plan.has_endpoints:
        buf.nat_rules.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} cluster IP" {match}'
            f" -d {svc.cluster_ip} --dport {svc.port} -j {svc.svc_chain}"
        )
    else:
        buf.filter_rules.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} has no endpoints" {match}'
            f" -d {svc.cluster_ip} --dport {svc.port} -j REJECT"
        )
    for ip in svc.external_ips:
        if plan.has_endpoints:
            buf.nat_rules.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} external IP" {match}'
                f" -d {ip} --dport {svc.port} -j {ext}"
            )
        if not plan.has_external_endpoints:
            buf.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {no_ext[0]} {match}"
                f" -d {ip} --dport {svc.port} -j {no_ext[1]}"
            )
    for ip in svc.load_balancer_ips:
        if plan.has_endpoints:
            buf.nat_rules.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} loadbalancer IP" {match}'
                f" -d {ip} --dport {svc.port} -j {ext}"
            )
    if not plan.has_external_endpoints:
        for ip in svc.load_balancer_ips:
            buf.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {no_ext[0]} {match}"
                f" -d {ip} --dport {svc.port} -j {no_ext[1]}"
            )
    if svc.node_port:
        if plan.has_endpoints:
            buf.nat_rules.append(
                f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {match}"
                f" --dport {svc.node_port} -j {ext}"
            )
        if not plan.has_external_endpoints:
            buf.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {no_ext[0]}"
                f" -m addrtype --dst-type LOCAL {match} --dport {svc.node_port} -j {no_ext[1]}"
            )
    if svc.health_check_node_port:
        # Accepted whether or not this node has local endpoints: the LB must get its 503.
        buf.filter_rules.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{spn} health check node port"'
            f" -m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT"
        )


def _write_service_chains(
    chains: list[str], rules: list[str], svc: ServicePort, plan: _Plan, node: NodeContext,
    large: bool,
) -> None:
    """The per-service chains (EXT, SVC, SVL, SEP): skipped by a partial sync when unchanged."""
    spn, p = svc.port_name_string, svc.proto
    cidr = node.cluster_cidr
    if plan.has_endpoints and cidr:
        # Off-cluster sources reaching a cluster IP may be bounced to another node: SNAT them.
        rules.append(
            f'-A {svc.svc_chain} -m comment --comment "{spn} cluster IP" -m {p} -p {p}'
            f" -d {svc.cluster_ip} --dport {svc.port} ! -s {cidr} -j {KUBE_MARK_MASQ}"
        )
    if plan.has_endpoints and svc.externally_accessible:
        ext = svc.ext_chain
        chains.append(_chain_line(ext))
        if not svc.external_policy_local:
            rules.append(
                f'-A {ext} -m comment --comment "masquerade traffic for {spn} external'
                f' destinations" -j {KUBE_MARK_MASQ}'
            )
        else:
            if cidr:
                # A pod calling the LB/NodePort is treated as if it went out and came back in.
                rules.append(
                    f'-A {ext} -m comment --comment "pod traffic for {spn} external'
                    f' destinations" -s {cidr} -j {svc.svc_chain}'
                )
            rules.append(
                f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {spn} external'
                f' destinations" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}'
            )
            rules.append(
                f'-A {ext} -m comment --comment "route LOCAL traffic for {spn} external'
                f' destinations" -m addrtype --src-type LOCAL -j {svc.svc_chain}'
            )
        if plan.has_external_endpoints:
            target = svc.svl_chain if svc.external_policy_local else svc.svc_chain
            rules.append(f"-A {ext} -j {target}")
    if plan.cluster_eps:
        chains.append(_chain_line(svc.svc_chain))
        _write_balancing(rules, svc, svc.svc_chain, plan.cluster_eps, large)
    if plan.local_eps:
        chains.append(_chain_line(svc.svl_chain))
        _write_balancing(rules, svc, svc.svl_chain, plan.local_eps, large)
    for ep in plan.reachable_eps:
        sep = svc.sep_chain(ep)
        chains.append(_chain_line(sep))
        head = f"-A {sep}" if large else f"-A {sep} -m comment --comment {spn}"
        # A pod reaching itself through the service must be SNATed, or it answers itself.
        rules.append(f"{head} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        affinity = f" -m recent --name {sep} --set" if svc.session_affinity_seconds else ""
        rules.append(f"{head}{affinity} -m {p} -p {p} -j DNAT --to-destination {ep}")


def _write_balancing(
    rules: list[str], svc: ServicePort, chain: str, eps: Sequence[Endpoint], large: bool
) -> None:
    """Service chain -> endpoint chains: affinity checks first, then the random spread."""
    spn = svc.port_name_string

    def head(ep: Endpoint) -> str:
        return f"-A {chain}" if large else f'-A {chain} -m comment --comment "{spn} -> {ep}"'

    if svc.session_affinity_seconds:
        for ep in eps:
            sep = svc.sep_chain(ep)
            rules.append(
                f"{head(ep)} -m recent --name {sep} --rcheck"
                f" --seconds {svc.session_affinity_seconds} --reap -j {sep}"
            )
    n = len(eps)
    for i, ep in enumerate(eps):
        spread = f" -m statistic --mode random --probability {compute_probability(n - i)}"
        rules.append(f"{head(ep)}{spread if i < n - 1 else ''} -j {svc.sep_chain(ep)}")


def _write_tail(buf: _Buffers, stale_chains: Iterable[str]) -> None:
    for chain in sorted(stale_chains):
        # Declaring the chain flushes it; then it can be deleted.
        buf.nat_chains.append(_chain_line(chain))
        buf.nat_rules.append(f"-X {chain}")
    buf.nat_rules.append(
        f'-A {KUBE_SERVICES} -m comment --comment "{NODEPORTS_COMMENT}"'
        f" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j {KUBE_NODEPORTS}"
    )
    buf.filter_rules += [
        f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP",
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules"'
        f" -m mark --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j ACCEPT",
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]


def _sync(
    services: Sequence[ServicePort],
    node: NodeContext,
    rewrite: Callable[[ServicePort], bool],
    stale_chains: Iterable[str],
) -> str:
    """One sync's restore input; rewrite(svc) says whether svc's own chains are written."""
    buf = _Buffers()
    _write_top_level(buf, node)
    large = _is_large_cluster(services)
    for svc in services:
        plan = _plan(svc, node.node_name)
        _write_entry_rules(buf, svc, plan)
        if rewrite(svc):
            _write_service_chains(buf.nat_chains, buf.nat_rules, svc, plan, node, large)
    _write_tail(buf, stale_chains)
    return buf.text()


def render(
    services: Iterable[ServicePort], node: NodeContext, existing_chains: Iterable[str] = ()
) -> str:
    """The full iptables-restore input (filter + nat) for `node`, for `--noflush`.

    existing_chains: nat chains present now (see nat_chains_in_save); kube-proxy's own chains
    among them that the new state does not use are flushed and deleted, as upstream does.
    """
    svcs = _sorted_services(services)
    stale = {c for c in existing_chains if is_service_chain(c)} - active_nat_chains(svcs, node)
    return _sync(svcs, node, lambda svc: True, stale)


def render_partial(
    old_services: Iterable[ServicePort], new_services: Iterable[ServicePort], node: NodeContext
) -> str:
    """The restore input that takes a node from `old_services` to `new_services`.

    Like upstream's partial sync: the per-service chains are written only for Services (by
    namespace/name, all their ports) whose spec or endpoints changed; chains that disappeared are
    deleted. Applied with --noflush over render(old_services) (for the same node), it leaves the
    same tables as render(new_services) on an empty node. When the large-cluster switch flips (which changes
    the comments of every endpoint rule), every chain is rewritten.
    """
    old, new = _sorted_services(old_services), _sorted_services(new_services)
    changed = changed_services(old, new)

    def is_changed(svc: ServicePort) -> bool:
        return (svc.namespace, svc.name) in changed

    # Chain names are unique per service port, and an unchanged service keeps its chains:
    # only changed services can leave chains behind.
    stale = active_nat_chains(filter(is_changed, old), node) - active_nat_chains(
        filter(is_changed, new), node)
    if _is_large_cluster(old) != _is_large_cluster(new):
        return _sync(new, node, lambda svc: True, stale)
    return _sync(new, node, is_changed, stale)


def changed_services(
    old: Iterable[ServicePort], new: Iterable[ServicePort]
) -> set[tuple[str, str]]:
    """(namespace, name) of every Service with a port added, removed or different."""
    before = {(s.port_name_string, s.proto): s for s in old}
    after = {(s.port_name_string, s.proto): s for s in new}
    changed = set()
    for key in before.keys() | after.keys():
        a, b = before.get(key), after.get(key)
        if a is not b and a != b:
            s = a or b
            changed.add((s.namespace, s.name))
    return changed


def active_nat_chains(services: Iterable[ServicePort], node: NodeContext) -> set[str]:
    """Every per-service nat chain (KUBE-SVC/SVL/EXT/SEP) the node has for these services."""
    out: set[str] = set()
    for svc in services:
        if svc.proxied:
            out.update(_service_chains(svc, _plan(svc, node.node_name)))
    return out


def endpoint_chains(services: Iterable[ServicePort], node: NodeContext) -> set[str]:
    """The KUBE-SEP chains the node has for these services."""
    return {c for c in active_nat_chains(services, node) if c.startswith(SEP_PREFIX)}


def health_check_state(services: Iterable[ServicePort], node_name: str) -> dict:
    """The state file testbed.kubernetes.dataplane.healthserver reads on `node_name`: one entry per Service with a
    healthCheckNodePort and Local policy, counting its ready endpoints on this node (upstream
    counts per Service, so ports of one Service share one health check)."""
    entries: dict[tuple[str, str], dict] = {}
    for svc in services:
        if not (svc.proxied and svc.external_policy_local and svc.health_check_node_port):
            continue
        local = sum(1 for ep in svc.ready_endpoints if ep.node == node_name)
        entry = entries.setdefault((svc.namespace, svc.name), {
            "namespace": svc.namespace, "name": svc.name,
            "port": svc.health_check_node_port, "local_endpoints": 0,
        })
        entry["local_endpoints"] = max(entry["local_endpoints"], local)
    return {"services": [entries[k] for k in sorted(entries)]}


def nat_chains_in_save(save_text: str) -> set[str]:
    """Chain names declared in the *nat part of `iptables-save` output."""
    chains, in_nat = set(), False
    for line in save_text.splitlines():
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif in_nat and line.startswith(":"):
            chains.add(line[1:].split()[0])
    return chains


# --- the one effect -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JumpRule:
    """A rule in a built-in chain that leads into kube-proxy's chains (upstream EnsureRule).

    These are not part of the restore input: with --noflush, "-A PREROUTING" would add a copy on
    every sync. They are checked with -C and inserted with -I when missing.
    """

    table: str
    chain: str
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return [*self.extra, "-m", "comment", "--comment", self.comment, "-j", self.target]

    def rule_text(self) -> str:
        """The rule as iptables-save / iptables-restore writes it."""
        extra = " ".join(self.extra)
        return f'-A {self.chain} {extra + " " if extra else ""}-m comment --comment "{self.comment}" -j {self.target}'


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("filter", "INPUT", KUBE_EXTERNAL_SERVICES,
             "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_EXTERNAL_SERVICES,
             "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)

BACKENDS = ("auto", "legacy", "nft")

# run(argv, stdin_bytes) -> (returncode, stderr): the caller decides where commands run
# (a Mininet host, `ip netns exec`, ...).
Runner = Callable[[list, Optional[bytes]], Tuple[int, str]]


class RestoreError(RuntimeError):
    """iptables-restore rejected the input.

    line: the failing line number in the input (None if the tool did not say)
    context: the numbered input lines around it
    stderr: what the tool printed
    """

    def __init__(self, argv: Sequence[str], text: str, returncode: int, stderr: str):
        self.line = failing_line(stderr)
        self.context = lines_around(text, self.line) if self.line else ""
        self.stderr = stderr
        self.returncode = returncode
        where = f" at input line {self.line}" if self.line else ""
        message = f"{' '.join(argv)} failed{where} (exit {returncode}): {stderr.strip()}"
        if self.context:
            message += "\n" + self.context
        super().__init__(message)


class IptablesCommandError(RuntimeError):
    """An iptables command other than the restore failed."""


def _tool(backend: str, tool: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    return tool if backend == "auto" else tool.replace("iptables", f"iptables-{backend}", 1)


def restore_argv(backend: str = "auto", noflush: bool = True) -> list[str]:
    """iptables-restore / iptables-legacy-restore / iptables-nft-restore with its flags."""
    argv = [_tool(backend, "iptables-restore")]
    if noflush:
        argv.append("--noflush")
    argv.append("--wait")
    return argv


_LINE_PATTERNS = (re.compile(r"Error occurred at line: (\d+)"), re.compile(r"line (\d+) failed"))


def failing_line(stderr: str) -> int | None:
    """The input line iptables-restore names in its error ("line N failed" and the like)."""
    for pattern in _LINE_PATTERNS:
        found = pattern.search(stderr)
        if found:
            return int(found.group(1))
    return None


def lines_around(text: str, line: int, count: int = 3) -> str:
    """Numbered input lines line-count..line+count, the failing one marked with ">"."""
    lines = text.splitlines()
    out = []
    for n in range(max(1, line - count), min(len(lines), line + count) + 1):
        out.append(f"{'>' if n == line else ' '} {n:6d}: {lines[n - 1]}")
    return "\n".join(out)


def ensure_jump_rules(run: Runner, backend: str = "auto") -> None:
    """Create kube-proxy's top-level chains and the jumps into them, if missing (upstream's
    EnsureChain / EnsureRule with Prepend, done on every full sync)."""
    iptables = _tool(backend, "iptables")
    for rule in JUMP_RULES:
        argv = [iptables, "-w", "-t", rule.table, "-N", rule.target]
        code, err = run(argv, None)
        if code != 0 and "exists" not in err:
            raise IptablesCommandError(f"{' '.join(argv)} failed (exit {code}): {err.strip()}")
        check = [iptables, "-w", "-t", rule.table, "-C", rule.chain, *rule.args()]
        if run(check, None)[0] == 0:
            continue
        insert = [iptables, "-w", "-t", rule.table, "-I", rule.chain, *rule.args()]
        code, err = run(insert, None)
        if code != 0:
            raise IptablesCommandError(f"{' '.join(insert)} failed (exit {code}): {err.strip()}")


def apply(
    run: Runner, text: str, backend: str = "auto", noflush: bool = True,
    ensure_jumps: bool = True,
) -> None:
    """Load `text` with iptables-restore through `run(argv, stdin_bytes) -> (code, stderr)`.

    backend: "auto" (whatever `iptables-restore` points at), "legacy" or "nft"
    noflush: keep rules and chains the input does not mention (always, for kube-proxy)
    ensure_jumps: first make sure the built-in chains jump into kube-proxy's (upstream does this
        on full syncs; a partial sync may skip it)
    Raises RestoreError with the failing line and the lines around it.
    """
    if ensure_jumps:
        ensure_jump_rules(run, backend)
    argv = restore_argv(backend, noflush)
    code, err = run(argv, text.encode())
    if code != 0:
        raise RestoreError(argv, text, code, err)


def detect_backend(version_text: str) -> str:
    """"nft" or "legacy", from what `iptables -V` prints ("iptables v1.8.9 (nf_tables)")."""
    if "(nf_tables)" in version_text:
        return "nft"
    if "(legacy)" in version_text:
        return "legacy"
    raise ValueError(f"cannot tell the iptables backend from {version_text.strip()!r}")
