"""What the fabric learned by BGP, turned into routes: the pod blocks of Calico-style routing.

The fabric's BGP speaker (BIRD, in its own namespace on the core switch, peering with every
node) is read by the testbed, which PUTs its neighbours and learned routes to /v1/bgp; this
module keeps them and routes each learned prefix to the node that announced it (the route's BGP
next hop must be a node's address). A learned prefix is one flow in the next-hop table, below
the /32 host routes and longest prefix first (OpenFlow picks by priority, not by length).

BgpRoute: one learned prefix and the node it goes to
parse_bgp: a PUT /v1/bgp body checked against the fabric
BgpRoutes: the learned state, its flows, and the messages for a change
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass

from os_ken.ofproto import ether
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import ConfigError, Fabric, _ip, _req
from controllers.openflow import (
    COOKIE_BGP,
    P_DEFAULT,
    T_L2,
    T_NEXTHOP,
    Messages,
    Ports,
    cookie,
    delete_by_cookie,
    flow,
    hex_cookie,
)

P_BGP_BASE = 40      # + prefix length (<= 32): below P_DEFAULT's /32 host and pod routes


@dataclass(frozen=True)
class BgpRoute:
    """A prefix the fabric learned: next_hop is the announcing node's address.

    prefix: e.g. 10.244.0.0/26; protocol: the speaker's session it came from; as_path: as BGP
    carried it"""
    prefix: str
    next_hop: str
    node: str
    protocol: str = ""
    as_path: str = ""


def parse_bgp(fabric: Fabric, body: Mapping) -> tuple[list[dict], list[BgpRoute]]:
    """A PUT /v1/bgp body: {neighbors: [{name, state, info, since, ...}], routes: [{prefix,
    next_hop, protocol, as_path}]}; a route's next hop must be a node's address."""
    neighbors = body.get("neighbors") or []
    if not isinstance(neighbors, list) or not all(isinstance(n, dict) for n in neighbors):
        raise ConfigError("bgp.neighbors: expected a list of objects")
    node_by_ip = {h.ip: h.name for h in fabric.hosts if h.kind == "node"}
    routes = []
    for i, r in enumerate(body.get("routes") or []):
        w = f"bgp.routes[{i}]"
        try:
            prefix = str(ipaddress.IPv4Network(str(_req(r, "prefix", w))))
        except ValueError as e:
            raise ConfigError(f"{w}.prefix: {e}") from None
        hop = _ip(_req(r, "next_hop", w), f"{w}.next_hop")
        if hop not in node_by_ip:
            raise ConfigError(f"{w}.next_hop: {hop} is not a node's address")
        routes.append(BgpRoute(prefix, hop, node_by_ip[hop], str(r.get("protocol", "")),
                               str(r.get("as_path", ""))))
    return [dict(n) for n in neighbors], routes


class BgpRoutes:
    """The fabric's BGP view: neighbours (as reported) and learned routes (as flows).

    fabric: the validated fabric.json (hosts: the nodes next hops must be)
    """

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self.neighbors: list[dict] = []
        self.routes: dict[str, BgpRoute] = {}
        self.updated_at: float | None = None
        self.updates = 0

    def flows(self) -> list:
        """Every learned prefix's flow (a switch's full program includes them)."""
        return [m for r in self.routes.values() for m in self._flows(r)]

    def _flows(self, route: BgpRoute) -> list:
        node = self.fabric.host(route.node)
        assert node is not None, "parse_bgp lets only nodes' addresses in as next hops"
        subnet = self.fabric.subnet(node.subnet)
        net = ipaddress.IPv4Network(route.prefix)
        match = {"eth_type": ether.ETH_TYPE_IP,
                 "ipv4_dst": (str(net.network_address), str(net.netmask))}
        return [flow(T_NEXTHOP, P_BGP_BASE + net.prefixlen, cookie(COOKIE_BGP, route.prefix),
                     match, [ofpp.OFPActionSetField(eth_src=subnet.gateway_mac),
                             ofpp.OFPActionSetField(eth_dst=node.mac)], goto=T_L2)]

    def update(self, neighbors: list[dict], routes: list[BgpRoute],
               ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Take the speaker's new state; messages for the prefixes that went, came or moved."""
        new = {r.prefix: r for r in routes}
        gone = [p for p in self.routes if p not in new]
        changed = [r for p, r in new.items()
                   if p not in self.routes or self.routes[p].next_hop != r.next_hop]
        msgs = [delete_by_cookie(cookie(COOKIE_BGP, p)) for p in gone]
        for r in changed:
            if r.prefix in self.routes:
                msgs.append(delete_by_cookie(cookie(COOKIE_BGP, r.prefix)))
            msgs += self._flows(r)
        self.neighbors, self.routes = neighbors, new
        self.updated_at, self.updates = time.time(), self.updates + 1
        return {sw: list(msgs) for sw in ports_by_switch} if msgs else {}

    def view(self) -> dict:
        """GET /v1/bgp: the neighbours, the learned routes (each with the node it goes to and
        its flow's cookie), when the speaker was last read."""
        return {"neighbors": self.neighbors,
                "routes": [{"prefix": r.prefix, "next_hop": r.next_hop, "node": r.node,
                            "protocol": r.protocol, "as_path": r.as_path,
                            "cookie": hex_cookie(cookie(COOKIE_BGP, r.prefix))}
                           for r in sorted(self.routes.values(),
                                           key=lambda r: ipaddress.IPv4Network(r.prefix))],
                "updated_at": self.updated_at, "updates": self.updates}

    def routes_view(self) -> list[dict]:
        """GET /v1/routes rows for the learned prefixes."""
        rows = []
        for r in self.view()["routes"]:
            node = self.fabric.host(r["node"])
            assert node is not None
            s = self.fabric.subnet(node.subnet)
            rows.append({"prefix": r["prefix"], "kind": "bgp", "name": r["prefix"],
                         "next_hop_mac": node.mac, "via": node.name, "subnet": s.name,
                         "eth_src": s.gateway_mac, "cookie": r["cookie"]})
        return rows


assert P_BGP_BASE + 32 < P_DEFAULT
