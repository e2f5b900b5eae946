"""Prefixes the fabric learned by BGP (controllers/bgp.py): PUT /v1/bgp turns them into routes
to the announcing node, withdrawn ones are dropped, GET /v1/bgp lists neighbours and routes."""

import pytest

from controllers.bgp import BgpRoute, parse_bgp
from controllers.config import ConfigError, parse_fabric
from controllers.vpc import Vpc

from .fakeswitch import FakeFabric
from .test_controller_rest import call, sent, service
from .vpc_fixtures import CLIENT1, GW_B, GW_NET, NODE1, NODE2, PORTS, fabric_dict, ip_pkt

BLOCK1 = {"prefix": "10.244.0.0/26", "next_hop": "192.168.0.10", "protocol": "node_node1",
          "as_path": "64512"}
BLOCK2 = {"prefix": "10.244.0.64/26", "next_hop": "192.168.1.10", "protocol": "node_node2",
          "as_path": "64512"}
NEIGHBORS = [{"name": "node_node1", "state": "up", "info": "Established"},
             {"name": "node_node2", "state": "up", "info": "Established"}]


def from_client(dst):
    return ip_pkt(CLIENT1, GW_NET, "203.0.113.10", dst, ttl=64)


def routed(fab, dst):
    """Where a client's packet to dst leaves the fabric: [(switch, port, packet)]."""
    return fab.walk("vpc0", "vpc0-client1", from_client(dst))


def test_a_learned_block_routes_to_its_node_and_a_withdrawn_one_drops():
    vpc = Vpc(parse_fabric(fabric_dict()))
    fab = FakeFabric(vpc, PORTS)
    assert routed(fab, "10.244.0.70") == []                  # nothing learned: no route
    _, routes = parse_bgp(vpc.fabric, {"routes": [BLOCK1, BLOCK2]})
    fab.apply(vpc.bgp.update(NEIGHBORS, routes, PORTS))
    [(sw, port, pkt)] = routed(fab, "10.244.0.70")
    assert (sw, port) == ("vpc2", "vpc2-node2")
    assert (pkt["eth_src"], pkt["eth_dst"], pkt["ttl"]) == (GW_B, NODE2, 63)
    [(sw, port, pkt)] = routed(fab, "10.244.0.5")
    assert (sw, port, pkt["eth_dst"]) == ("vpc1", "vpc1-node1", NODE1)
    # node2 failed: its session dropped, its block withdrawn
    fab.apply(vpc.bgp.update(NEIGHBORS[:1], routes[:1], PORTS))
    assert routed(fab, "10.244.0.70") == []
    assert [(sw, port) for sw, port, _ in routed(fab, "10.244.0.5")] == [("vpc1", "vpc1-node1")]


def test_host_routes_win_over_a_learned_prefix_that_covers_them():
    vpc = Vpc(parse_fabric(fabric_dict()))
    fab = FakeFabric(vpc, PORTS)
    cover = BgpRoute("192.168.0.0/16", "192.168.1.10", "node2")
    fab.apply(vpc.bgp.update([], [cover], PORTS))
    [(sw, port, _)] = routed(fab, "192.168.0.10")            # node1's own /32
    assert (sw, port) == ("vpc1", "vpc1-node1")


def test_a_moved_block_is_rerouted_and_a_full_program_has_the_learned_routes():
    vpc = Vpc(parse_fabric(fabric_dict()))
    _, routes = parse_bgp(vpc.fabric, {"routes": [BLOCK1]})
    vpc.bgp.update([], routes, PORTS)
    _, moved = parse_bgp(vpc.fabric, {"routes": [dict(BLOCK1, next_hop="192.168.1.10")]})
    fab = FakeFabric(vpc, PORTS)                             # programmed in full
    assert [(s, p) for s, p, _ in routed(fab, "10.244.0.1")] == [("vpc1", "vpc1-node1")]
    fab.apply(vpc.bgp.update([], moved, PORTS))
    assert [(s, p) for s, p, _ in routed(fab, "10.244.0.1")] == [("vpc2", "vpc2-node2")]
    assert vpc.bgp.update([], moved, PORTS) == {}            # nothing changed: no messages


@pytest.mark.parametrize("body, error", [
    ({"routes": [dict(BLOCK1, next_hop="203.0.113.10")]}, "is not a node's address"),
    ({"routes": [dict(BLOCK1, prefix="10.244.0.1/26")]}, "host bits set"),
    ({"routes": [{"prefix": "10.244.0.0/26"}]}, "next_hop"),
    ({"neighbors": "up"}, "expected a list"),
])
def test_bad_bodies_are_refused(body, error):
    with pytest.raises(ConfigError, match=error):
        parse_bgp(parse_fabric(fabric_dict()), body)


def test_rest_put_and_get():
    app = service()
    status, view = call(app, "PUT", "/v1/bgp", {"neighbors": NEIGHBORS, "routes": [BLOCK2]})
    assert status == 200 and view["updates"] == 1
    assert [(r["prefix"], r["node"]) for r in view["routes"]] == [("10.244.0.64/26", "node2")]
    assert sent(app)                                        # flows went to the switches
    status, got = call(app, "GET", "/v1/bgp")
    assert status == 200 and got["neighbors"] == NEIGHBORS and got["routes"] == view["routes"]
    _, rows = call(app, "GET", "/v1/routes")
    assert {"prefix": "10.244.0.64/26", "kind": "bgp", "via": "node2"}.items() <= rows[-1].items()
    status, err = call(app, "PUT", "/v1/bgp", {"routes": [dict(BLOCK2, next_hop="1.2.3.4")]})
    assert status == 400 and "next_hop" in err["error"]
