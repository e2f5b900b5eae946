"""kube-proxy's nftables mode, rendered the way upstream kube-proxy writes it: the `nft -f` input.

Pure: turns service ports (with their endpoints) into one nft transaction for one node, whole
(render: upstream's full sync, setupNFTables included) or as upstream's partial sync
(render_partial: only the chains of the Services that changed, and only the map and set
elements that differ). The ruleset, what a partial sync writes and the differences from
upstream are explained in docs/kube-proxy.md; names come from names.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from testbed.kubernetes.dataplane.iptables.rules import changed_services, reads_node_ip
from testbed.kubernetes.dataplane.model import (
    Endpoint,
    NodeContext,
    NodeEndpoints,
    ServicePort,
    categorize_endpoints,
)
from testbed.kubernetes.dataplane.nftables.names import (
    CLUSTER_IPS,
    CLUSTER_IPS_CHECK,
    FAMILY,
    FILTER_FORWARD,
    FILTER_INPUT,
    FILTER_OUTPUT,
    FILTER_OUTPUT_PRE_DNAT,
    FILTER_PREROUTING_PRE_DNAT,
    FIREWALL_CHECK,
    FIREWALL_IPS,
    MARK_MASQ,
    MASQUERADE_MARK,
    MASQUERADING,
    NAT_OUTPUT,
    NAT_POSTROUTING,
    NAT_PREROUTING,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    NODEPORT_ENDPOINTS_CHECK,
    NODEPORT_IPS,
    REJECT_CHAIN,
    SERVICE_ENDPOINTS_CHECK,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    SERVICES,
    TABLE,
    ServiceChains,
    affinity_set,
    endpoint_chain,
    is_affinity_set_name,
    is_service_chain_name,
    service_chains,
)

T = f"{FAMILY} {TABLE}"   # what every command names: "ip kube-proxy"

# Upstream nftablesBaseChains: (name, type, hook, priority). The filter chains that must see
# the destination before DNAT run at dstnat-10 (-110); the others at the filter priority (0).
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    (FILTER_PREROUTING_PRE_DNAT, "filter", "prerouting", -110),
    (FILTER_OUTPUT_PRE_DNAT, "filter", "output", -110),
    (FILTER_INPUT, "filter", "input", 0),
    (FILTER_FORWARD, "filter", "forward", 0),
    (FILTER_OUTPUT, "filter", "output", 0),
    (NAT_PREROUTING, "nat", "prerouting", -100),
    (NAT_OUTPUT, "nat", "output", -100),
    (NAT_POSTROUTING, "nat", "postrouting", 100),
)

# Upstream nftablesJumpChains: (target, from base chain, match). The endpoint checks are not
# jumped to from prerouting: reject is only valid in input, forward and output (kernels < 5.9).
JUMP_CHAINS: tuple[tuple[str, str, str], ...] = (
    (NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT, "ct state new"),
    (FIREWALL_CHECK, FILTER_PREROUTING_PRE_DNAT, "ct state new"),
    (FIREWALL_CHECK, FILTER_OUTPUT_PRE_DNAT, "ct state new"),
    (SERVICES, NAT_OUTPUT, ""),
    (SERVICES, NAT_PREROUTING, ""),
    (MASQUERADING, NAT_POSTROUTING, ""),
    (CLUSTER_IPS_CHECK, FILTER_FORWARD, "ct state new"),
    (CLUSTER_IPS_CHECK, FILTER_OUTPUT, "ct state new"),
)

ADDR_PROTO_PORT = "ipv4_addr . inet_proto . inet_service : verdict"
PROTO_PORT = "inet_proto . inet_service : verdict"
# The sets and maps every sync fills: (kind, name, type, comment), in upstream's order.
CONTAINERS: tuple[tuple[str, str, str, str], ...] = (
    ("set", CLUSTER_IPS, "ipv4_addr", "Active ClusterIPs"),
    ("set", NODEPORT_IPS, "ipv4_addr", "IPs that accept NodePort traffic"),
    ("map", NO_ENDPOINT_SERVICES, ADDR_PROTO_PORT,
     "vmap to drop or reject packets to services with no endpoints"),
    ("map", NO_ENDPOINT_NODEPORTS, PROTO_PORT,
     "vmap to drop or reject packets to service nodeports with no endpoints"),
    ("map", FIREWALL_IPS, ADDR_PROTO_PORT,
     "destinations that are subject to LoadBalancerSourceRanges"),
    ("map", SERVICE_IPS, ADDR_PROTO_PORT, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("map", SERVICE_NODEPORTS, PROTO_PORT, "NodePort traffic"),
)
# Filled per service (nodeport-ips is the node's own, written with the table).
SERVICE_CONTAINERS = (CLUSTER_IPS, SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES,
                      NO_ENDPOINT_NODEPORTS, FIREWALL_IPS)


class Element(NamedTuple):
    """One element of a set or map: container, key ("ip . proto . port"), value (a verdict; ""
    in a set), comment (upstream comments the no-endpoint elements with the port's name)."""

    container: str
    key: str
    value: str = ""
    comment: str = ""

    def add(self) -> str:
        comment = f' comment "{self.comment}"' if self.comment else ""
        value = f" : {self.value}" if self.value else ""
        return f"add element {T} {self.container} {{ {self.key}{comment}{value} }}"

    def delete(self) -> str:
        return f"delete element {T} {self.container} {{ {self.key} }}"


# --- the table and its fixed chains (upstream setupNFTables) -------------------------------------


def render_setup(node: NodeContext) -> list[str]:
    """What a full sync writes before the services: the table, its base chains (recreated,
    as upstream's first sync does, so a changed priority takes), the fixed chains with their
    rules, the sets and maps (emptied: a full sync refills them) and the node's NodePort
    address (upstream's nftables default --nodeport-addresses=primary)."""
    out = [f'add table {T} {{ comment "rules for kube-proxy" ; }}']
    for name, *_ in BASE_CHAINS:   # upstream: once per process, an add+delete of each
        out += [f"add chain {T} {name}", f"delete chain {T} {name}"]
    for name, kind, hook, priority in BASE_CHAINS:
        out += [f"add chain {T} {name} {{ type {kind} hook {hook} priority {priority} ; }}",
                f"flush chain {T} {name}"]
    created: set[str] = set()

    def ensure(chain: str) -> None:
        if chain not in created:
            created.add(chain)
            out.extend((f"add chain {T} {chain}", f"flush chain {T} {chain}"))

    for target, source, match in JUMP_CHAINS:
        ensure(target)
        out.append(f"add rule {T} {source} {match + ' ' if match else ''}jump {target}")
    for chain in (SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_MASQ):
        ensure(chain)
    masquerade = "masquerade fully-random" if node.random_fully else "masquerade"
    out += [
        f"add rule {T} {MARK_MASQ} mark set mark or {MASQUERADE_MARK}",
        f"add rule {T} {MASQUERADING} mark and {MASQUERADE_MARK} == 0 return",
        # cleared so a packet that goes through the stack again is not masqueraded twice
        f"add rule {T} {MASQUERADING} mark set mark xor {MASQUERADE_MARK}",
        f"add rule {T} {MASQUERADING} {masquerade}",
    ]
    comments = {name: (kind, typ, comment) for kind, name, typ, comment in CONTAINERS}

    def container(name: str) -> None:
        kind, typ, comment = comments[name]
        out.append(f'add {kind} {T} {name} {{ type {typ} ; comment "{comment}" ; }}')

    container(CLUSTER_IPS)
    out.append(f"add rule {T} {CLUSTER_IPS_CHECK} ip daddr @{CLUSTER_IPS} reject"
               ' comment "Reject traffic to invalid ports of ClusterIPs"')
    # (upstream also drops traffic to unallocated addresses of the ServiceCIDRs; the testbed
    # has no ServiceCIDR objects, as upstream without them)
    container(NODEPORT_IPS)
    out += [f"flush set {T} {NODEPORT_IPS}", Element(NODEPORT_IPS, node.node_ip).add()]
    container(NO_ENDPOINT_SERVICES)
    container(NO_ENDPOINT_NODEPORTS)
    out += [
        f'add chain {T} {REJECT_CHAIN} {{ comment "helper for @{NO_ENDPOINT_SERVICES} /'
        f' @{NO_ENDPOINT_NODEPORTS}" ; }}',
        f"flush chain {T} {REJECT_CHAIN}",
        f"add rule {T} {REJECT_CHAIN} reject",
        f"add rule {T} {SERVICE_ENDPOINTS_CHECK} ip daddr . meta l4proto . th dport"
        f" vmap @{NO_ENDPOINT_SERVICES}",
        f"add rule {T} {NODEPORT_ENDPOINTS_CHECK} ip daddr @{NODEPORT_IPS}"
        f" meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
    ]
    container(FIREWALL_IPS)
    ensure(FIREWALL_CHECK)
    out.append(f"add rule {T} {FIREWALL_CHECK} ip daddr . meta l4proto . th dport"
               f" vmap @{FIREWALL_IPS}")
    container(SERVICE_IPS)
    container(SERVICE_NODEPORTS)
    out += [
        f"add rule {T} {SERVICES} ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
        f"add rule {T} {SERVICES} ip daddr @{NODEPORT_IPS} meta l4proto . th dport"
        f" vmap @{SERVICE_NODEPORTS}",
    ]
    for name in SERVICE_CONTAINERS:   # every element is written again below
        out.append(f"flush {comments[name][0]} {T} {name}")
    return out


# --- one service port ----------------------------------------------------------------------------


class _Plan(NamedTuple):
    """What one service port has on one node: its chains in use and its elements."""

    svc: ServicePort
    chains: ServiceChains
    on_node: NodeEndpoints
    uses_cluster: bool
    uses_local: bool
    uses_external: bool
    uses_firewall: bool   # upstream's usesFWChain: LB IPs and source ranges (endpoints or not)


def _plan(svc: ServicePort, node_name: str) -> _Plan:
    on_node = categorize_endpoints(svc, node_name)
    return _Plan(
        svc, service_chains(svc), on_node,
        uses_cluster=bool(on_node.cluster_endpoints) and svc.uses_cluster_endpoints,
        uses_local=bool(on_node.local_endpoints) and svc.uses_local_endpoints,
        uses_external=on_node.has_any_endpoints and svc.externally_accessible,
        uses_firewall=svc.uses_firewall,
    )


def _chains_of(p: _Plan) -> list[str]:
    """The per-service chains the service port owns on this node, in upstream's order."""
    out = [endpoint_chain(p.svc, ep) for ep in p.on_node.all_reachable_endpoints]
    if p.uses_cluster:
        out.append(p.chains.cluster)
    if p.uses_local:
        out.append(p.chains.local)
    if p.uses_external:
        out.append(p.chains.external)
    if p.uses_firewall:
        out.append(p.chains.firewall)
    return out


def _affinity_sets_of(p: _Plan) -> list[str]:
    if not p.svc.session_affinity_seconds:
        return []
    return [affinity_set(p.svc, ep) for ep in p.on_node.all_reachable_endpoints]


def _elements_of(p: _Plan) -> list[Element]:
    """The service port's elements in the dispatch and no-endpoint maps (upstream's order)."""
    svc, on, ch = p.svc, p.on_node, p.chains
    proto, port, spn = svc.proto, svc.port, svc.port_name_string
    internal = ch.local if svc.internal_policy_local else ch.cluster
    if not on.has_any_endpoints:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        # a Local policy without local endpoints: drop what was not short-circuited
        internal_verdict = external_verdict = "drop"
    out = [Element(CLUSTER_IPS, str(svc.cluster_ip))]
    key = f"{svc.cluster_ip} . {proto} . {port}"
    if on.has_internal_endpoints:
        out.append(Element(SERVICE_IPS, key, f"goto {internal}"))
    else:
        out.append(Element(NO_ENDPOINT_SERVICES, key, internal_verdict, spn))
    for ip in svc.external_ips:
        key = f"{ip} . {proto} . {port}"
        if on.has_any_endpoints:
            out.append(Element(SERVICE_IPS, key, f"goto {ch.external}"))
        if not on.has_external_endpoints:
            out.append(Element(NO_ENDPOINT_SERVICES, key, external_verdict, spn))
    for ip in svc.load_balancer_ips:
        if on.has_any_endpoints:
            out.append(Element(SERVICE_IPS, f"{ip} . {proto} . {port}", f"goto {ch.external}"))
        if p.uses_firewall:
            out.append(Element(FIREWALL_IPS, f"{ip} . {proto} . {port}", f"goto {ch.firewall}",
                               spn))
    if not on.has_external_endpoints:
        for ip in svc.load_balancer_ips:
            out.append(Element(NO_ENDPOINT_SERVICES, f"{ip} . {proto} . {port}",
                               external_verdict, spn))
    if svc.node_port:
        key = f"{proto} . {svc.node_port}"
        if on.has_any_endpoints:
            out.append(Element(SERVICE_NODEPORTS, key, f"goto {ch.external}"))
        if not on.has_external_endpoints:
            out.append(Element(NO_ENDPOINT_NODEPORTS, key, external_verdict, spn))
    return out


def _write_chains(out: list[str], p: _Plan, node: NodeContext) -> None:
    """The service port's chains (created and flushed), affinity sets and rules: what a partial
    sync skips for a Service that did not change."""
    svc, on, ch = p.svc, p.on_node, p.chains
    for chain in _chains_of(p):   # upstream ensureChain: add, then flush what was there
        out += [f"add chain {T} {chain}", f"flush chain {T} {chain}"]
    internal = ch.local if svc.internal_policy_local else ch.cluster
    proto, cidr = svc.proto, node.cluster_cidr
    if on.has_internal_endpoints and cidr:
        # Off-cluster sources reaching a cluster IP may be bounced to another node: SNAT them.
        out.append(f"add rule {T} {internal} ip daddr {svc.cluster_ip} {proto} dport {svc.port}"
                   f" ip saddr != {cidr} jump {MARK_MASQ}")
    if p.uses_external:
        ext = ch.external
        if not svc.external_policy_local:
            out.append(f"add rule {T} {ext} jump {MARK_MASQ}")
        else:
            if cidr:
                # A pod calling the LB or NodePort is treated as if it went out and came back.
                out.append(f"add rule {T} {ext} ip saddr {cidr} goto {ch.cluster}"
                           ' comment "short-circuit pod traffic"')
            out += [
                f"add rule {T} {ext} fib saddr type local jump {MARK_MASQ}"
                ' comment "masquerade local traffic"',
                f"add rule {T} {ext} fib saddr type local goto {ch.cluster}"
                ' comment "short-circuit local traffic"',
            ]
        if on.has_external_endpoints:
            target = ch.local if svc.external_policy_local else ch.cluster
            out.append(f"add rule {T} {ext} goto {target}")
    if p.uses_firewall:
        _write_firewall(out, svc, ch.firewall, node)
    if svc.session_affinity_seconds:
        for name in _affinity_sets_of(p):
            # "dynamic": the kernel adds it anyway, and then a later add without it would fail
            out.append(f"add set {T} {name} {{ type ipv4_addr ; flags dynamic,timeout ;"
                       f" timeout {svc.session_affinity_seconds}s ; }}")
    if p.uses_cluster:
        _write_balancing(out, svc, ch.cluster, on.cluster_endpoints)
    if p.uses_local:
        _write_balancing(out, svc, ch.local, on.local_endpoints)
    for ep in on.all_reachable_endpoints:
        chain = endpoint_chain(svc, ep)
        # A pod reaching itself through the service must be SNATed, or it answers itself.
        out.append(f"add rule {T} {chain} ip saddr {ep.ip} jump {MARK_MASQ}")
        if svc.session_affinity_seconds:
            out.append(f"add rule {T} {chain} update @{affinity_set(svc, ep)} {{ ip saddr }}")
        out.append(f"add rule {T} {chain} meta l4proto {proto} dnat to {ep}")


def _write_firewall(out: list[str], svc: ServicePort, chain: str, node: NodeContext) -> None:
    """firewall-...: reached from firewall-check (before DNAT) for the LB IPs; drops a new
    connection whose source is in none of the loadBalancerSourceRanges."""
    sources = list(svc.load_balancer_source_ranges)
    if svc.source_ranges_contain(node.node_ip):
        # upstream's allowFromNode: a node reaching a VIP bound to itself has the VIP as source
        sources += svc.load_balancer_ips
    out.append(f"add rule {T} {chain} ip saddr != {{ {' , '.join(sources)} }} drop")


def _write_balancing(out: list[str], svc: ServicePort, chain: str,
                     eps: Sequence[Endpoint]) -> None:
    """Upstream writeServiceToEndpointRules: affinity lookups first, then one numgen vmap
    that picks an endpoint with equal probability (one rule whatever the number of endpoints)."""
    if svc.session_affinity_seconds:
        for ep in eps:
            out.append(f"add rule {T} {chain} ip saddr @{affinity_set(svc, ep)}"
                       f" goto {endpoint_chain(svc, ep)}")
    branches = " , ".join(f"{i} : goto {endpoint_chain(svc, ep)}" for i, ep in enumerate(eps))
    out.append(f"add rule {T} {chain} numgen random mod {len(eps)} vmap {{ {branches} }}")


# --- whole syncs ---------------------------------------------------------------------------------


def _sorted_services(services: Iterable[ServicePort]) -> list[ServicePort]:
    """Proxied service ports in a fixed order (upstream walks a map)."""
    out = sorted((s for s in services if s.proxied), key=lambda s: (s.port_name_string, s.proto))
    for a, b in zip(out, out[1:], strict=False):
        if (a.port_name_string, a.proto) == (b.port_name_string, b.proto):
            raise ValueError(f"service port {a.port_name_string}/{a.proto} is listed twice")
    return out


def _remove_stale(out: list[str], stale_chains: Iterable[str], stale_sets: Iterable[str]) -> None:
    """Chains and affinity sets no service uses any more. Upstream flushes stale chains now and
    deletes them a second later (kernels before 6.2 see a deleted map element's reference to a
    chain go only after a while); kernels since delete them in the same transaction, which is
    what is done here, after the rules and elements that used them are gone."""
    stale = sorted(stale_chains)
    # all flushed before any is deleted: a stale chain may jump to another one
    out += [f"flush chain {T} {chain}" for chain in stale]
    out += [f"delete chain {T} {chain}" for chain in stale]
    for name in sorted(stale_sets):
        out.append(f"delete set {T} {name}")


def render_services(services: Iterable[ServicePort], node: NodeContext,
                    existing_chains: Iterable[str] = (), existing_sets: Iterable[str] = ()
                    ) -> str:
    """A full sync's per-service part: every service port's chains, rules and elements; the
    existing per-service chains and affinity sets that are not used any more are removed."""
    out: list[str] = []
    elements: list[Element] = []
    chains: set[str] = set()
    sets: set[str] = set()
    for svc in _sorted_services(services):
        p = _plan(svc, node.node_name)
        _write_chains(out, p, node)
        elements += _elements_of(p)
        chains.update(_chains_of(p))
        sets.update(_affinity_sets_of(p))
    out += [e.add() for e in _dedupe(elements)]
    _remove_stale(out, {c for c in existing_chains if is_service_chain_name(c)} - chains,
                  {s for s in existing_sets if is_affinity_set_name(s)} - sets)
    return "\n".join(out) + "\n" if out else ""


def render(services: Iterable[ServicePort], node: NodeContext,
           existing_chains: Iterable[str] = (), existing_sets: Iterable[str] = ()) -> str:
    """The node's full sync, one `nft -f` transaction: the table set up, then every service.

    existing_chains, existing_sets: what the table holds now (nft list chains / sets), for
    removing kube-proxy's per-service chains and affinity sets no service uses any more.
    """
    return "\n".join(render_setup(node)) + "\n" + render_services(
        services, node, existing_chains, existing_sets)


def _dedupe(elements: Iterable[Element]) -> list[Element]:
    """One element per (container, key), the first (a Service's ports share its cluster IP)."""
    seen: dict[tuple[str, str], Element] = {}
    for e in elements:
        seen.setdefault((e.container, e.key), e)
    return list(seen.values())


def render_partial(old_services: Iterable[ServicePort], new_services: Iterable[ServicePort],
                   node: NodeContext) -> str:
    """The transaction that takes a node from `old_services` to `new_services`: upstream's
    partial sync. Services (by namespace/name, all their ports) whose spec or endpoints changed
    get their chains rewritten; the others are not mentioned. Map and set elements are written
    only where they differ (upstream's nftElementStorage: added, deleted, or deleted and added
    again with their new verdict). Loaded over render(old_services) for the same node, it
    leaves the same table as render(new_services) on an empty node."""
    old, new = _sorted_services(old_services), _sorted_services(new_services)
    changed = changed_services(old, new)
    if not changed:
        return ""
    before = [_plan(s, node.node_name) for s in old if (s.namespace, s.name) in changed]
    after = [_plan(s, node.node_name) for s in new if (s.namespace, s.name) in changed]
    out: list[str] = []
    for p in after:
        _write_chains(out, p, node)
    old_el, new_el = _owned_elements(before), _owned_elements(after)
    rivals = _rival_elements(old_el.keys() | new_el.keys(),
                             [s for s in new if (s.namespace, s.name) not in changed], node)
    deletes, adds = [], []
    for k in sorted(old_el.keys() | new_el.keys()):
        now = min(filter(None, (old_el.get(k), *rivals.get(k, ()))), default=None)
        want = min(filter(None, (new_el.get(k), *rivals.get(k, ()))), default=None)
        if now is not None and (want is None or now[1] != want[1]):
            deletes.append(now[1].delete())
        if want is not None and (now is None or now[1] != want[1]):
            adds.append(want[1].add())
    out += deletes + adds
    _remove_stale(
        out,
        {c for p in before for c in _chains_of(p)} - {c for p in after for c in _chains_of(p)},
        {s for p in before for s in _affinity_sets_of(p)}
        - {s for p in after for s in _affinity_sets_of(p)})
    return "\n".join(out) + "\n"


_Owned = tuple[tuple[str, str], Element]   # (the owner's sort key, the element)


def _sort_key(svc: ServicePort) -> tuple[str, str]:
    return svc.port_name_string, svc.proto


def _owned_elements(plans: Iterable[_Plan]) -> dict[tuple[str, str], _Owned]:
    """(container, key) -> the element there and its owner: of service ports that would put
    one at the same key, the first in order wins (as in render's _dedupe)."""
    out: dict[tuple[str, str], _Owned] = {}
    for p in plans:
        owner = _sort_key(p.svc)
        for e in _elements_of(p):
            k = (e.container, e.key)
            if k not in out or owner < out[k][0]:
                out[k] = owner, e
    return out


def _rival_elements(keys: Iterable[tuple[str, str]], unchanged: Sequence[ServicePort],
                    node: NodeContext) -> dict[tuple[str, str], list[_Owned]]:
    """The elements unchanged service ports hold at these keys: two Services claiming the same
    address and port is a misconfiguration, but the table must still end as a full sync
    leaves it. Found by address and node port first, so nothing is rendered for the
    (usually all) unchanged ports that claim none of them."""
    keys = set(keys)
    ips = {k[1].split(" . ")[0] for k in keys}
    node_ports = {k[1].split(" . ")[1] for k in keys if k[0] in (SERVICE_NODEPORTS,
                                                                   NO_ENDPOINT_NODEPORTS)}
    out: dict[tuple[str, str], list[_Owned]] = {}
    for svc in unchanged:
        if not (svc.cluster_ip in ips or str(svc.node_port) in node_ports
                or any(ip in ips for ip in svc.load_balancer_ips + svc.external_ips)):
            continue
        owned = _owned_elements([_plan(svc, node.node_name)])
        for k in keys & owned.keys():
            out.setdefault(k, []).append(owned[k])
    return out


def render_key(services: Iterable[ServicePort], node: NodeContext
               ) -> tuple[str | None, bool, str]:
    """What of `node` render_services and render_partial read: nodes with the same key get the
    same text (render_setup adds the node's own address to a full sync). The node's name only
    picks its local endpoints, which only a Local traffic policy uses, and its IP is read where
    a source range holds it (reads_node_ip)."""
    services = list(services)
    own = any(s.uses_local_endpoints for s in services) or reads_node_ip(services, node)
    return node.cluster_cidr, node.random_fully, node.node_name if own else ""


def service_chain_names(services: Iterable[ServicePort], node: NodeContext) -> set[str]:
    """Every per-service chain (service-, local-, external-, firewall-, endpoint-) the node
    has."""
    return {c for s in _sorted_services(services) for c in _chains_of(_plan(s, node.node_name))}


def endpoint_chain_names(services: Iterable[ServicePort], node: NodeContext) -> set[str]:
    """The endpoint- chains the node has for these services."""
    return {c for c in service_chain_names(services, node) if c.startswith("endpoint-")}
