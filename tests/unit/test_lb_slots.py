"""Load balancers too big for one OpenFlow group: hash slots, and the 64 KiB message limit.

An LB of up to GROUP_MAX_BACKENDS (1023) registered backends keeps its one select group; a bigger
one picks a backend by a hash slot (multipath into reg1, one lb_pick flow per in-service
backend). The messages go through FakeSwitch (tests/unit/fakeswitch.py) and, for the service,
through a FakeDatapath's bytes.
"""

import random

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

import controllers.config
from controllers import openflow as of
from controllers.config import Backend, ConfigError, parse_fabric
from controllers.health import CheckResult
from controllers.selection import GROUP_MAX_BACKENDS, SlotTable
from controllers.service import VpcService
from controllers.vpc import Vpc

from .fakeswitch import FakeDatapath, FakeSwitch
from .vpc_fixtures import CLIENT1, GW_NET, PORTS, VIP, fabric_dict, ip_pkt

NODES = ("192.168.0.10", "192.168.1.10")
CORE = PORTS["vpc0"]


def backends(n):
    """n backends on the two nodes' addresses, told apart by port."""
    return [{"name": f"b{i}", "ip": NODES[i % 2], "port": 1024 + i // 2} for i in range(n)]


def big_vpc(n, checks=False, preserve=True):
    d = fabric_dict(preserve=preserve)
    d["load_balancers"][0]["backends"] = backends(n)
    return Vpc(parse_fabric(d), checks_enabled=checks)


def core(vpc):
    return FakeSwitch(vpc.program_switch("vpc0", CORE))


def select_flow(switch):
    [f] = [f for f in switch.table(of.T_LB_SELECT) if f[1] == of.P_LB_VIP]
    return f


def slot_table(switch):
    """slot -> (ip, port) of every lb_pick flow (the table-miss aside)."""
    out = {}
    for _table, prio, match, inst, _cookie in switch.table(of.T_LB_PICK):
        if prio == of.P_DEFAULT:
            [ct] = inst[0].actions
            out[dict(match)["reg1"]] = (ct.actions[0].range_ipv4_min, ct.actions[0].range_proto_min)
    return out


def syn(sport):
    return ip_pkt(CLIENT1, GW_NET, "203.0.113.10", VIP, sport=sport, dport=80)


def all_healthy(vpc, switch):
    lb = vpc.fabric.lb("web")
    results = [CheckResult("web", ip, port, True, {})
               for _ in range(2) for ip, port in vpc.balancer.backends[lb.name]]
    switch.apply(vpc.observe_results(results, PORTS).get("vpc0", []))


# ---- where one group ends ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, GROUP_MAX_BACKENDS])
def test_up_to_1023_backends_an_lb_keeps_one_select_group(n):
    vpc = big_vpc(n)
    sw = core(vpc)
    assert len(sw.groups[1]) == n and slot_table(sw) == {}
    [inst] = select_flow(sw)[3]
    assert [type(a) for a in inst.actions] == [ofpp.OFPActionGroup]
    group_mod = vpc.balancer.selection.group(vpc.fabric.lb("web"), ofp.OFPGC_ADD)
    assert len(of.encode(group_mod, 1)) <= of.OFP_MAX_LEN
    [row] = vpc.lbs_view()
    assert (row["selection"], row["group_id"], row["slots"]) == ("select_group", 1, None)


@pytest.mark.parametrize("n", [GROUP_MAX_BACKENDS + 1, 5000])
def test_past_1023_backends_an_lb_picks_by_hash_slot(n):
    vpc = big_vpc(n)
    msgs = vpc.program_switch("vpc0", CORE)
    assert all(len(of.encode(m, 1)) <= of.OFP_MAX_LEN for m in msgs)
    sw = FakeSwitch(msgs)
    assert sw.groups == {}
    apply_actions, goto = select_flow(sw)[3]
    [mp] = apply_actions.actions
    assert isinstance(mp, ofpp.NXActionMultipath) and mp.max_link + 1 == n and mp.dst == "reg1"
    assert goto.table_id == of.T_LB_PICK
    # One slot per backend, each backend in exactly one: the hash modulo n picks each alike.
    slots = slot_table(sw)
    assert sorted(slots) == list(range(n))
    assert sorted(slots.values()) == sorted((b["ip"], b["port"]) for b in backends(n))
    [row] = vpc.lbs_view()
    assert (row["selection"], row["group_id"], row["slots"]) == ("hash_slots", None, n)


def test_a_group_of_1024_buckets_would_not_fit_one_message():
    bucket = of.Bucket([of.ct(of.CT_ZONE_DNAT, of.T_ROUTE, commit=True,
                              nat=of.nat_dst("192.168.0.10", 30080))])
    fits = of.select_group(ofp.OFPGC_ADD, 1, [bucket] * GROUP_MAX_BACKENDS)
    assert len(of.encode(fits, 1)) == 16 + 64 * GROUP_MAX_BACKENDS <= of.OFP_MAX_LEN
    with pytest.raises(of.MessageTooLong, match=r"group 1 \(1024 buckets\).*at most 65535"):
        of.encode(of.select_group(ofp.OFPGC_ADD, 1, [bucket] * (GROUP_MAX_BACKENDS + 1)), 1)


# ---- traffic through the slots -----------------------------------------------------------------

@pytest.mark.parametrize("preserve", [True, False])
def test_a_big_lb_dnats_each_connection_to_its_slots_backend_and_keeps_it(preserve):
    vpc = big_vpc(GROUP_MAX_BACKENDS + 1, preserve=preserve)
    sw = core(vpc)
    slots = set(slot_table(sw).values())
    seen = set()
    for sport in range(40000, 40060):
        [(port, p)] = sw.process(syn(sport), CORE["vpc0-client1"])
        assert port == CORE["vpc0-az-a" if p["ipv4_dst"] == NODES[0] else "vpc0-az-b"]
        assert (p["ipv4_dst"], p["tcp_dst"]) in slots and p["ttl"] == 63
        assert p["ipv4_src"] == ("203.0.113.10" if preserve else "198.51.100.2")
        [(_, again)] = sw.process(syn(sport), CORE["vpc0-client1"])
        assert (again["ipv4_dst"], again["tcp_dst"]) == (p["ipv4_dst"], p["tcp_dst"])
        seen.add((p["ipv4_dst"], p["tcp_dst"]))
    assert len(seen) > 40                        # 60 connections over 1024 backends: spread


def test_a_big_lb_with_no_backend_in_service_drops_new_connections():
    vpc = big_vpc(GROUP_MAX_BACKENDS + 1, checks=True)      # all "initial"
    sw = core(vpc)
    assert slot_table(sw) == {} and select_flow(sw)[3] == []
    assert sw.process(syn(40000), CORE["vpc0-client1"]) == []


# ---- health changes touch one slot -------------------------------------------------------------

def test_a_health_change_rewrites_one_slot_and_the_select_flow_only():
    vpc = big_vpc(5000, checks=True)
    sw = core(vpc)
    all_healthy(vpc, sw)
    before = slot_table(sw)
    assert len(before) == 5000
    victim = before[17]
    down = [CheckResult("web", *victim, False, {"status": 503})] * 2
    msgs = vpc.observe_results(down, PORTS)["vpc0"]
    # The last slot's backend moves into slot 17, the select flow hashes over 4999, slot 4999 goes.
    assert [type(m).__name__ for m in msgs] == ["OFPFlowMod"] * 3
    assert [(m.table_id, m.command) for m in msgs] == [
        (of.T_LB_PICK, ofp.OFPFC_ADD), (of.T_LB_SELECT, ofp.OFPFC_ADD),
        (of.T_LB_PICK, ofp.OFPFC_DELETE_STRICT)]
    assert sum(len(of.encode(m, 1)) for m in msgs) < 512
    sw.apply(msgs)
    after = slot_table(sw)
    assert after == {**{i: b for i, b in before.items() if i not in (17, 4999)}, 17: before[4999]}
    assert select_flow(sw)[3][0].actions[0].max_link + 1 == 4999
    up = [CheckResult("web", *victim, True, {})] * 2
    msgs = vpc.observe_results(up, PORTS)["vpc0"]
    assert [(m.table_id, m.command) for m in msgs] == [
        (of.T_LB_PICK, ofp.OFPFC_ADD), (of.T_LB_SELECT, ofp.OFPFC_ADD)]
    sw.apply(msgs)
    assert slot_table(sw) == {**after, 4999: victim}


def test_growing_past_one_group_and_shrinking_back():
    vpc = big_vpc(GROUP_MAX_BACKENDS)
    sw = core(vpc)
    extra = Backend("extra", "192.168.0.11", 30080)
    msgs = vpc.add_backend("web", extra, PORTS)["vpc0"]
    # The slots, then the select flow that leads to them, then the group nothing names any more.
    assert isinstance(msgs[-1], ofpp.OFPGroupMod) and msgs[-1].command == ofp.OFPGC_DELETE
    assert msgs[-2].table_id == of.T_LB_SELECT
    sw.apply(msgs)
    assert sw.groups == {} and len(slot_table(sw)) == GROUP_MAX_BACKENDS + 1
    assert sw.process(syn(40000), CORE["vpc0-client1"])
    msgs = vpc.remove_backend("web", extra.ip, extra.port, PORTS)["vpc0"]
    assert isinstance(msgs[0], ofpp.OFPGroupMod) and msgs[0].command == ofp.OFPGC_ADD
    sw.apply(msgs)
    assert len(sw.groups[1]) == GROUP_MAX_BACKENDS and slot_table(sw) == {}
    [inst] = select_flow(sw)[3]
    assert isinstance(inst.actions[0], ofpp.OFPActionGroup)
    assert sw.process(syn(40001), CORE["vpc0-client1"])


def test_registering_a_backend_into_a_big_lb_sends_no_slot_until_it_is_healthy():
    vpc = big_vpc(5000, checks=True)
    sw = core(vpc)
    all_healthy(vpc, sw)
    msgs = vpc.add_backend("web", Backend("late", "192.168.0.11", 30080), PORTS)["vpc0"]
    assert [m.table_id for m in msgs] == [of.T_INGRESS]            # its reply flow only
    assert vpc.lbs_view()[0]["slots"] == 5000


def test_a_slot_table_is_exactly_the_in_service_set_and_moves_one_slot_per_leaver():
    rng = random.Random(7)
    universe = [(f"10.0.{i // 200}.{i % 200}", 80) for i in range(600)]
    table = SlotTable()
    in_service: set = set()
    for _ in range(300):
        flip = set(rng.sample(universe, rng.randint(1, 12)))
        leaving, joining = flip & in_service, sorted(flip - in_service)
        before = list(table.keys)
        changed = table.update(leaving, joining)
        in_service ^= flip
        assert sorted(table.keys) == sorted(in_service)
        assert all(table.keys[i] == k for k, i in table.index.items())
        assert changed == {i for i, k in enumerate(table.keys)
                           if i >= len(before) or before[i] != k}
        assert len(changed) <= len(leaving) + len(joining)
        stayed_but_moved = [k for i, k in enumerate(before)
                            if k in in_service and table.index[k] != i]
        assert len(stayed_but_moved) <= len(leaving)       # only into a leaver's slot


# ---- the 64 KiB limit: refused with a clear error, never a crash --------------------------------

def test_a_message_over_64_kib_is_refused_naming_the_switch_and_the_lb():
    svc = VpcService(Vpc(parse_fabric(fabric_dict())))
    dp = FakeDatapath(1)
    svc.on_features(dp)
    svc.on_port_desc(dp, dict(PORTS["vpc0"]), more=False)
    st = svc.switches["vpc0"]
    sent = len(dp.sent)
    bucket = of.Bucket([of.ct(of.CT_ZONE_DNAT, of.T_ROUTE, commit=True,
                              nat=of.nat_dst("192.168.0.10", 30080))])
    too_long = of.select_group(ofp.OFPGC_MODIFY, 1, [bucket] * 2000)
    barrier = ofpp.OFPBarrierRequest(of.DP)
    svc.send(dp, [too_long, barrier])
    assert len(dp.sent) == sent + 1 and isinstance(dp.sent[-1], ofpp.OFPBarrierRequest)
    assert st.errors == 1
    assert st.last_error.startswith("switch vpc0: not sent: lb web: group-mod of group 1 "
                                    "(2000 buckets) would be 128016 bytes")


def test_a_5000_backend_lb_programs_the_core_through_the_wire():
    d = fabric_dict()
    d["load_balancers"][0]["backends"] = backends(5000)
    svc = VpcService(Vpc(parse_fabric(d), checks_enabled=False))
    dp = FakeDatapath(1)
    svc.on_features(dp)
    svc.on_port_desc(dp, dict(PORTS["vpc0"]), more=False)
    st = svc.switches["vpc0"]
    svc.on_barrier(dp, st.barrier_xid)
    assert st.programmed and st.errors == 0
    assert len(slot_table(FakeSwitch(dp.sent))) == 5000       # decoded back from the bytes


# ---- how many backends an LB may have -----------------------------------------------------------

def test_an_lb_has_at_most_max_lb_backends(monkeypatch):
    monkeypatch.setattr(controllers.config, "MAX_LB_BACKENDS", 3)
    monkeypatch.setattr("controllers.lb.MAX_LB_BACKENDS", 3)
    d = fabric_dict()
    d["load_balancers"][0]["backends"] = backends(4)
    with pytest.raises(ConfigError, match=r"load_balancers\[0\]\.backends: 4 backends; an LB "
                                          r"can have at most 3"):
        parse_fabric(d)
    vpc = big_vpc(3)
    with pytest.raises(ConfigError, match="lb web has 3 backends, the most"):
        vpc.add_backend("web", Backend("late", "192.168.0.11", 30080), PORTS)
