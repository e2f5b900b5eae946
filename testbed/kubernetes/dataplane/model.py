"""What every kube-proxy mode is given: service ports with their endpoints, and the node.

The types mirror upstream's pkg/proxy ServicePort / Endpoint and stay the same for every mode
(iptables today; nftables, IPVS and eBPF later): a mode reads them, none extends them. Also
here, because they are mode-neutral in upstream too: which endpoints a node uses
(CategorizeEndpoints), what the health-check node port server reports (pkg/proxy/healthcheck),
and how the testbed's plan becomes this model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, TypedDict

from testbed.plan.addresses import Plan

NAMESPACE = "default"  # the namespace of every Service of the testbed's plan
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICIES = ("Cluster", "Local")
# sessionAffinityConfig.clientIP.timeoutSeconds default (3 hours).
DEFAULT_AFFINITY_SECONDS = 10800


@dataclass(frozen=True)
class Endpoint:
    """One backend of a service port, as an EndpointSlice lists it.

    ip: the pod's IPv4 address
    port: the pod's port (the service's targetPort, resolved)
    node: name of the node the pod runs on (decides "local" for externalTrafficPolicy=Local)
    ready: only ready endpoints receive traffic
    serving: the pod answers (EndpointConditions.serving; None: the same as ready)
    terminating: the pod is being deleted (serving-terminating endpoints are used only when a
        service has no ready endpoint, as upstream's CategorizeEndpoints does)
    """

    ip: str
    port: int
    node: str | None = None
    ready: bool = True
    serving: bool | None = None
    terminating: bool = False

    def __post_init__(self) -> None:
        _check_ipv4(self.ip, "endpoint ip")
        _check_port(self.port, "endpoint port")

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def is_serving(self) -> bool:
        """Upstream's IsServing(): the pod answers (serving, or ready when serving is unset)."""
        return self.ready if self.serving is None else self.serving

    def is_local(self, node_name: str) -> bool:
        """Upstream's IsLocal(): the endpoint runs on the node kube-proxy runs on."""
        return self.node == node_name


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
    internal_traffic_policy: "Cluster" (any pod) or "Local" (only this node's pods) for
        traffic to the cluster IP
    load_balancer_source_ranges: spec.loadBalancerSourceRanges, IPv4 CIDRs: only these
        clients may reach the load_balancer_ips (empty: any)
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
    internal_traffic_policy: str = "Cluster"
    load_balancer_source_ranges: tuple[str, ...] = ()

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
        if self.internal_traffic_policy not in POLICIES:
            raise ValueError(
                f"{where}: internalTrafficPolicy {self.internal_traffic_policy!r} "
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
        object.__setattr__(self, "load_balancer_source_ranges", tuple(
            _ipv4_cidr(c, f"{where}: load balancer source range")
            for c in self.load_balancer_source_ranges))

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

    @property
    def uses_firewall(self) -> bool:
        """Upstream's condition for a firewall (KUBE-FW-, firewall-...): LB IPs and source
        ranges (the iptables mode also needs endpoints)."""
        return bool(self.load_balancer_ips and self.load_balancer_source_ranges)

    def source_ranges_contain(self, ip: str) -> bool:
        """Whether a source range holds ip (upstream's allowFromNode, for the node's IP)."""
        addr = ipaddress.IPv4Address(ip)
        return any(addr in ipaddress.IPv4Network(c) for c in self.load_balancer_source_ranges)

    @property
    def internal_policy_local(self) -> bool:
        return self.internal_traffic_policy == "Local"

    @property
    def uses_cluster_endpoints(self) -> bool:
        """Upstream's UsesClusterEndpoints: internal policy Cluster, or any external traffic
        (even with externalTrafficPolicy=Local, pods and the node itself short-circuit to the
        Cluster endpoints)."""
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        """Upstream's UsesLocalEndpoints: either traffic policy is Local."""
        return self.internal_policy_local or self.external_policy_local

    @cached_property
    def sorted_endpoints(self) -> tuple[Endpoint, ...]:
        """Every endpoint in upstream's order (sorted by "ip:port" string)."""
        return tuple(sorted(self.endpoints, key=str))

    @cached_property
    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        """Ready endpoints in upstream's order (sorted by "ip:port" string)."""
        return tuple(ep for ep in self.sorted_endpoints if ep.ready)


@dataclass(frozen=True)
class NodeContext:
    """The node a data plane's state is rendered for.

    node_name: decides which endpoints are local
    node_ip: the node's address (kept for callers; the rules match LOCAL addresses by addrtype)
    cluster_cidr: the pod CIDR (upstream --cluster-cidr, LocalDetector "ClusterCIDR"); None turns
        off the rules that need to tell pod traffic from other traffic
    random_fully: add --random-fully to MASQUERADE (upstream does when iptables >= 1.6.2)
    conntrack_tcp_liberal: the node's nf_conntrack_tcp_be_liberal is set (upstream's
        conntrackTCPLiberal, read when kube-proxy starts): no INVALID DROP rule is written
    """

    node_name: str
    node_ip: str
    cluster_cidr: str | None = None
    random_fully: bool = True
    conntrack_tcp_liberal: bool = False

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


def _ipv4_cidr(value: str, what: str) -> str:
    """An IPv4 CIDR, normalized as upstream's ParseIPNets ("10.0.0.1/8" is 10.0.0.0/8)."""
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IPv4 CIDR") from None


def _check_port(value: int, what: str) -> None:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: {value!r} is not a port number (1-65535)")


def service_port_name(namespace: str, name: str, port_name: str = "") -> str:
    """"ns/name:port", the string every hash and comment is made from."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


# --- which endpoints a service uses on this node (upstream CategorizeEndpoints) ------------------


class NodeEndpoints(NamedTuple):
    """What one service port needs on one node: upstream CategorizeEndpoints' four results, and
    the two the iptables proxier derives from them (hasInternalEndpoints, hasExternalEndpoints).
    """

    cluster_endpoints: tuple[Endpoint, ...]  # KUBE-SVC's members (empty: policy Cluster unused)
    local_endpoints: tuple[Endpoint, ...]  # KUBE-SVL's members (empty: policy Local unused)
    all_reachable_endpoints: tuple[Endpoint, ...]  # the KUBE-SEP chains this node writes
    has_any_endpoints: bool  # usable endpoints somewhere in the cluster
    has_internal_endpoints: bool  # cluster-IP traffic has somewhere to go from this node
    has_external_endpoints: bool  # external traffic has somewhere to go on this node


def _usable(endpoints: Iterable[Endpoint], keep: Callable[[Endpoint], bool]
            ) -> tuple[Endpoint, ...]:
    """Ready endpoints that `keep` accepts; when there are none, the serving-terminating ones
    (upstream: a service whose pods are all shutting down still answers while they can)."""
    eps = tuple(endpoints)
    ready = tuple(ep for ep in eps if ep.ready and keep(ep))
    if ready:
        return ready
    return tuple(ep for ep in eps if ep.is_serving and ep.terminating and keep(ep))


def categorize_endpoints(svc: ServicePort, node_name: str) -> NodeEndpoints:
    """Which of `svc`'s endpoints the node `node_name` uses, and for what traffic (upstream's
    CategorizeEndpoints without topology hints, then the proxier's hasInternal/ExternalEndpoints).

    Usable endpoints are the ready ones, falling back to serving-and-terminating ones
    independently for the Cluster and the Local list when there is no ready one.
    """
    eps = svc.sorted_endpoints
    cluster: tuple[Endpoint, ...] = ()
    has_any = False
    if svc.uses_cluster_endpoints:
        cluster = _usable(eps, lambda ep: True)
        has_any = bool(cluster)
    local: tuple[Endpoint, ...] = ()
    if svc.uses_local_endpoints:
        has_any = has_any or any(ep.ready or (ep.is_serving and ep.terminating) for ep in eps)
        local = _usable(eps, lambda ep: ep.is_local(node_name))
    if not svc.uses_local_endpoints:
        reachable = cluster
    elif not svc.uses_cluster_endpoints:
        reachable = local
    elif not local or local[0].ready:
        # Ready local endpoints are among the ready cluster ones (no topology here).
        reachable = cluster
    else:
        # Local fell back to terminating endpoints that the Cluster list may not hold.
        reachable = _union(cluster, local)
    has_internal = has_any and (bool(local) or not svc.internal_policy_local)
    has_external = has_any and (bool(local) or not svc.external_policy_local)
    return NodeEndpoints(cluster, local, reachable, has_any, has_internal, has_external)


def _union(a: Iterable[Endpoint], b: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """Both lists, once each by "ip:port", sorted (upstream merges through a map)."""
    merged = {str(ep): ep for ep in (*a, *b)}
    return tuple(merged[k] for k in sorted(merged))


# --- what the health-check node port server reports (upstream pkg/proxy/healthcheck) ------------


class HealthCheck(TypedDict):
    """One Service's health-check node port on one node, as its state file lists it."""

    namespace: str
    name: str
    port: int
    local_endpoints: int


class HealthState(TypedDict):
    """The state file testbed.kubernetes.dataplane.healthserver reads (parse_state)."""

    services: list[HealthCheck]


def health_check_state(services: Iterable[ServicePort], node_name: str) -> HealthState:
    """What the health-check server on `node_name` reports: one entry per Service with a
    healthCheckNodePort and Local policy, counting its ready endpoints on this node as upstream's
    LocalReadyEndpoints does: per Service, by distinct pod IP over all its ports, and only ready
    ones -- a node whose local pods are all terminating answers 503 (the LB stops sending new
    connections) while its NodePort still serves them through the terminating fallback."""
    entries: dict[tuple[str, str], HealthCheck] = {}
    ips: dict[tuple[str, str], set[str]] = {}
    for svc in services:
        if not (svc.proxied and svc.external_policy_local and svc.health_check_node_port):
            continue
        key = (svc.namespace, svc.name)
        entries.setdefault(key, {
            "namespace": svc.namespace, "name": svc.name,
            "port": svc.health_check_node_port, "local_endpoints": 0,
        })
        ips.setdefault(key, set()).update(
            ep.ip for ep in svc.ready_endpoints if ep.is_local(node_name))
    for key, entry in entries.items():
        entry["local_endpoints"] = len(ips[key])
    return {"services": [entries[k] for k in sorted(entries)]}


# --- the testbed's plan as this model -------------------------------------------------------------


class EndpointConditions(NamedTuple):
    """A pod's endpoint conditions as the EndpointSlice controller publishes them (upstream's
    discovery.EndpointConditions)."""

    ready: bool
    serving: bool
    terminating: bool


# kube-proxy watches only the services without these labels (its informer's selector
# `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`): one that another
# proxy implements, and a headless one's endpoints
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"


def not_proxied(labels: Sequence[tuple[str, str]]) -> bool:
    """Whether kube-proxy ignores a service with these labels (any value, '' included)."""
    return any(k in (LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS) for k, _ in labels)


def service_ports(plan: Plan, live_pods: Collection[str] | None = None,
                  conditions: Mapping[str, EndpointConditions] | None = None
                  ) -> list[ServicePort]:
    """The plan's services as kube-proxy's model: one ServicePort per port of each service
    (port_name: the port's name), with the endpoints of the pods that are alive (live_pods:
    names; None = every pod of the plan) at that port's targetPort.
    conditions: pod -> its endpoint's conditions; when given, the pods it names are the
        endpoints (live_pods is not read) and carry them — a service with
        publishNotReadyAddresses lists them all as ready (published_conditions)
    A LoadBalancer reported by hostname (loadBalancer.address: hostname, as AWS's) gives no
    load_balancer_ips: kube-proxy then writes no rules for the VIP, and traffic from the
    cluster to it goes out through the LB."""
    out = []
    if conditions is not None:
        live_pods = conditions
    by_hostname = {lb.service for lb in plan.load_balancers if lb.address == "hostname"}
    for svc in plan.services:
        if not_proxied(svc.labels):
            continue
        pods = [p for p in plan.pods
                if p.name in svc.endpoints and (live_pods is None or p.name in live_pods)]
        affinity = svc.session_affinity_timeout if svc.session_affinity == "ClientIP" else None
        lb_ips = (svc.vip,) if svc.vip and svc.name not in by_hostname else ()
        for port in svc.all_ports:
            eps = tuple(_endpoint(p.ip, port.target_port, p.node, p.name, conditions,
                                  svc.publish_not_ready_addresses) for p in pods)
            out.append(ServicePort(
                namespace=NAMESPACE, name=svc.name, port_name=port.name, protocol=port.protocol,
                cluster_ip=svc.cluster_ip, port=port.port, target_port=port.target_port,
                node_port=port.node_port, load_balancer_ips=lb_ips,
                external_traffic_policy=svc.external_traffic_policy,
                session_affinity_seconds=affinity,
                health_check_node_port=svc.health_check_node_port, endpoints=eps,
                external_ips=svc.external_ips,
                internal_traffic_policy=svc.internal_traffic_policy,
                load_balancer_source_ranges=svc.load_balancer_source_ranges))
    return out


def endpoint_conditions(pod_ready: bool, terminating: bool,
                        publish_not_ready_addresses: bool = False) -> EndpointConditions:
    """A pod's endpoint conditions as the EndpointSlice controller writes them (upstream's
    podToEndpoint): serving is the pod's readiness, terminating its deletion; ready is
    serving and not terminating — or always, for a service with publishNotReadyAddresses."""
    ready = publish_not_ready_addresses or (pod_ready and not terminating)
    return EndpointConditions(ready=ready, serving=pod_ready, terminating=terminating)


def published_conditions(c: EndpointConditions,
                         publish_not_ready_addresses: bool) -> EndpointConditions:
    """A pod's conditions as published for one service: with publishNotReadyAddresses, ready
    whatever the pod's state (serving and terminating stay as they are)."""
    return c._replace(ready=True) if publish_not_ready_addresses else c


def _endpoint(ip: str, port: int, node: str, pod: str,
              conditions: Mapping[str, EndpointConditions] | None,
              publish_not_ready_addresses: bool = False) -> Endpoint:
    if conditions is None:
        return Endpoint(ip, port, node)
    c = published_conditions(conditions[pod], publish_not_ready_addresses)
    return Endpoint(ip, port, node, ready=c.ready, serving=c.serving, terminating=c.terminating)


def node_context(plan: Plan, node: str) -> NodeContext:
    """The plan's node `node` as the data planes see it."""
    # kube-proxy's --cluster-cidr: the pod range in classic mode; in container-native mode
    # pods live in the VPC ranges (aws-vpc-cni clusters set it to the VPC CIDR)
    n = plan.node(node)
    cluster_cidr = plan.pod_cidr if plan.mode == "nodeport" else None
    return NodeContext(node_name=node, node_ip=n.ip, cluster_cidr=cluster_cidr)
