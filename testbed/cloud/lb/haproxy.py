"""HAProxy as the cloud's L7 (HTTP) load balancer, rendered (pure): its configuration, the
runtime-API commands that register, drain and remove targets, the LB host's VIP interfaces,
and HAProxy's `show stat` read back as target health.

    render_config(lbs, health, socket) -> str       the whole haproxy.cfg
    vip_setup(lbs) -> list[str]                     the LB host's VIP interfaces (macvlans)
    l7_fabric(fabric, plan) -> dict                 fabric.json with the VIPs routed to lb7
    add_server / drain_server / ready_server / restart_server / remove_server   runtime API
    parse_stat(csv) -> list[ServerStat]; target_state(stat, ...) -> (in_service, word)

Names: one frontend and one backend per TCP listener of a LoadBalancer service (the first is
named after the service, the others `<service>.<port name>`). A backend has server slots
`target1..targetN` (a server-template), each free (maintenance, no address) or holding one
target: registering sets a free slot's address and enables it, as HAProxy's own Kubernetes
ingress controller does. Why slots and not `add server`: HAProxy 2.6 keeps no idle connections
to servers added at run time, so every request would open a new connection to its pod; static
servers keep them alive and share them between clients' requests.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from testbed.plan.addresses import L7_HOST, LbPlan, Listener, Plan, ServicePlan, mac
from testbed.spec.model import HealthCheck

HAPROXY = "haproxy"
# The VIPs' interfaces on lb7: one macvlan per VIP, each with its own MAC, because the VPC
# routes a VIP like a host address (its /32 to a MAC) and host MACs must be unique.
VIP_MAC_KIND = 0x07
VIP_IFACE = "vip{}"
SLOT = "target"                 # slot k of a backend is server target<k>


@dataclass(frozen=True)
class Proxy:
    """One HAProxy frontend/backend pair: a listener of a LoadBalancer service.

    backend: HAProxy's name for it (the service's for the first listener)
    vip, port: where the frontend binds
    target_port: the listener's port on every target (its nodePort or targetPort); None (an
        LB with no listeners in its plan): the target's own port
    """
    service: str
    backend: str
    vip: str
    port: int
    target_port: int | None


@dataclass(frozen=True)
class ServerCheck:
    """How HAProxy checks one server (a target's health check, the topology's healthCheck).

    port: the checked port (None: the server's own port); path: the HTTP GET's path
    """
    port: int | None
    path: str
    interval_ms: int
    timeout_ms: int
    rise: int
    fall: int


@dataclass(frozen=True)
class ServerStat:
    """One server's row of `show stat` (the fields the LB reports)."""
    backend: str
    server: str
    status: str           # UP, DOWN, UP 1/2 (going down), DOWN 1/3 (going up), DRAIN, MAINT
    check_status: str     # L7OK, L7STS, L4CON, L4TOUT, ... ("* " while a check runs)
    check_code: str       # the check's HTTP status
    addr: str             # ip:port
    current: int          # sessions now (scur)
    total: int            # sessions so far (stot)
    downs: int            # UP -> DOWN transitions (chkdown)
    since_s: int          # seconds since the last state change (lastchg)


def proxies(lb: LbPlan) -> list[Proxy]:
    """The HAProxy proxies of one LB: its TCP listeners (an HTTP LB carries no UDP)."""
    listeners = lb.listeners or (Listener("", lb.port, "TCP", 0),)
    out = []
    for i, lst in enumerate(listeners):
        if lst.protocol != "TCP":
            continue
        backend = lb.service if i == 0 else f"{lb.service}.{lst.name or lst.port}"
        # every listener's own target port, the first too: a pod added later is served on
        # the target group's port (its targetPort or nodePort), not its containerPort
        out.append(Proxy(lb.service, backend, lb.vip, lst.port, lst.backend_port or None))
    return out


def server_check(lb: LbPlan, health: HealthCheck) -> ServerCheck:
    """The health check of an LB's servers: where the L4 LB checks them (the first backend's
    health port and path; none yet: the traffic port), with the topology's thresholds."""
    first = lb.backends[0] if lb.backends else None
    return ServerCheck(first.health_port if first else None,
                       first.health_path if first else "/healthz",
                       max(1, round(health.interval_s * 1000)),
                       max(1, round(health.timeout_s * 1000)),
                       health.healthy_threshold, health.unhealthy_threshold)


def slot_name(k: int) -> str:
    """The server of slot k (1-based)."""
    return f"{SLOT}{k}"


def slot_count(targets: int) -> int:
    """Slots per backend for a cluster that starts with this many targets: room for pods
    added, rescheduled or replaced while the old ones drain."""
    return 2 * targets + 32


def render_config(lbs: Sequence[LbPlan], health: HealthCheck, socket: str,
                  slots: int = 64, tcp: Set[str] = frozenset()) -> str:
    """haproxy.cfg: the admin socket, defaults, a frontend per listener and a backend of free
    server slots. Targets come and go through the runtime API (see add_server), as NEG
    endpoints are attached and detached; none are in the file.

    socket: the runtime API's Unix socket (in the cluster's state directory)
    slots: server slots per backend (see slot_count)
    tcp: services that do not speak HTTP (see tcp_services): proxied per connection, as
        GCP's TCP proxy LB does, with no X-Forwarded-For"""
    lines = [
        "# rendered by the testbed: the cloud's L7 load balancer (targets via the runtime API)",
        "global",
        f"    stats socket {socket} mode 600 level admin",
        "    maxconn 4096",   # needs twice as many descriptors: within a 20000 limit
        "defaults",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-keep-alive 60s",
    ]
    for lb in lbs:
        check = server_check(lb, health)
        http = lb.service not in tcp
        for p in proxies(lb):
            lines += [
                f"frontend {p.backend}",
                f"    mode {'http' if http else 'tcp'}",
                f"    bind {p.vip}:{p.port}",
                *_source_range_acl(lb),
                f"    default_backend {p.backend}",
                f"backend {p.backend}",
                f"    mode {'http' if http else 'tcp'}",
                "    balance roundrobin",
            ]
            if http:
                lines += [
                    # every request is balanced on its own (no prefer-last-server), over
                    # server connections kept alive and shared by clients' requests (ALB, GFE)
                    "    option http-keep-alive",
                    "    http-reuse always",
                    # the client's address for the pod: the proxy's is the connection's source
                    "    option forwardfor",
                ]
            lines += [
                f"    option httpchk GET {check.path}",
                "    http-check expect status 200-399",   # what the L4 LB's checker accepts
                f"    timeout check {check.timeout_ms}ms",
                # free slots: in maintenance, no address; checks run once a target is in one
                f"    server-template {SLOT} 1-{slots} 0.0.0.0:1 disabled check "
                f"inter {check.interval_ms} rise {check.rise} fall {check.fall}"
                + (f" port {check.port}" if check.port else ""),
            ]
    return "\n".join(lines) + "\n"


def _source_range_acl(lb: LbPlan) -> list[str]:
    """loadBalancerSourceRanges at the LB (an ALB's security group, a GCP firewall rule): a
    connection from any other client is refused before a request is read."""
    if not lb.source_ranges:
        return []
    return [f"    acl load_balancer_source_ranges src {' '.join(lb.source_ranges)}",
            "    tcp-request connection reject if !load_balancer_source_ranges"]


def cut_sessions(proxy: Proxy, slot: str) -> str:
    """End a deregistered target's sessions still open (its deregistration delay is over)."""
    return f"shutdown sessions server {proxy.backend}/{slot}"


def tcp_services(services: Iterable[ServicePlan]) -> set[str]:
    """The services an HTTP proxy cannot carry: those health-checked through another service's
    port because their own does not answer HTTP (the compare experiment's iperf)."""
    return {s.name for s in services if s.health_via}


def add_server(proxy: Proxy, slot: str, ip: str, port: int) -> str:
    """One runtime-API line registering a target in a free slot: its address, out of
    maintenance, and marked down so that it takes traffic only after `rise` good checks
    (the cloud's "initial" state; leaving maintenance would otherwise start it up at once).
    The check goes to the configured health port, or else to the traffic port."""
    srv = f"{proxy.backend}/{slot}"
    return (f"set server {srv} addr {ip} port {proxy.target_port or port}; "
            + restart_server(proxy, slot))


def restart_server(proxy: Proxy, slot: str) -> str:
    """A slot's target back in service, checked afresh (a deregistered target registered
    again before its slot was freed)."""
    srv = f"{proxy.backend}/{slot}"
    return f"set server {srv} state ready; set server {srv} health down"


def ready_server(proxy: Proxy, slot: str) -> str:
    """Back in service after a drain (HAProxy's READY admin state)."""
    return f"set server {proxy.backend}/{slot} state ready"


def drain_server(proxy: Proxy, slot: str) -> str:
    """No new requests; requests in flight finish (the target group's "draining")."""
    return f"set server {proxy.backend}/{slot} state drain"


def remove_server(proxy: Proxy, slot: str) -> str:
    """Deregister: maintenance — no new requests, those in flight finish; the slot is free
    again once its last session has ended (ServerStat.current == 0)."""
    return f"set server {proxy.backend}/{slot} state maint"


def parse_stat(text: str) -> list[ServerStat]:
    """The server rows of `show stat` (CSV with a '# ' header; FRONTEND/BACKEND rows left out)."""
    body = text.lstrip()
    if body.startswith("# "):
        body = body[2:]
    rows = []
    for row in csv.DictReader(io.StringIO(body)):
        if row.get("svname") in (None, "FRONTEND", "BACKEND"):
            continue
        rows.append(ServerStat(row["pxname"], row["svname"], row.get("status", ""),
                               row.get("check_status", "").lstrip("* "),
                               row.get("check_code", ""), row.get("addr", ""),
                               _int(row.get("scur")), _int(row.get("stot")),
                               _int(row.get("chkdown")), _int(row.get("lastchg"))))
    return rows


def target_state(stat: ServerStat, deregistered: bool, was_healthy: bool) -> tuple[bool, str]:
    """(in service, the LB's word for it) from a server's status, in the L4 LB's words:
    initial (not healthy since it was registered), healthy, unhealthy, draining,
    deregistering (its requests in flight finishing).
    was_healthy: the target has been in service since its registration"""
    status = stat.status
    if status.startswith("MAINT"):
        return False, "deregistering" if deregistered else "unused"
    if status.startswith("DRAIN"):
        return False, "draining"
    if status.startswith("UP") or status == "no check":
        return True, "healthy"      # "UP 1/2": failing checks, not yet fall of them
    return False, "unhealthy" if was_healthy else "initial"


def vip_setup(lbs: Iterable[LbPlan]) -> list[str]:
    """The L7 LB host's commands: each VIP on its own macvlan over eth0, with the MAC the VPC
    routes the VIP to; reverse-path filtering off (a client's packet arrives on the VIP's
    interface, its route back leaves by eth0)."""
    cmds = [f"echo 0 > /proc/sys/net/ipv4/conf/{dev}/rp_filter" for dev in ("all", "default")]
    for i, vip in enumerate(vips(lbs)):
        dev = VIP_IFACE.format(i)
        cmds += [f"ip link add {dev} link eth0 address {vip_mac(i)} type macvlan mode bridge",
                 f"ip addr add {vip}/32 dev {dev}",
                 f"ip link set {dev} up"]
    return cmds


def vips(lbs: Iterable[LbPlan]) -> list[str]:
    """Every VIP once, in plan order."""
    return list(dict.fromkeys(lb.vip for lb in lbs))


def vip_mac(index: int) -> str:
    return mac(VIP_MAC_KIND, index + 1)


def l7_fabric(fabric: dict[str, object], plan: Plan) -> dict[str, object]:
    """The VPC controller's config when the L7 LB fronts the cluster: no OpenFlow balancer
    (load_balancers empty), and each VIP routed to the L7 host as a host address of its own
    (its /32 and ARP answer to the VIP's macvlan MAC, out of lb7's switch port)."""
    host = plan.attachment(L7_HOST)
    hosts = list(fabric["hosts"])   # type: ignore[call-overload]
    for i, vip in enumerate(vips(plan.load_balancers)):
        hosts.append({"name": f"{L7_HOST}-{VIP_IFACE.format(i)}", "kind": "lb", "ip": vip,
                      "mac": vip_mac(i), "subnet": host.subnet, "switch": host.switch,
                      "port": host.port})
    return {**fabric, "hosts": hosts, "load_balancers": []}


def _int(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0
