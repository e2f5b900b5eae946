"""Load balancers created and removed while the controller runs (POST /v1/lbs, DELETE
/v1/lbs/<lb>): what `cnlb service apply | set | delete` asks of the VPC when a Service turns
LoadBalancer, changes its listeners or goes away. Packets walk a FakeFabric."""

import json

import pytest
import webob

from controllers.config import ConfigError, parse_fabric, parse_new_load_balancer
from controllers.rest import RestApi
from controllers.service import VpcService
from controllers.vpc import Vpc

from .fakeswitch import FakeDatapath, FakeFabric
from .test_lb_cloud import backend_of, healthy
from .vpc_fixtures import LB0, PORTS, fabric_dict, make

VIP2 = "198.51.100.11"


def entry(name="api", vip=VIP2, port=8000, protocol="tcp", **more):
    """A load_balancers[] entry of fabric.json: node1 and node2 on NodePort 30001."""
    return {"name": name, "vip": vip, "port": port, "protocol": protocol,
            "target_mode": "nodeport", "preserve_client_ip": True,
            "backends": [{"name": "node1", "ip": "192.168.0.10", "port": 30001},
                         {"name": "node2", "ip": "192.168.1.10", "port": 30001}],
            "health_check": {"port": None, "path": "/healthz", "interval_s": 1.0,
                             "timeout_s": 0.5, "healthy_threshold": 2,
                             "unhealthy_threshold": 2}, **more}


def to(fab, vip, dport, src="203.0.113.20", sport=41000):
    """Where a client's packet to vip:dport goes: (ip, port), or None when dropped."""
    from .test_lb_cloud import CLIENT1, GW_NET, ip_pkt
    out = fab.walk("vpc0", "vpc0-client1", ip_pkt(CLIENT1, GW_NET, src, vip, sport=sport,
                                                   dport=dport))
    return (out[0][2]["ipv4_dst"], out[0][2]["tcp_dst"]) if out else None


def arp_answered(fab, vip):
    from .vpc_fixtures import arp_req
    return bool(fab.walk("vpc0", "vpc0-lb0", arp_req(LB0, "198.51.100.2", vip)))


def test_an_lb_added_at_run_time_serves_once_its_backends_are_healthy():
    vpc, fab = make()
    assert to(fab, VIP2, 8000) is None
    lb = parse_new_load_balancer(vpc.fabric, entry())
    assert lb.index == 2                       # after web's: its own group and reg0 tag
    fab.apply(vpc.add_lb(lb, PORTS))
    assert to(fab, VIP2, 8000) is None         # initial: checked first, as a new target group
    healthy(vpc, fab, lb="api")
    assert to(fab, VIP2, 8000) in {("192.168.0.10", 30001), ("192.168.1.10", 30001)}
    assert backend_of(fab, "203.0.113.20", 41000, dport=80)[1] == 30080   # web is untouched
    assert arp_answered(fab, VIP2)
    assert [t["port"] for t in vpc.checker_targets()].count(30001) == 2


def test_a_removed_lb_answers_nothing_and_its_vip_is_free_again():
    vpc, fab = make()
    fab.apply(vpc.add_lb(parse_new_load_balancer(vpc.fabric, entry()), PORTS))
    healthy(vpc, fab, lb="api")
    fab.apply(vpc.remove_lb("api", PORTS))
    assert to(fab, VIP2, 8000) is None and not arp_answered(fab, VIP2)
    assert "api" not in vpc.balancer.backends and vpc.fabric.lb("api") is None
    assert all(t["port"] != 30001 for t in vpc.checker_targets())
    assert backend_of(fab, "203.0.113.20", 41000, dport=80)[1] == 30080
    # a switch programmed in full from now on has no trace of it either
    assert to(FakeFabric(vpc, PORTS), VIP2, 8000) is None
    fab.apply(vpc.add_lb(parse_new_load_balancer(vpc.fabric, entry(port=8001)), PORTS))
    healthy(vpc, fab, lb="api")
    assert to(fab, VIP2, 8001) is not None


def test_removing_one_listener_of_a_vip_keeps_the_others_answering():
    vpc, fab = make()
    for e in (entry(), entry(name="api:dns", port=53)):
        fab.apply(vpc.add_lb(parse_new_load_balancer(vpc.fabric, e), PORTS))
        healthy(vpc, fab, lb=e["name"])
    fab.apply(vpc.remove_lb("api:dns", PORTS))     # its ARP and uplink flows were shared
    assert to(fab, VIP2, 53) is None and to(fab, VIP2, 8000) is not None
    assert arp_answered(fab, VIP2)
    # from a node's subnet too: the uplink toward the core still carries the VIP
    from .vpc_fixtures import GW_A, NODE3, ip_pkt
    out = fab.walk("vpc1", "vpc1-node3", ip_pkt(NODE3, GW_A, "192.168.0.11", VIP2, dport=8000))
    assert out and out[0][2]["tcp_dst"] == 30001


def test_sticky_and_udp_lbs_come_and_go_with_their_slots():
    vpc, fab = make()
    for e in (entry(session_affinity="client_ip"), entry(name="dns", port=53, protocol="udp")):
        lb = parse_new_load_balancer(vpc.fabric, e)
        fab.apply(vpc.add_lb(lb, PORTS))
        healthy(vpc, fab, lb=lb.name)
    assert vpc.balancer.selection.kind(vpc.fabric.lb("api")) == "client_ip_slots"
    assert to(fab, VIP2, 8000) is not None
    for name in ("api", "dns"):
        fab.apply(vpc.remove_lb(name, PORTS))
    assert not vpc.balancer.selection.sticky and not vpc.balancer.selection.slots
    assert not [f for f in fab.sw["vpc0"].table(9) if f[1]]   # no slot flow left in lb_pick
    assert to(fab, VIP2, 8000) is None


def test_a_new_lb_may_not_take_a_name_or_a_listener_in_use():
    fabric = parse_fabric(fabric_dict())
    with pytest.raises(ConfigError, match="lb 'web' exists"):
        parse_new_load_balancer(fabric, entry(name="web"))
    with pytest.raises(ConfigError, match="already lb web's listener"):
        parse_new_load_balancer(fabric, entry(vip="198.51.100.10", port=80))
    with pytest.raises(ConfigError, match="lb.vip"):
        parse_new_load_balancer(fabric, entry(vip="nope"))


def call(svc, method, path, body=None):
    req = webob.Request.blank(path, method=method)
    if body is not None:
        req.body = json.dumps(body).encode()
    res = req.get_response(RestApi(svc))
    return res.status_int, json.loads(res.body)


def test_rest_creates_and_deletes_lbs():
    svc = VpcService(Vpc(parse_fabric(fabric_dict())))
    for i, (name, st) in enumerate(svc.switches.items()):
        st.dp, st.connected, st.ports = FakeDatapath(i + 1), True, PORTS[name]
    status, row = call(svc, "POST", "/v1/lbs", entry())
    assert status == 201 and (row["name"], row["vip"], row["backends"]) == ("api", VIP2, 2)
    assert call(svc, "POST", "/v1/lbs", entry())[0] == 400          # exists already
    assert [r["name"] for r in call(svc, "GET", "/v1/lbs")[1]] == ["web", "api"]
    assert call(svc, "GET", "/v1/lbs/api/backends")[0] == 200
    svc.timers[("api", "192.168.0.10", 30001)] = None   # a pending action goes with its LB
    assert call(svc, "DELETE", "/v1/lbs/api") == (200, {"deleted": "api"})
    assert not svc.timers
    assert call(svc, "DELETE", "/v1/lbs/api")[0] == 404
    assert call(svc, "GET", "/v1/lbs/api/backends")[0] == 404
