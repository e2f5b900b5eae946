"""The VPC controller's pure core: fabric config in, OpenFlow 1.3 messages out.

Nothing here opens a socket, sleeps or touches an os-ken event loop: every function takes the
fabric (and the switch's port-name -> number map) and *returns* os-ken `ofproto_v1_3_parser`
message objects. They are built against `DP`, a stand-in datapath that has just the `ofproto` and
`ofproto_parser` attributes the parser classes need; the app sends them as they are
(`Datapath.send_msg` only needs them to be `MsgBase` instances of the same parser module).
Why os-ken objects and not our own dataclasses: what the tests inspect and serialize is exactly
what goes on the wire -- including the NXAction padding fix below -- with no second
representation to keep in step.

The pipeline (every switch has the same tables; the LB tables are only filled on the core):

    INGRESS(0) --ARP--> ARP(1)                            answer from the table, out IN_PORT
       | VIP (core) ----> ct(nat) --> LB_SELECT(2) --new--> group (select, 1 bucket/backend)
       |                                  | est                 bucket: ct(commit,nat(dst=B:P))
       |                                  v                              |
       |                             [LB_SNAT(3)] <---- preserve_client_ip=false ----+
       |                                  | ct(commit,nat(src=snat_ip))             | true
       |                                  v                                          v
       | LB reply (core) --> ct(nat) [--> LB_UNNAT(4) ct(nat)] --+       ROUTE(6) dec_ttl
       | VIP (subnet switch) --> out toward core                 |          |
       v                                                         v          v
    DISPATCH(5) --eth_dst = a gateway MAC--> ROUTE(6) ------> NEXTHOP(7) /32: eth_src, eth_dst
       | other                                                   |
       v                                                         v
    L2(8) <------------------------------------------------------+  eth_dst -> port

Cookies: the top byte says which kind of object made a flow (COOKIE_*), the low 56 bits are a hash
of the object's key, so `ovs-ofctl dump-flows br cookie=0x04.../-1` finds one pod's flows and a
delete by cookie removes exactly them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Iterable, Mapping

from os_ken.lib.packet import ethernet, icmp, ipv4, packet
from os_ken.ofproto import ether, inet, nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

# --------------------------------------------------------------------------------------------
# Names for numbers
# --------------------------------------------------------------------------------------------

# Stand-in datapath: all the parser classes need to build and serialize a message.
DP = SimpleNamespace(ofproto=ofp, ofproto_parser=ofpp, id=None)

# Tables (see the module docstring for the picture).
T_INGRESS = 0
T_ARP = 1
T_LB_SELECT = 2
T_LB_SNAT = 3
T_LB_UNNAT = 4
T_DISPATCH = 5
T_ROUTE = 6
T_NEXTHOP = 7
T_L2 = 8
TABLE_NAMES = {T_INGRESS: "ingress", T_ARP: "arp", T_LB_SELECT: "lb_select", T_LB_SNAT: "lb_snat",
               T_LB_UNNAT: "lb_unnat", T_DISPATCH: "dispatch", T_ROUTE: "route",
               T_NEXTHOP: "nexthop", T_L2: "l2"}

# Priorities (higher wins inside one table).
P_MISS = 0          # table-miss: drop, or the default next table
P_DEFAULT = 100     # the ordinary entry of a table
P_LB_REPLY = 150    # ingress: traffic from a backend (ip, port) -> un-NAT
P_LB_VIP = 200      # ingress: traffic to a VIP; lb_select: a new connection -> group
P_L2_HAIRPIN = 200  # l2: out the port it came in on (needs OFPP_IN_PORT)
P_ARP = 300         # ingress: ARP goes to the responder table

# Cookie kinds (top byte).
COOKIE_BASE = 0x01      # pipeline glue: table-miss entries, dec_ttl, the generic un-NAT
COOKIE_GATEWAY = 0x02   # a subnet's router leg: ARP for the gateway, dispatch to routing
COOKIE_HOST = 0x03      # a host interface: ARP, /32 next hop, L2 forwarding
COOKIE_POD = 0x04       # a container-native pod route: ARP, /32 next hop via its node
COOKIE_LB = 0x05        # a load balancer: VIP capture, new-connection select, SNAT
COOKIE_BACKEND = 0x06   # a backend (proto, ip, port): reply traffic un-NAT
COOKIE_KINDS = {COOKIE_BASE: "base", COOKIE_GATEWAY: "gateway", COOKIE_HOST: "host",
                COOKIE_POD: "pod", COOKIE_LB: "lb", COOKIE_BACKEND: "backend"}
COOKIE_KIND_MASK = 0xff << 56
COOKIE_ALL = 0xffffffffffffffff

# Conntrack zones. One DNAT zone (and one SNAT zone) for all LBs, not one per LB: reply traffic
# is recognised by the backend's (proto, ip, port) alone, and in nodeport mode every node is a
# backend of every LB -- per-LB zones would need per-LB reply flows with identical matches.
# The VIP:port in each connection's tuple already keeps LBs apart inside one zone.
CT_ZONE_DNAT = 0xcb1
CT_ZONE_SNAT = 0xcb2

# When preserve_client_ip is false the LB SNATs to snat_ip with a source port from this range,
# which lies below Linux's ephemeral range (32768-60999): the health checker's own connections
# from the same address then never collide with SNATed ones in the reverse lookup.
SNAT_PORTS = (1024, 32767)

# nicira_ext has no names for these (OVS include/openflow/nicira-ext.h, enum nx_nat_flags).
NX_NAT_F_SRC = 1 << 0
NX_NAT_F_DST = 1 << 1

# ct_state bits (OVS ovs-fields(7)).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# ICMP errors quote at most this much of the offending packet, so the whole error stays within
# 576 bytes as Linux's icmp_send() does. Quoting only IP header + 8 bytes is not an option: OVS
# 3.1's userspace conntrack can crash ovs-vswitchd when such a short quote passes ct(nat).
ICMP_QUOTE_MAX = 576 - 20 - 8

LB_PROTOCOLS = {"tcp": (inet.IPPROTO_TCP, "tcp_src", "tcp_dst"),
                "udp": (inet.IPPROTO_UDP, "udp_src", "udp_dst")}
MODES = ("nodeport", "container-native")
TARGET_MODES = ("nodeport", "container-native")


# --------------------------------------------------------------------------------------------
# NXAction padding fix
# --------------------------------------------------------------------------------------------

class _PadToLen:
    """Write the zero pad bytes os-ken 4.2.2's NXAction.serialize forgets.

    NXAction.serialize sets `self.len` to the 8-byte-rounded length but appends only the body,
    so everything after the action is shifted. In a flow-mod the next action or the instruction
    length hides it; in a group bucket (ct(nat(dst=ip:port)) is 22 bytes + 2 of pad) OVS
    rejects the group-mod with OFPBRC_BAD_LEN. Subclassing keeps os-ken itself untouched.
    """

    def serialize(self, buf, offset):
        super().serialize(buf, offset)
        end = offset + self.len
        if len(buf) < end:
            buf += bytearray(end - len(buf))


class NXActionNATPadded(_PadToLen, ofpp.NXActionNAT):
    """NXActionNAT that serializes to exactly its `len` (zero padded)."""


class NXActionCTPadded(_PadToLen, ofpp.NXActionCT):
    """NXActionCT that serializes to exactly its `len` (zero padded)."""


# --------------------------------------------------------------------------------------------
# The fabric config (fabric.json, see docs/fabric-config.md)
# --------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """fabric.json does not describe a VPC the controller can program."""


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _req(d: Mapping, key: str, where: str):
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        raise ConfigError(f"{where}.{key}: missing")
    return d[key]


def _ip(value, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address") from None


def _mac(value, where: str) -> str:
    mac = str(value).lower()
    if not _MAC_RE.match(mac):
        raise ConfigError(f"{where}: {value!r} is not a MAC address like 02:cb:00:00:00:01")
    return mac


def _port(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: {value!r} is not a port number 1-65535")
    return value


@dataclass(frozen=True)
class Switch:
    """One OVS bridge.

    name: bridge name (also the name of its LOCAL port)
    dpid: datapath id the bridge reports
    role: "core" (vpc0: router core, internet gateway, LB) or "subnet"
    """
    name: str
    dpid: int
    role: str


@dataclass(frozen=True)
class Link:
    """A switch-to-switch link: port a_port on switch a is cabled to b_port on b."""
    a: str
    a_port: str
    b: str
    b_port: str


@dataclass(frozen=True)
class Subnet:
    """An L3 network the VPC router has a leg in.

    cidr: the network; gateway/gateway_mac: the router's address and MAC in it
    kind: "vpc", "internet" or "lb"
    """
    name: str
    cidr: ipaddress.IPv4Network
    gateway: str
    gateway_mac: str
    switch: str
    kind: str


@dataclass(frozen=True)
class Host:
    """A host interface attached to a fabric switch port (a node, a client, the LB host)."""
    name: str
    kind: str
    ip: str
    mac: str
    subnet: str
    switch: str
    port: str


@dataclass(frozen=True)
class PodRoute:
    """Container-native: pod IP `ip` lives behind node `node`."""
    pod: str
    ip: str
    node: str


@dataclass(frozen=True)
class Backend:
    """An LB target: node IP:NodePort (nodeport) or pod IP:targetPort (container-native)."""
    name: str
    ip: str
    port: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True)
class HealthCheck:
    """HTTP health check of every backend of one LB.

    port: checked port (None: the backend's own port, "traffic port")
    path: GET path; a 200-399 answer within timeout_s is a success
    healthy_threshold / unhealthy_threshold: consecutive results that flip the state
    """
    port: int | None = None
    path: str = "/healthz"
    interval_s: float = 1.0
    timeout_s: float = 0.5
    healthy_threshold: int = 2
    unhealthy_threshold: int = 2


@dataclass(frozen=True)
class LoadBalancer:
    """A cloud LB: a VIP:port on the core switch balanced per connection over backends.

    index: 1-based position in fabric.json; it is the group id and the reg0 tag
    snat_ip: source address used when preserve_client_ip is false (default: the checker host's)
    """
    name: str
    index: int
    vip: str
    port: int
    protocol: str
    target_mode: str
    preserve_client_ip: bool
    backends: tuple[Backend, ...]
    health_check: HealthCheck | None
    snat_ip: str | None

    @property
    def group_id(self) -> int:
        return self.index

    @property
    def tag(self) -> int:
        return self.index


@dataclass(frozen=True)
class Fabric:
    """The whole of fabric.json, validated."""
    cluster: str
    mode: str
    switches: tuple[Switch, ...]
    links: tuple[Link, ...]
    subnets: tuple[Subnet, ...]
    hosts: tuple[Host, ...]
    pod_routes: tuple[PodRoute, ...]
    load_balancers: tuple[LoadBalancer, ...]
    checker_host: str | None
    checker_netns_pid: int | None

    @property
    def core(self) -> Switch:
        return next(s for s in self.switches if s.role == "core")

    def switch(self, name: str) -> Switch:
        return next(s for s in self.switches if s.name == name)

    def subnet(self, name: str) -> Subnet:
        return next(s for s in self.subnets if s.name == name)

    def host(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def subnet_of_ip(self, ip: str) -> Subnet | None:
        addr = ipaddress.IPv4Address(ip)
        return next((s for s in self.subnets if addr in s.cidr), None)

    def lb(self, name: str) -> LoadBalancer | None:
        return next((lb for lb in self.load_balancers if lb.name == name), None)


def parse_backend(d: Mapping, where: str) -> Backend:
    """Validate one backend object ({name, ip, port}; name defaults to ip:port)."""
    ip = _ip(_req(d, "ip", where), f"{where}.ip")
    port = _port(_req(d, "port", where), f"{where}.port")
    return Backend(name=str(d.get("name") or f"{ip}:{port}"), ip=ip, port=port)


def parse_pod_route(d: Mapping, where: str) -> PodRoute:
    """Validate one pod route object ({pod, ip, node})."""
    return PodRoute(pod=str(_req(d, "pod", where)), ip=_ip(_req(d, "ip", where), f"{where}.ip"),
                    node=str(_req(d, "node", where)))


def parse_fabric(d: Mapping, source: str = "fabric.json") -> Fabric:
    """Validate fabric.json (already JSON-decoded) into a Fabric; ConfigError says where."""
    mode = _req(d, "mode", source)
    if mode not in MODES:
        raise ConfigError(f"{source}.mode: {mode!r} is not one of {', '.join(MODES)}")

    switches = []
    for i, s in enumerate(_req(d, "switches", source)):
        w = f"{source}.switches[{i}]"
        role = _req(s, "role", w)
        if role not in ("core", "subnet"):
            raise ConfigError(f"{w}.role: {role!r} is not 'core' or 'subnet'")
        dpid = _req(s, "dpid", w)
        if isinstance(dpid, str):
            dpid = int(dpid, 16)
        switches.append(Switch(name=str(_req(s, "name", w)), dpid=int(dpid), role=role))
    names = [s.name for s in switches]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}.switches: duplicate names in {names}")
    if sum(s.role == "core" for s in switches) != 1:
        raise ConfigError(f"{source}.switches: exactly one switch must have role 'core'")

    links = []
    for i, l in enumerate(d.get("links") or []):
        w = f"{source}.links[{i}]"
        link = Link(a=str(_req(l, "a", w)), a_port=str(_req(l, "a_port", w)),
                    b=str(_req(l, "b", w)), b_port=str(_req(l, "b_port", w)))
        for end in (link.a, link.b):
            if end not in names:
                raise ConfigError(f"{w}: switch {end!r} is not in switches")
        links.append(link)

    subnets = []
    for i, s in enumerate(_req(d, "subnets", source)):
        w = f"{source}.subnets[{i}]"
        try:
            cidr = ipaddress.IPv4Network(_req(s, "cidr", w))
        except ValueError as e:
            raise ConfigError(f"{w}.cidr: {e}") from None
        gw = _ip(_req(s, "gateway", w), f"{w}.gateway")
        if ipaddress.IPv4Address(gw) not in cidr:
            raise ConfigError(f"{w}.gateway: {gw} is outside {cidr}")
        sw = str(_req(s, "switch", w))
        if sw not in names:
            raise ConfigError(f"{w}.switch: {sw!r} is not in switches")
        subnets.append(Subnet(name=str(_req(s, "name", w)), cidr=cidr, gateway=gw,
                              gateway_mac=_mac(_req(s, "gateway_mac", w), f"{w}.gateway_mac"),
                              switch=sw, kind=str(s.get("kind", "vpc"))))
    subnet_names = {s.name for s in subnets}

    hosts = []
    for i, h in enumerate(_req(d, "hosts", source)):
        w = f"{source}.hosts[{i}]"
        host = Host(name=str(_req(h, "name", w)), kind=str(_req(h, "kind", w)),
                    ip=_ip(_req(h, "ip", w), f"{w}.ip"), mac=_mac(_req(h, "mac", w), f"{w}.mac"),
                    subnet=str(_req(h, "subnet", w)), switch=str(_req(h, "switch", w)),
                    port=str(_req(h, "port", w)))
        if host.subnet not in subnet_names:
            raise ConfigError(f"{w}.subnet: {host.subnet!r} is not in subnets")
        if host.switch not in names:
            raise ConfigError(f"{w}.switch: {host.switch!r} is not in switches")
        net = next(s.cidr for s in subnets if s.name == host.subnet)
        if ipaddress.IPv4Address(host.ip) not in net:
            raise ConfigError(f"{w}.ip: {host.ip} is outside subnet {host.subnet} ({net})")
        hosts.append(host)
    for what in ("name", "ip", "mac"):
        values = [getattr(h, what) for h in hosts]
        dup = {v for v in values if values.count(v) > 1}
        if dup:
            raise ConfigError(f"{source}.hosts: duplicate {what} {sorted(dup)}")

    pod_routes = [parse_pod_route(p, f"{source}.pod_routes[{i}]")
                  for i, p in enumerate(d.get("pod_routes") or [])]
    if pod_routes and mode != "container-native":
        raise ConfigError(f"{source}.pod_routes: pod addresses are unknown to the VPC in "
                          f"{mode} mode -- leave pod_routes empty")

    checker = d.get("health_checker") or {}
    checker_host = checker.get("host")
    checker_pid = checker.get("netns_pid")
    if checker_pid is not None and (not isinstance(checker_pid, int) or checker_pid <= 0):
        raise ConfigError(f"{source}.health_checker.netns_pid: {checker_pid!r} is not a pid")
    checker_ip = next((h.ip for h in hosts if h.name == checker_host), None)

    lbs = []
    for i, lb in enumerate(d.get("load_balancers") or []):
        w = f"{source}.load_balancers[{i}]"
        proto = str(lb.get("protocol", "tcp")).lower()
        if proto not in LB_PROTOCOLS:
            raise ConfigError(f"{w}.protocol: {proto!r} is not tcp or udp")
        target_mode = lb.get("target_mode", mode)
        if target_mode not in TARGET_MODES:
            raise ConfigError(f"{w}.target_mode: {target_mode!r} is not one of "
                              f"{', '.join(TARGET_MODES)}")
        hc = lb.get("health_check")
        health = None
        if hc is not None:
            hw = f"{w}.health_check"
            health = HealthCheck(
                port=None if hc.get("port") in (None, "traffic-port")
                else _port(hc["port"], f"{hw}.port"),
                path=str(hc.get("path", "/healthz")),
                interval_s=float(hc.get("interval_s", 1.0)),
                timeout_s=float(hc.get("timeout_s", 0.5)),
                healthy_threshold=int(hc.get("healthy_threshold", 2)),
                unhealthy_threshold=int(hc.get("unhealthy_threshold", 2)))
            if health.interval_s <= 0 or health.timeout_s <= 0:
                raise ConfigError(f"{hw}: interval_s and timeout_s must be > 0")
            if health.healthy_threshold < 1 or health.unhealthy_threshold < 1:
                raise ConfigError(f"{hw}: thresholds must be >= 1")
        preserve = lb.get("preserve_client_ip", True)
        if not isinstance(preserve, bool):
            raise ConfigError(f"{w}.preserve_client_ip: {preserve!r} is not true or false")
        snat_ip = lb.get("snat_ip")
        snat_ip = _ip(snat_ip, f"{w}.snat_ip") if snat_ip else checker_ip
        if not preserve and not snat_ip:
            raise ConfigError(f"{w}: preserve_client_ip is false but there is no snat_ip and "
                              f"no health_checker.host to take the address from")
        backends = tuple(parse_backend(b, f"{w}.backends[{j}]")
                         for j, b in enumerate(lb.get("backends") or []))
        lbs.append(LoadBalancer(
            name=str(_req(lb, "name", w)), index=i + 1, vip=_ip(_req(lb, "vip", w), f"{w}.vip"),
            port=_port(_req(lb, "port", w), f"{w}.port"), protocol=proto, target_mode=target_mode,
            preserve_client_ip=preserve, backends=backends, health_check=health,
            snat_ip=snat_ip))

    fabric = Fabric(cluster=str(d.get("cluster", "")), mode=mode, switches=tuple(switches),
                    links=tuple(links), subnets=tuple(subnets), hosts=tuple(hosts),
                    pod_routes=tuple(pod_routes), load_balancers=tuple(lbs),
                    checker_host=checker_host, checker_netns_pid=checker_pid)
    for i, p in enumerate(fabric.pod_routes):
        _check_pod(fabric, p, f"{source}.pod_routes[{i}]")
    return fabric


def _check_pod(fabric: Fabric, pod: PodRoute, where: str) -> None:
    node = fabric.host(pod.node)
    if node is None or node.kind != "node":
        raise ConfigError(f"{where}.node: {pod.node!r} is not a host of kind node")
    if any(h.ip == pod.ip for h in fabric.hosts):
        raise ConfigError(f"{where}.ip: {pod.ip} is a host's address")


# --------------------------------------------------------------------------------------------
# One flow builder, and the small action helpers
# --------------------------------------------------------------------------------------------

def cookie(kind: int, key: str) -> int:
    """Cookie for the object `key` of `kind`: kind in the top byte, 56 bits of its hash below."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=7).digest(), "big")
    return (kind << 56) | digest


def flow(table: int, priority: int, cookie: int, match: Mapping | None = None,
         actions: Iterable = (), goto: int | None = None) -> ofpp.OFPFlowMod:
    """The one flow builder: an OFPFC_ADD with apply-actions and/or goto-table."""
    inst = []
    actions = list(actions)
    if actions:
        inst.append(ofpp.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if goto is not None:
        inst.append(ofpp.OFPInstructionGotoTable(goto))
    return ofpp.OFPFlowMod(DP, cookie=cookie, table_id=table, priority=priority,
                           command=ofp.OFPFC_ADD, buffer_id=ofp.OFP_NO_BUFFER,
                           out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                           match=ofpp.OFPMatch(**dict(match or {})), instructions=inst)


def delete_by_cookie(value: int, mask: int = COOKIE_ALL) -> ofpp.OFPFlowMod:
    """Delete every flow (all tables) whose cookie matches value under mask."""
    return ofpp.OFPFlowMod(DP, cookie=value, cookie_mask=mask, table_id=ofp.OFPTT_ALL,
                           command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY,
                           out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch())


def ct(zone: int, table: int | None = None, commit: bool = False,
       nat: ofpp.NXActionNAT | None = None) -> NXActionCTPadded:
    """ct(zone=Z[,commit][,table=T][,nat...]) -- table None: no recirculation."""
    return NXActionCTPadded(
        flags=nicira_ext.NX_CT_F_COMMIT if commit else 0, zone_src="", zone_ofs_nbits=zone,
        recirc_table=nicira_ext.NX_CT_RECIRC_NONE if table is None else table, alg=0,
        actions=[nat] if nat is not None else [])


def nat_reverse() -> NXActionNATPadded:
    """Plain `nat`: apply the connection's existing translation (either direction)."""
    return NXActionNATPadded(flags=0)


def nat_dst(ip: str, port: int) -> NXActionNATPadded:
    """nat(dst=ip:port) -- encoded like ovs-ofctl does: ipv4 min + proto min (needs the pad)."""
    return NXActionNATPadded(flags=NX_NAT_F_DST, range_ipv4_min=ip, range_proto_min=port)


def nat_src(ip: str, ports: tuple[int, int] = SNAT_PORTS) -> NXActionNATPadded:
    """nat(src=ip:lo-hi)."""
    return NXActionNATPadded(flags=NX_NAT_F_SRC, range_ipv4_min=ip, range_proto_min=ports[0],
                             range_proto_max=ports[1])


def arp_responder(ip: str, mac: str) -> list:
    """Turn the ARP request into the reply for ip is-at mac and send it back out IN_PORT."""
    return [ofpp.NXActionRegMove(src_field="eth_src", dst_field="eth_dst", n_bits=48),
            ofpp.OFPActionSetField(eth_src=mac),
            ofpp.OFPActionSetField(arp_op=2),
            ofpp.NXActionRegMove(src_field="arp_sha", dst_field="arp_tha", n_bits=48),
            ofpp.OFPActionSetField(arp_sha=mac),
            ofpp.NXActionRegMove(src_field="arp_spa", dst_field="arp_tpa", n_bits=32),
            ofpp.OFPActionSetField(arp_spa=ip),
            ofpp.OFPActionOutput(ofp.OFPP_IN_PORT)]


def select_group(command: int, group_id: int, buckets_actions: list[list]) -> ofpp.OFPGroupMod:
    """A select group, one weight-1 bucket per action list."""
    buckets = [ofpp.OFPBucket(weight=1, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                              actions=actions) for actions in buckets_actions]
    return ofpp.OFPGroupMod(DP, command=command, type_=ofp.OFPGT_SELECT, group_id=group_id,
                            buckets=buckets)


def clear_switch() -> list:
    """Delete every flow and every group."""
    return [ofpp.OFPFlowMod(DP, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                            out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch()),
            ofpp.OFPGroupMod(DP, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_ALL,
                             group_id=ofp.OFPG_ALL)]


def switch_config() -> list:
    """Send whole packets to the controller, and let invalid-TTL packet-ins through.

    OF1.3 dropped set_config's OFPC_INVALID_TTL_TO_CONTROLLER bit (OVS answers
    OFPSCFC_BAD_FLAGS to it on 1.3); the async config's packet-in mask is how 1.3 asks.
    """
    reasons = (1 << ofp.OFPR_NO_MATCH) | (1 << ofp.OFPR_ACTION) | (1 << ofp.OFPR_INVALID_TTL)
    port_status = (1 << ofp.OFPPR_ADD) | (1 << ofp.OFPPR_DELETE) | (1 << ofp.OFPPR_MODIFY)
    return [ofpp.OFPSetConfig(DP, ofp.OFPC_FRAG_NORMAL, ofp.OFPCML_NO_BUFFER),
            ofpp.OFPSetAsync(DP, [reasons, 0], [port_status, port_status], [0, 0])]


# --------------------------------------------------------------------------------------------
# Health: a small state machine per backend
# --------------------------------------------------------------------------------------------

INITIAL, HEALTHY, UNHEALTHY, UNCHECKED = "initial", "healthy", "unhealthy", "unchecked"


@dataclass
class Health:
    """Health of one backend.

    state: initial (not yet decided, out of service), healthy, unhealthy, or unchecked (no
           check configured or no checker running: always in service)
    ok_streak / fail_streak: consecutive successes / failures so far
    last: the checker's last result line (status, ms, error)
    """
    state: str = INITIAL
    ok_streak: int = 0
    fail_streak: int = 0
    checks: int = 0
    last: dict = field(default_factory=dict)

    @property
    def in_service(self) -> bool:
        return self.state in (HEALTHY, UNCHECKED)


def observe(h: Health, ok: bool, hc: HealthCheck) -> bool:
    """Record one check result; returns True when the state changed."""
    h.checks += 1
    if ok:
        h.ok_streak, h.fail_streak = h.ok_streak + 1, 0
        new = HEALTHY if h.ok_streak >= hc.healthy_threshold else h.state
    else:
        h.fail_streak, h.ok_streak = h.fail_streak + 1, 0
        new = UNHEALTHY if h.fail_streak >= hc.unhealthy_threshold else h.state
    changed, h.state = new != h.state, new
    return changed


# --------------------------------------------------------------------------------------------
# The VPC model
# --------------------------------------------------------------------------------------------

Ports = Mapping[str, int]              # a switch's port name -> OpenFlow port number
Messages = dict[str, list]              # switch name -> messages to send, in order


class Vpc:
    """The VPC as the controller sees it: fabric config + the parts that change at run time.

    fabric: the validated fabric.json
    pods: container-native pod routes by pod name (fabric's pod_routes + REST additions)
    backends: per LB name, backends by (ip, port)
    health: per (LB name, ip, port), a Health
    reply_keys: every (proto, ip, port) ever registered as a backend -- their reply flows stay
                after deregistration so in-flight connections drain (a no-op for other traffic)
    checks_enabled: False when no checker runs; backends are then "unchecked" and in service
    """

    def __init__(self, fabric: Fabric, checks_enabled: bool = True):
        self.fabric = fabric
        self.checks_enabled = checks_enabled
        self.pods: dict[str, PodRoute] = {p.pod: p for p in fabric.pod_routes}
        self.backends: dict[str, dict[tuple[str, int], Backend]] = {}
        self.health: dict[tuple[str, str, int], Health] = {}
        self.reply_keys: set[tuple[str, str, int]] = set()
        self._next_hop_port = _next_hop_ports(fabric)
        for lb in fabric.load_balancers:
            self.backends[lb.name] = {}
            for b in lb.backends:
                self._register(lb, b)

    # ---- topology helpers -------------------------------------------------------------

    def port_toward(self, switch: str, target_switch: str) -> str | None:
        """Name of `switch`'s port on the path to `target_switch` (None if unreachable)."""
        return self._next_hop_port.get((switch, target_switch))

    def host_port(self, switch: str, host: Host) -> str | None:
        """Name of `switch`'s port toward the host interface `host`."""
        if host.switch == switch:
            return host.port
        return self.port_toward(switch, host.switch)

    def wanted_ports(self, switch: str) -> set[str]:
        """Every port name this switch's flows refer to (status shows the missing ones)."""
        names = {self.host_port(switch, h) for h in self.fabric.hosts}
        names.add(self.port_toward(switch, self.fabric.core.name))
        names.discard(None)
        return names

    def _gateway_for(self, ip: str, fallback: Subnet) -> Subnet:
        return self.fabric.subnet_of_ip(ip) or fallback

    # ---- full program -----------------------------------------------------------------

    def program_switch(self, switch: str, ports: Ports) -> list:
        """Everything the switch needs, from an empty table: clear, config, then all flows."""
        msgs = clear_switch() + switch_config()
        msgs += self._base_flows(switch, ports)
        for subnet in self.fabric.subnets:
            msgs += self._gateway_flows(subnet)
        for host in self.fabric.hosts:
            msgs += self._host_flows(switch, ports, host)
        for pod in self.pods.values():
            msgs += self._pod_flows(pod)
        if switch == self.fabric.core.name:
            for lb in self.fabric.load_balancers:
                # The group first: OVS refuses a flow that names a missing group (BAD_OUT_GROUP).
                msgs.append(self._lb_group(lb, ofp.OFPGC_ADD))
                msgs += self._lb_core_flows(lb)
            for key in sorted(self.reply_keys):
                msgs += self._reply_flows(key)
        else:
            for lb in self.fabric.load_balancers:
                msgs += self._lb_edge_flows(switch, ports, lb)
        return msgs

    def _base_flows(self, switch: str, ports: Ports) -> list:
        c = cookie(COOKIE_BASE, "pipeline")
        ip = {"eth_type": ether.ETH_TYPE_IP}
        msgs = [
            flow(T_INGRESS, P_ARP, c, {"eth_type": ether.ETH_TYPE_ARP}, goto=T_ARP),
            flow(T_INGRESS, P_MISS, c, goto=T_DISPATCH),
            flow(T_ARP, P_MISS, c),                      # unanswered ARP: dropped, never flooded
            flow(T_DISPATCH, P_MISS, c, goto=T_L2),      # not to a gateway MAC: bridged
            # dec_ttl first, so an invalid-TTL packet-in carries the frame as it arrived.
            flow(T_ROUTE, P_DEFAULT, c, ip, [ofpp.OFPActionDecNwTtl()], goto=T_NEXTHOP),
            flow(T_ROUTE, P_MISS, c),                    # non-IP to a gateway MAC
            flow(T_NEXTHOP, P_MISS, c),                  # no route: dropped
            flow(T_L2, P_MISS, c),                       # unknown MAC: dropped, never flooded
        ]
        if switch == self.fabric.core.name:
            msgs += [flow(T_LB_SELECT, P_MISS, c), flow(T_LB_SNAT, P_MISS, c),
                     flow(T_LB_UNNAT, P_DEFAULT, c, ip,
                          [ct(CT_ZONE_DNAT, T_NEXTHOP, nat=nat_reverse())]),
                     flow(T_LB_UNNAT, P_MISS, c)]
        return msgs

    def _gateway_flows(self, subnet: Subnet) -> list:
        c = cookie(COOKIE_GATEWAY, subnet.name)
        return [_arp_flow(c, subnet.gateway, subnet.gateway_mac, subnet.cidr),
                flow(T_DISPATCH, P_DEFAULT, c, {"eth_dst": subnet.gateway_mac}, goto=T_ROUTE)]

    def _host_flows(self, switch: str, ports: Ports, host: Host) -> list:
        c = cookie(COOKIE_HOST, host.name)
        subnet = self.fabric.subnet(host.subnet)
        msgs = [_arp_flow(c, host.ip, host.mac, subnet.cidr),
                _nexthop_flow(c, host.ip, subnet.gateway_mac, host.mac)]
        out = ports.get(self.host_port(switch, host) or "")
        if out is None:
            return msgs
        msgs.append(flow(T_L2, P_DEFAULT, c, {"eth_dst": host.mac}, [ofpp.OFPActionOutput(out)]))
        if switch == self.fabric.core.name:
            # The LB (or the router) on the core may send a frame back down the link it came
            # up (node1 -> VIP -> node3, both in az-a); OpenFlow drops output to the in_port
            # unless it is spelled IN_PORT.
            msgs.append(flow(T_L2, P_L2_HAIRPIN, c, {"in_port": out, "eth_dst": host.mac},
                             [ofpp.OFPActionOutput(ofp.OFPP_IN_PORT)]))
        return msgs

    def _pod_flows(self, pod: PodRoute) -> list:
        c = cookie(COOKIE_POD, pod.pod)
        node = self.fabric.host(pod.node)
        node_subnet = self.fabric.subnet(node.subnet)
        subnet = self._gateway_for(pod.ip, node_subnet)
        return [_arp_flow(c, pod.ip, node.mac, subnet.cidr),
                _nexthop_flow(c, pod.ip, subnet.gateway_mac, node.mac)]

    # ---- the load balancer ------------------------------------------------------------

    def _lb_core_flows(self, lb: LoadBalancer) -> list:
        c = cookie(COOKIE_LB, lb.name)
        proto, _, l4_dst = LB_PROTOCOLS[lb.protocol]
        vip = {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_dst": lb.vip,
               l4_dst: lb.port}
        after_dnat = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
        msgs = [
            # Tag the packet with the LB (reg0 survives recirculation and shows up in an
            # invalid-TTL packet-in), then look it up with the existing NAT applied.
            flow(T_INGRESS, P_LB_VIP, c, vip, [ofpp.OFPActionSetField(reg0=lb.tag),
                                                ct(CT_ZONE_DNAT, T_LB_SELECT, nat=nat_reverse())]),
            # Still addressed to the VIP and new: pick a backend.
            flow(T_LB_SELECT, P_LB_VIP, c,
                 dict(vip, reg0=lb.tag, ct_state=(CT_NEW | CT_TRK, CT_NEW | CT_TRK)),
                 [ofpp.OFPActionGroup(lb.group_id)]),
            # Anything else tracked (established, or a retransmitted SYN already DNATed): go on.
            flow(T_LB_SELECT, P_DEFAULT, c, {"reg0": lb.tag, "ct_state": (CT_TRK, CT_TRK | CT_INV)},
                 goto=after_dnat),
        ]
        if not lb.preserve_client_ip:
            msgs.append(flow(T_LB_SNAT, P_DEFAULT, c,
                             {"eth_type": ether.ETH_TYPE_IP, "reg0": lb.tag},
                             [ct(CT_ZONE_SNAT, T_ROUTE, commit=True, nat=nat_src(lb.snat_ip))]))
        # The VIP's subnet is the LB's leg: hosts there ARP the VIP and get its gateway MAC.
        subnet = self.fabric.subnet_of_ip(lb.vip)
        if subnet is not None:
            msgs.append(_arp_flow(c, lb.vip, subnet.gateway_mac, subnet.cidr))
        return msgs

    def _lb_edge_flows(self, switch: str, ports: Ports, lb: LoadBalancer) -> list:
        """On a subnet switch: VIP traffic goes to the core unrouted (the LB routes it)."""
        out = ports.get(self.port_toward(switch, self.fabric.core.name) or "")
        if out is None:
            return []
        return [flow(T_INGRESS, P_LB_VIP, cookie(COOKIE_LB, lb.name),
                     {"eth_type": ether.ETH_TYPE_IP, "ipv4_dst": lb.vip},
                     [ofpp.OFPActionOutput(out)])]

    def _bucket(self, lb: LoadBalancer, b: Backend) -> list:
        after = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
        return [ct(CT_ZONE_DNAT, after, commit=True, nat=nat_dst(b.ip, b.port))]

    def in_service(self, lb: LoadBalancer) -> list[Backend]:
        """The LB's backends that get new connections, in a stable order."""
        return [b for key, b in sorted(self.backends[lb.name].items())
                if self.health[(lb.name, *key)].in_service]

    def _lb_group(self, lb: LoadBalancer, command: int) -> ofpp.OFPGroupMod:
        return select_group(command, lb.group_id,
                            [self._bucket(lb, b) for b in self.in_service(lb)])

    def _reply_flows(self, key: tuple[str, str, int]) -> list:
        """Traffic from backend (proto, ip, port): un-SNAT (if any LB SNATs) then un-DNAT."""
        proto_name, ip, port = key
        proto, l4_src, _ = LB_PROTOCOLS[proto_name]
        snat = any(not lb.preserve_client_ip and (ip, port) in self.backends[lb.name]
                   for lb in self.fabric.load_balancers if lb.protocol == proto_name)
        action = (ct(CT_ZONE_SNAT, T_LB_UNNAT, nat=nat_reverse()) if snat
                  else ct(CT_ZONE_DNAT, T_NEXTHOP, nat=nat_reverse()))
        return [flow(T_INGRESS, P_LB_REPLY, _reply_cookie(key),
                     {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_src": ip,
                      l4_src: port}, [action])]

    def _register(self, lb: LoadBalancer, b: Backend) -> None:
        self.backends[lb.name][b.key] = b
        checked = self.checks_enabled and lb.health_check is not None
        self.health.setdefault((lb.name, *b.key), Health(INITIAL if checked else UNCHECKED))
        self.reply_keys.add((lb.protocol, b.ip, b.port))

    # ---- run-time changes (each returns the messages for the switches in ports_by_switch)

    def add_pod(self, pod: PodRoute, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Container-native: route pod.ip via its node (replaces a pod of the same name)."""
        if self.fabric.mode != "container-native":
            raise ConfigError(f"pod routes are unknown to the VPC in {self.fabric.mode} mode")
        _check_pod(self.fabric, pod, "pod")
        clash = next((p for p in self.pods.values() if p.ip == pod.ip and p.pod != pod.pod), None)
        if clash:
            raise ConfigError(f"pod.ip: {pod.ip} is already pod {clash.pod}'s")
        old = self.pods.get(pod.pod)
        self.pods[pod.pod] = pod
        pre = [delete_by_cookie(cookie(COOKIE_POD, pod.pod))] if old else []
        return {sw: pre + self._pod_flows(pod) for sw in ports_by_switch}

    def remove_pod(self, name: str, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Forget pod `name`'s route (KeyError if unknown)."""
        del self.pods[name]
        return {sw: [delete_by_cookie(cookie(COOKIE_POD, name))] for sw in ports_by_switch}

    def add_backend(self, lb_name: str, b: Backend,
                    ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Register a backend (the NEG idea); it takes traffic once healthy (or unchecked).

        Registering a backend that is already there only updates its name.
        """
        lb = self.fabric.lb(lb_name)
        if lb is None:
            raise KeyError(lb_name)
        if b.key in self.backends[lb.name]:           # idempotent: keep its health
            self.backends[lb.name][b.key] = b
            return {}
        new_key = (lb.protocol, b.ip, b.port) not in self.reply_keys
        self._register(lb, b)
        return self._core_update(lb, ports_by_switch,
                                 self._reply_flows((lb.protocol, b.ip, b.port)) if new_key else [])

    def remove_backend(self, lb_name: str, ip: str, port: int,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Deregister a backend (KeyError if unknown); its reply flow stays for draining."""
        lb = self.fabric.lb(lb_name)
        if lb is None:
            raise KeyError(lb_name)
        del self.backends[lb.name][(ip, port)]
        del self.health[(lb.name, ip, port)]
        return self._core_update(lb, ports_by_switch)

    def observe_health(self, lb_name: str, ip: str, port: int, ok: bool, result: dict,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Feed one checker result; returns messages only when the bucket set changes."""
        lb = self.fabric.lb(lb_name)
        h = self.health.get((lb_name, ip, port))
        if lb is None or h is None or lb.health_check is None or h.state == UNCHECKED:
            return {}                                  # a result for a removed backend
        h.last = result
        before = h.in_service
        observe(h, ok, lb.health_check)
        return self._core_update(lb, ports_by_switch) if h.in_service != before else {}

    def _core_update(self, lb: LoadBalancer, ports_by_switch: Mapping[str, Ports],
                     extra: list = ()) -> Messages:
        core = self.fabric.core.name
        if core not in ports_by_switch:
            return {}
        return {core: list(extra) + [self._lb_group(lb, ofp.OFPGC_MODIFY)]}

    # ---- ICMP time exceeded -----------------------------------------------------------

    def time_exceeded(self, switch: str, in_port: int, data: bytes,
                      reg0: int = 0) -> list:
        """The router's answer to a packet whose TTL ran out at dec_ttl: ICMP time exceeded.

        From the gateway address of the subnet the packet entered the router through (the
        gateway whose MAC it was sent to), to its source, quoting up to ICMP_QUOTE_MAX bytes.
        A packet the LB translated (reg0 = LB tag) goes back through ct(nat) so conntrack
        un-NATs the quote; the error then carries the VIP as outer source (conntrack rewrites
        the outer header of a related ICMP too). Anything else goes straight out in_port.
        Returns [] for what must not be answered (ICMP errors, broadcasts, non-IPv4).
        """
        pkt = packet.Packet(data)
        eth = pkt.get_protocol(ethernet.ethernet)
        ip4 = pkt.get_protocol(ipv4.ipv4)
        if eth is None or ip4 is None or int(eth.src.split(":")[0], 16) & 1:
            return []
        if ip4.proto == inet.IPPROTO_ICMP:
            inner = pkt.get_protocol(icmp.icmp)
            if inner is None or inner.type not in (icmp.ICMP_ECHO_REQUEST, icmp.ICMP_ECHO_REPLY):
                return []                              # never an error about an error
        gw = next((s for s in self.fabric.subnets if s.gateway_mac == eth.dst), None)
        gw = gw or self.fabric.subnet_of_ip(ip4.src)
        if gw is None:
            return []
        quote = _ip_bytes(data)[:ICMP_QUOTE_MAX]
        reply = packet.Packet()
        reply.add_protocol(ethernet.ethernet(dst=eth.src, src=gw.gateway_mac,
                                             ethertype=ether.ETH_TYPE_IP))
        reply.add_protocol(ipv4.ipv4(src=gw.gateway, dst=ip4.src, proto=inet.IPPROTO_ICMP,
                                     ttl=64))
        reply.add_protocol(icmp.icmp(type_=icmp.ICMP_TIME_EXCEEDED, code=0, csum=0,
                                     data=icmp.TimeExceeded(data_len=0, data=quote)))
        reply.serialize()
        lb = next((lb for lb in self.fabric.load_balancers if lb.tag == reg0), None)
        if lb is not None and switch == self.fabric.core.name:
            actions = [ct(CT_ZONE_SNAT, T_LB_UNNAT, nat=nat_reverse())
                       if not lb.preserve_client_ip
                       else ct(CT_ZONE_DNAT, T_NEXTHOP, nat=nat_reverse())]
        else:
            actions = [ofpp.OFPActionOutput(in_port)]
        return [ofpp.OFPPacketOut(DP, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                  actions=actions, data=bytes(reply.data))]

    # ---- what the checker and the REST API see ----------------------------------------

    def checker_targets(self) -> list[dict]:
        """One entry per checked backend, for the health-checker child."""
        targets = []
        for lb in self.fabric.load_balancers:
            hc = lb.health_check
            if hc is None or not self.checks_enabled:
                continue
            for (ip, port), b in sorted(self.backends[lb.name].items()):
                targets.append({"id": backend_id(lb.name, ip, port), "ip": ip,
                                "port": hc.port or port, "path": hc.path,
                                "interval_s": hc.interval_s, "timeout_s": hc.timeout_s})
        return targets

    def routes_view(self) -> list[dict]:
        """Every /32 the router knows: hosts, then pods."""
        rows = []
        for h in self.fabric.hosts:
            s = self.fabric.subnet(h.subnet)
            rows.append({"prefix": f"{h.ip}/32", "kind": "host", "name": h.name,
                         "next_hop_mac": h.mac, "via": h.name, "subnet": s.name,
                         "eth_src": s.gateway_mac, "cookie": _hex(cookie(COOKIE_HOST, h.name))})
        for p in sorted(self.pods.values(), key=lambda p: p.pod):
            node = self.fabric.host(p.node)
            s = self._gateway_for(p.ip, self.fabric.subnet(node.subnet))
            rows.append({"prefix": f"{p.ip}/32", "kind": "pod", "name": p.pod,
                         "next_hop_mac": node.mac, "via": node.name, "subnet": s.name,
                         "eth_src": s.gateway_mac, "cookie": _hex(cookie(COOKIE_POD, p.pod))})
        return rows

    def backends_view(self, lb_name: str) -> list[dict]:
        lb = self.fabric.lb(lb_name)
        rows = []
        for (ip, port), b in sorted(self.backends[lb.name].items()):
            h = self.health[(lb.name, ip, port)]
            rows.append({"name": b.name, "ip": ip, "port": port, "state": h.state,
                         "in_service": h.in_service, "ok_streak": h.ok_streak,
                         "fail_streak": h.fail_streak, "checks": h.checks, "last": h.last,
                         "health_check_port": (lb.health_check.port or port)
                         if lb.health_check else None})
        return rows

    def lbs_view(self) -> list[dict]:
        rows = []
        for lb in self.fabric.load_balancers:
            hc = lb.health_check
            rows.append({"name": lb.name, "vip": lb.vip, "port": lb.port,
                         "protocol": lb.protocol, "target_mode": lb.target_mode,
                         "preserve_client_ip": lb.preserve_client_ip,
                         "snat_ip": None if lb.preserve_client_ip else lb.snat_ip,
                         "group_id": lb.group_id, "reg0_tag": lb.tag,
                         "ct_zone_dnat": CT_ZONE_DNAT,
                         "ct_zone_snat": None if lb.preserve_client_ip else CT_ZONE_SNAT,
                         "backends": len(self.backends[lb.name]),
                         "in_service": len(self.in_service(lb)),
                         "health_check": dataclasses.asdict(hc) if hc else None,
                         "cookie": _hex(cookie(COOKIE_LB, lb.name))})
        return rows


def backend_id(lb: str, ip: str, port: int) -> str:
    """The id a checker result carries: 'lb/ip:port'."""
    return f"{lb}/{ip}:{port}"


def parse_backend_id(text: str) -> tuple[str, str, int]:
    lb, _, rest = text.rpartition("/")
    ip, _, port = rest.rpartition(":")
    return lb, ip, int(port)


def _hex(c: int) -> str:
    return f"0x{c:016x}"


def _reply_cookie(key: tuple[str, str, int]) -> int:
    return cookie(COOKIE_BACKEND, f"{key[0]}/{key[1]}:{key[2]}")


def _arp_flow(c: int, ip: str, mac: str, asker_net: ipaddress.IPv4Network):
    """Answer 'who has ip' with mac -- only to askers inside asker_net (same subnet)."""
    match = {"eth_type": ether.ETH_TYPE_ARP, "arp_op": 1, "arp_tpa": ip,
             "arp_spa": (str(asker_net.network_address), str(asker_net.netmask))}
    return flow(T_ARP, P_DEFAULT, c, match, arp_responder(ip, mac))


def _nexthop_flow(c: int, ip: str, gateway_mac: str, mac: str):
    return flow(T_NEXTHOP, P_DEFAULT, c, {"eth_type": ether.ETH_TYPE_IP, "ipv4_dst": ip},
                [ofpp.OFPActionSetField(eth_src=gateway_mac), ofpp.OFPActionSetField(eth_dst=mac)],
                goto=T_L2)


def _ip_bytes(data: bytes) -> bytes:
    """The IPv4 packet inside the frame (after the Ethernet header and any VLAN tags)."""
    offset = 14
    while int.from_bytes(data[offset - 2:offset], "big") in (0x8100, 0x88a8):
        offset += 4
    return data[offset:]


def _next_hop_ports(fabric: Fabric) -> dict[tuple[str, str], str]:
    """(switch, target switch) -> switch's port on a shortest path, by BFS over the links."""
    adj: dict[str, list[tuple[str, str]]] = {s.name: [] for s in fabric.switches}
    for l in fabric.links:
        adj[l.a].append((l.b, l.a_port))
        adj[l.b].append((l.a, l.b_port))
    result = {}
    for src in adj:
        seen = {src}
        queue = deque((nbr, port) for nbr, port in adj[src])
        while queue:
            node, first_port = queue.popleft()
            if node in seen:
                continue
            seen.add(node)
            result[(src, node)] = first_port
            queue.extend((nbr, first_port) for nbr, _ in adj[node] if nbr not in seen)
    return result


def identify_switch(fabric: Fabric, dpid: int, port_names: Iterable[str]) -> Switch | None:
    """Which fabric switch this datapath is: by dpid, else by its LOCAL port's name."""
    by_dpid = next((s for s in fabric.switches if s.dpid == dpid), None)
    if by_dpid is not None:
        return by_dpid
    names = set(port_names)
    return next((s for s in fabric.switches if s.name in names), None)
