"""The cloud LB as a cloud's LB behaves: client-IP affinity, connection draining and the
controller's lags, in-VPC clients of an LB whose address is a hostname, UDP listeners, and
several listeners on one VIP.

The core's messages go through FakeSwitch (tests/unit/fakeswitch.py); the timed actions through
a VpcService with fake datapaths and a fake clock, what it sends applied to a FakeFabric.
"""

import json

import pytest
import webob

from controllers.config import Backend, ConfigError, parse_fabric
from controllers.health import CheckResult
from controllers.rest import RestApi
from controllers.selection import STICKY_MIN_SLOTS, StickyTable, sticky_slots
from controllers.service import VpcService
from controllers.vpc import Vpc

from .fakeswitch import FakeDatapath, FakeFabric
from .vpc_fixtures import CLIENT1, GW_A, GW_NET, NODE1, NODE3, PORTS, VIP, fabric_dict, ip_pkt

WEB0, WEB1 = ("192.168.0.100", 8080), ("192.168.1.100", 8080)


def lb_dict(mode="container-native", **lb):
    d = fabric_dict(mode)
    d["load_balancers"][0].update(lb)
    return d


def healthy(vpc, fab, keys=None, lb="web"):
    keys = keys if keys is not None else list(vpc.balancer.backends[lb])
    results = [CheckResult(lb, ip, port, True, {}) for _ in range(2) for ip, port in keys]
    fab.apply(vpc.observe_results(results, PORTS))


def unhealthy(vpc, fab, key, lb="web"):
    fab.apply(vpc.observe_results([CheckResult(lb, *key, False, {})] * 2, PORTS))


def from_client(fab, src, sport, dport=80, proto=6, payload=None):
    """A packet from an internet client (any address behind client1's port) to the VIP; returns
    (where it left, the packet) or None if it was dropped."""
    pkt = ip_pkt(CLIENT1, GW_NET, src, VIP, sport=sport, dport=dport)
    if proto == 17:
        pkt = dict(pkt, ip_proto=17, udp_src=pkt.pop("tcp_src"), udp_dst=pkt.pop("tcp_dst"))
    out = fab.walk("vpc0", "vpc0-client1", pkt)
    return out[0] if out else None


def backend_of(fab, src, sport, **kw):
    hit = from_client(fab, src, sport, **kw)
    if hit is None:
        return None
    _, _, p = hit
    l4 = "udp_dst" if "udp_dst" in p else "tcp_dst"
    return (p["ipv4_dst"], p[l4])


CLIENTS = [f"203.0.113.{i}" for i in range(20, 60)]


# ---- client-IP affinity -----------------------------------------------------------------------

def test_with_client_ip_affinity_a_client_always_reaches_the_same_backend():
    vpc = Vpc(parse_fabric(lb_dict(session_affinity="client_ip")))
    fab = FakeFabric(vpc, PORTS)
    healthy(vpc, fab)
    picks = {c: {backend_of(fab, c, sport) for sport in range(41000, 41012)} for c in CLIENTS}
    assert all(len(p) == 1 for p in picks.values()), picks
    assert {p.pop() for p in picks.values()} == {WEB0, WEB1}
    [row] = vpc.lbs_view()
    assert (row["session_affinity"], row["selection"], row["slots"]) == \
        ("client_ip", "client_ip_slots", STICKY_MIN_SLOTS)


def test_without_affinity_one_client_spreads_over_the_backends():
    vpc = Vpc(parse_fabric(lb_dict()))
    fab = FakeFabric(vpc, PORTS)
    healthy(vpc, fab)
    assert {backend_of(fab, "203.0.113.20", s) for s in range(41000, 41040)} == {WEB0, WEB1}
    assert vpc.lbs_view()[0]["selection"] == "select_group"


def test_affinity_survives_another_backend_leaving_and_moves_only_the_leavers_clients():
    d = lb_dict(session_affinity="client_ip")
    d["load_balancers"][0]["backends"].append({"name": "web-2", "ip": "192.168.0.101",
                                               "port": 8080})
    d["pod_routes"].append({"pod": "web-2", "ip": "192.168.0.101", "node": "node3"})
    vpc = Vpc(parse_fabric(d))
    fab = FakeFabric(vpc, PORTS)
    healthy(vpc, fab)
    before = {c: backend_of(fab, c, 41000) for c in CLIENTS}
    assert set(before.values()) == {WEB0, WEB1, ("192.168.0.101", 8080)}
    unhealthy(vpc, fab, WEB1)
    after = {c: backend_of(fab, c, 42000) for c in CLIENTS}
    assert all(after[c] == before[c] for c in CLIENTS if before[c] != WEB1)
    assert WEB1 not in after.values()
    healthy(vpc, fab, [WEB1])               # it comes back and takes a share again
    assert WEB1 in {backend_of(fab, c, 43000) for c in CLIENTS}


def test_affinity_with_more_than_1023_backends_uses_the_same_client_ip_slots():
    d = lb_dict("nodeport", session_affinity="client_ip")
    d["load_balancers"][0]["backends"] = [
        {"name": f"b{i}", "ip": ("192.168.0.10", "192.168.1.10")[i % 2], "port": 1024 + i // 2}
        for i in range(1100)]
    vpc = Vpc(parse_fabric(d), checks_enabled=False)
    fab = FakeFabric(vpc, PORTS)
    [row] = vpc.lbs_view()
    assert (row["selection"], row["slots"], row["in_service"]) == ("client_ip_slots", 8192, 1100)
    for c in CLIENTS[:10]:
        assert len({backend_of(fab, c, s) for s in range(41000, 41006)}) == 1


def test_no_backend_in_service_drops_new_connections_of_an_affinity_lb():
    vpc = Vpc(parse_fabric(lb_dict(session_affinity="client_ip")))
    fab = FakeFabric(vpc, PORTS)
    assert backend_of(fab, "203.0.113.20", 41000) is None
    healthy(vpc, fab)
    assert backend_of(fab, "203.0.113.20", 41001) in (WEB0, WEB1)


def test_a_sticky_table_keeps_shares_within_one_and_moves_only_what_it_must():
    t = StickyTable()
    t.grow(256)
    keys = [("10.0.0.1", p) for p in range(1, 6)]
    assert len(t.update(keys)) == 256
    counts = [t.keys.count(k) for k in keys]
    assert max(counts) - min(counts) <= 1
    before = list(t.keys)
    changed = t.update(keys[1:])                  # the first leaves: only its slots move
    assert changed == {i for i, k in enumerate(before) if k == keys[0]}
    counts = [t.keys.count(k) for k in keys[1:]]
    assert max(counts) - min(counts) <= 1
    before = list(t.keys)
    assert t.grow(512) == set(range(256, 512)) and t.keys == before + before
    joined = t.update(keys)                       # back: takes its share from the others
    assert all(t.keys[i] == keys[0] for i in joined)
    assert max(t.keys.count(k) for k in keys) - min(t.keys.count(k) for k in keys) <= 1


def test_sticky_slots_are_a_power_of_two_with_four_per_backend():
    assert [sticky_slots(n) for n in (0, 2, 64, 65, 1100, 20000)] == \
        [256, 256, 256, 512, 8192, 65536]


# ---- connection draining and the controller's lags ------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Harness:
    """A VpcService with every switch connected to a FakeDatapath, a fake clock, and a
    FakeFabric that receives what the service sends."""

    def __init__(self, d):
        self.clock = Clock()
        self.svc = VpcService(Vpc(parse_fabric(d)), clock=self.clock)
        for i, (name, st) in enumerate(self.svc.switches.items()):
            st.dp, st.connected, st.ports = FakeDatapath(i + 1), True, PORTS[name]
        self.fab = FakeFabric(self.svc.vpc, PORTS)
        self.seen = {name: 0 for name in PORTS}

    def sync(self):
        for name, st in self.svc.switches.items():
            self.fab.sw[name].apply(st.dp.sent[self.seen[name]:])
            self.seen[name] = len(st.dp.sent)

    def tick(self, seconds):
        self.clock.now += seconds
        self.svc.on_tick()
        self.sync()

    def healthy(self, keys=None):
        keys = keys if keys is not None else list(self.svc.vpc.balancer.backends["web"])
        self.svc.on_health_results([{"id": f"web/{ip}:{port}", "ok": True}
                                    for _ in range(2) for ip, port in keys])
        self.sync()


def test_a_deregistered_backend_drains_its_connections_then_they_are_cut():
    h = Harness(lb_dict(deregistration_delay_s=30))
    h.healthy()
    sport = next(s for s in range(41000, 41100) if backend_of(h.fab, "203.0.113.20", s) == WEB0)
    h.svc.remove_backend("web", *WEB0)
    h.sync()
    # No new connection goes to it; the established one still does.
    assert {backend_of(h.fab, "203.0.113.20", s) for s in range(42000, 42020)} == {WEB1}
    assert backend_of(h.fab, "203.0.113.20", sport) == WEB0
    [row] = [r for r in h.svc.backends_view("web") if (r["ip"], r["port"]) == WEB0]
    assert row["state"] == "draining" and row["pending"] == {"action": "cut", "in_s": 30.0}
    h.tick(29)
    assert backend_of(h.fab, "203.0.113.20", sport) == WEB0
    h.tick(2)
    assert backend_of(h.fab, "203.0.113.20", sport) is None          # cut: dropped
    assert WEB0 not in {(r["ip"], r["port"]) for r in h.svc.backends_view("web")}
    assert backend_of(h.fab, "203.0.113.20", 43000) == WEB1          # the LB still serves
    # Registered again: its new connections are not dropped.
    h.svc.add_backend("web", Backend("web-0", *WEB0))
    h.sync()
    h.healthy([WEB0])
    s = next(s for s in range(44000, 44100) if backend_of(h.fab, "203.0.113.20", s) == WEB0)
    assert backend_of(h.fab, "203.0.113.20", s) == WEB0


def test_a_zero_drain_cuts_at_once_and_the_lbs_delay_is_the_default():
    h = Harness(lb_dict())
    assert h.svc.vpc.lbs_view()[0]["deregistration_delay_s"] == 300.0
    h.healthy()
    sport = next(s for s in range(41000, 41100) if backend_of(h.fab, "203.0.113.20", s) == WEB1)
    h.svc.remove_backend("web", *WEB1, drain_s=0)
    h.sync()
    assert backend_of(h.fab, "203.0.113.20", sport) is None
    assert h.svc.timers == {}


def test_registration_and_deregistration_wait_for_their_lag():
    h = Harness(lb_dict())
    h.healthy()
    web2 = Backend("web-2", "192.168.0.101", 8080)
    h.svc.add_backend("web", web2, after_s=5)
    h.sync()
    assert ("192.168.0.101", 8080) not in h.svc.vpc.balancer.backends["web"]
    [row] = [r for r in h.svc.backends_view("web") if r["name"] == "web-2"]
    assert row["state"] == "pending" and row["pending"] == {"action": "register", "in_s": 5.0}
    h.tick(5)
    assert ("192.168.0.101", 8080) in h.svc.vpc.balancer.backends["web"]
    h.svc.remove_backend("web", *WEB0, after_s=10, drain_s=0)
    h.tick(9)
    assert WEB0 in {backend_of(h.fab, "203.0.113.20", s) for s in range(41000, 41040)}
    h.tick(1)
    assert WEB0 not in {backend_of(h.fab, "203.0.113.20", s) for s in range(42000, 42040)}


def test_a_later_action_replaces_a_pending_one():
    h = Harness(lb_dict())
    web2 = Backend("web-2", "192.168.0.101", 8080)
    h.svc.add_backend("web", web2, after_s=5)
    h.svc.remove_backend("web", web2.ip, web2.port)      # before it happened: never happens
    h.tick(10)
    assert ("192.168.0.101", 8080) not in h.svc.vpc.balancer.backends["web"]
    with pytest.raises(KeyError):
        h.svc.remove_backend("web", web2.ip, web2.port)
    with pytest.raises(KeyError):
        h.svc.add_backend("nope", web2)


def call(svc, method, path, body=None):
    req = webob.Request.blank(path, method=method)
    if body is not None:
        req.body = json.dumps(body).encode()
    res = req.get_response(RestApi(svc))
    return res.status_int, json.loads(res.body)


def test_rest_takes_after_s_and_drain_s():
    h = Harness(lb_dict())
    status, row = call(h.svc, "POST", "/v1/lbs/web/backends",
                       {"name": "web-2", "ip": "192.168.0.101", "port": 8080, "after_s": 2})
    assert status == 202 and row["state"] == "pending"
    h.tick(2)
    assert call(h.svc, "GET", "/v1/lbs/web/backends")[1][-1]["state"] == "initial"
    status, body = call(h.svc, "DELETE", "/v1/lbs/web/backends/192.168.0.100/8080?drain_s=0")
    assert status == 200 and body["deleted"]["drain_s"] == 0
    assert call(h.svc, "DELETE", "/v1/lbs/web/backends/192.168.1.100/8080?after_s=x")[0] == 400
    status, _ = call(h.svc, "DELETE", "/v1/lbs/web/backends/192.168.1.100/8080?after_s=3")
    assert status == 202
    assert call(h.svc, "POST", "/v1/lbs/web/backends",
                {"ip": "192.168.0.102", "port": 8080, "after_s": -1})[0] == 400


# ---- an LB whose address is a hostname: clients inside the VPC --------------------------------

def hostname_vpc(address="hostname"):
    d = lb_dict(address=address)
    d["pod_routes"].append({"pod": "cli", "ip": "192.168.0.150", "node": "node3"})
    vpc = Vpc(parse_fabric(d))
    fab = FakeFabric(vpc, PORTS)
    healthy(vpc, fab)
    return vpc, fab


def test_a_pod_calls_the_vip_through_the_lb_and_gets_its_answer_from_the_vip():
    _, fab = hostname_vpc()
    # The client pod lives on node3 (az-a, with web-0's node1 on the same switch).
    for sport in range(41000, 41040):
        out = fab.walk("vpc1", "vpc1-node3",
                       ip_pkt(NODE3, GW_A, "192.168.0.150", VIP, sport=sport))
        [(_, port, p)] = out
        if (p["ipv4_dst"], p["tcp_dst"]) == WEB0:
            break
    assert port == "vpc1-node1" and p["ipv4_src"] == "192.168.0.150"
    # web-0 answers the pod's address; node1 ARPed it (node3's MAC): the VPC sends it through
    # the core, where it leaves as the VIP's answer.
    reply = ip_pkt(NODE1, NODE3, *WEB0[:1], "192.168.0.150", sport=8080, dport=sport)
    [(sw, port, r)] = fab.walk("vpc1", "vpc1-node1", reply)
    assert (sw, port) == ("vpc1", "vpc1-node3")
    assert (r["ipv4_src"], r["tcp_src"], r["ipv4_dst"]) == (VIP, 80, "192.168.0.150")


def test_with_an_ip_address_replies_inside_a_subnet_stay_there():
    # The picture an "ip" LB leaves (kube-proxy answers the VIP on the nodes): no detour.
    _, fab = hostname_vpc("ip")
    reply = ip_pkt(NODE1, NODE3, *WEB0[:1], "192.168.0.150", sport=8080, dport=41000)
    [(sw, port, r)] = fab.walk("vpc1", "vpc1-node1", reply)
    assert (sw, port, r["ipv4_src"]) == ("vpc1", "vpc1-node3", WEB0[0])


def test_a_backend_registered_later_gets_its_reply_redirect_on_the_subnet_switches():
    vpc, fab = hostname_vpc()
    msgs = vpc.add_backend("web", Backend("web-2", "192.168.0.101", 8080), PORTS)
    assert {"vpc1", "vpc2"} <= set(msgs)
    fab.apply(msgs)
    healthy(vpc, fab, [("192.168.0.101", 8080)])
    reply = ip_pkt(NODE3, NODE1, "192.168.0.101", "192.168.0.10", sport=8080, dport=41000)
    [(sw, port, r)] = fab.walk("vpc1", "vpc1-node3", reply)
    assert (sw, port) == ("vpc1", "vpc1-node1")       # through the core, no loop


# ---- UDP, and several listeners on one VIP ------------------------------------------------

def test_a_udp_lb_balances_and_un_nats_udp():
    d = lb_dict(protocol="udp", port=53)
    vpc = Vpc(parse_fabric(d))
    fab = FakeFabric(vpc, PORTS)
    healthy(vpc, fab)
    picks = {backend_of(fab, "203.0.113.20", s, dport=53, proto=17) for s in range(41000, 41040)}
    assert picks == {WEB0, WEB1}                     # one client's datagrams spread by port
    assert vpc.lbs_view()[0]["selection"] == "hash_slots"      # a group would not hash them
    assert backend_of(fab, "203.0.113.20", 41000, dport=80) is None      # TCP 80: not a listener
    _, _, p = from_client(fab, "203.0.113.10", 45000, dport=53, proto=17)   # client1's own
    node = NODE1 if p["ipv4_dst"] == WEB0[0] else "02:cb:01:00:00:02"
    sw, port = ("vpc1", "vpc1-node1") if node == NODE1 else ("vpc2", "vpc2-node2")
    reply = dict(ip_pkt(node, GW_A if node == NODE1 else "02:cb:fe:00:00:02", p["ipv4_dst"],
                        "203.0.113.10"), ip_proto=17, udp_src=8080, udp_dst=45000)
    del reply["tcp_src"], reply["tcp_dst"]
    [(_, out, r)] = fab.walk(sw, port, reply)
    assert (out, r["ipv4_src"], r["udp_src"]) == ("vpc0-client1", VIP, 53)


def test_a_udp_backends_flows_are_flushed_when_its_draining_ends():
    """The client's next datagram must be a new flow (to a registered target), not one that
    the cut backend's conntrack entry keeps dropping; a TCP LB's cut needs no flush."""
    h = Harness(lb_dict(protocol="udp", port=53, deregistration_delay_s=5))
    ran: list[list[str]] = []
    h.svc.run_command = ran.append
    h.svc.remove_backend("web", *WEB0)
    h.tick(4)
    assert ran == []                                  # still draining
    h.tick(1)
    assert ran == [["ovs-ofctl", "-O", "OpenFlow13", "ct-flush", "vpc0", "zone=3249", "",
                    f"ct_nw_src={WEB0[0]},ct_nw_proto=17,ct_tp_src={WEB0[1]}"]]
    t = Harness(lb_dict(deregistration_delay_s=0))
    t.svc.run_command = ran.append
    t.svc.remove_backend("web", *WEB0)
    assert len(ran) == 1


def test_two_listeners_share_a_vip_and_one_listener_is_refused_twice():
    d = lb_dict()
    second = dict(d["load_balancers"][0], name="web:metrics", port=9090,
                  backends=[{"name": "web-0", "ip": "192.168.0.100", "port": 9100}])
    d["load_balancers"].append(second)
    vpc = Vpc(parse_fabric(d))
    fab = FakeFabric(vpc, PORTS)
    healthy(vpc, fab)
    healthy(vpc, fab, lb="web:metrics")
    assert backend_of(fab, "203.0.113.20", 41000, dport=9090) == ("192.168.0.100", 9100)
    assert backend_of(fab, "203.0.113.20", 41000, dport=80) in (WEB0, WEB1)
    d["load_balancers"][1]["port"] = 80
    with pytest.raises(ConfigError, match="already lb web's listener"):
        parse_fabric(d)


@pytest.mark.parametrize("field, value", [("session_affinity", "ClientIP"),
                                          ("address", "dns"),
                                          ("deregistration_delay_s", -1)])
def test_bad_lb_fields_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        parse_fabric(lb_dict(**{field: value}))
