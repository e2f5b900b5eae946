"""The topology's typed model: the dataclasses a topology file becomes, the names and ranges the
testbed reserves for itself, and what a topology implies (pod placement, VIPs, node ports).

Pure and unchecked: testbed.spec.topology reads and checks a file into these.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from testbed.spec.yamldoc import Document

MODES = ("nodeport", "container-native")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PROTOCOLS = ("TCP", "UDP")       # what the testbed's pods and LB speak (upstream also has SCTP)
TRAFFIC_POLICIES = ("Cluster", "Local")
LB_ADDRESS_KINDS = ("ip", "hostname")
LB_KINDS = ("l4", "l7")        # loadBalancer.kind: the cloud LB implementation
TIMING_MODES = ("realistic", "instant")
MAX_SERVICE_PORTS = 100          # per service: each is a socket on every pod and rules on nodes
NODEPORT_RANGE = (30000, 32767)
INTERNET_CIDR = ipaddress.IPv4Network("203.0.113.0/24")   # documentation range: "the internet"
LB_CIDR = ipaddress.IPv4Network("198.51.100.0/24")        # documentation range: the LB's VIPs
VIP_RANGE = (LB_CIDR.network_address + 10, LB_CIDR.network_address + 250)   # .1 gateway, .2 lb0
NODE_HOST_OFFSET = 10       # node k of a subnet gets subnet address 10+k
POD_HOST_OFFSET = 64        # container-native pods take subnet addresses from here up
MAX_NODES = 250
MAX_PODS = 5000             # in all deployments together
MAX_SUBNETS = 200           # AWS's default quota per VPC; each subnet is an OVS bridge here
MAX_CLIENTS = 200
MAX_VNI = 9_999_999         # the device flannel.<VNI> must fit the kernel's 15-character names
MIN_INTERVAL_MS = 100.0     # health checks: the checker probes every target each interval
MIN_TIMEOUT_MS = 10.0

# Names the testbed gives its own hosts and switches (plan.py's naming scheme): Mininet keeps
# hosts and switches in one name space, so no node or client may take one of these.
CORE_SWITCH = "vpc0"                            # subnet k's switch is vpc<k>
SWITCH_NAME_RE = re.compile(r"vpc[0-9]+")
LB_HOST = "lb0"                                 # the load balancer's health-check host
DEFAULT_CLIENT = "client1"
GATEWAY_SUBNETS = ("internet", "lb")            # the plan's own gateways, beside the subnets
POD_NAME_RE = re.compile(r"(?P<deployment>.+)-(0|[1-9][0-9]*)")   # pod k of web is web-k

DEFAULT_VPC = ipaddress.IPv4Network("192.168.0.0/16")
DEFAULT_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
# A VPC is private (RFC 1918); pod and service ranges may also come from the shared address
# space (RFC 6598), as some clusters' pod ranges do. Everything else is the kernel's (loopback,
# link-local, where pods' gateway 169.254.1.1 lives; multicast; reserved), the testbed's
# (the internet side, the LB's range) or the public internet's.
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                          "192.168.0.0/16"))
SHARED_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
SPECIAL_RANGES = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "the loopback range 127.0.0.0/8"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "the link-local range 169.254.0.0/16"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "the multicast range 224.0.0.0/4"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "the reserved range 240.0.0.0/4"),
    (INTERNET_CIDR, f"the testbed's internet side ({INTERNET_CIDR})"),
    (LB_CIDR, f"the testbed's load balancer range ({LB_CIDR})"),
)
MODE_HINT = ("the mode is set by loadBalancer.targets (nodeport or container-native), "
             "or by --mode on the command line")


@dataclass(frozen=True)
class Subnet:
    """A VPC subnet (an availability zone's share of the VPC): one switch, one gateway."""
    name: str
    cidr: ipaddress.IPv4Network


@dataclass(frozen=True)
class Vpc:
    """The cloud network the nodes live in.

    cidr: the VPC's whole range
    subnets: its subnets, in file order
    max_pods_per_node: ENI address slots per node (container-native mode's pod limit)
    """
    cidr: ipaddress.IPv4Network
    subnets: tuple[Subnet, ...]
    max_pods_per_node: int


@dataclass(frozen=True)
class Bgp:
    """Calico-style BGP options (cni.routing: bgp; docs/bgp.md).

    as_number: the nodes' AS (Calico's default 64512)
    node_to_node_mesh: every node peers with every other (Calico's nodeToNodeMeshEnabled)
    fabric_peer: every node peers with the fabric's BGP speaker (Calico's global BGPPeer to a
        top-of-rack); the VPC routes pod blocks only from what that speaker learned
    fabric_as_number: the fabric speaker's AS (equal to as_number: iBGP, the speaker is a route
        reflector; else eBGP)
    hold_time_s: the BGP hold time (a failed node's routes go after it; keepalive: a third)
    """
    as_number: int = 64512
    node_to_node_mesh: bool = True
    fabric_peer: bool = True
    fabric_as_number: int = 65000
    hold_time_s: int = 90


@dataclass(frozen=True)
class Cni:
    """The pod network plugin.

    overlay: classic mode's flannel backend: vxlan (an overlay) or host-gw (routes only)
    pod_cidr: classic mode's cluster pod range; each node gets a /node_prefix of it
    service_cidr: where ClusterIPs come from
    routing: "default" (flannel in nodeport mode, aws-vpc-cni in container-native mode) or
        "bgp" (Calico: pod_cidr cut into /block_size blocks affine to nodes, announced by BGP)
    """
    overlay: str
    pod_cidr: ipaddress.IPv4Network
    node_prefix: int
    service_cidr: ipaddress.IPv4Network
    vxlan_port: int
    vxlan_vni: int
    mtu: int
    ip_masq: bool = True     # flanneld --ip-masq: pods' traffic leaving the pod range is SNATed
    routing: str = "default"
    block_size: int = 26     # Calico's IPPool blockSize
    bgp: Bgp = Bgp()


@dataclass(frozen=True)
class Node:
    """A Kubernetes node: a VM in one VPC subnet."""
    name: str
    subnet: str


@dataclass(frozen=True)
class Deployment:
    """A set of identical pods.

    placement: (node, count) pairs; empty means spread round-robin over all nodes
    container_port: the port the pod's server listens on
    max_surge, max_unavailable: strategy.rollingUpdate, a count or "N%" (upstream's 25% each)
    min_ready_s: minReadySeconds: how long a new pod is Ready before it counts as available
    readiness_gates: the pods' readinessGates condition types: a new pod is Ready only once
        the cloud LB reports its target healthy (container-native mode)
    """
    name: str
    replicas: int
    placement: tuple[tuple[str, int], ...]
    container_port: int
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"
    min_ready_s: float = 0.0
    readiness_gates: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServicePortSpec:
    """One entry of a Service's `ports:` list, in Kubernetes' field names.

    name: the port's name ("" only for a Service's single port)
    port, target_port: the Service's port and the pods' port
    protocol: TCP or UDP
    node_port: the NodePort (None: allocated, for NodePort and LoadBalancer Services)
    """
    name: str
    port: int
    target_port: int
    protocol: str = "TCP"
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service in front of a deployment's pods.

    port, target_port, node_port, protocol: the first port (the single-port shorthand)
    ports: every port; () means the shorthand's one unnamed port
    """
    name: str
    type: str
    selector: str
    port: int
    target_port: int
    node_port: int | None
    external_traffic_policy: str
    session_affinity: str
    session_affinity_timeout: int
    health_check_node_port: int | None
    load_balancer_ip: ipaddress.IPv4Address | None
    protocol: str = "TCP"
    ports: tuple[ServicePortSpec, ...] = ()
    internal_traffic_policy: str = "Cluster"
    publish_not_ready_addresses: bool = False
    labels: tuple[tuple[str, str], ...] = ()   # metadata.labels, sorted by key
    # spec.externalIPs: addresses the cluster admin routes to a node, which kube-proxy serves
    # the service's ports on (none is any node's own address)
    external_ips: tuple[str, ...] = ()
    # spec.loadBalancerSourceRanges: client CIDRs allowed to reach the LB (normalized, in order)
    load_balancer_source_ranges: tuple[str, ...] = ()
    # spec.allocateLoadBalancerNodePorts: False gives a LoadBalancer service no node ports but
    # the ones written (the LB's ip targets need none; instance targets do)
    allocate_load_balancer_node_ports: bool = True
    # the cloud LB health-checks this service's targets through another service's port (a
    # target group's "health check port" override); set by experiments, not by topology files
    health_via: str | None = None

    @property
    def all_ports(self) -> tuple[ServicePortSpec, ...]:
        """Every port, the single-port shorthand included (as ServicePlan.all_ports)."""
        return self.ports or (ServicePortSpec("", self.port, self.target_port, self.protocol,
                                              self.node_port),)


@dataclass(frozen=True)
class HealthCheck:
    """How the cloud load balancer checks a backend (timeout < interval, as cloud LBs require;
    the timeout defaults to 500 ms or half the interval, whichever is shorter)."""
    interval_s: float = 1.0
    timeout_s: float = 0.5
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2


@dataclass(frozen=True)
class LoadBalancer:
    """The cloud load balancer in front of the cluster's LoadBalancer services.

    vip: the first VIP; LoadBalancer services take VIPs from here up, in file order
    targets: nodeport (instance targets) or container-native (ip targets); the default mode
    preserve_client_ip: whether the LB keeps the client's address (NLB-like) or SNATs (ALB-like)
    """
    vip: ipaddress.IPv4Address
    targets: str
    preserve_client_ip: bool
    health_check: HealthCheck
    # how the cloud reports the LB in status.loadBalancer.ingress: "ip" (GCP: nodes short-circuit
    # the VIP) or "hostname" (AWS NLB/ALB: traffic to the VIP goes out through the LB)
    address: str = "ip"
    # which cloud LB implements it: l4 (the VPC's OpenFlow NLB-like balancer) or l7 (HAProxy
    # as an HTTP proxy LB, ALB / GCLB-like) -- a key of testbed.cloud.lb.LOAD_BALANCERS
    kind: str = "l4"


@dataclass(frozen=True)
class Timing:
    """The control plane's clock: how long Kubernetes and the cloud take to act (the topology's
    `kubernetes:` section). Defaults are upstream's; mode "instant" makes every change at once
    and in the most favourable order (the idealised picture).

    readiness_*: the pod's readiness probe (kubelet): period, initial delay, thresholds
    termination_grace_period_s, pre_stop_s: pod deletion: preStop sleep, then SIGTERM, SIGKILL
        at the grace period's end; the endpoint is ready=false serving=true terminating=true
    min_sync_period_s: kube-proxy's --iptables-min-sync-period (at most one sync per period)
    sync_period_s: kube-proxy's --iptables-sync-period: how often it checks its canary chain
        (a full sync when it is gone) and when a failed sync is retried; the kubelet checks
        its own canary every 2 x this (upstream: 1 min against the default 30 s)
    endpoint_updates_batch_period_s: the EndpointSlice controller's batching (0: at once)
    node_monitor_grace_period_s: a silent node becomes NotReady after this (node lifecycle
        controller); its pods' endpoints go not ready
    not_ready_toleration_s: pods are evicted (and recreated elsewhere) this long after NotReady
    lb_registration_delay_s, lb_deregistration_lag_s: the cloud LB controller's lag to register
        and deregister targets after endpoints change
    lb_deregistration_delay_s: the LB's connection draining: a deregistered target gets no new
        connections but keeps its open ones this long
    """
    mode: str = "realistic"
    readiness_period_s: float = 10.0
    readiness_initial_delay_s: float = 0.0
    readiness_failure_threshold: int = 3
    readiness_success_threshold: int = 1
    termination_grace_period_s: float = 30.0
    pre_stop_s: float = 0.0
    min_sync_period_s: float = 1.0
    sync_period_s: float = 30.0
    endpoint_updates_batch_period_s: float = 0.0
    node_monitor_grace_period_s: float = 50.0   # 40s before Kubernetes 1.32
    not_ready_toleration_s: float = 300.0
    lb_registration_delay_s: float = 0.0
    lb_deregistration_lag_s: float = 0.0
    lb_deregistration_delay_s: float = 300.0

    @property
    def instant(self) -> bool:
        return self.mode == "instant"


@dataclass(frozen=True)
class Client:
    """An external client on the internet side of the load balancer."""
    name: str


@dataclass(frozen=True)
class Links:
    """Shaping of host links to the fabric (bw in Mbit/s; delay and loss need netem)."""
    bw: float | None = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0


@dataclass(frozen=True)
class KubeProxyConfiguration:
    """kube-proxy's configuration, the part a topology sets (`kubeProxy:`,
    testbed.spec.kube_proxy).

    mode: the service data plane every node runs (a key of the data plane registry)
    algorithm: how the ebpf mode picks a backend, random or maglev (Cilium's
        loadBalancer.algorithm); the other modes keep their own
    lb_mode: how the ebpf mode forwards NodePort and LB traffic to a pod on another node:
        snat, or dsr (direct server return: the reply leaves the pod's node straight to the
        client; Cilium's loadBalancer.mode, --bpf-lb-mode); the other modes SNAT
    nftables_cold_start_in_steps: the nftables mode's full sync into a node without its table
        as several transactions (kubernetes#139328's proposal, nftables/coldstart.py); off:
        one transaction, as upstream's merged code
    conntrack_tcp_be_liberal: kube-proxy sets net.netfilter.nf_conntrack_tcp_be_liberal=1 on
        its node (KubeProxyConntrackConfiguration.tcpBeLiberal); the iptables mode then writes
        no INVALID DROP rule, as it does on any node where the sysctl is set
    """
    mode: str = "iptables"   # upstream's default on Linux
    algorithm: str = "random"   # Cilium's default
    lb_mode: str = "snat"       # Cilium's default
    nftables_cold_start_in_steps: bool = False
    conntrack_tcp_be_liberal: bool = False   # upstream's default


@dataclass(frozen=True)
class Topology:
    """A whole emulated cluster as the user described it."""
    name: str
    file: str
    mode: str
    vpc: Vpc
    cni: Cni
    nodes: tuple[Node, ...]
    deployments: tuple[Deployment, ...]
    services: tuple[Service, ...]
    load_balancer: LoadBalancer
    clients: tuple[Client, ...]
    links: Links
    doc: Document | None = field(repr=False, compare=False, default=None)
    kubernetes: Timing = field(default_factory=Timing)
    kube_proxy: KubeProxyConfiguration = field(default_factory=KubeProxyConfiguration)

    def with_mode(self, mode: str) -> Topology:
        return replace(self, mode=mode)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def subnet(self, name: str) -> Subnet:
        return next(s for s in self.vpc.subnets if s.name == name)


def placement(topo: Topology, deployment: Deployment) -> list[str]:
    """The node of each of a deployment's pods, in pod order (pod i → node)."""
    if deployment.placement:
        return [n for n, count in deployment.placement for _ in range(count)]
    names = [n.name for n in topo.nodes]
    return [names[i % len(names)] for i in range(deployment.replicas)] if names else []


def pods_per_node(topo: Topology) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in topo.deployments:
        for node in placement(topo, d):
            counts[node] = counts.get(node, 0) + 1
    return counts


def service_vips(topo: Topology) -> list[ipaddress.IPv4Address]:
    """VIP of each LoadBalancer service, in file order."""
    out, nxt = [], topo.load_balancer.vip
    for svc in topo.services:
        if svc.type != "LoadBalancer":
            continue
        if svc.load_balancer_ip is not None:
            out.append(svc.load_balancer_ip)
        else:
            while nxt in [s.load_balancer_ip for s in topo.services]:
                nxt += 1
            out.append(nxt)
            nxt += 1
    return out


@dataclass(frozen=True)
class ServiceNodePorts:
    """A service's node ports once allocated.

    ports: the nodePort of each of its ports, in Service.all_ports order (None: ClusterIP)
    health_check: the healthCheckNodePort (LoadBalancer services with Local policy)
    """
    ports: tuple[int | None, ...]
    health_check: int | None


def allocate_node_ports(topo: Topology) -> dict[str, ServiceNodePorts]:
    """service name -> its node ports, filling the unset ones deterministically from the bottom
    of the range (upstream picks at random; a testbed wants repeatable runs).

    As upstream's allocator (initNodePorts): ports of one service with the same port number
    (TCP and UDP 53, say) share one node port — the one written on either, else one allocated;
    the healthCheckNodePort comes after the service's node ports."""
    taken = {p for s in topo.services for p in _written_node_ports(s) if p}
    free = (p for p in range(NODEPORT_RANGE[0], NODEPORT_RANGE[1] + 1) if p not in taken)
    out = {}
    for svc in topo.services:
        try:
            ports = port_node_ports(svc, free)
            hc = svc.health_check_node_port
            if svc.external_traffic_policy == "Local" and svc.type == "LoadBalancer" and hc is None:
                hc = next(free)
        except StopIteration:
            raise ValueError("the NodePort range 30000-32767 is exhausted") from None
        out[svc.name] = ServiceNodePorts(tuple(ports), hc)
    return out


def port_node_ports(svc: Service, free: Iterator[int]) -> list[int | None]:
    """Each port's nodePort, the unset ones of a NodePort or LoadBalancer service taken from
    `free`: the TCP and UDP ports of one number share one (upstream's allocator), a number
    written on a later port of the same number included. StopIteration when `free` runs out."""
    ports: list[int | None] = []
    by_port: dict[int, int] = {}
    for i, sp in enumerate(svc.all_ports):
        np_ = sp.node_port
        if needs_node_ports(svc) and np_ is None:
            written = next((q.node_port for q in svc.all_ports[i + 1:]
                            if q.port == sp.port and q.node_port), None)
            np_ = by_port.get(sp.port) or written or next(free)
        if np_ is not None:
            by_port.setdefault(sp.port, np_)
        ports.append(np_)
    return ports


def needs_node_ports(svc: Service) -> bool:
    """Whether the unset node ports of a service are allocated: NodePort services, and
    LoadBalancer services unless allocateLoadBalancerNodePorts is false (upstream's
    shouldAllocateNodePorts)."""
    return svc.type == "NodePort" or (svc.type == "LoadBalancer"
                                      and svc.allocate_load_balancer_node_ports)


def _written_node_ports(svc: Service) -> list[int | None]:
    return [p.node_port for p in svc.all_ports] + [svc.health_check_node_port]


def node_ports(topo: Topology) -> dict[str, tuple[int | None, int | None]]:
    """service name -> (its first port's nodePort, healthCheckNodePort); see
    allocate_node_ports for every port's."""
    return {name: (np_.ports[0], np_.health_check)
            for name, np_ in allocate_node_ports(topo).items()}


def with_cni_routing(topo: Topology, routing: str | None) -> Topology:
    """The topology with cni.routing set (an experiment variant's `cni`, `cnlb up --cni`);
    None: unchanged."""
    return topo if routing is None else replace(topo, cni=replace(topo.cni, routing=routing))
