"""The topology: what a user's YAML file says, as typed, validated dataclasses.

A topology reads like the talk's diagram: a VPC with subnets, nodes in subnets, deployments of
pods placed on nodes, services in front of them, a cloud load balancer with a VIP, external
clients. `load_topology(file)` parses and checks it; every problem is one line pointing at the
file, the line and the field. Nothing here touches the machine: the netem check takes the
machine's answer as an argument.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Optional

from testbed.errors import InputError
from testbed.spec.fields import (Reader, address, boolean, choice, duration_ms, integer, name, network,
                     number, text)
from testbed.spec.yamldoc import Document, read_document

MODES = ("nodeport", "container-native")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
NODEPORT_RANGE = (30000, 32767)
INTERNET_CIDR = ipaddress.IPv4Network("203.0.113.0/24")   # documentation range: "the internet"
LB_CIDR = ipaddress.IPv4Network("198.51.100.0/24")        # documentation range: the LB's VIPs
NODE_HOST_OFFSET = 10       # node k of a subnet gets subnet address 10+k
POD_HOST_OFFSET = 64        # container-native pods take subnet addresses from here up
MAX_NODES = 250
MAX_PODS = 5000


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
    """How the cloud load balancer checks a backend."""
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
    r.mapping((), TOP_KEYS, required=("nodes",))
    topo_name = r.get((), "name", name(20), default="cluster")
    vpc = _vpc(r)
    cni = _cni(r)
    nodes = _nodes(r, vpc)
    deployments = _deployments(r, nodes, _declared(r, "nodes"))
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


def _vpc(r: Reader) -> Vpc:
    r.mapping(("vpc",), {"cidr", "subnets", "maxPodsPerNode"})
    cidr = r.get(("vpc",), "cidr", network, default=ipaddress.IPv4Network("192.168.0.0/16"))
    subnets = []
    if r.value(("vpc", "subnets")) in (None, {}) or r.value(("vpc", "subnets")) is _absent(r):
        base = cidr or ipaddress.IPv4Network("192.168.0.0/16")
        subnets.append(Subnet("default", next(base.subnets(new_prefix=24)) if base.prefixlen <= 24 else base))
    for sname in r.mapping(("vpc", "subnets"), None, what="subnet name: CIDR"):
        path = ("vpc", "subnets", sname)
        try:
            name(12)(sname)
        except ValueError as exc:
            r.problem(path, str(exc), "name subnets like az-a")
            continue
        net = r.get(("vpc", "subnets"), sname, network,
                    fix="write the subnet as a CIDR like 192.168.1.0/24")
        if net is None:
            continue
        if cidr is not None and not net.subnet_of(cidr):
            r.problem(path, f"{net} is not inside the VPC {cidr}",
                      f"pick a subnet inside {cidr} or widen vpc.cidr")
        if net.prefixlen > 25:
            r.problem(path, f"/{net.prefixlen} is too small for a subnet",
                      "use /25 or larger (a /24 is usual)")
        for other in subnets:
            if net.overlaps(other.cidr):
                r.problem(path, f"{net} overlaps subnet '{other.name}' ({other.cidr})",
                          "give each subnet its own range")
        subnets.append(Subnet(sname, net))
    if cidr is not None:
        for reserved, what in ((INTERNET_CIDR, "the internet side"), (LB_CIDR, "the load balancer")):
            if cidr.overlaps(reserved):
                r.problem(("vpc", "cidr"), f"{cidr} overlaps {reserved}, which the testbed uses for {what}",
                          "use a private range such as 192.168.0.0/16")
        if not cidr.is_private:
            r.problem(("vpc", "cidr"), f"{cidr} is not a private range",
                      "use a private range such as 192.168.0.0/16 or 172.20.0.0/16")
    max_pods = r.get(("vpc",), "maxPodsPerNode", integer(1, 250), default=17,
                     fix="set maxPodsPerNode between 1 and 250 (an m5.large has 29 slots)")
    return Vpc(cidr, tuple(subnets), max_pods or 17)


def _absent(r: Reader):
    return r.value(("no such field",))


def _cni(r: Reader) -> Cni:
    r.mapping(("cni",), {"overlay", "podCIDR", "nodePrefix", "serviceCIDR", "vxlanPort", "vni", "mtu"})
    return Cni(
        overlay=r.get(("cni",), "overlay", choice("vxlan", "host-gw"), default="vxlan"),
        pod_cidr=r.get(("cni",), "podCIDR", network, default=ipaddress.IPv4Network("10.244.0.0/16")),
        node_prefix=r.get(("cni",), "nodePrefix", integer(16, 28), default=24),
        service_cidr=r.get(("cni",), "serviceCIDR", network, default=ipaddress.IPv4Network("10.96.0.0/12")),
        vxlan_port=r.get(("cni",), "vxlanPort", integer(1, 65535), default=8472),
        vxlan_vni=r.get(("cni",), "vni", integer(1, 16777215), default=1),
        mtu=r.get(("cni",), "mtu", integer(1280, 1500), default=1450),
    )


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
        try:
            name(12)(nname)
        except ValueError as exc:
            r.problem(path, str(exc), "name nodes like node1 (at most 12 characters)")
            continue
        r.mapping(path, {"subnet"})
        default_subnet = subnet_names[0] if len(subnet_names) == 1 else None
        subnet = r.get(path, "subnet", text, default=default_subnet)
        if subnet is None:
            if default_subnet is None and r.value(path + ("subnet",)) is not None:
                continue
            r.problem(path, "missing field 'subnet'",
                      f"add 'subnet:' with one of {', '.join(subnet_names)}")
            continue
        if subnet not in subnet_names:
            from testbed.spec.yamldoc import nearest
            hint = nearest(subnet, subnet_names)
            r.problem(path + ("subnet",), f"unknown subnet '{subnet}'",
                      f"did you mean '{hint}'?" if hint else f"use one of {', '.join(subnet_names)}")
            continue
        nodes.append(Node(nname, subnet))
    return tuple(nodes)


def _declared(r: Reader, section: str) -> list:
    """Every name written in a section, valid or not: references are checked against these, so
    one bad node does not also make every reference to it an error."""
    raw = r.value((section,))
    return list(raw) if isinstance(raw, dict) else []


def _deployments(r: Reader, nodes, declared_nodes) -> tuple[Deployment, ...]:
    raw = r.mapping(("deployments",), None, what="deployment name: {replicas: ...}")
    node_names = declared_nodes
    out = []
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
        placement: list = []
        raw_place = r.value(path + ("placement",))
        if isinstance(raw_place, dict):
            for nname, count in raw_place.items():
                ppath = path + ("placement", nname)
                if not node_names:
                    continue   # the nodes section itself is wrong; that is reported there
                if nname not in node_names:
                    from testbed.spec.yamldoc import nearest
                    hint = nearest(nname, node_names)
                    r.problem(ppath, f"unknown node '{nname}'",
                              f"did you mean '{hint}'?" if hint else f"use one of {', '.join(node_names)}")
                    continue
                c = r.get(path + ("placement",), nname, integer(0, MAX_PODS), fix="give a pod count")
                if c is not None:
                    placement.append((nname, c))
            total = sum(c for _, c in placement)
            if replicas is not None and len(placement) == len(raw_place) and total != replicas:
                r.problem(path + ("placement",),
                          f"places {total} pods but replicas is {replicas}",
                          "make the counts add up to replicas, or write 'placement: spread'")
        elif raw_place not in (None, "spread") and not isinstance(raw_place, type(r.value(("no such",)))):
            r.problem(path + ("placement",), f"expected 'spread' or a mapping node: count, got {raw_place!r}",
                      "write 'placement: spread' or 'placement: {node1: 2, node2: 1}'")
        if replicas is not None and port is not None:
            out.append(Deployment(dname, replicas, tuple(placement), port))
    return tuple(out)


def _services(r: Reader, deployments, declared_deployments) -> tuple[Service, ...]:
    raw = r.mapping(("services",), None, what="service name: {port: ...}")
    deploy_names = declared_deployments
    out = []
    used_node_ports: dict[int, str] = {}
    for sname in raw:
        path = ("services", sname)
        try:
            name(20)(sname)
        except ValueError as exc:
            r.problem(path, str(exc), "name services like web (at most 20 characters)")
            continue
        r.mapping(path, {"type", "selector", "port", "targetPort", "nodePort", "externalTrafficPolicy",
                         "sessionAffinity", "sessionAffinityTimeout", "healthCheckNodePort",
                         "loadBalancerIP", "protocol"}, what="type, port, ...")
        if not isinstance(r.value(path), dict):
            continue
        stype = r.get(path, "type", choice(*SERVICE_TYPES), default="LoadBalancer")
        selector = r.get(path, "selector", text, default=sname)
        if selector is not None and selector not in deploy_names:
            from testbed.spec.yamldoc import nearest
            hint = nearest(selector, deploy_names)
            r.problem(path + (("selector",) if "selector" in (r.value(path) or {}) else ()),
                      f"selects deployment '{selector}', which does not exist",
                      f"did you mean '{hint}'?" if hint else
                      ("add 'selector:' naming one of " + ", ".join(deploy_names) if deploy_names
                       else "add a deployment under 'deployments:'"))
        port = r.get(path, "port", integer(1, 65535), default=80, fix="use a port in 1-65535")
        deploy = next((d for d in deployments if d.name == selector), None)
        target = r.get(path, "targetPort", integer(1, 65535),
                       default=deploy.container_port if deploy else 8080, fix="use a port in 1-65535")
        if deploy and target is not None and target != deploy.container_port:
            r.problem(path + ("targetPort",), f"{target} is not the port deployment '{deploy.name}' listens on ({deploy.container_port})",
                      f"set targetPort: {deploy.container_port} or change deployments.{deploy.name}.port")
        node_port = None
        nodeport_fix = f"pick a free port in {NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]} or leave it out"
        if stype in ("NodePort", "LoadBalancer"):
            node_port = r.get(path, "nodePort", integer(*NODEPORT_RANGE), default=None, fix=nodeport_fix)
        elif "nodePort" in (r.value(path) or {}):
            r.problem(path + ("nodePort",), "a ClusterIP service has no nodePort",
                      "remove nodePort or set type: NodePort")
        if node_port is not None:
            if node_port in used_node_ports:
                r.problem(path + ("nodePort",), f"{node_port} is already used by service '{used_node_ports[node_port]}'",
                          nodeport_fix)
            used_node_ports[node_port] = sname
        etp = r.get(path, "externalTrafficPolicy", choice("Cluster", "Local"), default="Cluster")
        hc_port = None
        if etp == "Local":
            if stype != "LoadBalancer":
                r.problem(path + ("externalTrafficPolicy",), "Local applies to LoadBalancer services here",
                          "set type: LoadBalancer or use Cluster")
            hc_port = r.get(path, "healthCheckNodePort", integer(*NODEPORT_RANGE), default=None,
                            fix=nodeport_fix)
            if hc_port is not None:
                if hc_port in used_node_ports:
                    r.problem(path + ("healthCheckNodePort",),
                              f"{hc_port} is already used by service '{used_node_ports[hc_port]}'", nodeport_fix)
                used_node_ports[hc_port] = sname
        affinity = r.get(path, "sessionAffinity", choice("None", "ClientIP"), default="None")
        timeout = r.get(path, "sessionAffinityTimeout", integer(1, 86400), default=10800,
                        fix="seconds between 1 and 86400")
        lb_ip = r.get(path, "loadBalancerIP", address, default=None, fix="write an address in 198.51.100.0/24")
        if lb_ip is not None and lb_ip not in LB_CIDR:
            r.problem(path + ("loadBalancerIP",), f"{lb_ip} is not in the load balancer range {LB_CIDR}",
                      "pick an address in 198.51.100.10-198.51.100.250")
        proto = r.get(path, "protocol", choice("TCP"), default="TCP")
        if None not in (stype, selector, port, target, etp, affinity, timeout, proto):
            out.append(Service(sname, stype, selector, port, target, node_port, etp, affinity, timeout,
                               hc_port, lb_ip, proto))
    return tuple(out)


def _load_balancer(r: Reader) -> LoadBalancer:
    path = ("loadBalancer",)
    r.mapping(path, {"vip", "targets", "preserveClientIP", "healthCheck"})
    vip = r.get(path, "vip", address, default=ipaddress.IPv4Address("198.51.100.10"),
                fix="write an address in 198.51.100.0/24")
    if vip is not None and not (LB_CIDR.network_address + 10 <= vip <= LB_CIDR.network_address + 250):
        r.problem(path + ("vip",), f"{vip} is not in the load balancer range 198.51.100.10-250",
                  "pick an address such as 198.51.100.10")
    targets = r.get(path, "targets", choice(*MODES), default="nodeport")
    preserve = r.get(path, "preserveClientIP", boolean, default=True)
    hpath = path + ("healthCheck",)
    r.mapping(hpath, {"interval", "timeout", "healthyThreshold", "unhealthyThreshold"})
    hc = HealthCheck(
        interval_s=(r.get(hpath, "interval", duration_ms, default=1000.0) or 1000.0) / 1000.0,
        timeout_s=(r.get(hpath, "timeout", duration_ms, default=500.0) or 500.0) / 1000.0,
        healthy_threshold=r.get(hpath, "healthyThreshold", integer(1, 10), default=2) or 2,
        unhealthy_threshold=r.get(hpath, "unhealthyThreshold", integer(1, 10), default=2) or 2,
    )
    if hc.timeout_s > hc.interval_s:
        r.problem(hpath + ("timeout",), f"timeout {hc.timeout_s}s is longer than the interval {hc.interval_s}s",
                  "make the timeout shorter than the interval")
    return LoadBalancer(vip or ipaddress.IPv4Address("198.51.100.10"), targets or "nodeport",
                        preserve if preserve is not None else True, hc)


def _clients(r: Reader) -> tuple[Client, ...]:
    raw = r.value(("clients",))
    if raw is None or raw == {}:
        return (Client("client1"),)
    r.mapping(("clients",), None, what="client name: {}")
    if not isinstance(raw, dict):
        return ()
    out = []
    for cname, body in raw.items():
        path = ("clients", cname)
        try:
            name(12)(cname)
        except ValueError as exc:
            r.problem(path, str(exc), "name clients like client1 (at most 12 characters)")
            continue
        if body not in (None, {}):
            r.mapping(path, set())
        out.append(Client(cname))
    if len(out) > 200:
        r.problem(("clients",), f"{len(out)} clients is more than the 200 supported", "use fewer clients")
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
                r.problem(path + (key,), f"{key} needs the kernel's netem qdisc (sch_netem), which this kernel lacks",
                          f"remove links.{key} or run on a kernel with sch_netem (a usual VM has it)")
    return Links(bw, delay or 0.0, loss or 0.0)


def _cross_checks(r: Reader, topo: Topology) -> None:
    """Checks that need the whole topology: address space and capacity."""
    cni, vpc = topo.cni, topo.vpc
    for net, field_path, what in ((cni.pod_cidr, ("cni", "podCIDR"), "pod CIDR"),
                                  (cni.service_cidr, ("cni", "serviceCIDR"), "service CIDR")):
        for other, oname in ((vpc.cidr, "the VPC"), (INTERNET_CIDR, "the internet side"), (LB_CIDR, "the LB range")):
            if net.overlaps(other):
                r.problem(field_path, f"{what} {net} overlaps {oname} ({other})",
                          "choose a range that overlaps nothing else (defaults: 10.244.0.0/16, 10.96.0.0/12)")
    if cni.pod_cidr.overlaps(cni.service_cidr):
        r.problem(("cni", "serviceCIDR"), f"service CIDR {cni.service_cidr} overlaps pod CIDR {cni.pod_cidr}",
                  "use separate ranges (defaults: 10.244.0.0/16, 10.96.0.0/12)")
    if cni.node_prefix < cni.pod_cidr.prefixlen:
        r.problem(("cni", "nodePrefix"), f"/{cni.node_prefix} is wider than the pod CIDR {cni.pod_cidr}",
                  "make nodePrefix longer than the pod CIDR's prefix")
        return
    node_cidrs = 2 ** (cni.node_prefix - cni.pod_cidr.prefixlen)
    if len(topo.nodes) >= node_cidrs:
        r.problem(("cni", "podCIDR"), f"{cni.pod_cidr} split in /{cni.node_prefix} gives {node_cidrs - 1} node ranges for {len(topo.nodes)} nodes",
                  "widen podCIDR or lengthen nodePrefix")
    services_room = cni.service_cidr.num_addresses - 20
    if len(topo.services) > services_room:
        r.problem(("cni", "serviceCIDR"), f"{len(topo.services)} services do not fit in {cni.service_cidr}",
                  "widen serviceCIDR")
    # nodes per subnet
    for subnet in vpc.subnets:
        in_subnet = [n for n in topo.nodes if n.subnet == subnet.name]
        room = min(POD_HOST_OFFSET, subnet.cidr.num_addresses - 1) - NODE_HOST_OFFSET
        if len(in_subnet) > room:
            r.problem(("nodes", in_subnet[room].name, "subnet"),
                      f"subnet '{subnet.name}' ({subnet.cidr}) has room for {max(room, 0)} nodes, {len(in_subnet)} are in it",
                      "spread nodes over more subnets or use a larger subnet")
    # pods per node and per subnet
    per_node = pods_per_node(topo)
    pod_room = 2 ** (32 - cni.node_prefix) - 3   # network, cni0 gateway, broadcast
    pods_in_subnet: dict[str, int] = {}
    for node in topo.nodes:
        count = per_node.get(node.name, 0)
        pods_in_subnet[node.subnet] = pods_in_subnet.get(node.subnet, 0) + count
        where = _pod_count_path(topo, node.name)
        if topo.mode == "container-native" and count > vpc.max_pods_per_node:
            r.problem(where, f"{count} pods on node '{node.name}' exceed vpc.maxPodsPerNode={vpc.max_pods_per_node} (ENI address slots)",
                      "lower the replicas on that node, add nodes, or raise vpc.maxPodsPerNode")
        if topo.mode == "nodeport" and count > pod_room:
            r.problem(where, f"{count} pods on node '{node.name}' do not fit its /{cni.node_prefix} pod range ({pod_room} addresses)",
                      "lower the replicas on that node, add nodes, or shorten cni.nodePrefix")
    if topo.mode == "container-native":
        for subnet in vpc.subnets:
            room = subnet.cidr.num_addresses - 1 - POD_HOST_OFFSET
            if pods_in_subnet.get(subnet.name, 0) > room:
                r.problem(("vpc", "subnets", subnet.name),
                          f"{pods_in_subnet[subnet.name]} pods need VPC addresses but subnet '{subnet.name}' ({subnet.cidr}) has {max(room, 0)} free",
                          "use a larger subnet or spread nodes over more subnets")
    lb_services = [s for s in topo.services if s.type == "LoadBalancer"]
    if len(lb_services) > 200:
        r.problem(("services",), f"{len(lb_services)} LoadBalancer services exceed the 200 VIPs of {LB_CIDR}",
                  "make most services ClusterIP or NodePort")
    vips = {}
    for svc, vip in zip(lb_services, service_vips(topo)):
        if vip in vips:
            r.problem(("services", svc.name, "loadBalancerIP"), f"VIP {vip} is also used by service '{vips[vip]}'",
                      "give each LoadBalancer service its own loadBalancerIP")
        vips[vip] = svc.name
    # auto-assigned node ports must fit the range
    try:
        node_ports(topo)
    except ValueError as exc:
        r.problem(("services",), str(exc), "set some nodePorts by hand or use fewer NodePort services")


def _pod_count_path(topo: Topology, node: str):
    for d in topo.deployments:
        if any(n == node for n, _ in d.placement):
            return ("deployments", d.name, "placement", node)
    return ("deployments",) if topo.deployments else ("nodes", node)


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
