"""The ipsets upstream's IPVS proxier keeps (pkg/proxy/ipvs/ipset.go, proxier.go's ipsetInfo):
their names, types and comments, how an entry is written (utilipset Entry.String()), and the
`ipset restore` input that creates them and brings their entries from one state to another.

A set holds what a rule would otherwise repeat per service: one iptables rule matches every
cluster IP:port of KUBE-CLUSTER-IP, so the iptables part of the mode does not grow with the
number of services; the sets and IPVS do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

HASH_IP = "hash:ip"
HASH_IP_PORT = "hash:ip,port"
HASH_IP_PORT_IP = "hash:ip,port,ip"
HASH_IP_PORT_NET = "hash:ip,port,net"
BITMAP_PORT = "bitmap:port"

# utilipset defaults: hashsize 1024, maxelem 65536, port range 0-65535
HASH_SIZE = 1024
MAX_ELEM = 65536
PORT_RANGE = "0-65535"


@dataclass(frozen=True)
class IPSetInfo:
    """One set of ipsetInfo: its name, type and comment (the comment is also the comment of the
    iptables rule that matches it)."""

    name: str
    set_type: str
    comment: str

    def create_line(self) -> str:
        """The set's `create` line as utilipset's createSet builds it (restore syntax)."""
        args = [self.name, self.set_type]
        if self.set_type in (HASH_IP, HASH_IP_PORT, HASH_IP_PORT_IP, HASH_IP_PORT_NET):
            args += ["family", "inet", "hashsize", str(HASH_SIZE), "maxelem", str(MAX_ELEM)]
        elif self.set_type == BITMAP_PORT:
            args += ["range", PORT_RANGE]
        args.append("comment")
        return "create " + " ".join(args)


KUBE_LOOP_BACK = "KUBE-LOOP-BACK"
KUBE_CLUSTER_IP = "KUBE-CLUSTER-IP"
KUBE_EXTERNAL_IP = "KUBE-EXTERNAL-IP"
KUBE_EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
KUBE_LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
KUBE_LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
KUBE_LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
KUBE_NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
KUBE_NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
KUBE_NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
KUBE_NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
KUBE_NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
KUBE_NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
KUBE_HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
KUBE_IPVS_IPS = "KUBE-IPVS-IPS"

# upstream's ipsetInfo, in its order (the order `ipset restore` creates them in)
IPSETS: tuple[IPSetInfo, ...] = (
    IPSetInfo(KUBE_LOOP_BACK, HASH_IP_PORT_IP,
              "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    IPSetInfo(KUBE_CLUSTER_IP, HASH_IP_PORT,
              "Kubernetes service cluster ip + port for masquerade purpose"),
    IPSetInfo(KUBE_EXTERNAL_IP, HASH_IP_PORT,
              "Kubernetes service external ip + port for masquerade and filter purpose"),
    IPSetInfo(KUBE_EXTERNAL_IP_LOCAL, HASH_IP_PORT,
              "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    IPSetInfo(KUBE_LOAD_BALANCER, HASH_IP_PORT, "Kubernetes service lb portal"),
    IPSetInfo(KUBE_LOAD_BALANCER_FW, HASH_IP_PORT,
              "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    IPSetInfo(KUBE_LOAD_BALANCER_LOCAL, HASH_IP_PORT,
              "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    IPSetInfo(KUBE_LOAD_BALANCER_SOURCE_IP, HASH_IP_PORT_IP,
              "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    IPSetInfo(KUBE_LOAD_BALANCER_SOURCE_CIDR, HASH_IP_PORT_NET,
              "Kubernetes service load balancer ip + port + source cidr for packet filter "
              "purpose"),
    IPSetInfo(KUBE_NODE_PORT_TCP, BITMAP_PORT,
              "Kubernetes nodeport TCP port for masquerade purpose"),
    IPSetInfo(KUBE_NODE_PORT_LOCAL_TCP, BITMAP_PORT,
              "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    IPSetInfo(KUBE_NODE_PORT_UDP, BITMAP_PORT,
              "Kubernetes nodeport UDP port for masquerade purpose"),
    IPSetInfo(KUBE_NODE_PORT_LOCAL_UDP, BITMAP_PORT,
              "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    IPSetInfo(KUBE_NODE_PORT_SCTP, HASH_IP_PORT,
              "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    IPSetInfo(KUBE_NODE_PORT_LOCAL_SCTP, HASH_IP_PORT,
              "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type "
              "'hash ip:port'"),
    IPSetInfo(KUBE_HEALTH_CHECK_NODE_PORT, BITMAP_PORT, "Kubernetes health check node port"),
    IPSetInfo(KUBE_IPVS_IPS, HASH_IP, "Addresses on the ipvs interface"),
)
BY_NAME: dict[str, IPSetInfo] = {s.name: s for s in IPSETS}

# the node-port sets by protocol: (every node port, those with externalTrafficPolicy=Local)
NODE_PORT_SETS = {"tcp": (KUBE_NODE_PORT_TCP, KUBE_NODE_PORT_LOCAL_TCP),
                  "udp": (KUBE_NODE_PORT_UDP, KUBE_NODE_PORT_LOCAL_UDP),
                  "sctp": (KUBE_NODE_PORT_SCTP, KUBE_NODE_PORT_LOCAL_SCTP)}


def ip_port(ip: str, protocol: str, port: int) -> str:
    """A hash:ip,port entry: "10.96.0.10,tcp:80"."""
    return f"{ip},{protocol}:{port}"


def ip_port_ip(ip: str, protocol: str, port: int, ip2: str) -> str:
    """A hash:ip,port,ip entry: "10.244.1.2,tcp:8080,10.244.1.2"."""
    return f"{ip},{protocol}:{port},{ip2}"


def ip_port_net(ip: str, protocol: str, port: int, net: str) -> str:
    """A hash:ip,port,net entry: "198.51.100.10,tcp:80,203.0.113.0/25"."""
    return f"{ip},{protocol}:{port},{net}"


Entries = Mapping[str, frozenset[str]]   # set name -> its entries


def _order(entry: str) -> tuple[int, str]:
    """Ports in numeric order, addresses as text: the same input gives the same output."""
    return (int(entry), "") if entry.isdigit() else (0, entry)


def render_restore(entries: Entries) -> str:
    """The `ipset restore` input of a fresh node: every set created, then its entries (loaded
    with -exist, as upstream's ensureIPSet and AddEntry ignore what is already there)."""
    lines = [s.create_line() for s in IPSETS]
    for s in IPSETS:
        lines += [f"add {s.name} {e}" for e in sorted(entries.get(s.name, ()), key=_order)]
    return "\n".join(lines) + "\n"


def render_change(old: Entries, new: Entries) -> str:
    """What takes the sets from `old` to `new` (upstream's syncIPSetEntries: delete the legacy
    entries, add the active ones); "" when nothing changed."""
    lines = []
    for s in IPSETS:
        before, after = old.get(s.name, frozenset()), new.get(s.name, frozenset())
        lines += [f"del {s.name} {e}" for e in sorted(before - after, key=_order)]
        lines += [f"add {s.name} {e}" for e in sorted(after - before, key=_order)]
    return "\n".join(lines) + "\n" if lines else ""
