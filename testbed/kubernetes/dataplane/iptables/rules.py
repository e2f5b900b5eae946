"""kube-proxy's iptables mode, rendered the way upstream kube-proxy writes it: the restore input.

Pure: turns service ports (with their endpoints) into the text that `iptables-restore
--noflush` reads, for one node, whole (render) or as upstream's partial sync (render_partial).
The chain layout, the differences from upstream and how a partial sync works are explained in
docs/kube-proxy.md; chain names come from names.py, loading the text is restore.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache

from testbed.kubernetes.dataplane.iptables.names import (
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    MASQUERADE_MARK,
    SEP_PREFIX,
    ServiceChains,
    is_service_chain,
    sep_chain,
    service_chains,
)
from testbed.kubernetes.dataplane.model import (
    Endpoint,
    NodeContext,
    NodeEndpoints,
    ServicePort,
    categorize_endpoints,
)

# Above this many endpoints upstream drops the per-endpoint comments (40% less text to restore).
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


@cache
def compute_probability(n: int) -> str:
    """Probability for the first of n remaining endpoints, as upstream's "%0.10f" of 1/n."""
    if n < 1:
        raise ValueError(f"compute_probability needs n >= 1, got {n}")
    return f"{1.0 / n:0.10f}"


def _service_chains(svc: ServicePort, on_node: NodeEndpoints) -> list[str]:
    """The per-service nat chains this service port owns on this node, in writing order."""
    chains = []
    ch = service_chains(svc)
    if on_node.has_any_endpoints and svc.externally_accessible:
        chains.append(ch.ext)
    if _uses_fw_chain(svc, on_node):
        chains.append(ch.fw)
    if on_node.cluster_endpoints:
        chains.append(ch.svc)
    if on_node.local_endpoints:
        chains.append(ch.svl)
    chains.extend(sep_chain(svc, ep) for ep in on_node.all_reachable_endpoints)
    return chains


def _uses_fw_chain(svc: ServicePort, on_node: NodeEndpoints) -> bool:
    """Upstream's usesFWChain: endpoints, LB IPs and loadBalancerSourceRanges."""
    return on_node.has_any_endpoints and svc.uses_firewall


def _internal_chain(svc: ServicePort, ch: ServiceChains) -> str:
    """Where cluster-IP traffic goes: KUBE-SVL under internalTrafficPolicy=Local, else KUBE-SVC."""
    return ch.svl if svc.internal_policy_local else ch.svc


# --- rendering ------------------------------------------------------------------------------------


def _sorted_services(services: Iterable[ServicePort]) -> list[ServicePort]:
    """Proxied service ports in a fixed order (upstream walks a map; its tests sort by name)."""
    out = sorted((s for s in services if s.proxied), key=lambda s: (s.port_name_string, s.proto))
    for a, b in zip(out, out[1:], strict=False):  # neighbours
        if (a.port_name_string, a.proto) == (b.port_name_string, b.proto):
            raise ValueError(f"service port {a.port_name_string}/{a.proto} is listed twice")
    return out


def _is_large_cluster(services: Sequence[ServicePort]) -> bool:
    return sum(len(s.endpoints) for s in services) > LARGE_CLUSTER_ENDPOINTS_THRESHOLD


class _Buffers:
    """The four line buffers upstream fills: chains are declared before any rule."""

    def __init__(self) -> None:
        self.filter_chains: list[str] = []
        self.filter_rules: list[str] = []
        self.nat_chains: list[str] = []
        self.nat_rules: list[str] = []

    def text(self) -> str:
        lines = ["*filter", *self.filter_chains, *self.filter_rules, "COMMIT"]
        lines += ["*nat", *self.nat_chains, *self.nat_rules, "COMMIT"]
        return "\n".join(lines) + "\n"


def _chain_line(chain: str) -> str:
    return f":{chain} - [0:0]"


def _write_top_level(buf: _Buffers, node: NodeContext) -> None:
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS,
                  KUBE_PROXY_FIREWALL):
        buf.filter_chains.append(_chain_line(chain))
    for chain in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        buf.nat_chains.append(_chain_line(chain))
    mark = f"{MASQUERADE_MARK}/{MASQUERADE_MARK}"
    masquerade = "-j MASQUERADE --random-fully" if node.random_fully else "-j MASQUERADE"
    buf.nat_rules += [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark} -j RETURN",
        # Clear the mark so a packet that re-enters the stack is not masqueraded twice.
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {MASQUERADE_MARK}",
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT"'
        f" {masquerade}",
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {MASQUERADE_MARK}",
    ]


def _write_entry_rules(
    buf: _Buffers, svc: ServicePort, ch: ServiceChains, on_node: NodeEndpoints
) -> None:
    """KUBE-SERVICES / KUBE-NODEPORTS jumps and the filter verdicts: rewritten on every sync."""
    spn, p = svc.port_name_string, svc.proto
    match = f"-m {p} -p {p}"
    # Where traffic that cannot be NATed ends: no endpoints at all, or none local (a Local
    # policy's DROP; the same comment and verdict for internal and external traffic).
    if on_node.has_any_endpoints:
        no_eps = f'"{spn} has no local endpoints"', "DROP"
    else:
        no_eps = f'"{spn} has no endpoints"', "REJECT"

    if on_node.has_internal_endpoints:
        buf.nat_rules.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} cluster IP" {match}'
            f" -d {svc.cluster_ip} --dport {svc.port} -j {_internal_chain(svc, ch)}"
        )
    else:
        buf.filter_rules.append(
            f"-A {KUBE_SERVICES} -m comment --comment {no_eps[0]} {match}"
            f" -d {svc.cluster_ip} --dport {svc.port} -j {no_eps[1]}"
        )
    _write_external_entries(buf, svc, ch, on_node, match, no_eps)
    if svc.health_check_node_port:
        # Accepted whether or not this node has local endpoints: the LB must get its 503.
        buf.filter_rules.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{spn} health check node port"'
            f" -m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT"
        )


def _write_external_entries(
    buf: _Buffers, svc: ServicePort, ch: ServiceChains, on_node: NodeEndpoints, match: str,
    no_ext: tuple[str, str],
) -> None:
    """The jumps to KUBE-EXT for external IPs, LB IPs (through KUBE-FW when the service has
    loadBalancerSourceRanges) and the NodePort, or their verdicts."""
    spn, ext = svc.port_name_string, ch.ext
    uses_fw = _uses_fw_chain(svc, on_node)
    for ip in svc.external_ips:
        if on_node.has_any_endpoints:
            buf.nat_rules.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} external IP" {match}'
                f" -d {ip} --dport {svc.port} -j {ext}"
            )
        if not on_node.has_external_endpoints:
            buf.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {no_ext[0]} {match}"
                f" -d {ip} --dport {svc.port} -j {no_ext[1]}"
            )
    for ip in svc.load_balancer_ips:
        if on_node.has_any_endpoints:
            buf.nat_rules.append(
                f'-A {KUBE_SERVICES} -m comment --comment "{spn} loadbalancer IP" {match}'
                f" -d {ip} --dport {svc.port} -j {ch.fw if uses_fw else ext}"
            )
        if uses_fw:
            # What KUBE-FW did not send on is still addressed to the LB IP here: drop it.
            buf.filter_rules.append(
                f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{spn} traffic not accepted'
                f' by {ch.fw}" {match} -d {ip} --dport {svc.port} -j DROP'
            )
    if not on_node.has_external_endpoints:
        for ip in svc.load_balancer_ips:
            buf.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {no_ext[0]} {match}"
                f" -d {ip} --dport {svc.port} -j {no_ext[1]}"
            )
    if svc.node_port:
        if on_node.has_any_endpoints:
            buf.nat_rules.append(
                f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {match}"
                f" --dport {svc.node_port} -j {ext}"
            )
        if not on_node.has_external_endpoints:
            buf.filter_rules.append(
                f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {no_ext[0]}"
                f" -m addrtype --dst-type LOCAL {match} --dport {svc.node_port} -j {no_ext[1]}"
            )


def _write_service_chains(
    chains: list[str], rules: list[str], svc: ServicePort, ch: ServiceChains,
    on_node: NodeEndpoints, node: NodeContext, large: bool,
) -> None:
    """The per-service chains (EXT, SVC, SVL, SEP): skipped by a partial sync when unchanged."""
    spn, p = svc.port_name_string, svc.proto
    cidr = node.cluster_cidr
    if on_node.has_internal_endpoints and cidr:
        # Off-cluster sources reaching a cluster IP may be bounced to another node: SNAT them.
        rules.append(
            f'-A {_internal_chain(svc, ch)} -m comment --comment "{spn} cluster IP" -m {p} -p {p}'
            f" -d {svc.cluster_ip} --dport {svc.port} ! -s {cidr} -j {KUBE_MARK_MASQ}"
        )
    if on_node.has_any_endpoints and svc.externally_accessible:
        _write_external_chain(chains, rules, svc, ch, on_node, cidr)
    if _uses_fw_chain(svc, on_node):
        _write_firewall_chain(chains, rules, svc, ch, node)
    if on_node.cluster_endpoints:
        chains.append(_chain_line(ch.svc))
        _write_balancing(rules, svc, ch.svc, on_node.cluster_endpoints, large)
    if on_node.local_endpoints:
        chains.append(_chain_line(ch.svl))
        _write_balancing(rules, svc, ch.svl, on_node.local_endpoints, large)
    for ep in on_node.all_reachable_endpoints:
        sep = sep_chain(svc, ep)
        chains.append(_chain_line(sep))
        head = f"-A {sep}" if large else f"-A {sep} -m comment --comment {spn}"
        # A pod reaching itself through the service must be SNATed, or it answers itself.
        rules.append(f"{head} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        affinity = f" -m recent --name {sep} --set" if svc.session_affinity_seconds else ""
        rules.append(f"{head}{affinity} -m {p} -p {p} -j DNAT --to-destination {ep}")


def _write_external_chain(
    chains: list[str], rules: list[str], svc: ServicePort, ch: ServiceChains,
    on_node: NodeEndpoints, cidr: str | None,
) -> None:
    """KUBE-EXT: masquerade (Cluster policy) or keep the client IP (Local), then KUBE-SVC/SVL."""
    spn, ext, svc_target = svc.port_name_string, ch.ext, ch.svc
    chains.append(_chain_line(ext))
    if not svc.external_policy_local:
        rules.append(
            f'-A {ext} -m comment --comment "masquerade traffic for {spn} external'
            f' destinations" -j {KUBE_MARK_MASQ}'
        )
    else:
        if cidr:
            # A pod calling the LB/NodePort is treated as if it went out and came back in.
            rules.append(
                f'-A {ext} -m comment --comment "pod traffic for {spn} external'
                f' destinations" -s {cidr} -j {svc_target}'
            )
        rules.append(
            f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {spn} external'
            f' destinations" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}'
        )
        rules.append(
            f'-A {ext} -m comment --comment "route LOCAL traffic for {spn} external'
            f' destinations" -m addrtype --src-type LOCAL -j {svc_target}'
        )
    if on_node.has_external_endpoints:
        target = ch.svl if svc.external_policy_local else svc_target
        rules.append(f"-A {ext} -j {target}")


def _write_firewall_chain(
    chains: list[str], rules: list[str], svc: ServicePort, ch: ServiceChains, node: NodeContext,
) -> None:
    """KUBE-FW: sources in loadBalancerSourceRanges go on to KUBE-EXT; the rest falls through
    un-DNATed and meets KUBE-PROXY-FIREWALL's DROP in the filter table."""
    spn = svc.port_name_string
    chains.append(_chain_line(ch.fw))
    head = f'-A {ch.fw} -m comment --comment "{spn} loadbalancer IP"'
    rules.extend(f"{head} -s {cidr} -j {ch.ext}" for cidr in svc.load_balancer_source_ranges)
    if svc.source_ranges_contain(node.node_ip):
        # A node may reach a VIP that is one of its own addresses with the VIP as source
        # (upstream's allowFromNode): let it through when the node itself is allowed.
        rules.extend(f"{head} -s {ip} -j {ch.ext}" for ip in svc.load_balancer_ips)
    rules.append(f'-A {ch.fw} -m comment --comment "other traffic to {spn} will be dropped by'
                 f' {KUBE_PROXY_FIREWALL}"')


def _write_balancing(
    rules: list[str], svc: ServicePort, chain: str, eps: Sequence[Endpoint], large: bool
) -> None:
    """Service chain -> endpoint chains: affinity checks first, then the random spread."""
    spn = svc.port_name_string

    def head(ep: Endpoint) -> str:
        return f"-A {chain}" if large else f'-A {chain} -m comment --comment "{spn} -> {ep}"'

    if svc.session_affinity_seconds:
        for ep in eps:
            sep = sep_chain(svc, ep)
            rules.append(
                f"{head(ep)} -m recent --name {sep} --rcheck"
                f" --seconds {svc.session_affinity_seconds} --reap -j {sep}"
            )
    n = len(eps)
    for i, ep in enumerate(eps):
        spread = f" -m statistic --mode random --probability {compute_probability(n - i)}"
        rules.append(f"{head(ep)}{spread if i < n - 1 else ''} -j {sep_chain(svc, ep)}")


def _write_tail(buf: _Buffers, stale_chains: Iterable[str], node: NodeContext) -> None:
    for chain in sorted(stale_chains):
        # Declaring the chain flushes it; then it can be deleted.
        buf.nat_chains.append(_chain_line(chain))
        buf.nat_rules.append(f"-X {chain}")
    buf.nat_rules.append(
        f'-A {KUBE_SERVICES} -m comment --comment "{NODEPORTS_COMMENT}"'
        f" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j {KUBE_NODEPORTS}"
    )
    # conntrack cannot place a packet out of the window (kubernetes#74839): dropped, unless
    # nf_conntrack_tcp_be_liberal lets conntrack accept it (kubernetes#117924)
    if not node.conntrack_tcp_liberal:
        buf.filter_rules.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP")
    buf.filter_rules += [
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules"'
        f" -m mark --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j ACCEPT",
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule"'
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]


def _sync(
    services: Sequence[ServicePort],
    node: NodeContext,
    rewrite: Callable[[ServicePort], bool],
    stale_chains: Iterable[str],
) -> str:
    """One sync's restore input; rewrite(svc) says whether svc's own chains are written."""
    buf = _Buffers()
    _write_top_level(buf, node)
    large = _is_large_cluster(services)
    for svc in services:
        ch, on_node = service_chains(svc), categorize_endpoints(svc, node.node_name)
        _write_entry_rules(buf, svc, ch, on_node)
        if rewrite(svc):
            _write_service_chains(buf.nat_chains, buf.nat_rules, svc, ch, on_node, node, large)
    _write_tail(buf, stale_chains, node)
    return buf.text()


def render(
    services: Iterable[ServicePort], node: NodeContext, existing_chains: Iterable[str] = ()
) -> str:
    """The full iptables-restore input (filter + nat) for `node`, for `--noflush`.

    existing_chains: nat chains present now (see restore.nat_chains_in_save); kube-proxy's own
    chains among them that the new state does not use are flushed and deleted, as upstream does.
    """
    svcs = _sorted_services(services)
    stale = {c for c in existing_chains if is_service_chain(c)} - active_nat_chains(svcs, node)
    return _sync(svcs, node, lambda svc: True, stale)


def render_partial(
    old_services: Iterable[ServicePort], new_services: Iterable[ServicePort], node: NodeContext
) -> str:
    """The restore input that takes a node from `old_services` to `new_services`.

    Like upstream's partial sync: the per-service chains are written only for Services (by
    namespace/name, all their ports) whose spec or endpoints changed; chains that disappeared are
    deleted. Applied with --noflush over render(old_services) (for the same node), it leaves the
    same tables as render(new_services) on an empty node. When the large-cluster switch flips
    (which changes the comments of every endpoint rule), every chain is rewritten.
    """
    old, new = _sorted_services(old_services), _sorted_services(new_services)
    changed = changed_services(old, new)

    def is_changed(svc: ServicePort) -> bool:
        return (svc.namespace, svc.name) in changed

    # Chain names are unique per service port, and an unchanged service keeps its chains:
    # only changed services can leave chains behind.
    stale = active_nat_chains(filter(is_changed, old), node) - active_nat_chains(
        filter(is_changed, new), node)
    if _is_large_cluster(old) != _is_large_cluster(new):
        return _sync(new, node, lambda svc: True, stale)
    return _sync(new, node, is_changed, stale)


def render_key(
    services: Iterable[ServicePort], node: NodeContext
) -> tuple[str | None, bool, bool, str]:
    """What of `node` render and render_partial read for these services: nodes with the same
    key get the same text, so a sync of many nodes renders it once. The node's name only picks
    its local endpoints, which only a Local traffic policy (external or internal) uses; its IP is
    read only where a source range holds it (reads_node_ip); LOCAL destinations are matched by
    addrtype."""
    services = list(services)
    own = any(s.uses_local_endpoints for s in services) or reads_node_ip(services, node)
    return (node.cluster_cidr, node.random_fully, node.conntrack_tcp_liberal,
            node.node_name if own else "")


def reads_node_ip(services: Iterable[ServicePort], node: NodeContext) -> bool:
    """Whether a firewall chain of these services holds the node's IP: a source range has it
    (upstream's allowFromNode). Such a node gets a text of its own."""
    return any(s.uses_firewall and s.source_ranges_contain(node.node_ip) for s in services)


def changed_services(
    old: Iterable[ServicePort], new: Iterable[ServicePort]
) -> set[tuple[str, str]]:
    """(namespace, name) of every Service with a port added, removed or different."""
    before = {(s.port_name_string, s.proto): s for s in old}
    after = {(s.port_name_string, s.proto): s for s in new}
    changed = set()
    for key in before.keys() | after.keys():
        a, b = before.get(key), after.get(key)
        if a is not b and a != b:
            s = a or b
            assert s is not None  # the key came from one of the two
            changed.add((s.namespace, s.name))
    return changed


def active_nat_chains(services: Iterable[ServicePort], node: NodeContext) -> set[str]:
    """Every per-service nat chain (KUBE-SVC/SVL/EXT/SEP) the node has for these services."""
    out: set[str] = set()
    for svc in services:
        if svc.proxied:
            out.update(_service_chains(svc, categorize_endpoints(svc, node.node_name)))
    return out


def endpoint_chains(services: Iterable[ServicePort], node: NodeContext) -> set[str]:
    """The KUBE-SEP chains the node has for these services."""
    return {c for c in active_nat_chains(services, node) if c.startswith(SEP_PREFIX)}
