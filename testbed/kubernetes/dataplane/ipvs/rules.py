"""The texts the IPVS mode loads on a node, pure: one document of five parts, each for the tool
that loads it, whole at a node's first sync and as a change after.

    ### sysctl              net.ipv4.vs.conntrack=1 ...   (first sync: what NewProxier sets)
    ### ip -batch           link add kube-ipvs0 type dummy; address add VIP/32 dev kube-ipvs0
    ### ipset restore       create KUBE-CLUSTER-IP hash:ip,port ...; add KUBE-CLUSTER-IP ...
    ### ipvsadm -R          -A -t 10.96.0.10:80 -s rr; -a -t 10.96.0.10:80 -r POD:8080 -m -w 1
    ### iptables-restore    *nat ... COMMIT *filter ... COMMIT (upstream's writeIptablesRules)

in the order upstream's syncProxyRules applies them (the dummy device, the sets, the virtual
servers, then the iptables rules that match the sets). The iptables part is written whole on
every sync, as upstream does: its size does not depend on the number of services (the sets
hold them). A change (render_partial) carries only what differs: addresses added and removed,
set entries added and deleted, virtual and real servers added, edited (-E) and deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

from testbed.kubernetes.dataplane.ipvs import ipsets as S
from testbed.kubernetes.dataplane.ipvs.state import (
    DUMMY_DEVICE,
    NodeState,
    RealServer,
    VirtualServer,
    node_state,
)
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort

# chains (proxier.go)
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"
MASQUERADE_MARK = "0x4000"   # 1 << --iptables-masquerade-bit 14, as the iptables mode's

NAT_CHAINS = (KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER,
              KUBE_MARK_MASQ)
FILTER_CHAINS = (KUBE_FORWARD, KUBE_NODE_PORT, KUBE_PROXY_FIREWALL,
                 KUBE_SOURCE_RANGES_FIREWALL, KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER)

# iptablesJumpChain: (table, from, to, comment); upstream prepends them with EnsureRule, a fresh
# namespace has nothing else, so the first sync appends them in its restore
JUMPS = (
    ("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    ("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    ("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    ("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
)

# ipsetWithIptablesChain: (set, table, from, to, match type, protocol); a rule is written only
# when its set has entries. Local node ports come before all node ports (RETURN first).
SET_RULES = (
    (S.KUBE_LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (S.KUBE_LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (S.KUBE_LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (S.KUBE_NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (S.KUBE_NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (S.KUBE_NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (S.KUBE_NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (S.KUBE_NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (S.KUBE_NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (S.KUBE_LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL,
     "dst,dst", ""),
    (S.KUBE_LOAD_BALANCER_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN",
     "dst,dst,src", ""),
    (S.KUBE_LOAD_BALANCER_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN",
     "dst,dst,src", ""),
)

# NewProxier's sysctls (ip_forward is the CNI's already); per network namespace
SYSCTLS = ("net.ipv4.vs.conntrack=1", "net.ipv4.vs.expire_nodest_conn=1",
           "net.ipv4.vs.expire_quiescent_template=1")

# the parts of a document, in the order they are applied, by their header's tool
PART_SYSCTL = "sysctl"
PART_IP = "ip -batch"
PART_IPSET = "ipset restore"
PART_IPVSADM = "ipvsadm -R"
PART_IPTABLES = "iptables-restore"
PARTS = (PART_SYSCTL, PART_IP, PART_IPSET, PART_IPVSADM, PART_IPTABLES)
HEADER = "### "


def _comment(set_name: str) -> str:
    return f'"{S.BY_NAME[set_name].comment}"'


def render_iptables(state: NodeState, jumps: bool = False) -> str:
    """Upstream's writeIptablesRules for the node's sets (iptables-restore --noflush input).
    jumps: append the jumps from the built-in chains (a fresh node's first sync)."""
    node = state.node
    nat = [f":{c} - [0:0]" for c in NAT_CHAINS]
    flt = [f":{c} - [0:0]" for c in FILTER_CHAINS]
    nat.append(f"-A {KUBE_SERVICES} -s 127.0.0.0/8 -j RETURN")
    for name, table, source, target, match, proto in SET_RULES:
        if not state.has(name):
            continue
        p = f" -p {proto}" if proto else ""
        rule = (f"-A {source}{p} -m comment --comment {_comment(name)} "
                f"-m set --match-set {name} {match} -j {target}")
        (nat if table == "nat" else flt).append(rule)
    if state.has(S.KUBE_CLUSTER_IP):
        head = (f"-A {KUBE_SERVICES} -m comment --comment {_comment(S.KUBE_CLUSTER_IP)} "
                f"-m set --match-set {S.KUBE_CLUSTER_IP}")
        if node.cluster_cidr:   # off-cluster traffic to a service VIP is masqueraded
            nat.append(f"{head} dst,dst ! -s {node.cluster_cidr} -j {KUBE_MARK_MASQ}")
        else:   # no local detector: a node's own connection from a VIP source
            nat.append(f"{head} src,dst -j {KUBE_MARK_MASQ}")
    for name, masq in ((S.KUBE_EXTERNAL_IP, True), (S.KUBE_EXTERNAL_IP_LOCAL, False)):
        if not state.has(name):
            continue
        head = (f"-A {KUBE_SERVICES} -m comment --comment {_comment(name)} "
                f"-m set --match-set {name} dst,dst")
        if masq:
            nat.append(f"{head} -j {KUBE_MARK_MASQ}")
        nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL "
                   "-j ACCEPT")
        nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
    nat.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
    flt.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
    for name in (S.KUBE_CLUSTER_IP, S.KUBE_LOAD_BALANCER):   # acceptIPVSTraffic
        if state.has(name):
            nat.append(f"-A {KUBE_SERVICES} -m set --match-set {name} dst,dst -j ACCEPT")
    mark = f"{MASQUERADE_MARK}/{MASQUERADE_MARK}"
    flt += [
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
        f"-m mark --mark {mark} -j ACCEPT",
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {KUBE_NODE_PORT} -m comment --comment {_comment(S.KUBE_HEALTH_CHECK_NODE_PORT)} "
        f"-m set --match-set {S.KUBE_HEALTH_CHECK_NODE_PORT} dst -j ACCEPT",
    ]
    # No access to the node's own ports through a service address (upstream issue 72236).
    for name in (S.KUBE_LOAD_BALANCER, S.KUBE_CLUSTER_IP, S.KUBE_EXTERNAL_IP,
                 S.KUBE_EXTERNAL_IP_LOCAL):
        flt.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {name} dst,dst -j RETURN")
    flt += [
        f"-A {KUBE_IPVS_FILTER} -m set --match-set {S.KUBE_HEALTH_CHECK_NODE_PORT} dst "
        "-j RETURN",
        f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set "
        f"{S.KUBE_IPVS_IPS} dst -j REJECT",
    ]
    masquerade = "-j MASQUERADE --random-fully" if node.random_fully else "-j MASQUERADE"
    nat += [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark} -j RETURN",
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQUERADE_MARK}",
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring '
        f'SNAT" {masquerade}',
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQUERADE_MARK}",
    ]
    if jumps:
        for table, source, target, comment in JUMPS:
            (nat if table == "nat" else flt).append(
                f'-A {source} -m comment --comment "{comment}" -j {target}')
    return "\n".join(["*nat", *nat, "COMMIT", "*filter", *flt, "COMMIT"]) + "\n"


def _vs_lines(vs: VirtualServer, rss: Sequence[RealServer]) -> list[str]:
    return [f"-A {vs.service_args()} {vs.options()}",
            *(_rs_line("-a", vs, rs) for rs in rss)]


def _rs_line(op: str, vs: VirtualServer, rs: RealServer) -> str:
    # -m: masquerading (NAT), what upstream's real servers use (ConnectionFlags 0)
    return f"{op} {vs.service_args()} -r {rs} -m -w {rs.weight}"


def render_ipvsadm(state: NodeState) -> str:
    """`ipvsadm -R` input for a fresh node: every virtual server and its real servers, in the
    form `ipvsadm -S -n` prints."""
    lines: list[str] = []
    for key in sorted(state.virtual_servers):
        lines += _vs_lines(*state.virtual_servers[key])
    return "\n".join(lines) + "\n" if lines else ""


def render_ipvsadm_change(old: NodeState, new: NodeState) -> str:
    """What takes IPVS from `old` to `new` (upstream's syncService, syncEndpoint and
    cleanLegacyService): deleted virtual servers (-D, with their real servers), new ones (-A),
    edited ones (-E: persistence or scheduler changed), real servers deleted (-d) and added."""
    lines: list[str] = []
    for key in sorted(old.virtual_servers.keys() - new.virtual_servers.keys()):
        lines.append(f"-D {old.virtual_servers[key][0].service_args()}")
    for key in sorted(new.virtual_servers):
        vs, rss = new.virtual_servers[key]
        if key not in old.virtual_servers:
            lines += _vs_lines(vs, rss)
            continue
        old_vs, old_rss = old.virtual_servers[key]
        if old_vs != vs:
            lines.append(f"-E {vs.service_args()} {vs.options()}")
        lines += [f"-d {vs.service_args()} -r {rs}" for rs in old_rss if rs not in rss]
        lines += [_rs_line("-a", vs, rs) for rs in rss if rs not in old_rss]
    return "\n".join(lines) + "\n" if lines else ""


def render_ip(old: NodeState | None, new: NodeState) -> str:
    """`ip -batch` input: the dummy device at the first sync (old None), then /32 addresses
    added and removed (upstream's EnsureAddressBind / UnbindAddress)."""
    lines = [f"link add {DUMMY_DEVICE} type dummy"] if old is None else []
    before = old.bound if old is not None else frozenset()
    lines += [f"address add {a}/32 dev {DUMMY_DEVICE}" for a in _sorted_ips(new.bound - before)]
    lines += [f"address del {a}/32 dev {DUMMY_DEVICE}" for a in _sorted_ips(before - new.bound)]
    return "\n".join(lines) + "\n" if lines else ""


def _sorted_ips(ips: frozenset[str]) -> list[str]:
    return sorted(ips, key=lambda ip: tuple(int(o) for o in ip.split(".")))


def document(parts: dict[str, str]) -> str:
    """Parts (tool -> its input) as one text, each under its header, in apply order; a part
    with nothing to load is left out."""
    out = []
    for name in PARTS:
        if parts.get(name):
            out.append(f"{HEADER}{name}\n{parts[name]}")
    return "".join(out)


def split(text: str) -> dict[str, str]:
    """document()'s inverse: tool -> its input. Raises ValueError on text before the first
    header or on a header naming no part."""
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(HEADER):
            name = line[len(HEADER):].strip()
            if name not in PARTS:
                raise ValueError(f"unknown part {name!r} (parts: {', '.join(PARTS)})")
            current = parts.setdefault(name, [])
        elif current is None:
            if line.strip():
                raise ValueError(f"text before the first '{HEADER}PART' header: {line!r}")
        else:
            current.append(line)
    return {k: "\n".join(v) + "\n" for k, v in parts.items()}


def render(services: Sequence[ServicePort], node: NodeContext) -> str:
    """A fresh node's whole IPVS-mode state: sysctls, kube-ipvs0 with its addresses, every set
    with its entries, every virtual server, the iptables rules with their jumps."""
    state = node_state(services, node)
    return document({
        PART_SYSCTL: "\n".join(SYSCTLS) + "\n",
        PART_IP: render_ip(None, state),
        PART_IPSET: S.render_restore(state.sets),
        PART_IPVSADM: render_ipvsadm(state),
        PART_IPTABLES: render_iptables(state, jumps=True),
    })


def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                   node: NodeContext) -> str:
    """What takes a node holding render(old) to render(new)'s state: only the differences for
    addresses, sets and IPVS; the iptables part whole (it rewrites kube-proxy's chains only)."""
    before, after = node_state(old, node), node_state(new, node)
    return document({
        PART_IP: render_ip(before, after),
        PART_IPSET: S.render_change(before.sets, after.sets),
        PART_IPVSADM: render_ipvsadm_change(before, after),
        PART_IPTABLES: render_iptables(after),
    })
