"""The address plan: every name, address, MAC and port the emulated cluster will use; pure and
deterministic, so a plan can be rendered (`cnlb render plan FILE`), diffed and reproduced.

Naming scheme (written once, enforced here):
  switches   vpc0 (VPC core: router, internet gateway, load balancer), vpc1.. (one per subnet)
  ports      vpc<N>-eth<K>: K=1 is a subnet switch's uplink; hosts follow in plan order
  hosts      eth0 in every node, client and pod namespace; pod veth<8 hex> on the node (a hash
             of the pod name, as real CNIs do); flannel.<VNI> and cni0 on classic nodes
  MACs       02:cb:<kind>:<index>: 01 node, 02 pod, 03 client, 04 LB host, 05 pod veth, 06 VTEP,
             08 the fabric's BGP speaker, fe gateway
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from testbed.plan.calico_ipam import Block, assign, claim
from testbed.spec.model import (
    CORE_SWITCH,
    INTERNET_CIDR,
    LB_CIDR,
    LB_HOST,
    NODE_HOST_OFFSET,
    POD_HOST_OFFSET,
    Topology,
    allocate_node_ports,
    placement,
    service_vips,
)

LB_HOST_IP = LB_CIDR.network_address + 2
L7_HOST = "lb7"        # the L7 LB's host (HAProxy), with loadBalancer.kind l7
L7_HOST_IP = LB_CIDR.network_address + 3
BGP_HOST = "bgp0"      # the fabric's BGP speaker (BIRD) with cni.routing bgp: what the VPC learns
BGP_HOST_IP = LB_CIDR.network_address + 4
CLIENT_HOST_OFFSET = 10
SERVICE_IP_OFFSET = 10
VETH_GATEWAY = ipaddress.IPv4Address("169.254.1.1")   # aws-vpc-cni's pod default gateway
# kube-proxy's own /healthz on every node (--healthz-bind-address): where a cloud LB checks the
# nodes of a Cluster-policy service that has no TCP port to check (KEP-3836 recommends it)
PROXY_HEALTHZ_PORT = 10256
T = TypeVar("T")


def mac(kind: int, index: int) -> str:
    """A locally administered MAC: 02:cb:<kind>:<index as 3 bytes>."""
    b = index.to_bytes(3, "big")
    return f"02:cb:{kind:02x}:{b[0]:02x}:{b[1]:02x}:{b[2]:02x}"


def veth_name(pod: str, taken: Collection[str] = frozenset()) -> str:
    """The node-side veth of a pod: a hash of its name, rehashed in the rare case that another
    pod on the node has it already (as the bridge CNI retries a random name that exists)."""
    salt = 0
    while True:
        seed = f"{pod}#{salt}" if salt else pod
        name = "veth" + hashlib.sha256(seed.encode()).hexdigest()[:8]
        if name not in taken:
            return name
        salt += 1


@dataclass(frozen=True)
class Gateway:
    """A subnet's leg of the VPC router: the address hosts use as their default gateway."""
    subnet: str
    cidr: str
    ip: str
    mac: str
    switch: str
    kind: str          # vpc | internet | lb


@dataclass(frozen=True)
class SwitchPlan:
    """One OVS bridge of the VPC fabric."""
    name: str
    dpid: int
    role: str                      # core | subnet
    subnet: str | None = None
    uplink: str | None = None   # port name towards vpc0 (subnet switches)
    core_port: str | None = None  # vpc0's port towards this switch


@dataclass(frozen=True)
class Attachment:
    """A host's interface on the fabric."""
    host: str
    kind: str      # node | client | lb
    ip: str
    prefixlen: int
    mac: str
    gateway: str
    subnet: str
    switch: str
    port: str      # the switch-side port name


@dataclass(frozen=True)
class NodePlan:
    """A node: its fabric address and, in classic mode, its pod range and overlay endpoint."""
    name: str
    index: int
    subnet: str
    ip: str
    mac: str
    pod_cidr: str           # classic: this node's flannel range (also recorded in container-native)
    cni0_ip: str            # classic: the cni0 bridge's address (pods' gateway)
    vtep_mac: str


@dataclass(frozen=True)
class PodPlan:
    """A pod: its namespace, address and the veth that ties it to its node."""
    name: str
    index: int
    deployment: str
    node: str
    ip: str
    prefixlen: int          # 24 on cni0 (classic), 32 (container-native)
    gateway: str            # cni0 address (classic) or 169.254.1.1 (container-native)
    mac: str
    veth: str               # node-side interface name
    veth_mac: str
    port: int


@dataclass(frozen=True)
class PortPlan:
    """One port of a Service, resolved: the node port is allocated."""
    name: str
    port: int
    target_port: int
    protocol: str = "TCP"
    node_port: int | None = None


@dataclass(frozen=True)
class ServicePlan:
    """A Service as kube-proxy and the cloud LB see it.

    port, target_port, node_port, protocol: its first port
    ports: every port (the first included), node ports allocated; build_plan fills it for every
        service (a single unnamed port for the shorthand); () in a plan made by hand means the
        single port above — read all_ports
    internal_traffic_policy: Cluster or Local (traffic from pods and nodes to the ClusterIP)
    publish_not_ready_addresses: endpoints of pods that are not ready are listed as ready
    """
    name: str
    type: str
    cluster_ip: str
    port: int
    target_port: int
    node_port: int | None
    health_check_node_port: int | None
    external_traffic_policy: str
    session_affinity: str
    session_affinity_timeout: int
    vip: str | None
    selector: str            # the deployment whose pods are the endpoints
    endpoints: tuple[str, ...]   # pod names, in pod order
    protocol: str = "TCP"
    health_via: str | None = None   # health-check through this service's port instead
    ports: tuple[PortPlan, ...] = ()
    internal_traffic_policy: str = "Cluster"
    publish_not_ready_addresses: bool = False
    labels: tuple[tuple[str, str], ...] = ()   # metadata.labels (kube-proxy reads two)
    external_ips: tuple[str, ...] = ()   # spec.externalIPs: routed by the VPC to external_ip_node
    load_balancer_source_ranges: tuple[str, ...] = ()   # CIDRs allowed to reach the LB

    @property
    def all_ports(self) -> tuple[PortPlan, ...]:
        """Every port, the single-port form included."""
        return self.ports or (PortPlan("", self.port, self.target_port, self.protocol,
                                       self.node_port),)


@dataclass(frozen=True)
class Backend:
    """One target of the cloud LB: a node's NodePort or a pod's targetPort."""
    name: str
    ip: str
    port: int
    health_port: int
    health_path: str


@dataclass(frozen=True)
class Listener:
    """One listener of a cloud LB (an NLB listener and its target group): the VIP's port and
    protocol, and the port it sends to on every backend.

    name: the Service port's name ("" for a single unnamed port)
    backend_port: the port's nodePort (instance targets) or targetPort (ip targets)
    """
    name: str
    port: int
    protocol: str
    backend_port: int


@dataclass(frozen=True)
class LbPlan:
    """The cloud LB's view of one LoadBalancer service.

    port: the first listener's port (the single-port form; existing readers use it)
    backends: the targets, each with the first listener's backend port and the health port
    listeners: one per Service port, in order (the first is port's): a backend b receives
        listener l's traffic at (b.ip, l.backend_port)
    address: how the cloud reports the LB: "ip" (GCP) or "hostname" (AWS NLB/ALB)
    health_port: where ip targets are health-checked (ip_target_health_port), known before
        any pod is (None: instance targets, checked where lb_backends says)
    source_ranges: the service's loadBalancerSourceRanges: the only clients the LB admits
    """
    service: str
    vip: str
    port: int
    target_mode: str
    preserve_client_ip: bool
    backends: tuple[Backend, ...]
    listeners: tuple[Listener, ...] = ()
    address: str = "ip"
    health_port: int | None = None
    source_ranges: tuple[str, ...] = ()


@dataclass(frozen=True)
class BgpPlan:
    """Calico-style BGP routing (overlay "bgp"): who peers with whom, with what AS numbers.

    speaker, speaker_ip: the fabric's BGP speaker (its own host on the core switch)
    the rest: the topology's cni.bgp (testbed.spec.model.Bgp)
    """
    as_number: int
    node_to_node_mesh: bool
    fabric_peer: bool
    fabric_as_number: int
    hold_time_s: int
    speaker: str = BGP_HOST
    speaker_ip: str = str(BGP_HOST_IP)


@dataclass
class Plan:
    """Every address of one emulated cluster in one mode."""
    cluster: str
    mode: str
    overlay: str
    mtu: int
    pod_cidr: str
    service_cidr: str
    switches: list[SwitchPlan] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    nodes: list[NodePlan] = field(default_factory=list)
    pods: list[PodPlan] = field(default_factory=list)
    services: list[ServicePlan] = field(default_factory=list)
    load_balancers: list[LbPlan] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    vxlan_port: int = 8472
    vxlan_vni: int = 1
    ip_masq: bool = True     # classic mode's flannel masquerades what leaves the pod range
    # overlay "bgp" (Calico): the pool's blocks claimed so far, affine to nodes; the BGP set-up
    block_size: int = 26
    blocks: list[Block] = field(default_factory=list)
    bgp: BgpPlan | None = None

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, name: str) -> PodPlan:
        return next(p for p in self.pods if p.name == name)

    def attachment(self, host: str) -> Attachment:
        return next(a for a in self.attachments if a.host == host)

    def pods_on(self, node: str) -> list[PodPlan]:
        return [p for p in self.pods if p.node == node]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_plan(topo: Topology) -> Plan:
    """The address plan of a validated topology in its mode."""
    mode = topo.mode
    cni = topo.cni
    plan = Plan(topo.name, mode, overlay_of(topo),
                cni.mtu if overlay_of(topo) == "vxlan" else 1500,
                str(cni.pod_cidr), str(cni.service_cidr), vxlan_port=cni.vxlan_port,
                vxlan_vni=cni.vxlan_vni, ip_masq=cni.ip_masq, block_size=cni.block_size)
    if plan.overlay == "bgp":
        b = cni.bgp
        plan.bgp = BgpPlan(b.as_number, b.node_to_node_mesh, b.fabric_peer, b.fabric_as_number,
                           b.hold_time_s)
    ports = _fabric(plan, topo)
    _nodes(plan, topo, ports)
    for idx, client in enumerate(topo.clients, start=1):
        ip = INTERNET_CIDR.network_address + CLIENT_HOST_OFFSET + idx - 1
        plan.clients.append(client.name)
        ports.attach(client.name, "client", ip, INTERNET_CIDR, "internet", CORE_SWITCH,
                     mac(0x03, idx))
    ports.attach(LB_HOST, "lb", LB_HOST_IP, LB_CIDR, "lb", CORE_SWITCH, mac(0x04, 1))
    if topo.load_balancer.kind == "l7":
        ports.attach(L7_HOST, "lb", L7_HOST_IP, LB_CIDR, "lb", CORE_SWITCH, mac(0x04, 2))
    if plan.bgp is not None and plan.bgp.fabric_peer:
        ports.attach(BGP_HOST, "bgp", BGP_HOST_IP, LB_CIDR, "lb", CORE_SWITCH, mac(0x08, 1))
    _pods(plan, topo)
    _services(plan, topo)
    return plan


class _SwitchPorts:
    """Hands out each switch's next port and records the host attached to it."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.next: dict[str, int] = {}
        self.subnet_switch: dict[str, str] = {}

    def take(self, switch: str) -> str:
        port = f"{switch}-eth{self.next[switch]}"
        self.next[switch] += 1
        return port

    def attach(self, host: str, kind: str, ip: ipaddress.IPv4Address,
               net: ipaddress.IPv4Network, gateway_subnet: str, switch: str,
               mac_addr: str) -> None:
        gw = next(g for g in self.plan.gateways if g.subnet == gateway_subnet)
        self.plan.attachments.append(Attachment(host, kind, str(ip), net.prefixlen, mac_addr,
                                                gw.ip, gateway_subnet, switch, self.take(switch)))


def _fabric(plan: Plan, topo: Topology) -> _SwitchPorts:
    """vpc0 plus one switch per subnet, each with its uplink as port 1, and the gateways."""
    ports = _SwitchPorts(plan)
    plan.switches.append(SwitchPlan(CORE_SWITCH, 1, "core"))
    ports.next[CORE_SWITCH] = 1
    for i, subnet in enumerate(topo.vpc.subnets, start=1):
        sw = f"vpc{i}"
        core_port = ports.take(CORE_SWITCH)
        plan.switches.append(SwitchPlan(sw, i + 1, "subnet", subnet.name, f"{sw}-eth1",
                                        core_port))
        ports.next[sw] = 2
        ports.subnet_switch[subnet.name] = sw
        plan.gateways.append(Gateway(subnet.name, str(subnet.cidr),
                                     str(subnet.cidr.network_address + 1), mac(0xFE, i), sw,
                                     "vpc"))
    plan.gateways.append(Gateway("internet", str(INTERNET_CIDR),
                                 str(INTERNET_CIDR.network_address + 1), mac(0xFE, 0xFE),
                                 CORE_SWITCH, "internet"))
    plan.gateways.append(Gateway("lb", str(LB_CIDR), str(LB_CIDR.network_address + 1),
                                 mac(0xFE, 0xFD), CORE_SWITCH, "lb"))
    return ports


def _nodes(plan: Plan, topo: Topology, ports: _SwitchPorts) -> None:
    """Node k of a subnet: address 10+k in it; classic pod range: the node's /nodePrefix."""
    cni = topo.cni
    node_ranges = list(_first_n(cni.pod_cidr.subnets(new_prefix=cni.node_prefix),
                                len(topo.nodes) + 1))
    per_subnet: dict[str, int] = {}
    for idx, node in enumerate(topo.nodes, start=1):
        subnet = topo.subnet(node.subnet)
        k = per_subnet.get(node.subnet, 0)
        per_subnet[node.subnet] = k + 1
        ip = subnet.cidr.network_address + NODE_HOST_OFFSET + k
        pod_range = node_ranges[idx]   # range 0 stays unused, as the network's own address
        plan.nodes.append(NodePlan(node.name, idx, node.subnet, str(ip), mac(0x01, idx),
                                   str(pod_range), str(pod_range.network_address + 1),
                                   mac(0x06, idx)))
        ports.attach(node.name, "node", ip, subnet.cidr, node.subnet,
                     ports.subnet_switch[node.subnet], mac(0x01, idx))


def overlay_of(topo: Topology) -> str:
    """The CNI plugin a topology's plan asks for (the plan's `overlay`): cni.routing bgp gives
    "bgp" in both modes (Calico: the pods' blocks are routed, whatever the LB targets);
    otherwise flannel's backend in nodeport mode and aws-vpc-cni's "vpc-native" in
    container-native mode."""
    if topo.cni.routing == "bgp":
        return "bgp"
    return topo.cni.overlay if topo.mode == "nodeport" else "vpc-native"


def _pods(plan: Plan, topo: Topology) -> None:
    """Classic: the next free address on the node's cni0 range; container-native: the next
    free VPC address of the node's subnet (the ENI secondary-IP pool), /32 routed via the node;
    bgp: the next free address of the node's Calico blocks (a fresh block when they are full),
    /32 on the pod's veth."""
    pod_slot = {n.name: 0 for n in topo.nodes}
    veths: dict[str, set[str]] = {n.name: set() for n in topo.nodes}
    subnet_slot = {s.name: 0 for s in topo.vpc.subnets}
    index = 0
    for deploy in topo.deployments:
        for k, node_name in enumerate(placement(topo, deploy)):
            index += 1
            pname = f"{deploy.name}-{k}"
            node = plan.node(node_name)
            if plan.overlay == "bgp":
                ip_text, block = assign(plan.pod_cidr, plan.block_size, plan.blocks, node_name,
                                        [p.ip for p in plan.pods])
                ip = ipaddress.IPv4Address(ip_text)
                plan.blocks[:] = claim(plan.blocks, block)
                prefix, gw = 32, str(VETH_GATEWAY)
            elif plan.mode == "nodeport":
                pod_slot[node_name] += 1
                ip = ipaddress.IPv4Network(node.pod_cidr).network_address + 1 + pod_slot[node_name]
                prefix, gw = ipaddress.IPv4Network(node.pod_cidr).prefixlen, node.cni0_ip
            else:
                subnet = topo.subnet(node.subnet)
                ip = subnet.cidr.network_address + POD_HOST_OFFSET + subnet_slot[node.subnet]
                subnet_slot[node.subnet] += 1
                prefix, gw = 32, str(VETH_GATEWAY)
            veth = veth_name(pname, veths[node_name])
            veths[node_name].add(veth)
            plan.pods.append(PodPlan(pname, index, deploy.name, node_name, str(ip), prefix, gw,
                                     mac(0x02, index), veth, mac(0x05, index),
                                     deploy.container_port))


def _services(plan: Plan, topo: Topology) -> None:
    """ClusterIPs from the service CIDR; VIPs and LB backends for LoadBalancer services."""
    allocated = allocate_node_ports(topo)
    vips = iter(service_vips(topo))
    for i, svc in enumerate(topo.services):
        cluster_ip = topo.cni.service_cidr.network_address + SERVICE_IP_OFFSET + i
        node_ports = allocated[svc.name]
        ports = tuple(PortPlan(p.name, p.port, p.target_port, p.protocol, np_)
                      for p, np_ in zip(svc.all_ports, node_ports.ports, strict=True))
        vip = str(next(vips)) if svc.type == "LoadBalancer" else None
        endpoints = tuple(p.name for p in plan.pods if p.deployment == svc.selector)
        first = ports[0]
        sp = ServicePlan(svc.name, svc.type, str(cluster_ip), first.port, first.target_port,
                         first.node_port, node_ports.health_check, svc.external_traffic_policy,
                         svc.session_affinity, svc.session_affinity_timeout, vip, svc.selector,
                         endpoints, first.protocol, svc.health_via, ports=ports,
                         internal_traffic_policy=svc.internal_traffic_policy,
                         external_ips=svc.external_ips,
                         publish_not_ready_addresses=svc.publish_not_ready_addresses,
                         labels=svc.labels,
                         load_balancer_source_ranges=svc.load_balancer_source_ranges)
        plan.services.append(sp)
        if vip:
            plan.load_balancers.append(LbPlan(svc.name, vip, svc.port, plan.mode,
                                              topo.load_balancer.preserve_client_ip,
                                              tuple(lb_backends(plan, sp)),
                                              listeners(plan.mode, sp),
                                              topo.load_balancer.address,
                                              lb_health_port(plan, topo, sp),
                                              svc.load_balancer_source_ranges))


def listeners(mode: str, svc: ServicePlan) -> tuple[Listener, ...]:
    """The cloud LB's listeners for a service: one per port, sending to its nodePort (instance
    targets) or its targetPort (ip targets)."""
    out = []
    for p in svc.all_ports:
        backend_port = p.target_port if mode == "container-native" else p.node_port
        assert backend_port is not None   # a LoadBalancer service's ports have node ports
        out.append(Listener(p.name, p.port, p.protocol, backend_port))
    return tuple(out)


def external_ip_node(plan: Plan) -> str | None:
    """The node the VPC routes every external IP to: the first node, as a cluster admin's
    static route names one next hop (the fabric has no ECMP routes; docs/yaml.md)."""
    return plan.nodes[0].name if plan.nodes else None


def lb_backends(plan: Plan, svc: ServicePlan) -> list[Backend]:
    """The cloud LB's targets for a service: every node's NodePort (instance targets) or every
    pod's targetPort (ip targets), each with the first port. With externalTrafficPolicy Local,
    instance targets are health-checked on kube-proxy's healthCheckNodePort, which fails on
    nodes without a pod.

    The health check is HTTP: it goes to the first TCP port of the service (or of the one it is
    checked through); a service with UDP ports only is checked on the pod's own port (ip
    targets) or on kube-proxy's /healthz (instance targets), as cloud LBs check UDP targets
    over TCP."""
    checked = next((s for s in plan.services if s.name == svc.health_via), svc)
    tcp = next((p for p in checked.all_ports if p.protocol == "TCP"), None)
    if plan.mode == "container-native":
        return [Backend(p.name, p.ip, svc.target_port,
                        ip_target_health_port(plan, svc, p.port), "/healthz")
                for p in plan.pods if p.name in svc.endpoints]
    node_port = svc.node_port
    hc_port = svc.health_check_node_port or checked.health_check_node_port or \
        (tcp.node_port if tcp else PROXY_HEALTHZ_PORT)
    # a LoadBalancer service has a nodePort, and so has the one it is checked through
    assert node_port is not None and hc_port is not None
    return [Backend(n.name, n.ip, node_port, hc_port, "/healthz") for n in plan.nodes]


def lb_health_port(plan: Plan, topo: Topology, svc: ServicePlan) -> int | None:
    """LbPlan.health_port: ip targets' health port, from the selected deployment's pod
    template (a deployment scaled to 0 still has one); None for instance targets."""
    if plan.mode != "container-native":
        return None
    deploy = next((d for d in topo.deployments if d.name == svc.selector), None)
    return ip_target_health_port(plan, svc, deploy.container_port if deploy else svc.target_port)


def ip_target_health_port(plan: Plan, svc: ServicePlan, container_port: int) -> int:
    """The port a cloud LB health-checks a service's ip targets on: the targetPort of the first
    TCP port of the service (or of the one it is checked through), else, UDP ports only, the
    pod's own port (its containerPort: where the pod server answers HTTP). A property of the
    service, as the LB controller's health-check settings are, so an LB created while the
    service has no pods checks the same port as one created with them."""
    checked = next((s for s in plan.services if s.name == svc.health_via), svc)
    tcp = next((p for p in checked.all_ports if p.protocol == "TCP"), None)
    return tcp.target_port if tcp else container_port


def _first_n(it: Iterable[T], n: int) -> Iterator[T]:
    for i, item in enumerate(it):
        if i >= n:
            return
        yield item


def allocate_pod(plan: Plan, deployment: str, node: str, port: int) -> PodPlan:
    """A new pod of a deployment on a node, with the next free name, index and address (the
    lowest free slot in the node's range, or in the node subnet's ENI pool)."""
    taken_names = {p.name for p in plan.pods}
    k = 0
    while f"{deployment}-{k}" in taken_names:
        k += 1
    name = f"{deployment}-{k}"
    index = max((p.index for p in plan.pods), default=0) + 1
    used = {ipaddress.IPv4Address(p.ip) for p in plan.pods}
    n = plan.node(node)
    if plan.overlay == "bgp":   # with_pod claims the block when it is a fresh one
        ip_text, _ = assign(plan.pod_cidr, plan.block_size, plan.blocks, node,
                            [p.ip for p in plan.pods])
        veth = veth_name(name, {p.veth for p in plan.pods if p.node == node})
        return PodPlan(name, index, deployment, node, ip_text, 32, str(VETH_GATEWAY),
                       mac(0x02, index), veth, mac(0x05, index), port)
    if plan.mode == "nodeport":
        net = ipaddress.IPv4Network(n.pod_cidr)
        candidates = (net.network_address + 2 + i for i in range(net.num_addresses - 3))
        prefix, gw = net.prefixlen, n.cni0_ip
    else:
        net = ipaddress.IPv4Network(next(g.cidr for g in plan.gateways if g.subnet == n.subnet))
        candidates = (net.network_address + POD_HOST_OFFSET + i
                      for i in range(net.num_addresses - 1 - POD_HOST_OFFSET))
        prefix, gw = 32, str(VETH_GATEWAY)
    ip = next((c for c in candidates if c not in used), None)
    if ip is None:
        raise ValueError(f"no free pod address left for node {node}")
    veth = veth_name(name, {p.veth for p in plan.pods if p.node == node})
    return PodPlan(name, index, deployment, node, str(ip), prefix, gw, mac(0x02, index),
                   veth, mac(0x05, index), port)


def with_pod(plan: Plan, pod: PodPlan) -> None:
    """Add a pod to the plan and to the endpoints of the services that select its deployment
    (with overlay bgp, its node claims the block the pod's address is in, if it had not)."""
    if plan.overlay == "bgp":
        _, block = assign(plan.pod_cidr, plan.block_size, plan.blocks, pod.node,
                          [p.ip for p in plan.pods])
        if ipaddress.IPv4Address(pod.ip) in ipaddress.IPv4Network(block.cidr):
            plan.blocks[:] = claim(plan.blocks, block)
    plan.pods.append(pod)
    plan.services[:] = [replace(s, endpoints=s.endpoints + (pod.name,))
                        if s.selector == pod.deployment else s for s in plan.services]
