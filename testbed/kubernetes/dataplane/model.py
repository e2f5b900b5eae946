"""What every kube-proxy mode is given: service ports with their endpoints, and the node.

The types mirror upstream's pkg/proxy ServicePort / Endpoint and stay the same for every mode
(iptables today; nftables, IPVS and eBPF later): a mode reads them, none extends them. Also
here, because they are mode-neutral in upstream too: which endpoints a node uses
(CategorizeEndpoints), what the health-check node port server reports (pkg/proxy/healthcheck),
and how the testbed's plan becomes this model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
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
    internal_traffic_policy: str = "Cluster"

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


@dataclass(frozen=True)
class NodeContext:
    """The node a data plane's state is rendered for.

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


def service_port_name(namespace: str, name: str, port_name: str = "") -> str:
    """"ns/name:port", the string every hash and comment is made from."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


# --- which endpoints a service uses on this node (upstream CategorizeEndpoints) ------------------


class NodeEndpoints(NamedTuple):
    """What one service port needs on one node."""

    cluster_eps: tuple[Endpoint, ...]  # every ready endpoint (policy Cluster's members)
    local_eps: tuple[Endpoint, ...]  # this node's ready endpoints (Local policy only)
    reachable_eps: tuple[Endpoint, ...]  # every endpoint a packet may be sent to from here
    has_endpoints: bool  # any ready endpoint anywhere
    has_external_endpoints: bool  # external traffic has somewhere to go on this node


def categorize_endpoints(svc: ServicePort, node_name: str) -> NodeEndpoints:
    """Which of `svc`'s endpoints the node `node_name` uses, and for what traffic."""
    ready = svc.ready_endpoints
    local = tuple(ep for ep in ready if ep.node == node_name) if svc.external_policy_local else ()
    has_endpoints = bool(ready)
    has_external = has_endpoints and (bool(local) or not svc.external_policy_local)
    # Ready local endpoints are a subset of the ready cluster endpoints, so the union is `ready`.
    return NodeEndpoints(ready, local, ready, has_endpoints, has_external)


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
    healthCheckNodePort and Local policy, counting its ready endpoints on this node (upstream
    counts per Service, so ports of one Service share one health check)."""
    entries: dict[tuple[str, str], HealthCheck] = {}
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


# --- the testbed's plan as this model -------------------------------------------------------------


def service_ports(plan: Plan, live_pods: Collection[str] | None = None) -> list[ServicePort]:
    """The plan's services as kube-proxy's model: one ServicePort each, with the endpoints of
    the pods that are alive (live_pods: names; None = every pod of the plan)."""
    out = []
    for svc in plan.services:
        eps = tuple(Endpoint(p.ip, svc.target_port, p.node) for p in plan.pods
                    if p.name in svc.endpoints and (live_pods is None or p.name in live_pods))
        affinity = svc.session_affinity_timeout if svc.session_affinity == "ClientIP" else None
        out.append(ServicePort(
            namespace=NAMESPACE, name=svc.name, port_name="", protocol=svc.protocol,
            cluster_ip=svc.cluster_ip, port=svc.port, target_port=svc.target_port,
            node_port=svc.node_port, load_balancer_ips=(svc.vip,) if svc.vip else (),
            external_traffic_policy=svc.external_traffic_policy,
            session_affinity_seconds=affinity,
            health_check_node_port=svc.health_check_node_port, endpoints=eps))
    return out


def node_context(plan: Plan, node: str) -> NodeContext:
    """The plan's node `node` as the data planes see it."""
    # kube-proxy's --cluster-cidr: the pod range in classic mode; in container-native mode
    # pods live in the VPC ranges (aws-vpc-cni clusters set it to the VPC CIDR)
    n = plan.node(node)
    cluster_cidr = plan.pod_cidr if plan.mode == "nodeport" else None
    return NodeContext(node_name=node, node_ip=n.ip, cluster_cidr=cluster_cidr)
