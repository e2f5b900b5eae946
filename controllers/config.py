"""The fabric config (fabric.json, see docs/fabric-config.md): what the controller is told.

ConfigError: fabric.json (or a REST body) does not describe a VPC the controller can program
Switch, Link, Subnet, Host, PodRoute, ExternalIpRoute, Backend, HealthCheck, LoadBalancer,
    Fabric: the validated config, frozen dataclasses
parse_fabric: JSON-decoded fabric.json in, Fabric out (one small parser per section)
parse_backend, parse_pod_route, check_pod, parse_seconds: the pieces the REST API validates on
    its own

Standard library only: the health-checker child imports this module too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODES = ("nodeport", "container-native")
TARGET_MODES = ("nodeport", "container-native")
PROTOCOLS = ("tcp", "udp")
# How the LB picks a backend for a new connection: by the connection's hash, or sticky to the
# client's address (GCP's sessionAffinity CLIENT_IP, an NLB target group's source_ip stickiness).
AFFINITIES = ("none", "client_ip")
# How the cloud reports the LB's address: "ip" (GCP: kube-proxy short-circuits the VIP on the
# nodes) or "hostname" (AWS: in-cluster clients reach the VIP through the VPC and the LB).
ADDRESS_KINDS = ("ip", "hostname")
# AWS's default deregistration delay (target group attribute deregistration_delay.timeout_seconds).
DEREGISTRATION_DELAY_S = 300.0

# The most backends one LB may have: a big LB picks one by a hash slot number written by
# multipath, whose n_links is 1-65536 (controllers/lb.py). GCP's zonal NEG holds 10,000.
MAX_LB_BACKENDS = 65536


class ConfigError(ValueError):
    """fabric.json does not describe a VPC the controller can program."""


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _req(d: Mapping, key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        raise ConfigError(f"{where}.{key}: missing")
    return d[key]


def _ip(value: Any, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address") from None


def _mac(value: Any, where: str) -> str:
    mac = str(value).lower()
    if not _MAC_RE.match(mac):
        raise ConfigError(f"{where}: {value!r} is not a MAC address like 02:cb:00:00:00:01")
    return mac


def _port(value: Any, where: str) -> int:
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
class ExternalIpRoute:
    """A Service's external IP (spec.externalIPs) routed to node `node`, as a cluster admin's
    static route does: the node's kube-proxy serves it. services: the Services that have it."""
    ip: str
    node: str
    services: tuple[str, ...] = ()


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
    session_affinity: "none" or "client_ip" (a client's address always picks the same backend
        while that backend is in service)
    address: "ip" or "hostname": with hostname, clients inside the VPC (nodes, pods) call the VIP
        through the LB, so replies of its backends are sent to the core to be un-NATed
    deregistration_delay_s: how long a deregistered backend keeps its established connections
        (connection draining) before they are cut
    source_ranges: the service's loadBalancerSourceRanges, IPv4 CIDRs: only clients from them
        reach the VIP (an NLB's security group, GCP's firewall rule); empty: every client
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
    session_affinity: str = "none"
    address: str = "ip"
    deregistration_delay_s: float = DEREGISTRATION_DELAY_S
    source_ranges: tuple[str, ...] = ()

    @property
    def sticky(self) -> bool:
        return self.session_affinity == "client_ip"

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
    checker_netns: str | None
    external_ips: tuple[ExternalIpRoute, ...] = ()

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


# --------------------------------------------------------------------------------------------
# Parsing, one function per section of fabric.json
# --------------------------------------------------------------------------------------------

def parse_fabric(d: Mapping, source: str = "fabric.json") -> Fabric:
    """Validate fabric.json (already JSON-decoded) into a Fabric; ConfigError says where."""
    mode = _req(d, "mode", source)
    if mode not in MODES:
        raise ConfigError(f"{source}.mode: {mode!r} is not one of {', '.join(MODES)}")
    switches = _parse_switches(d, source)
    names = [s.name for s in switches]
    links = _parse_links(d, source, names)
    subnets = _parse_subnets(d, source, names)
    hosts = _parse_hosts(d, source, names, subnets)
    pod_routes = _parse_pod_routes(d, source, mode)
    checker_host, checker_netns = _parse_health_checker(d, source)
    checker_ip = next((h.ip for h in hosts if h.name == checker_host), None)
    lbs = [_parse_load_balancer(lb, f"{source}.load_balancers[{i}]", i + 1, mode, checker_ip)
           for i, lb in enumerate(d.get("load_balancers") or [])]
    _check_listeners(lbs, source)
    fabric = Fabric(cluster=str(d.get("cluster", "")), mode=mode, switches=tuple(switches),
                    links=tuple(links), subnets=tuple(subnets), hosts=tuple(hosts),
                    pod_routes=tuple(pod_routes), load_balancers=tuple(lbs),
                    checker_host=checker_host, checker_netns=checker_netns,
                    external_ips=tuple(_parse_external_ips(d, source, hosts)))
    for i, p in enumerate(fabric.pod_routes):
        check_pod(fabric, p, f"{source}.pod_routes[{i}]")
    pod_ips = {p.ip: p.pod for p in fabric.pod_routes}
    for i, e in enumerate(fabric.external_ips):
        if e.ip in pod_ips:
            raise ConfigError(f"{source}.external_ips[{i}].ip: {e.ip} is pod "
                              f"{pod_ips[e.ip]}'s address")
    return fabric


def _parse_external_ips(d: Mapping, source: str, hosts: list[Host]) -> list[ExternalIpRoute]:
    """external_ips: [{ip, node, services}]: each address once, to a host of kind node, never
    a host's own address."""
    nodes = {h.name for h in hosts if h.kind == "node"}
    host_ips = {h.ip: h.name for h in hosts}
    out: list[ExternalIpRoute] = []
    for i, e in enumerate(d.get("external_ips") or []):
        w = f"{source}.external_ips[{i}]"
        ip, node = _ip(_req(e, "ip", w), f"{w}.ip"), str(_req(e, "node", w))
        if node not in nodes:
            raise ConfigError(f"{w}.node: {node!r} is not a host of kind node")
        if ip in host_ips:
            raise ConfigError(f"{w}.ip: {ip} is host {host_ips[ip]}'s address")
        if any(r.ip == ip for r in out):
            raise ConfigError(f"{w}.ip: {ip} is given twice -- one entry per address")
        services = e.get("services") or []
        if not isinstance(services, list):
            raise ConfigError(f"{w}.services: expected a list of service names")
        out.append(ExternalIpRoute(ip, node, tuple(str(s) for s in services)))
    return out


def _check_listeners(lbs: list[LoadBalancer], source: str) -> None:
    """Several LBs may share a VIP (one per listener: a multi-port Service), never a listener."""
    seen: dict[tuple[str, str, int], str] = {}
    for lb in lbs:
        key = (lb.vip, lb.protocol, lb.port)
        if key in seen:
            raise ConfigError(f"{source}.load_balancers[{lb.index - 1}]: {lb.protocol} "
                              f"{lb.vip}:{lb.port} is already lb {seen[key]}'s listener -- "
                              "give it another port or VIP")
        seen[key] = lb.name
    names = [lb.name for lb in lbs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{source}.load_balancers: duplicate names {sorted(dup)}")


def _parse_switches(d: Mapping, source: str) -> list[Switch]:
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
    return switches


def _parse_links(d: Mapping, source: str, switch_names: list[str]) -> list[Link]:
    links = []
    for i, item in enumerate(d.get("links") or []):
        w = f"{source}.links[{i}]"
        link = Link(a=str(_req(item, "a", w)), a_port=str(_req(item, "a_port", w)),
                    b=str(_req(item, "b", w)), b_port=str(_req(item, "b_port", w)))
        for end in (link.a, link.b):
            if end not in switch_names:
                raise ConfigError(f"{w}: switch {end!r} is not in switches")
        links.append(link)
    return links


def _parse_subnets(d: Mapping, source: str, switch_names: list[str]) -> list[Subnet]:
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
        if sw not in switch_names:
            raise ConfigError(f"{w}.switch: {sw!r} is not in switches")
        subnets.append(Subnet(name=str(_req(s, "name", w)), cidr=cidr, gateway=gw,
                              gateway_mac=_mac(_req(s, "gateway_mac", w), f"{w}.gateway_mac"),
                              switch=sw, kind=str(s.get("kind", "vpc"))))
    return subnets


def _parse_hosts(d: Mapping, source: str, switch_names: list[str],
                 subnets: list[Subnet]) -> list[Host]:
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
        if host.switch not in switch_names:
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
    return hosts


def _parse_pod_routes(d: Mapping, source: str, mode: str) -> list[PodRoute]:
    pod_routes = [parse_pod_route(p, f"{source}.pod_routes[{i}]")
                  for i, p in enumerate(d.get("pod_routes") or [])]
    if pod_routes and mode != "container-native":
        raise ConfigError(f"{source}.pod_routes: pod addresses are unknown to the VPC in "
                          f"{mode} mode -- leave pod_routes empty")
    return pod_routes


def _parse_health_checker(d: Mapping, source: str) -> tuple[str | None, str | None]:
    """health_checker: {host, netns} -> (host name, network namespace file); both may be absent."""
    checker = d.get("health_checker") or {}
    w = f"{source}.health_checker"
    if "netns_pid" in checker:
        pid = checker["netns_pid"]
        raise ConfigError(f"{w}.netns_pid: replaced by netns, the namespace's file -- write "
                          f'"netns": "/proc/{pid}/ns/net" (or /run/netns/NAME)')
    netns = checker.get("netns")
    if netns is not None and (not isinstance(netns, str) or not netns.startswith("/")):
        raise ConfigError(f"{w}.netns: {netns!r} is not a file path like /run/netns/NAME")
    return checker.get("host"), netns


def _parse_health_check(hc: Mapping, hw: str) -> HealthCheck:
    health = HealthCheck(
        port=None if hc.get("port") in (None, "traffic-port") else _port(hc["port"], f"{hw}.port"),
        path=str(hc.get("path", "/healthz")),
        interval_s=float(hc.get("interval_s", 1.0)),
        timeout_s=float(hc.get("timeout_s", 0.5)),
        healthy_threshold=int(hc.get("healthy_threshold", 2)),
        unhealthy_threshold=int(hc.get("unhealthy_threshold", 2)))
    if health.interval_s <= 0 or health.timeout_s <= 0:
        raise ConfigError(f"{hw}: interval_s and timeout_s must be > 0")
    if health.healthy_threshold < 1 or health.unhealthy_threshold < 1:
        raise ConfigError(f"{hw}: thresholds must be >= 1")
    return health


def _parse_load_balancer(lb: Mapping, w: str, index: int, mode: str,
                         checker_ip: str | None) -> LoadBalancer:
    """One load_balancers[] entry; index is its 1-based position (group id and reg0 tag)."""
    proto = str(lb.get("protocol", "tcp")).lower()
    if proto not in PROTOCOLS:
        raise ConfigError(f"{w}.protocol: {proto!r} is not tcp or udp")
    target_mode = lb.get("target_mode", mode)
    if target_mode not in TARGET_MODES:
        raise ConfigError(f"{w}.target_mode: {target_mode!r} is not one of "
                          f"{', '.join(TARGET_MODES)}")
    hc = lb.get("health_check")
    health = _parse_health_check(hc, f"{w}.health_check") if hc is not None else None
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
    distinct = len({b.key for b in backends})
    if distinct > MAX_LB_BACKENDS:
        raise ConfigError(f"{w}.backends: {distinct} backends; an LB can have at most "
                          f"{MAX_LB_BACKENDS} -- split them over more LBs")
    return LoadBalancer(
        name=str(_req(lb, "name", w)), index=index, vip=_ip(_req(lb, "vip", w), f"{w}.vip"),
        port=_port(_req(lb, "port", w), f"{w}.port"), protocol=proto, target_mode=target_mode,
        preserve_client_ip=preserve, backends=backends, health_check=health, snat_ip=snat_ip,
        session_affinity=_choice(lb, "session_affinity", AFFINITIES, w),
        address=_choice(lb, "address", ADDRESS_KINDS, w),
        deregistration_delay_s=parse_seconds(lb.get("deregistration_delay_s",
                                                    DEREGISTRATION_DELAY_S),
                                             f"{w}.deregistration_delay_s"),
        source_ranges=_cidrs(lb.get("source_ranges") or [], f"{w}.source_ranges"))


def _cidrs(value: Any, where: str) -> tuple[str, ...]:
    """A list of IPv4 CIDRs, normalized ("10.0.0.1/8" is 10.0.0.0/8)."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {value!r} is not a list of CIDRs")
    out = []
    for i, cidr in enumerate(value):
        try:
            out.append(str(ipaddress.IPv4Network(str(cidr), strict=False)))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: {cidr!r} is not an IPv4 CIDR") from None
    return tuple(out)


def _choice(d: Mapping, key: str, choices: tuple[str, ...], where: str) -> str:
    """d[key], one of choices; absent: the first."""
    value = d.get(key, choices[0])
    if value not in choices:
        raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def parse_seconds(value: Any, where: str) -> float:
    """A duration in seconds, >= 0 (a REST body's delay, an LB's deregistration delay)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e7:
        raise ConfigError(f"{where}: {value!r} is not a number of seconds >= 0")
    return float(value)


def parse_backend(d: Mapping, where: str) -> Backend:
    """Validate one backend object ({name, ip, port}; name defaults to ip:port)."""
    ip = _ip(_req(d, "ip", where), f"{where}.ip")
    port = _port(_req(d, "port", where), f"{where}.port")
    return Backend(name=str(d.get("name") or f"{ip}:{port}"), ip=ip, port=port)


def parse_pod_route(d: Mapping, where: str) -> PodRoute:
    """Validate one pod route object ({pod, ip, node})."""
    return PodRoute(pod=str(_req(d, "pod", where)), ip=_ip(_req(d, "ip", where), f"{where}.ip"),
                    node=str(_req(d, "node", where)))


def check_pod(fabric: Fabric, pod: PodRoute, where: str) -> None:
    """A pod route must name a node host and must not take a host's address."""
    node = fabric.host(pod.node)
    if node is None or node.kind != "node":
        raise ConfigError(f"{where}.node: {pod.node!r} is not a host of kind node")
    if any(h.ip == pod.ip for h in fabric.hosts):
        raise ConfigError(f"{where}.ip: {pod.ip} is a host's address")


def parse_new_load_balancer(fabric: Fabric, d: Mapping, where: str = "lb") -> LoadBalancer:
    """One LB added at run time (POST /v1/lbs, a Service turned LoadBalancer): checked as a
    load_balancers[] entry of fabric.json, with the next index after the highest in use (its
    group id and reg0 tag); its name and its listener (VIP, protocol, port) must be new."""
    index = max((lb.index for lb in fabric.load_balancers), default=0) + 1
    checker = fabric.host(fabric.checker_host) if fabric.checker_host else None
    lb = _parse_load_balancer(d, where, index, fabric.mode, checker.ip if checker else None)
    if fabric.lb(lb.name) is not None:
        raise ConfigError(f"{where}.name: lb {lb.name!r} exists -- DELETE /v1/lbs/{lb.name} "
                          "first, or register backends on it")
    for other in fabric.load_balancers:
        if (other.vip, other.protocol, other.port) == (lb.vip, lb.protocol, lb.port):
            raise ConfigError(f"{where}: {lb.protocol} {lb.vip}:{lb.port} is already lb "
                              f"{other.name}'s listener -- give it another port or VIP")
    return lb
