"""What a node's eBPF maps hold, as text (pure): rendering, partial syncs, the Maglev table, and
the bytes bpftool writes.

A node's state is one line per map entry (bpf/lb.c defines the maps):

    config node_ip=192.168.0.2
    service 10.96.0.10:8000/TCP backends=4 flags=- affinity=0 algorithm=maglev m=1021  # ...
    backend 10.96.0.10:8000/TCP 0 10.244.1.2:8080
    backend 192.168.0.2:30080/TCP 1 10.244.2.2:8080 remote   # (DSR: the pod is elsewhere)
    maglev 10.96.0.10:8000/TCP 1021 3,0,1,2,...
    range 198.51.100.10:80/TCP 203.0.113.0/25  # (loadBalancerSourceRanges, per LB IP)

A full sync writes every line; a partial one the lines that changed and `delete ...` lines for
the entries that went (render_partial), ordered so that a service never points at a slot not
yet written. encode() turns the text into `bpftool batch` commands on the node's pinned maps.
Frontends are keyed by what the packet carries (address, port, protocol), so a partial sync
needs no ids: the same service renders the same keys on every sync.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from testbed.kubernetes.dataplane.model import (
    Endpoint,
    NodeContext,
    ServicePort,
    categorize_endpoints,
)

ALGORITHMS = ("random", "maglev")
LB_MODES = ("snat", "dsr")   # Cilium's loadBalancer.mode (--bpf-lb-mode); no "hybrid"
MAGLEV_M_MAX = 1021          # bpf/lb.c's MAGLEV_M_MAX: the table's room in the map value
DEFAULT_MAGLEV_M = 1021      # Cilium's smallest sizes are 251, 509, 1021 (default 16381)
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17}   # what cnlb_ingress translates (no SCTP)
FLAG_SNAT = 1                # externalTrafficPolicy Cluster: SNAT to the node (no DSR)
FLAG_DROP = 2                # endpoints elsewhere, none usable here: drop, not reject
FLAG_SNAT_OUTSIDE = 4        # SNAT sources outside the cluster CIDR (a cluster IP)
FLAG_SNAT_HOST = 8           # SNAT what the node itself sends
FLAG_DSR = 16                # traffic from outside the cluster: no SNAT, DSR to remote pods
FLAG_SOURCE_RANGE = 32       # new connections only from cnlb_src_range's CIDRs (an LB IP)
FLAGS = {"snat": FLAG_SNAT, "drop": FLAG_DROP, "snat-outside": FLAG_SNAT_OUTSIDE,
         "snat-host": FLAG_SNAT_HOST, "dsr": FLAG_DSR, "source-range": FLAG_SOURCE_RANGE}
BACKEND_REMOTE = 1           # bpf/lb.c's: the pod is on another node (DSR carries the frontend)
SCOPES = {"": 0, "internal": 1}   # bpf/lb.c SCOPE_ALL, SCOPE_INTERNAL
# bpf/lb.c's SRC_RANGE_STATIC_PREFIX: a cnlb_src_range key's prefix length counts the frontend's
# bits before the CIDR's (Cilium's lpmPrefixLen4 counts its rev_nat_id and pad)
SRC_RANGE_STATIC_PREFIX = 64
MAPS = ("cnlb_config", "cnlb_services", "cnlb_backends", "cnlb_maglev", "cnlb_src_range")
KINDS = {"config": "cnlb_config", "service": "cnlb_services", "backend": "cnlb_backends",
         "maglev": "cnlb_maglev", "range": "cnlb_src_range"}


@dataclass(frozen=True)
class Options:
    """How the node's programs pick a backend.

    algorithm: random (Cilium's default) or maglev (consistent hashing over the 5-tuple)
    maglev_m: the Maglev table size, a prime above the number of backends
    mode: snat (the first node SNATs and the reply comes back through it) or dsr (direct
        server return for NodePort, LB and external IPs reached from outside the cluster: no
        SNAT, the frontend rides to the pod's node in an IPv4 option, the reply leaves there)
    """

    algorithm: str = "random"
    maglev_m: int = DEFAULT_MAGLEV_M
    mode: str = "snat"

    def __post_init__(self) -> None:
        if self.mode not in LB_MODES:
            raise ValueError(f"loadBalancer.mode {self.mode!r} is not one of "
                             f"{', '.join(LB_MODES)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"loadBalancer.algorithm {self.algorithm!r} is not one of "
                             f"{', '.join(ALGORITHMS)}")
        if not is_prime(self.maglev_m) or not 2 < self.maglev_m <= MAGLEV_M_MAX:
            raise ValueError(f"maglev table size {self.maglev_m} must be a prime in 3-"
                             f"{MAGLEV_M_MAX} (251, 509 or 1021)")


@dataclass(frozen=True)
class Frontend:
    """An address, port and protocol a packet is sent to that a service answers on.

    scope: "" for every source; "internal" for pods and the node itself only (the entry a
        Local-policy frontend has besides its external one, as Cilium's lb4_key.scope)
    """

    addr: str
    port: int
    proto: str
    scope: str = ""

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}/{self.proto}" + (f"@{self.scope}" if self.scope else "")

    @classmethod
    def parse(cls, text: str) -> Frontend:
        text, _, scope = text.partition("@")
        addr_port, proto = text.rsplit("/", 1)
        addr, port = addr_port.rsplit(":", 1)
        return cls(addr, int(port), proto, scope)


@dataclass(frozen=True)
class FrontendEntry:
    """One frontend as the node's maps hold it.

    backends: the endpoints in slot order
    flags: names of FLAGS: snat (always, Cluster policy for external traffic), snat-outside
        (sources outside the cluster CIDR), snat-host (the node's own traffic), drop (no
        usable backend here while there are some elsewhere: Local policy)
    affinity_s: ClientIP affinity timeout (0: none)
    kind: cluster-ip, node-port, load-balancer or external-ip (for the reader)
    name: the service port ("ns/name:port")
    source_ranges: the CIDRs a new connection may come from (flag source-range: an LB IP of a
        service with loadBalancerSourceRanges); () for every other frontend
    """

    frontend: Frontend
    backends: tuple[Endpoint, ...]
    flags: frozenset[str]
    affinity_s: int
    kind: str
    name: str
    source_ranges: tuple[str, ...] = ()


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def frontends(services: Iterable[ServicePort], node: NodeContext,
              dsr: bool = False) -> list[FrontendEntry]:
    """Every frontend the node answers on, with the backends its traffic goes to there
    (CategorizeEndpoints, as the iptables proxier uses it): the cluster IP takes the internal
    policy's endpoints; the node port (on the node's address), LB and external IPs the external
    policy's, SNATed unless the policy is Local. A frontend with no endpoint anywhere has no
    backend (rejected); one whose endpoints are all elsewhere under a Local policy drops.
    dsr: the external frontends of a Cluster policy are marked dsr besides snat (the program
    SNATs only pods' and the node's own traffic to them)."""
    out = []
    for svc in services:
        if svc.proxied and svc.protocol in PROTOCOL_NUMBERS:
            out += _service_frontends(svc, node, dsr)
    return out


def _service_frontends(svc: ServicePort, node: NodeContext,
                       dsr: bool = False) -> list[FrontendEntry]:
    eps = categorize_endpoints(svc, node.node_name)
    internal = eps.local_endpoints if svc.internal_policy_local else eps.cluster_endpoints
    external = eps.local_endpoints if svc.external_policy_local else eps.cluster_endpoints

    def entry(fe: Frontend, kind: str, backends: tuple[Endpoint, ...], usable: bool,
              *flags: str) -> FrontendEntry:
        drop = ("drop",) if eps.has_any_endpoints and not usable else ()
        # only the LB IPs are filtered (upstream: node ports are not subject to the ranges;
        # Cilium flags its LoadBalancer frontends only)
        ranges = svc.load_balancer_source_ranges if kind == "load-balancer" else ()
        return FrontendEntry(fe, backends if usable else (),
                             frozenset(flags + drop + (("source-range",) if ranges else ())),
                             svc.session_affinity_seconds or 0, kind, svc.port_name_string,
                             ranges)

    assert svc.cluster_ip is not None   # proxied
    outside = ("snat-outside",) if node.cluster_cidr else ()
    out = [entry(Frontend(svc.cluster_ip, svc.port, svc.protocol), "cluster-ip", internal,
                 eps.has_internal_endpoints, *outside)]
    external_frontends = [(ip, svc.port, "load-balancer") for ip in svc.load_balancer_ips]
    external_frontends += [(ip, svc.port, "external-ip") for ip in svc.external_ips]
    if svc.node_port:
        external_frontends.insert(0, (node.node_ip, svc.node_port, "node-port"))
    for addr, port, kind in external_frontends:
        fe = Frontend(addr, port, svc.protocol)
        if not svc.external_policy_local:
            out.append(entry(fe, kind, external, eps.has_external_endpoints, "snat",
                             *(("dsr",) if dsr else ())))
            continue
        out.append(entry(fe, kind, external, eps.has_external_endpoints))
        # pods and the node itself go to any endpoint, as if through the cloud LB (upstream's
        # KUBE-EXT short-circuit); the node's own traffic SNATed
        out.append(entry(Frontend(addr, port, svc.protocol, "internal"), kind,
                         eps.cluster_endpoints, eps.has_any_endpoints, "snat-host"))
    return out


# --- Maglev (Eisenbud et al., NSDI 2016, section 3.4; Cilium's pkg/maglev) --------------------


def _hashes(backend: str) -> tuple[int, int]:
    digest = hashlib.sha256(backend.encode()).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")


def maglev_table(backends: Sequence[str], m: int) -> list[int]:
    """The Maglev lookup table: m entries, each the index in `backends` of the backend that
    entry's connections go to. Each backend walks its own permutation of the table (offset
    and skip from two hashes of its name) and takes, in turn, the next entry nobody holds:
    every backend gets m/N entries give or take one, and removing a backend hands only its
    own entries to the others (plus a few more, as the paper measures)."""
    n = len(backends)
    if n == 0:
        return []
    if m <= n or not is_prime(m):
        raise ValueError(f"a Maglev table needs a prime size above {n} backends, not {m}")
    perms = []
    for b in backends:
        h1, h2 = _hashes(b)
        perms.append((h1 % m, h2 % (m - 1) + 1))
    table = [-1] * m
    taken, nexts = 0, [0] * n
    while True:
        for i, (offset, skip) in enumerate(perms):
            c = (offset + nexts[i] * skip) % m
            while table[c] >= 0:
                nexts[i] += 1
                c = (offset + nexts[i] * skip) % m
            table[c] = i
            nexts[i] += 1
            taken += 1
            if taken == m:
                return table


# --- the text ------------------------------------------------------------------------------------


def entries(services: Iterable[ServicePort], node: NodeContext,
            options: Options = Options()) -> dict[tuple[str, ...], str]:
    """(kind, key...) -> the line that writes it, for the node's whole state. An LB IP with
    loadBalancerSourceRanges has one range line per CIDR, keyed by the frontend without its
    scope (both scopes of a Local policy's LB IP share them, as Cilium's rev_nat_id does)."""
    out: dict[tuple[str, ...], str] = {("config",): (
        f"config node_ip={node.node_ip} cluster_cidr={node.cluster_cidr or '-'}")}
    for fe in frontends(services, node, dsr=options.mode == "dsr"):
        key = str(fe.frontend)
        dsr = "dsr" in fe.flags   # its backends elsewhere are marked remote
        maglev = options.algorithm == "maglev" and fe.backends
        m = options.maglev_m if maglev else 0
        flags = "|".join(f for f in FLAGS if f in fe.flags) or "-"
        out[("service", key)] = (
            f"service {key} backends={len(fe.backends)} flags={flags} affinity={fe.affinity_s} "
            f"algorithm={options.algorithm if maglev else 'random'} m={m}  # {fe.name} {fe.kind}")
        for slot, ep in enumerate(fe.backends):
            where = " remote" if dsr and ep.node != node.node_name else ""
            out[("backend", key, str(slot))] = f"backend {key} {slot} {ep.ip}:{ep.port}{where}"
        if maglev:
            table = maglev_table([str(ep) for ep in fe.backends], m)
            out[("maglev", key)] = f"maglev {key} {m} {','.join(map(str, table))}"
        ranged = str(Frontend(fe.frontend.addr, fe.frontend.port, fe.frontend.proto))
        for cidr in fe.source_ranges:
            out[("range", ranged, cidr)] = f"range {ranged} {cidr}  # {fe.name}"
    return out


def _header(node: NodeContext) -> str:
    return (f"# kube-proxy ebpf on {node.node_name}: one line per map entry "
            "(cnlb_services, cnlb_backends, cnlb_maglev, cnlb_src_range, cnlb_config)\n")


def render(services: Sequence[ServicePort], node: NodeContext,
           options: Options = Options()) -> str:
    """The node's whole state: every map entry, config first, then by frontend."""
    lines = entries(services, node, options)
    return _header(node) + "".join(line + "\n" for line in lines.values())


# a service's flag is written after the ranges it checks and cleared before they go: a partial
# sync never leaves an LB IP open (a change of ranges admits the old and the new ones meanwhile)
_WRITE_ORDER = {"config": 0, "backend": 1, "range": 1, "maglev": 2, "service": 3}


def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort], node: NodeContext,
                   options: Options = Options(), old_options: Options | None = None) -> str:
    """What takes a node holding render(old) to render(new): the changed entries (backends and
    tables before the services that point into them), then the deletions (services first).
    Under the same options a service port found unchanged in both lists renders the same
    entries, so only the others are rendered: a one-endpoint change renders one service port
    (no Maglev table of another), whatever the number of services; only the comparison of the
    two lists grows with it (bench/ebpf_sync.py)."""
    if old_options is None or old_options == options:
        kept = set(old) & set(new)
        old = [svc for svc in old if svc not in kept]
        new = [svc for svc in new if svc not in kept]
    before = entries(old, node, old_options or options)
    after = entries(new, node, options)
    writes = sorted((k for k in after if before.get(k) != after[k]),
                    key=lambda k: _WRITE_ORDER[k[0]])
    deletes = sorted((k for k in before if k not in after),
                     key=lambda k: -_WRITE_ORDER[k[0]])
    out = [after[k] for k in writes]
    out += ["delete " + " ".join(k) for k in deletes]
    return "".join(line + "\n" for line in out)


def summary(text: str) -> dict[str, int]:
    """Entries per map in a rendered text (what a sync wrote, for metrics)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        kind = words[1] if words[0] == "delete" else words[0]
        counts[KINDS[kind]] = counts.get(KINDS[kind], 0) + 1
    return counts


# --- the bytes (bpf/lb.c's structs, host byte order for counters, network order on the wire) ---


def _frontend_bytes(fe: Frontend) -> bytes:
    return (ipaddress.IPv4Address(fe.addr).packed + struct.pack(">H", fe.port)
            + bytes([PROTOCOL_NUMBERS[fe.proto], SCOPES[fe.scope]]))


def _addr_port(text: str, flags: int = 0) -> bytes:
    addr, port = text.rsplit(":", 1)
    return (ipaddress.IPv4Address(addr).packed + struct.pack(">H", int(port))
            + struct.pack("<H", flags))


def _kv(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split("#", 1)[0].split() if "=" in w)


def encode_line(line: str) -> tuple[str, str, bytes, bytes | None]:
    """One line of the text as (op, map name, key bytes, value bytes or None for a delete)."""
    words = line.split("#", 1)[0].split()
    op = "update"
    if words[0] == "delete":
        op, words = "delete", words[1:]
    kind = words[0]
    if kind == "config":
        key = struct.pack("<I", 0)
        value = None
        if op == "update":
            kv = _kv(line)
            cidr = (ipaddress.IPv4Network(kv["cluster_cidr"]) if kv["cluster_cidr"] != "-"
                    else ipaddress.IPv4Network("0.0.0.0/32"))
            mask = cidr.netmask.packed if kv["cluster_cidr"] != "-" else b"\0" * 4
            value = (ipaddress.IPv4Address(kv["node_ip"]).packed + cidr.network_address.packed
                     + mask + b"\0" * 4)
    elif kind == "service":
        key = _frontend_bytes(Frontend.parse(words[1]))
        value = None
        if op == "update":
            kv = _kv(line)
            flags = sum(FLAGS.get(f, 0) for f in kv["flags"].split("|"))
            algo = ALGORITHMS.index(kv["algorithm"])
            value = struct.pack("<HBBIHH", int(kv["backends"]), flags, algo,
                                int(kv["affinity"]), int(kv["m"]), 0)
    elif kind == "backend":
        key = _frontend_bytes(Frontend.parse(words[1])) + struct.pack("<I", int(words[2]))
        flags = BACKEND_REMOTE if words[4:5] == ["remote"] else 0
        value = _addr_port(words[3], flags) if op == "update" else None
    elif kind == "maglev":
        key = _frontend_bytes(Frontend.parse(words[1]))
        value = None
        if op == "update":
            table = [int(x) for x in words[3].split(",")]
            value = struct.pack(f"<{MAGLEV_M_MAX}H", *table, *[0] * (MAGLEV_M_MAX - len(table)))
    elif kind == "range":
        net = ipaddress.IPv4Network(words[2])
        key = (struct.pack("<I", SRC_RANGE_STATIC_PREFIX + net.prefixlen)
               + _frontend_bytes(Frontend.parse(words[1])) + net.network_address.packed)
        value = b"\0" if op == "update" else None   # Cilium's SourceRangeValue: a pad byte
    else:
        raise ValueError(f"not a map entry: {line!r}")
    return op, KINDS[kind], key, value


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def encode(text: str, maps_dir: str) -> str:
    """The text as `bpftool batch file -` commands on the maps pinned in maps_dir."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, name, key, value = encode_line(line)
        cmd = f"map {op} pinned {maps_dir}/{name} key hex {_hex(key)}"
        if value is not None:
            cmd += f" value hex {_hex(value)}"
        out.append(cmd)
    return "".join(c + "\n" for c in out)
