"""The topology: what a user's YAML file says, as typed, validated dataclasses.

A topology reads like the talk's diagram: a VPC with subnets, nodes in subnets, deployments of
pods placed on nodes, services in front of them, a cloud load balancer with a VIP, external
clients. `load_topology(file)` parses and checks it; every problem is one line pointing at the
file, the line and the field. Nothing here touches the machine: the netem check takes the
machine's answer as an argument.

The promise: a topology this module accepts builds. The plan, the CNI scripts, kube-proxy's rules
and the fabric config render, and `cnlb up` does not fail on the file's content, so every limit
the builders rely on (interface names of 15 characters, addresses inside their ranges, host and
switch names that do not collide, L2 adjacency for host-gw...) is checked here, where a problem
can still point at a line. tests/unit/test_validate_property.py holds the module to it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Optional

from testbed.errors import InputError
from testbed.spec.fields import (NAME_RE, Reader, address, boolean, choice, did_you_mean, duration_ms,
                     integer, kind_of, name, network, number, text)
from testbed.spec.yamldoc import Document, read_document

MODES = ("nodeport", "container-native")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
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
class Cni:
    """The pod network plugin.

    overlay: classic mode's flannel backend: vxlan (an overlay) or host-gw (routes only)
    pod_cidr: classic mode's cluster pod range; each node gets a /node_prefix of it
    service_cidr: where ClusterIPs come from
    """
    overlay: str
    pod_cidr: ipaddress.IPv4Network
    node_prefix: int
    service_cidr: ipaddress.IPv4Network
    vxlan_port: int
    vxlan_vni: int
    mtu: int


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
    """
    name: str
    replicas: int
    placement: tuple[tuple[str, int], ...]
    container_port: int


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service in front of a deployment's pods."""
    name: str
    type: str
    selector: str
    port: int
    target_port: int
    node_port: Optional[int]
    external_traffic_policy: str
    session_affinity: str
    session_affinity_timeout: int
    health_check_node_port: Optional[int]
    load_balancer_ip: Optional[ipaddress.IPv4Address]
    protocol: str = "TCP"
    # the cloud LB health-checks this service's targets through another service's port (a
    # target group's "health check port" override); set by experiments, not by topology files
    health_via: Optional[str] = None


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


@dataclass(frozen=True)
class Client:
    """An external client on the internet side of the load balancer."""
    name: str


@dataclass(frozen=True)
class Links:
    """Shaping of host links to the fabric (bw in Mbit/s; delay and loss need netem)."""
    bw: Optional[float] = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0


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
    doc: Document = field(repr=False, compare=False, default=None)

    def with_mode(self, mode: str) -> "Topology":
        return replace(self, mode=mode)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def subnet(self, name: str) -> Subnet:
        return next(s for s in self.vpc.subnets if s.name == name)


TOP_KEYS = {"name", "vpc", "cni", "nodes", "deployments", "services", "loadBalancer", "clients",
            "links"}


def load_topology(file: str, mode: Optional[str] = None, netem: Optional[bool] = None) -> Topology:
    """Read, parse and validate a topology file.

    mode: override the file's loadBalancer.targets (the CLI's --mode)
    netem: whether the kernel has netem (None = do not check delay/loss)
    """
    doc = read_document(file)
    return parse_topology(doc, mode=mode, netem=netem)


def parse_topology(doc: Document, mode: Optional[str] = None,
                   netem: Optional[bool] = None) -> Topology:
    r = Reader(doc)
    if not isinstance(doc.data, dict):
        r.problem((), "a topology must be a mapping of sections",
                  f"start with 'name:', 'vpc:', 'nodes:' (sections: {', '.join(sorted(TOP_KEYS))})")
        r.raise_if_any()
    r.mapping((), TOP_KEYS, required=("nodes",), hints={"mode": MODE_HINT})
    topo_name = r.get((), "name", name(20), default="cluster")
    vpc = _vpc(r)
    cni = _cni(r)
    nodes = _nodes(r, vpc)
    deployments = _deployments(r, _declared(r, "nodes"))
    services = _services(r, deployments, _declared(r, "deployments"))
    lb = _load_balancer(r)
    clients = _clients(r)
    links = _links(r, netem)
    r.raise_if_any()
    topo = Topology(topo_name, doc.file, mode or lb.targets, vpc, cni, nodes, deployments,
                    services, lb, clients, links, doc)
    _cross_checks(r, topo)
    r.raise_if_any()
    return topo


# -- sections -----------------------------------------------------------------------------------

def _vpc(r: Reader) -> Vpc:
    path = ("vpc",)
    r.mapping(path, {"cidr", "subnets", "maxPodsPerNode"})
    cidr = r.get(path, "cidr", network, default=DEFAULT_VPC)
    if cidr is not None and not any(cidr.subnet_of(p) for p in PRIVATE_RANGES):
        r.problem(path + ("cidr",), f"{cidr} is not a private range: {_holds(cidr)}",
                  "use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, "
                  "e.g. 192.168.0.0/16")
        cidr = None
    subnets = []
    raw = r.value(path + ("subnets",))
    if not r.has(path + ("subnets",)) or raw in (None, {}):
        # no subnets written: one subnet, the VPC's first /24 (or the whole VPC if smaller)
        base = cidr or DEFAULT_VPC
        if base.prefixlen > 25:
            r.problem(path + ("cidr",), f"{base} has no room for a subnet (/25 is the smallest)",
                      "use /25 or larger for vpc.cidr (a /16 is usual)")
        subnets.append(Subnet("default", next(base.subnets(new_prefix=24))
                              if base.prefixlen <= 24 else base))
    for sname in r.mapping(path + ("subnets",), None, what="subnet name: CIDR"):
        spath = path + ("subnets", sname)
        try:
            name(12)(sname)
        except ValueError as exc:
            r.problem(spath, str(exc), "name subnets like az-a")
            continue
        if sname in GATEWAY_SUBNETS:
            r.problem(spath, f"'{sname}' is the name of the testbed's own {sname} gateway",
                      "name subnets like az-a")
            continue
        net = r.get(path + ("subnets",), sname, network,
                    fix="write the subnet as a CIDR like 192.168.1.0/24")
        if net is None:
            continue
        if cidr is not None and not net.subnet_of(cidr):
            r.problem(spath, f"{net} is not inside the VPC {cidr}",
                      f"pick a subnet inside {cidr} or widen vpc.cidr")
        if net.prefixlen > 25:
            r.problem(spath, f"/{net.prefixlen} is too small for a subnet",
                      "use /25 or larger (a /24 is usual)")
        for other in subnets:
            if net.overlaps(other.cidr):
                r.problem(spath, f"{net} overlaps subnet '{other.name}' ({other.cidr})",
                          "give each subnet its own range")
        subnets.append(Subnet(sname, net))
    if len(subnets) > MAX_SUBNETS:
        r.problem(path + ("subnets",), f"{len(subnets)} subnets is more than the {MAX_SUBNETS} "
                  "supported", f"use at most {MAX_SUBNETS} subnets")
    max_pods = r.get(path, "maxPodsPerNode", integer(1, 250), default=17,
                     fix="set maxPodsPerNode between 1 and 250 (an m5.large has 29 slots)")
    return Vpc(cidr or DEFAULT_VPC, tuple(subnets), max_pods or 17)


def _holds(net: ipaddress.IPv4Network) -> str:
    """What a range that is not private holds instead, for the message."""
    for special, what in SPECIAL_RANGES:
        if net.overlaps(special):
            return f"it overlaps {what}"
    return "it holds public addresses"


def _cni(r: Reader) -> Cni:
    path = ("cni",)
    r.mapping(path, {"overlay", "podCIDR", "nodePrefix", "serviceCIDR", "vxlanPort", "vni", "mtu"})
    nets = {}
    for key, default, example in (("podCIDR", DEFAULT_POD_CIDR, "10.244.0.0/16"),
                                  ("serviceCIDR", DEFAULT_SERVICE_CIDR, "10.96.0.0/12")):
        net = r.get(path, key, network, default=default)
        if net is not None and not any(net.subnet_of(p) for p in PRIVATE_RANGES + (SHARED_RANGE,)):
            r.problem(path + (key,), f"{net} is not a private range: {_holds(net)}",
                      f"use a private range such as {example} (RFC 1918, or 100.64.0.0/10)")
            net = None
        nets[key] = net
    return Cni(
        overlay=r.get(path, "overlay", choice("vxlan", "host-gw"), default="vxlan"),
        pod_cidr=nets["podCIDR"],
        node_prefix=r.get(path, "nodePrefix", integer(16, 28), default=24),
        service_cidr=nets["serviceCIDR"],
        vxlan_port=r.get(path, "vxlanPort", integer(1, 65535), default=8472),
        vxlan_vni=r.get(path, "vni", integer(1, MAX_VNI), default=1,
                        fix=f"use a VNI of 1-{MAX_VNI}: the node's device is flannel.<VNI>, and "
                            "interface names have at most 15 characters"),
        mtu=r.get(path, "mtu", integer(1280, 1500), default=1450),
    )


def _host_name(r: Reader, path, value, kind: str, example: str) -> bool:
    """Check a node's or client's name (a Mininet host); report and return False if bad."""
    try:
        name(12)(value)
    except ValueError as exc:
        r.problem(path, str(exc), f"name {kind}s like {example} (at most 12 characters)")
        return False
    if value == LB_HOST or SWITCH_NAME_RE.fullmatch(value):
        what = ("the load balancer's health-check host" if value == LB_HOST
                else "a switch of the fabric (vpc0 is the core, vpc1... the subnets)")
        r.problem(path, f"'{value}' is the testbed's name for {what}",
                  f"name the {kind} like {example} ({LB_HOST} and vpc<N> are taken)")
        return False
    return True


def _nodes(r: Reader, vpc: Vpc) -> tuple[Node, ...]:
    raw = r.mapping(("nodes",), None, what="node name: {subnet: ...}")
    subnet_names = [s.name for s in vpc.subnets]
    nodes = []
    if r.value(("nodes",)) in (None, {}) or (isinstance(r.value(("nodes",)), dict) and not raw):
        r.problem(("nodes",), "no nodes", "add at least one node, e.g. 'node1: {subnet: az-a}'")
    if len(raw) > MAX_NODES:
        r.problem(("nodes",), f"{len(raw)} nodes is more than the {MAX_NODES} supported",
                  f"use at most {MAX_NODES} nodes")
        return ()
    for nname in raw:
        path = ("nodes", nname)
        if not _host_name(r, path, nname, "node", "node1"):
            continue
        r.mapping(path, {"subnet"})
        if not isinstance(r.value(path), (dict, type(None))):
            continue
        if r.has(path + ("subnet",)):
            subnet = r.get(path, "subnet", text)
            if subnet is None:
                continue
        elif len(subnet_names) == 1:
            subnet = subnet_names[0]
        else:   # several subnets (or none that parsed, which is reported at vpc.subnets)
            if subnet_names:
                r.problem(path + ("subnet",), f"missing: the VPC has {len(subnet_names)} subnets",
                          f"add 'subnet:' with one of {', '.join(subnet_names)}")
            continue
        if subnet not in subnet_names:
            if not _unknown(subnet, _declared_subnets(r), 12):
                continue
            r.problem(path + ("subnet",), f"unknown subnet '{subnet}'",
                      did_you_mean(subnet, subnet_names, f"use one of {', '.join(subnet_names)}"))
            continue
        nodes.append(Node(nname, subnet))
    return tuple(nodes)


def _declared(r: Reader, section: str) -> list:
    """Every name written in a section, valid or not: references are checked against these, so
    one bad node does not also make every reference to it an error."""
    raw = r.value((section,))
    return list(raw) if isinstance(raw, dict) else []


def _unknown(ref: str, declared: list, max_len: int) -> bool:
    """Whether a reference is to report as unknown: it names nothing declared, and every
    declared name is well formed (else the reference may mean the ill-formed one, a 'node2'
    with a newline, say, which is reported where it is declared)."""
    def well_formed(n) -> bool:
        return isinstance(n, str) and bool(NAME_RE.fullmatch(n)) and len(n) <= max_len
    return ref not in declared and all(well_formed(n) for n in declared)


def _declared_subnets(r: Reader) -> list:
    raw = r.value(("vpc", "subnets"))
    return list(raw) if isinstance(raw, dict) and raw else ["default"]


def _deployments(r: Reader, node_names) -> tuple[Deployment, ...]:
    raw = r.mapping(("deployments",), None, what="deployment name: {replicas: ...}")
    out = []
    total = 0
    for dname in raw:
        path = ("deployments", dname)
        try:
            name(20)(dname)
        except ValueError as exc:
            r.problem(path, str(exc), "name deployments like web (at most 20 characters)")
            continue
        r.mapping(path, {"replicas", "placement", "port"}, what="replicas, placement, port")
        if not isinstance(r.value(path), (dict, type(None))):
            continue
        replicas = r.get(path, "replicas", integer(0, MAX_PODS), default=1,
                         fix=f"set replicas between 0 and {MAX_PODS}")
        port = r.get(path, "port", integer(1, 65535), default=8080, fix="use a port in 1-65535")
        placement = _placement(r, path, replicas, node_names)
        if replicas is not None and total <= MAX_PODS < total + replicas:
            r.problem(_written(r, path + ("replicas",)),
                      f"{total + replicas} pods in all deployments is more than the {MAX_PODS} "
                      "supported", f"use at most {MAX_PODS} pods in all")
        total += replicas or 0
        if replicas is not None and port is not None and placement is not None:
            out.append(Deployment(dname, replicas, placement, port))
    return tuple(out)


def _placement(r: Reader, path, replicas, node_names) -> Optional[tuple]:
    """A deployment's placement: () for spread, (node, count) pairs, None if wrong."""
    ppath = path + ("placement",)
    raw = r.value(ppath)
    if not r.has(ppath) or raw == "spread":
        return ()
    example = "write 'placement: spread' or 'placement: {node1: 2, node2: 1}'"
    if not isinstance(raw, dict):
        r.problem(ppath, f"expected 'spread' or a mapping node: count, got {kind_of(raw)} {raw!r}",
                  did_you_mean(raw, ["spread"], example) if isinstance(raw, str) else example)
        return None
    placement, complete = [], bool(node_names)
    for nname in raw:
        if not node_names:
            break   # the nodes section itself is wrong; that is reported there
        if nname not in node_names:
            if not _unknown(nname, node_names, 12):
                complete = False
                continue
            r.problem(ppath + (nname,), f"unknown node '{nname}'",
                      did_you_mean(nname, node_names, f"use one of {', '.join(node_names)}"))
            complete = False
            continue
        count = r.get(ppath, nname, integer(0, MAX_PODS), fix="give a pod count")
        if count is None:
            complete = False
            continue
        placement.append((nname, count))
    total = sum(c for _, c in placement)
    if replicas is not None and complete and total != replicas:
        r.problem(ppath, f"places {total} pods but replicas is {replicas}",
                  "make the counts add up to replicas, or write 'placement: spread'")
    return tuple(placement)


def _services(r: Reader, deployments, deploy_names) -> tuple[Service, ...]:
    raw = r.mapping(("services",), None, what="service name: {port: ...}")
    out = []
    used_node_ports: dict[int, str] = {}
    nodeport_fix = f"pick a free port in {NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]} or leave it out"

    def claim(path, port: Optional[int], sname: str) -> None:
        if port is None:
            return
        if port in used_node_ports:
            r.problem(path, f"{port} is already used by service '{used_node_ports[port]}'",
                      nodeport_fix)
        used_node_ports[port] = sname

    for sname in raw:
        path = ("services", sname)
        try:
            name(20)(sname)
        except ValueError as exc:
            r.problem(path, str(exc), "name services like web (at most 20 characters)")
            continue
        r.mapping(path, {"type", "selector", "port", "targetPort", "nodePort",
                         "externalTrafficPolicy", "sessionAffinity", "sessionAffinityTimeout",
                         "healthCheckNodePort", "loadBalancerIP", "protocol"},
                  what="type, port, ...")
        body = r.value(path)
        if body is None:
            body = {}   # 'web:' alone: a service with every default, as 'web: {}'
        if not isinstance(body, dict):
            continue
        stype = r.get(path, "type", choice(*SERVICE_TYPES), default="LoadBalancer")
        selector = r.get(path, "selector", text, default=sname)
        if selector is not None and _unknown(selector, deploy_names, 20):
            r.problem(path + (("selector",) if "selector" in body else ()),
                      f"selects deployment '{selector}', which does not exist",
                      did_you_mean(selector, deploy_names,
                                   "add 'selector:' naming one of " + ", ".join(deploy_names)
                                   if deploy_names else "add a deployment under 'deployments:'"))
        port = r.get(path, "port", integer(1, 65535), default=80, fix="use a port in 1-65535")
        deploy = next((d for d in deployments if d.name == selector), None)
        target = r.get(path, "targetPort", integer(1, 65535),
                       default=deploy.container_port if deploy else 8080,
                       fix="use a port in 1-65535")
        if deploy and target is not None and target != deploy.container_port:
            r.problem(path + ("targetPort",), f"{target} is not the port deployment "
                      f"'{deploy.name}' listens on ({deploy.container_port})",
                      f"set targetPort: {deploy.container_port} or change "
                      f"deployments.{deploy.name}.port")
        # what is allowed depends on the type: with a wrong type, say nothing more about it
        external = stype in ("NodePort", "LoadBalancer")
        node_port = None
        if external:
            node_port = r.get(path, "nodePort", integer(*NODEPORT_RANGE), default=None,
                              fix=nodeport_fix)
            claim(path + ("nodePort",), node_port, sname)
        elif stype is not None and "nodePort" in body:
            r.problem(path + ("nodePort",), "a ClusterIP service has no nodePort",
                      "remove nodePort or set type: NodePort")
        etp = r.get(path, "externalTrafficPolicy", choice("Cluster", "Local"), default="Cluster")
        etp_ok = etp is not None and stype is not None
        if etp_ok and not external and "externalTrafficPolicy" in body:
            # as Kubernetes: "may only be set for externally-accessible services"
            r.problem(path + ("externalTrafficPolicy",), "a ClusterIP service has no "
                      "externalTrafficPolicy (it is about traffic from outside the cluster)",
                      "remove externalTrafficPolicy or set type: LoadBalancer")
            etp_ok = False
        elif etp_ok and etp == "Local" and stype != "LoadBalancer":
            r.problem(path + ("externalTrafficPolicy",),
                      "Local applies to LoadBalancer services here",
                      "set type: LoadBalancer or use Cluster")
            etp_ok = False
        hc_port = None
        if "healthCheckNodePort" in body:
            hc_port = r.get(path, "healthCheckNodePort", integer(*NODEPORT_RANGE),
                            fix=nodeport_fix)
            if hc_port is not None and etp_ok and not (stype == "LoadBalancer" and etp == "Local"):
                # as Kubernetes' API validation: the port exists only for the LB's checks of
                # Local services (Cluster services are checked on their nodePort)
                r.problem(path + ("healthCheckNodePort",), "may only be set when type is "
                          "LoadBalancer and externalTrafficPolicy is Local",
                          "remove healthCheckNodePort or set externalTrafficPolicy: Local")
                hc_port = None
            claim(path + ("healthCheckNodePort",), hc_port, sname)
        affinity = r.get(path, "sessionAffinity", choice("None", "ClientIP"), default="None")
        timeout = r.get(path, "sessionAffinityTimeout", integer(1, 86400), default=10800,
                        fix="seconds between 1 and 86400")
        lb_ip = _load_balancer_ip(r, path, stype)
        proto = r.get(path, "protocol", choice("TCP"), default="TCP")
        if None not in (stype, selector, port, target, etp, affinity, timeout, proto):
            out.append(Service(sname, stype, selector, port, target, node_port, etp, affinity,
                               timeout, hc_port, lb_ip, proto))
    return tuple(out)


def _load_balancer_ip(r: Reader, path, stype) -> Optional[ipaddress.IPv4Address]:
    ip = r.get(path, "loadBalancerIP", address, default=None,
               fix="write an address in 198.51.100.10-198.51.100.250")
    if ip is None:
        return None
    fpath = path + ("loadBalancerIP",)
    if stype in ("ClusterIP", "NodePort"):
        r.problem(fpath, f"a {stype} service has no loadBalancerIP",
                  "remove loadBalancerIP or set type: LoadBalancer")
    elif not VIP_RANGE[0] <= ip <= VIP_RANGE[1]:
        r.problem(fpath, _vip_problem(ip), "pick an address in 198.51.100.10-198.51.100.250")
    return ip


def _vip_problem(ip: ipaddress.IPv4Address) -> str:
    if ip == LB_CIDR.network_address + 1:
        return f"{ip} is the gateway of the load balancer range"
    if ip == LB_CIDR.network_address + 2:
        return f"{ip} is the address of {LB_HOST}, the load balancer's health-check host"
    if ip in LB_CIDR:
        return f"{ip} is not in the load balancer range 198.51.100.10-250 (the rest is the testbed's)"
    if ip in INTERNET_CIDR:
        return f"{ip} is on the internet side, where the clients are, not in the load balancer range"
    return f"{ip} is not in the load balancer range 198.51.100.10-250"


def _load_balancer(r: Reader) -> LoadBalancer:
    path = ("loadBalancer",)
    r.mapping(path, {"vip", "targets", "preserveClientIP", "healthCheck"}, hints={"mode": MODE_HINT})
    vip = r.get(path, "vip", address, default=VIP_RANGE[0],
                fix="write an address in 198.51.100.0/24")
    if vip is not None and not VIP_RANGE[0] <= vip <= VIP_RANGE[1]:
        r.problem(path + ("vip",), _vip_problem(vip), "pick an address such as 198.51.100.10")
    targets = r.get(path, "targets", choice(*MODES), default="nodeport")
    preserve = r.get(path, "preserveClientIP", boolean, default=True)
    return LoadBalancer(vip or VIP_RANGE[0], targets or "nodeport",
                        preserve if preserve is not None else True, _health_check(r))


def _health_check(r: Reader) -> HealthCheck:
    hpath = ("loadBalancer", "healthCheck")
    r.mapping(hpath, {"interval", "timeout", "healthyThreshold", "unhealthyThreshold"})
    interval = r.get(hpath, "interval", duration_ms, default=1000.0,
                     fix="write an interval like 1s or 500ms")
    if interval is not None and interval < MIN_INTERVAL_MS:
        r.problem(hpath + ("interval",), f"{_ms(interval)} is shorter than the "
                  f"{_ms(MIN_INTERVAL_MS)} the health checker supports",
                  f"use {_ms(MIN_INTERVAL_MS)} or more (cloud LBs check every 5-30s)")
        interval = None
    timeout = r.get(hpath, "timeout", duration_ms,
                    default=min(500.0, interval / 2) if interval else 500.0,
                    fix="write a timeout like 500ms")
    if timeout is not None and timeout < MIN_TIMEOUT_MS:
        r.problem(hpath + ("timeout",), f"{_ms(timeout)} is shorter than the "
                  f"{_ms(MIN_TIMEOUT_MS)} a check needs", f"use {_ms(MIN_TIMEOUT_MS)} or more")
    elif timeout is not None and interval is not None and timeout >= interval:
        r.problem(_written(r, hpath + ("timeout",)), f"timeout {_ms(timeout)} is "
                  f"{'longer than' if timeout > interval else 'as long as'} the interval "
                  f"{_ms(interval)}", "make the timeout shorter than the interval")
    return HealthCheck(
        interval_s=(interval or 1000.0) / 1000.0,
        timeout_s=(timeout or 500.0) / 1000.0,
        healthy_threshold=r.get(hpath, "healthyThreshold", integer(1, 10), default=2) or 2,
        unhealthy_threshold=r.get(hpath, "unhealthyThreshold", integer(1, 10), default=2) or 2,
    )


def _ms(value: float) -> str:
    return f"{value / 1000:g}s" if value >= 1000 else f"{value:g}ms"


def _clients(r: Reader) -> tuple[Client, ...]:
    raw = r.value(("clients",))
    if not r.has(("clients",)) or raw is None or raw == {}:
        return (Client(DEFAULT_CLIENT),)
    r.mapping(("clients",), None, what="client name: {}")
    if not isinstance(raw, dict):
        return ()
    out = []
    for cname, body in raw.items():
        path = ("clients", cname)
        if not _host_name(r, path, cname, "client", "client1"):
            continue
        if body not in (None, {}):
            r.mapping(path, set(), what="clients take no fields: write 'client1: {}'")
        out.append(Client(cname))
    if len(out) > MAX_CLIENTS:
        r.problem(("clients",), f"{len(out)} clients is more than the {MAX_CLIENTS} supported",
                  "use fewer clients")
    return tuple(out)


def _links(r: Reader, netem: Optional[bool]) -> Links:
    path = ("links",)
    r.mapping(path, {"bw", "delay", "loss"})
    bw = r.get(path, "bw", number(0.1, 100_000), default=None, fix="bw is in Mbit/s, e.g. 1000")
    delay = r.get(path, "delay", duration_ms, default=0.0, fix="write a delay like 2ms")
    loss = r.get(path, "loss", number(0, 100), default=0.0, fix="loss is a percentage 0-100")
    if netem is False:
        for key, val in (("delay", delay), ("loss", loss)):
            if val:
                r.problem(path + (key,), f"{key} needs the kernel's netem qdisc (sch_netem), "
                          "which this kernel lacks", f"remove links.{key} or run on a kernel "
                          "with sch_netem (a usual VM has it)")
    return Links(bw, delay or 0.0, loss or 0.0)


# -- checks of the whole topology ---------------------------------------------------------------

def _written(r: Reader, path) -> tuple:
    """The path if the file has that field, else its nearest ancestor the file has: a problem
    about a default value points at a line the file has and names no field it lacks."""
    path = tuple(path)
    while path and not r.has(path):
        path = path[:-1]
    return path


def _cross_checks(r: Reader, topo: Topology) -> None:
    """Checks that need the whole topology: names, address space, capacity."""
    _name_clashes(r, topo)
    _address_space(r, topo)
    if r.problems:
        return   # capacity below assumes ranges that make sense
    _capacity(r, topo)
    _vips(r, topo)
    # auto-assigned node ports must fit the range
    try:
        node_ports(topo)
    except ValueError as exc:
        r.problem(("services",), str(exc), "set some nodePorts by hand or use fewer NodePort services")


def _name_clashes(r: Reader, topo: Topology) -> None:
    """Nodes, clients and pods are all Mininet hosts: one name each. A node or client named like
    a pod (web-1 while deployment web exists) would clash now or when a pod is added at run time."""
    deployments = {d.name for d in topo.deployments}
    clients_written = bool(_declared(r, "clients"))
    taken: dict[str, str] = {} if clients_written else {DEFAULT_CLIENT: "the default client"}
    for section, kind, items in (("nodes", "node", topo.nodes), ("clients", "client", topo.clients)):
        if section == "clients" and not clients_written:
            continue
        for item in items:
            path = (section, item.name)
            pod = POD_NAME_RE.fullmatch(item.name)
            if pod and pod.group("deployment") in deployments:
                dep = pod.group("deployment")
                r.problem(path, f"'{item.name}' is a pod name of deployment '{dep}' (its pods are "
                          f"{dep}-0, {dep}-1, ...)", f"rename the {kind}: nodes, clients and pods "
                          "are all hosts and need their own names")
            elif item.name in taken:
                r.problem(path, f"'{item.name}' is also the name of {taken[item.name]}",
                          f"rename the {kind}: nodes and clients are all hosts and need their own "
                          "names" + ("" if clients_written else ", or list clients under 'clients:'"))
            taken.setdefault(item.name, f"a {kind}")


def _address_space(r: Reader, topo: Topology) -> None:
    """The pod, service and VPC ranges must not overlap; host-gw needs one L2 subnet."""
    cni, vpc = topo.cni, topo.vpc
    written = {key: r.has(("cni", key)) for key in ("podCIDR", "serviceCIDR", "nodePrefix")}
    defaults_hit = []
    for key, net, what in (("podCIDR", cni.pod_cidr, "pod CIDR"),
                           ("serviceCIDR", cni.service_cidr, "service CIDR")):
        if not net.overlaps(vpc.cidr):
            continue
        if written[key]:
            default = "" if r.has(("vpc", "cidr")) else ", the default"
            r.problem(("cni", key), f"{what} {net} overlaps the VPC ({vpc.cidr}{default})",
                      "choose a range outside the VPC, or move the VPC (vpc.cidr)")
        else:
            defaults_hit.append((key, what, net))
    if defaults_hit:
        # the file did not write these ranges: the problem is the VPC's, on its line
        clashes = " and ".join(f"the default {what} {net}" for _, what, net in defaults_hit)
        keys = " and ".join(f"cni.{key}" for key, _, _ in defaults_hit)
        r.problem(_written(r, ("vpc", "cidr")), f"{vpc.cidr} overlaps {clashes}",
                  f"pick a vpc.cidr outside it (e.g. 192.168.0.0/16), or set {keys} to a "
                  "range outside the VPC")
    if cni.pod_cidr.overlaps(cni.service_cidr):
        if written["serviceCIDR"]:
            where, default = ("cni", "serviceCIDR"), "" if written["podCIDR"] else " (the default)"
            what = f"service CIDR {cni.service_cidr} overlaps pod CIDR {cni.pod_cidr}{default}"
        else:
            where = ("cni", "podCIDR")
            what = (f"pod CIDR {cni.pod_cidr} overlaps service CIDR {cni.service_cidr} "
                    "(the default)")
        r.problem(where, what, "use separate ranges (defaults: 10.244.0.0/16, 10.96.0.0/12)")
    if cni.node_prefix < cni.pod_cidr.prefixlen:
        if written["nodePrefix"]:
            r.problem(("cni", "nodePrefix"), f"/{cni.node_prefix} is wider than the pod CIDR "
                      f"{cni.pod_cidr}", "make nodePrefix longer than the pod CIDR's prefix")
        else:
            r.problem(("cni", "podCIDR"), f"{cni.pod_cidr} is smaller than one node's range "
                      f"(cni.nodePrefix, default /{cni.node_prefix})",
                      "widen podCIDR or set a longer cni.nodePrefix")
    if cni.overlay == "host-gw":
        used = [s.name for s in vpc.subnets if any(n.subnet == s.name for n in topo.nodes)]
        if len(used) > 1:
            r.problem(("cni", "overlay"), "host-gw routes each node's pod range via that node's "
                      f"address, which needs every node in one subnet (L2); nodes are in "
                      f"{', '.join(used)}", "use overlay: vxlan, or put every node in one subnet")


def _capacity(r: Reader, topo: Topology) -> None:
    """Room for every node, pod and service in its range."""
    cni, vpc = topo.cni, topo.vpc
    node_cidrs = 2 ** (cni.node_prefix - cni.pod_cidr.prefixlen)
    if len(topo.nodes) >= node_cidrs:   # range 0 stays unused
        r.problem(next((("cni", k) for k in ("podCIDR", "nodePrefix") if r.has(("cni", k))),
                       ("nodes",)),
                  f"{cni.pod_cidr} split in /{cni.node_prefix} gives {node_cidrs - 1} node ranges "
                  f"for {len(topo.nodes)} nodes", "widen podCIDR or lengthen nodePrefix")
    services_room = cni.service_cidr.num_addresses - 20
    if len(topo.services) > services_room:
        r.problem(_written(r, ("cni", "serviceCIDR")),
                  f"{len(topo.services)} services do not fit in {cni.service_cidr}",
                  "widen serviceCIDR")
    for subnet in vpc.subnets:
        in_subnet = [n for n in topo.nodes if n.subnet == subnet.name]
        room = max(min(POD_HOST_OFFSET, subnet.cidr.num_addresses - 1) - NODE_HOST_OFFSET, 0)
        if len(in_subnet) > room:
            r.problem(_written(r, ("nodes", in_subnet[room].name, "subnet")),
                      f"subnet '{subnet.name}' ({subnet.cidr}) has room for {room} nodes, "
                      f"{len(in_subnet)} are in it",
                      "spread nodes over more subnets or use a larger subnet")
    per_node = pods_per_node(topo)
    pod_room = 2 ** (32 - cni.node_prefix) - 3   # network, cni0 gateway, broadcast
    if topo.mode == "container-native":
        limit, what, fix = vpc.max_pods_per_node, (
            f"exceed vpc.maxPodsPerNode={vpc.max_pods_per_node} (ENI address slots)"), \
            "lower the replicas on that node, add nodes, or raise vpc.maxPodsPerNode"
    else:
        limit, what, fix = pod_room, (
            f"do not fit its /{cni.node_prefix} pod range ({pod_room} addresses)"), \
            "lower the replicas on that node, add nodes, or shorten cni.nodePrefix"
    over: dict[tuple, list] = {}   # one line per deployment line, naming the first node
    pods_in_subnet: dict[str, int] = {}
    for node in topo.nodes:
        count = per_node.get(node.name, 0)
        pods_in_subnet[node.subnet] = pods_in_subnet.get(node.subnet, 0) + count
        if count > limit:
            over.setdefault(_pods_path(r, topo, node.name, limit), []).append((node.name, count))
    for where, nodes in over.items():
        (first, count), more = nodes[0], len(nodes) - 1
        also = f" (and {more} more node{'s' if more > 1 else ''})" if more else ""
        r.problem(where, f"{count} pods on node '{first}'{also} {what}", fix)
    if topo.mode == "container-native":
        for subnet in vpc.subnets:
            room = max(subnet.cidr.num_addresses - 1 - POD_HOST_OFFSET, 0)
            if pods_in_subnet.get(subnet.name, 0) > room:
                where = ("vpc", "subnets", subnet.name)   # or the VPC's, for the default one
                r.problem(where if r.has(where) else _written(r, ("vpc", "cidr")),
                          f"{pods_in_subnet[subnet.name]} pods need VPC addresses but subnet "
                          f"'{subnet.name}' ({subnet.cidr}) has {room} free",
                          "use a larger subnet or spread nodes over more subnets")


def _pods_path(r: Reader, topo: Topology, node: str, limit: int) -> tuple:
    """The deployment whose pods push a node past its limit: its placement entry for the node,
    or its replicas (spread)."""
    count = 0
    for d in topo.deployments:
        count += sum(1 for n in placement(topo, d) if n == node)
        if count > limit:
            where = ("placement", node) if any(n == node for n, _ in d.placement) else ("replicas",)
            return _written(r, ("deployments", d.name) + where)
    return ("nodes", node)


def _vips(r: Reader, topo: Topology) -> None:
    """Every LoadBalancer service's VIP: inside the range, and its own."""
    lb_services = [s for s in topo.services if s.type == "LoadBalancer"]
    if len(lb_services) > 200:
        r.problem(("services",), f"{len(lb_services)} LoadBalancer services exceed the 200 VIPs "
                  f"of {LB_CIDR}", "make most services ClusterIP or NodePort")
        return
    vips: dict = {}
    for svc, vip in zip(lb_services, service_vips(topo)):
        if svc.load_balancer_ip is None and not VIP_RANGE[0] <= vip <= VIP_RANGE[1]:
            r.problem(("services", svc.name), f"no VIP left: the next one after "
                      f"loadBalancer.vip {topo.load_balancer.vip} would be {vip}, past "
                      f"{VIP_RANGE[1]}", "give the service a loadBalancerIP, or lower "
                      "loadBalancer.vip")
            return
        if vip in vips:
            r.problem(("services", svc.name, "loadBalancerIP"), f"VIP {vip} is also used by "
                      f"service '{vips[vip]}'", "give each LoadBalancer service its own "
                      "loadBalancerIP")
        vips[vip] = svc.name


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


def node_ports(topo: Topology) -> dict[str, tuple[Optional[int], Optional[int]]]:
    """service name -> (nodePort, healthCheckNodePort), filling the unset ones deterministically
    from the bottom of the range (upstream picks at random; a testbed wants repeatable runs)."""
    taken = {p for s in topo.services for p in (s.node_port, s.health_check_node_port) if p}
    free = (p for p in range(NODEPORT_RANGE[0], NODEPORT_RANGE[1] + 1) if p not in taken)
    out = {}
    for svc in topo.services:
        np_, hc = svc.node_port, svc.health_check_node_port
        try:
            if svc.type in ("NodePort", "LoadBalancer") and np_ is None:
                np_ = next(free)
            if svc.external_traffic_policy == "Local" and svc.type == "LoadBalancer" and hc is None:
                hc = next(free)
        except StopIteration:
            raise ValueError("the NodePort range 30000-32767 is exhausted") from None
        out[svc.name] = (np_, hc)
    return out


def validate_files(files, mode=None, netem=None) -> list:
    """Validate several files; return every problem (empty list: all good)."""
    problems = []
    for f in files:
        try:
            load_topology(f, mode=mode, netem=netem)
        except InputError as exc:
            problems.extend(exc.problems)
    return problems
