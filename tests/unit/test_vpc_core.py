"""The VPC controller core, tested without a switch.

The messages the core returns are loaded into FakeSwitch (tests/unit/fakeswitch.py), a small
model of an OpenFlow 1.3 pipeline, and the tests assert where a packet goes and how it looks
when it gets there.
"""

import copy
import struct

import pytest
from os_ken.lib.packet import ethernet, icmp, ipv4, packet, tcp
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers import openflow as of
from controllers.config import Backend, ConfigError, HealthCheck, PodRoute, parse_fabric
from controllers.health import CheckResult, Health, observe
from controllers.icmp import ICMP_QUOTE_MAX
from controllers.topology import identify_switch
from controllers.vpc import Vpc

from .fakeswitch import FakeSwitch
from .vpc_fixtures import (
    CLIENT1,
    GW_A,
    GW_B,
    GW_NET,
    NODE1,
    NODE2,
    NODE3,
    PORTS,
    VIP,
    arp_req,
    fabric_dict,
    ip_pkt,
    make,
)

# ----------------------------------------------------------------------------------------------
# ARP
# ----------------------------------------------------------------------------------------------

def test_arp_for_gateway_is_answered_with_its_mac_out_the_asking_port():
    _, fab = make()
    [(sw, port, reply)] = fab.walk("vpc1", "vpc1-node1", arp_req(NODE1, "192.168.0.10",
                                                                   "192.168.0.1"))
    assert (sw, port) == ("vpc1", "vpc1-node1")
    assert reply["arp_op"] == 2
    assert (reply["eth_src"], reply["eth_dst"]) == (GW_A, NODE1)
    assert (reply["arp_sha"], reply["arp_spa"]) == (GW_A, "192.168.0.1")
    assert (reply["arp_tha"], reply["arp_tpa"]) == (NODE1, "192.168.0.10")


def test_arp_for_same_subnet_host_is_answered_other_subnets_are_not():
    _, fab = make()
    [(_, port, reply)] = fab.walk("vpc1", "vpc1-node1",
                                  arp_req(NODE1, "192.168.0.10", "192.168.0.11"))
    assert port == "vpc1-node1" and reply["arp_sha"] == NODE3
    # node2 is in az-b: node1 would route, not ARP; the VPC does not answer (nor flood).
    assert fab.walk("vpc1", "vpc1-node1", arp_req(NODE1, "192.168.0.10", "192.168.1.10")) == []
    assert fab.walk("vpc1", "vpc1-node1", arp_req(NODE1, "192.168.0.10", "192.168.0.99")) == []


def test_client_arps_its_internet_gateway_on_the_core():
    _, fab = make()
    [(sw, port, reply)] = fab.walk("vpc0", "vpc0-client1",
                                   arp_req(CLIENT1, "203.0.113.10", "203.0.113.1"))
    assert (sw, port, reply["arp_sha"]) == ("vpc0", "vpc0-client1", GW_NET)


# ----------------------------------------------------------------------------------------------
# Routing and bridging
# ----------------------------------------------------------------------------------------------

def test_node_to_node_in_another_subnet_is_routed_once():
    _, fab = make()
    [(sw, port, p)] = fab.walk("vpc1", "vpc1-node1",
                               ip_pkt(NODE1, GW_A, "192.168.0.10", "192.168.1.10", ttl=64))
    assert (sw, port) == ("vpc2", "vpc2-node2")
    assert p["ttl"] == 63
    assert (p["eth_src"], p["eth_dst"]) == (GW_B, NODE2)
    assert (p["ipv4_src"], p["ipv4_dst"]) == ("192.168.0.10", "192.168.1.10")


def test_routed_frame_takes_the_right_port_on_each_switch():
    vpc, fab = make()
    frame = ip_pkt(NODE1, GW_A, "192.168.0.10", "192.168.1.10")
    [(p1, a)] = fab.sw["vpc1"].process(copy.deepcopy(frame), PORTS["vpc1"]["vpc1-node1"])
    assert p1 == PORTS["vpc1"]["vpc1-up"]
    [(p0, b)] = fab.sw["vpc0"].process(copy.deepcopy(a), PORTS["vpc0"]["vpc0-az-a"])
    assert p0 == PORTS["vpc0"]["vpc0-az-b"] and b["ttl"] == a["ttl"] == 63
    [(p2, _)] = fab.sw["vpc2"].process(copy.deepcopy(b), PORTS["vpc2"]["vpc2-up"])
    assert p2 == PORTS["vpc2"]["vpc2-node2"]


def test_same_subnet_frames_are_bridged_not_routed():
    _, fab = make()
    [(sw, port, p)] = fab.walk("vpc1", "vpc1-node1",
                               ip_pkt(NODE1, NODE3, "192.168.0.10", "192.168.0.11", ttl=64))
    assert (sw, port) == ("vpc1", "vpc1-node3")
    assert p["ttl"] == 64 and (p["eth_src"], p["eth_dst"]) == (NODE1, NODE3)


def test_unknown_destinations_are_dropped_not_flooded():
    _, fab = make()
    assert fab.walk("vpc1", "vpc1-node1",
                    ip_pkt(NODE1, "02:00:00:00:00:99", "192.168.0.10", "192.168.0.11")) == []
    assert fab.walk("vpc1", "vpc1-node1", ip_pkt(NODE1, GW_A, "192.168.0.10", "10.9.9.9")) == []


def test_ttl_expiry_goes_to_the_controller():
    _, fab = make()
    [(sw, port, p)] = fab.walk("vpc0", "vpc0-client1",
                               ip_pkt(CLIENT1, GW_NET, "203.0.113.10", "192.168.1.10", ttl=1))
    assert (sw, port) == ("vpc0", "controller") and p["ttl"] == 1


# ----------------------------------------------------------------------------------------------
# Pods
# ----------------------------------------------------------------------------------------------

def test_container_native_pod_ip_is_reached_via_its_node():
    vpc, fab = make("container-native")
    [(sw, port, p)] = fab.walk("vpc0", "vpc0-client1",
                               ip_pkt(CLIENT1, GW_NET, "203.0.113.10", "192.168.1.100", ttl=64))
    assert (sw, port) == ("vpc2", "vpc2-node2")
    assert (p["eth_src"], p["eth_dst"], p["ttl"]) == (GW_B, NODE2, 63)
    # A same-subnet asker gets the node's MAC for the pod IP.
    [(_, _, reply)] = fab.walk("vpc1", "vpc1-node3",
                               arp_req(NODE3, "192.168.0.11", "192.168.0.100"))
    assert reply["arp_sha"] == NODE1


def test_nodeport_mode_has_no_pod_routes():
    vpc, fab = make("nodeport")
    assert fab.walk("vpc0", "vpc0-client1",
                    ip_pkt(CLIENT1, GW_NET, "203.0.113.10", "10.244.1.5")) == []
    assert [r for r in vpc.routes_view() if r["kind"] == "pod"] == []
    with pytest.raises(ConfigError, match="unknown to the VPC in nodeport mode"):
        vpc.add_pod(PodRoute("web-9", "10.244.1.5", "node1"), PORTS)


def test_pod_route_add_and_remove():
    vpc, fab = make("container-native")
    pod = PodRoute("web-2", "192.168.0.102", "node3")
    fab.apply(vpc.add_pod(pod, PORTS))
    frame = ip_pkt(NODE2, GW_B, "192.168.1.10", "192.168.0.102")
    [(sw, port, p)] = fab.walk("vpc2", "vpc2-node2", frame)
    assert (sw, port, p["eth_dst"]) == ("vpc1", "vpc1-node3", NODE3)
    fab.apply(vpc.remove_pod("web-2", PORTS))
    assert fab.walk("vpc2", "vpc2-node2", frame) == []
    # The other pods' flows are untouched.
    assert fab.walk("vpc2", "vpc2-node2", dict(frame, ipv4_dst="192.168.0.100"))


# ----------------------------------------------------------------------------------------------
# The load balancer
# ----------------------------------------------------------------------------------------------

def _group(fab):
    return fab.sw["vpc0"].groups[1]


def test_vip_group_has_one_bucket_per_healthy_backend():
    vpc, fab = make(healthy=False)
    assert _group(fab) == []                                  # both "initial"
    fab.apply(vpc.observe_health("web", "192.168.0.10", 30080, True, {}, PORTS))
    assert _group(fab) == []                                  # 1 of healthy_threshold=2
    fab.apply(vpc.observe_health("web", "192.168.0.10", 30080, True, {}, PORTS))
    [bucket] = _group(fab)
    [ct] = bucket.actions
    assert ct.flags & nicira_ext.NX_CT_F_COMMIT and ct.zone_ofs_nbits == of.CT_ZONE_DNAT
    assert (ct.actions[0].range_ipv4_min, ct.actions[0].range_proto_min) == ("192.168.0.10",
                                                                             30080)
    for _ in range(2):
        fab.apply(vpc.observe_health("web", "192.168.1.10", 30080, True, {}, PORTS))
    assert len(_group(fab)) == 2


def test_results_read_together_rewrite_the_group_once():
    vpc, fab = make(healthy=False)
    results = [CheckResult("web", ip, 30080, True, {})
               for _ in range(2) for ip in ("192.168.0.10", "192.168.1.10")]
    msgs = vpc.observe_results(results, PORTS)
    [group_mod] = msgs["vpc0"]
    assert isinstance(group_mod, ofpp.OFPGroupMod) and list(msgs) == ["vpc0"]
    fab.apply(msgs)
    assert len(_group(fab)) == 2
    # Still healthy_threshold good checks each: one good result is not enough.
    vpc, fab = make(healthy=False)
    assert vpc.observe_results(results[:2], PORTS) == {}


def test_vip_connection_is_dnated_routed_and_replies_come_back_from_the_vip():
    vpc, fab = make()
    seen = set()
    for sport in range(40000, 40040):
        syn = ip_pkt(CLIENT1, GW_NET, "203.0.113.10", VIP, sport=sport, dport=80, ttl=64)
        [(sw, port, p)] = fab.walk("vpc0", "vpc0-client1", syn)
        assert p["tcp_dst"] == 30080 and p["ttl"] == 63
        assert p["ipv4_src"] == "203.0.113.10"                # client IP preserved
        seen.add((sw, port, p["ipv4_dst"], p["eth_dst"]))
        # The reply, routed by the backend's subnet switch, un-NATed on the core.
        node_mac = p["eth_dst"]
        gw = GW_A if sw == "vpc1" else GW_B
        reply = ip_pkt(node_mac, gw, p["ipv4_dst"], "203.0.113.10", sport=30080, dport=sport)
        [(rsw, rport, r)] = fab.walk(sw, port, reply)
        assert (rsw, rport) == ("vpc0", "vpc0-client1")
        assert (r["ipv4_src"], r["tcp_src"]) == (VIP, 80)
        assert (r["eth_src"], r["eth_dst"]) == (GW_NET, CLIENT1)
        # The same connection's next packet sticks to the same backend.
        [(_, _, again)] = fab.walk("vpc0", "vpc0-client1", syn)
        assert again["ipv4_dst"] == p["ipv4_dst"]
    assert seen == {("vpc1", "vpc1-node1", "192.168.0.10", NODE1),
                    ("vpc2", "vpc2-node2", "192.168.1.10", NODE2)}


def test_removing_a_backend_removes_its_bucket():
    vpc, fab = make()
    assert len(_group(fab)) == 2
    fab.apply(vpc.remove_backend("web", "192.168.1.10", 30080, PORTS))
    [bucket] = _group(fab)
    assert bucket.actions[0].actions[0].range_ipv4_min == "192.168.0.10"
    for sport in range(41000, 41010):
        [(sw, port, _)] = fab.walk("vpc0", "vpc0-client1",
                                   ip_pkt(CLIENT1, GW_NET, "203.0.113.10", VIP, sport=sport))
        assert (sw, port) == ("vpc1", "vpc1-node1")
    fab.apply(vpc.add_backend("web", Backend("node3", "192.168.0.11", 30080), PORTS))
    assert len(_group(fab)) == 1                              # new: "initial" until checked
    for _ in range(2):
        fab.apply(vpc.observe_health("web", "192.168.0.11", 30080, True, {}, PORTS))
    assert len(_group(fab)) == 2


def test_failing_backend_leaves_the_group_and_returns_when_it_recovers():
    vpc, fab = make()
    fab.apply(vpc.observe_health("web", "192.168.0.10", 30080, False, {}, PORTS))
    assert len(_group(fab)) == 2                              # 1 of unhealthy_threshold=2
    fab.apply(vpc.observe_health("web", "192.168.0.10", 30080, False, {"status": 503}, PORTS))
    [bucket] = _group(fab)
    assert bucket.actions[0].actions[0].range_ipv4_min == "192.168.1.10"
    assert vpc.backends_view("web")[0]["state"] == "unhealthy"
    for _ in range(2):
        fab.apply(vpc.observe_health("web", "192.168.0.10", 30080, True, {}, PORTS))
    assert len(_group(fab)) == 2


def test_without_a_checker_backends_are_unchecked_and_in_service():
    vpc, fab = make(checks=False)
    assert len(_group(fab)) == 2
    assert {b["state"] for b in vpc.backends_view("web")} == {"unchecked"}
    assert vpc.checker_targets() == []


def test_checker_targets_use_the_health_check_port_or_the_traffic_port():
    vpc, _ = make()
    assert [(t["ip"], t["port"]) for t in vpc.checker_targets()] == [
        ("192.168.0.10", 30080), ("192.168.1.10", 30080)]
    d = fabric_dict()
    d["load_balancers"][0]["health_check"]["port"] = 31000   # ETP=Local healthCheckNodePort
    vpc = Vpc(parse_fabric(d))
    assert {t["port"] for t in vpc.checker_targets()} == {31000}


def test_container_native_vip_goes_straight_to_the_pod_via_its_node():
    vpc, fab = make("container-native")
    dsts = set()
    for sport in range(42000, 42020):
        [(sw, port, p)] = fab.walk("vpc0", "vpc0-client1",
                                   ip_pkt(CLIENT1, GW_NET, "203.0.113.10", VIP, sport=sport))
        dsts.add((port, p["ipv4_dst"], p["tcp_dst"], p["eth_dst"]))
    assert dsts == {("vpc1-node1", "192.168.0.100", 8080, NODE1),
                    ("vpc2-node2", "192.168.1.100", 8080, NODE2)}


def test_no_preserve_client_ip_snats_to_lb0_and_replies_still_reach_the_client():
    vpc, fab = make(preserve=False)
    syn = ip_pkt(CLIENT1, GW_NET, "203.0.113.10", VIP, sport=45000)
    [(sw, port, p)] = fab.walk("vpc0", "vpc0-client1", syn)
    assert p["ipv4_src"] == "198.51.100.2"
    assert of.SNAT_PORTS[0] <= p["tcp_src"] <= of.SNAT_PORTS[1]
    gw = GW_A if sw == "vpc1" else GW_B
    reply = ip_pkt(p["eth_dst"], gw, p["ipv4_dst"], "198.51.100.2", sport=p["tcp_dst"],
                   dport=p["tcp_src"])
    [(rsw, rport, r)] = fab.walk(sw, port, reply)
    assert (rsw, rport) == ("vpc0", "vpc0-client1")
    assert (r["ipv4_src"], r["tcp_src"], r["ipv4_dst"], r["tcp_dst"]) == (VIP, 80, "203.0.113.10",
                                                                          45000)
    assert (r["eth_src"], r["eth_dst"]) == (GW_NET, CLIENT1)


def test_node_to_vip_goes_up_to_the_core_and_may_come_back_down_the_same_link():
    vpc, fab = make()
    ports = set()
    for sport in range(43000, 43020):
        [(sw, port, p)] = fab.walk("vpc1", "vpc1-node3",
                                   ip_pkt(NODE3, GW_A, "192.168.0.11", VIP, sport=sport))
        ports.add(port)
        assert p["ttl"] == 63
    assert ports == {"vpc1-node1", "vpc2-node2"}


# ----------------------------------------------------------------------------------------------
# ICMP time exceeded
# ----------------------------------------------------------------------------------------------

def _frame(src_mac, dst_mac, src, dst, ttl=1, payload=b"x" * 1200):
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x0800))
    p.add_protocol(ipv4.ipv4(src=src, dst=dst, proto=6, ttl=ttl))
    p.add_protocol(tcp.tcp(src_port=40000, dst_port=80, bits=tcp.TCP_SYN))
    p.add_protocol(payload)
    p.serialize()
    return bytes(p.data)


def test_time_exceeded_comes_from_the_ingress_gateway_and_quotes_576_bytes():
    vpc, _ = make()
    data = _frame(CLIENT1, GW_NET, "203.0.113.10", "192.168.1.10")
    [out] = vpc.time_exceeded("vpc0", 3, data)
    assert isinstance(out, ofpp.OFPPacketOut) and out.in_port == ofp.OFPP_CONTROLLER
    assert [(type(a), a.port) for a in out.actions] == [(ofpp.OFPActionOutput, 3)]
    p = packet.Packet(out.data)
    e, i = p.get_protocol(ethernet.ethernet), p.get_protocol(ipv4.ipv4)
    c = p.get_protocol(icmp.icmp)
    assert (e.src, e.dst) == (GW_NET, CLIENT1)
    assert (i.src, i.dst) == ("203.0.113.1", "203.0.113.10")
    assert (c.type, c.code) == (icmp.ICMP_TIME_EXCEEDED, 0)
    assert len(c.data.data) == ICMP_QUOTE_MAX and i.total_length == 576
    assert c.data.data == data[14:14 + ICMP_QUOTE_MAX]


def test_time_exceeded_for_lb_traffic_goes_back_through_conntrack():
    vpc, _ = make()
    data = _frame(CLIENT1, GW_NET, "203.0.113.10", "192.168.0.10", payload=b"")
    [out] = vpc.time_exceeded("vpc0", 3, data, reg0=1)
    [a] = out.actions
    assert isinstance(a, ofpp.NXActionCT) and a.zone_ofs_nbits == of.CT_ZONE_DNAT
    assert a.recirc_table == of.T_NEXTHOP
    # A short packet is quoted whole.
    c = packet.Packet(out.data).get_protocol(icmp.icmp)
    assert c.data.data == data[14:]


def test_no_icmp_error_about_an_icmp_error():
    vpc, _ = make()
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst=GW_NET, src=CLIENT1, ethertype=0x0800))
    p.add_protocol(ipv4.ipv4(src="203.0.113.10", dst="192.168.0.10", proto=1, ttl=1))
    p.add_protocol(icmp.icmp(type_=icmp.ICMP_DEST_UNREACH, code=3,
                             data=icmp.dest_unreach(data=b"\x45" + b"\0" * 27)))
    p.serialize()
    assert vpc.time_exceeded("vpc0", 3, bytes(p.data)) == []


# ----------------------------------------------------------------------------------------------
# The NXAction padding fix
# ----------------------------------------------------------------------------------------------

def _bucket_bytes(nat_cls, ct_cls):
    nat = nat_cls(flags=of.NX_NAT_F_DST, range_ipv4_min="192.168.0.10", range_proto_min=30080)
    ctact = ct_cls(flags=nicira_ext.NX_CT_F_COMMIT, zone_src="", zone_ofs_nbits=of.CT_ZONE_DNAT,
                   recirc_table=of.T_ROUTE, alg=0, actions=[nat])
    gm = of.select_group(ofp.OFPGC_ADD, 1, [of.Bucket([ctact]), of.Bucket([ctact])])
    gm.serialize()
    return bytes(gm.buf)


def test_padded_nat_in_ct_in_bucket_serializes_to_whole_8_byte_units():
    buf = _bucket_bytes(of.NXActionNATPadded, of.NXActionCTPadded)
    (msg_len,) = struct.unpack_from("!H", buf, 2)
    assert msg_len == len(buf) and len(buf) % 8 == 0
    offset = 16                                              # ofp_header + ofp_group_mod
    for _ in range(2):
        (bucket_len,) = struct.unpack_from("!H", buf, offset)
        ct_off = offset + 16
        ct_type, ct_len = struct.unpack_from("!HH", buf, ct_off)
        nat_off = ct_off + 24
        nat_type, nat_len = struct.unpack_from("!HH", buf, nat_off)
        assert (ct_type, nat_type) == (0xffff, 0xffff)
        assert nat_len == 24 and ct_len == 48 and bucket_len == 16 + 48
        # NAT body: 10 header + 6 (pad, flags, range_present) + 4 ip + 2 port = 22, then 2 zeros.
        assert buf[nat_off + 22:nat_off + 24] == b"\0\0"
        offset += bucket_len
    assert offset == len(buf)


def test_unpadded_os_ken_actions_are_short_which_is_what_ovs_rejects():
    buf = _bucket_bytes(ofpp.NXActionNAT, ofpp.NXActionCT)
    (msg_len,) = struct.unpack_from("!H", buf, 2)
    (bucket_len,) = struct.unpack_from("!H", buf, 16)
    assert 16 + 2 * bucket_len != msg_len                   # buckets claim more than is there


def test_core_buckets_use_the_padded_classes():
    vpc, _ = make()
    gm = vpc.balancer.selection.group(vpc.fabric.lb("web"), ofp.OFPGC_ADD)
    gm.serialize()
    assert struct.unpack_from("!H", gm.buf, 2)[0] == len(gm.buf)


def test_every_message_of_a_full_program_serializes_consistently():
    vpc, _ = make(preserve=False)
    for sw in PORTS:
        for m in vpc.program_switch(sw, PORTS[sw]):
            m.serialize()
            assert struct.unpack_from("!H", m.buf, 2)[0] == len(m.buf), m


def test_a_bucket_serializes_once_to_the_bytes_os_ken_writes():
    def actions():
        return [of.ct(of.CT_ZONE_DNAT, of.T_ROUTE, commit=True,
                      nat=of.nat_dst("192.168.0.10", 30080))]
    want = bytearray()
    ofpp.OFPBucket(weight=1, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                   actions=actions()).serialize(want, 0)
    bucket = of.Bucket(actions())
    for _ in range(2):
        gm = of.select_group(ofp.OFPGC_MODIFY, 1, [bucket, bucket])
        gm.serialize()
        assert bytes(gm.buf[16:]) == bytes(want) * 2


def test_a_message_is_serialized_once_and_sent_with_each_xid():
    vpc, _ = make(preserve=False, healthy=False)
    again = Vpc(parse_fabric(fabric_dict(preserve=False)))
    for sw in PORTS:
        fresh = again.program_switch(sw, PORTS[sw])
        for i, m in enumerate(vpc.program_switch(sw, PORTS[sw])):
            first, second = of.encode(m, 7), of.encode(m, 0xfffffffe)
            fresh[i].xid = 0xfffffffe
            fresh[i].serialize()
            assert second == bytes(fresh[i].buf) and struct.unpack_from("!I", first, 4) == (7,)
            assert first[:4] + first[8:] == second[:4] + second[8:]


def test_a_pods_route_is_built_once_for_all_switches_and_anew_when_it_changes():
    vpc, fab = make("container-native")
    c = of.cookie(of.COOKIE_POD, "web-0")

    def pod_flows(sw):
        return [m for m in vpc.program_switch(sw, PORTS[sw]) if getattr(m, "cookie", 0) == c]
    on_vpc1, on_vpc2 = pod_flows("vpc1"), pod_flows("vpc2")
    assert len(on_vpc1) == 2 and all(a is b for a, b in zip(on_vpc1, on_vpc2, strict=True))
    fab.apply(vpc.add_pod(PodRoute("web-0", "192.168.1.101", "node2"), PORTS))
    moved = pod_flows("vpc1")
    assert moved[0] is not on_vpc1[0] and moved[1].match["ipv4_dst"] == "192.168.1.101"
    # the switch changed at run time holds what a fresh program would give it
    fresh = FakeSwitch(vpc.program_switch("vpc1", PORTS["vpc1"]))
    assert sorted(map(str, fab.sw["vpc1"].flows)) == sorted(map(str, fresh.flows))


# ----------------------------------------------------------------------------------------------
# Health, cookies, config errors
# ----------------------------------------------------------------------------------------------

def test_health_thresholds():
    hc = HealthCheck(healthy_threshold=3, unhealthy_threshold=2)
    h = Health()
    assert [observe(h, True, hc) for _ in range(3)] == [False, False, True]
    assert h.state == "healthy"
    assert [observe(h, ok, hc) for ok in (False, True, False, False)] == [
        False, False, False, True]
    assert h.state == "unhealthy" and not h.in_service


def test_cookie_top_byte_is_the_kind_and_flows_carry_it():
    vpc, fab = make("container-native")
    kinds = {f[4] >> 56 for sw in fab.sw.values() for f in sw.flows}
    assert kinds == {of.COOKIE_BASE, of.COOKIE_GATEWAY, of.COOKIE_HOST, of.COOKIE_POD,
                     of.COOKIE_LB, of.COOKIE_BACKEND}
    pod_cookie = of.cookie(of.COOKIE_POD, "web-0")
    assert {f[0] for f in fab.sw["vpc1"].flows if f[4] == pod_cookie} == {of.T_ARP,
                                                                          of.T_NEXTHOP}


@pytest.mark.parametrize("path,value,message", [
    (("mode",), "overlay", "mode: 'overlay' is not one of"),
    (("hosts", 0, "ip"), "192.168.5.10", "hosts[0].ip: 192.168.5.10 is outside subnet az-a"),
    (("load_balancers", 0, "vip"), "x", "load_balancers[0].vip: 'x' is not an IPv4"),
    (("subnets", 0, "gateway_mac"), "zz", "subnets[0].gateway_mac"),
    (("load_balancers", 0, "backends", 0, "port"), 0, "backends[0].port: 0 is not a port"),
])
def test_config_errors_say_where(path, value, message):
    d = fabric_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_fabric(d)


def test_pod_routes_are_refused_in_nodeport_mode():
    d = fabric_dict()
    d["pod_routes"] = [{"pod": "p", "ip": "10.244.0.5", "node": "node1"}]
    with pytest.raises(ConfigError, match="unknown to the VPC in nodeport mode"):
        parse_fabric(d)


def test_switch_identified_by_dpid_or_local_port_name():
    vpc, _ = make()
    assert identify_switch(vpc.fabric, 3, []).name == "vpc2"
    assert identify_switch(vpc.fabric, 99, ["vpc1", "vpc1-up"]).name == "vpc1"
    assert identify_switch(vpc.fabric, 99, ["other"]) is None
