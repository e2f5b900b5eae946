"""The controller's OpenFlow side, through VpcService with fake datapaths (no os-ken loop)."""

from os_ken.lib.packet import ethernet, ipv4, packet, tcp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import Backend, parse_fabric
from controllers.service import VpcService
from controllers.vpc import Vpc

from .fakeswitch import FakeDatapath, FakeSwitch
from .vpc_fixtures import GW_A, GW_B, NODE1, PORTS, arp_req, fabric_dict


def connect(svc, name, dpid=None):
    """Features, then the port description in two parts: what os-ken delivers on a connect."""
    dp = FakeDatapath(dpid or svc.vpc.fabric.switch(name).dpid)
    svc.on_features(dp)
    ports = list(PORTS[name].items())
    svc.on_port_desc(dp, dict(ports[:1]), more=True)
    svc.on_port_desc(dp, dict(ports[1:]), more=False)
    return dp


def new_service():
    return VpcService(Vpc(parse_fabric(fabric_dict())))


def test_a_switch_is_programmed_once_its_barrier_comes_back():
    svc = new_service()
    dp = connect(svc, "vpc1")
    st = svc.switches["vpc1"]
    assert st.connected and st.ports == PORTS["vpc1"] and not st.programmed
    assert isinstance(dp.sent[-1], ofpp.OFPBarrierRequest) and st.barrier_xid == dp.sent[-1].xid
    svc.on_barrier(dp, st.barrier_xid + 1)                    # someone else's barrier
    assert not st.programmed
    svc.on_barrier(dp, st.barrier_xid)
    assert st.programmed and st.programs == 1
    assert not svc.ready() and svc.waiting_for() == ["vpc0", "vpc2"]
    # What was sent makes a working switch: node1 ARPs its gateway and is answered.
    switch = FakeSwitch(dp.sent[:-1])
    [(port, reply)] = switch.process(arp_req(NODE1, "192.168.0.10", "192.168.0.1"),
                                     PORTS["vpc1"]["vpc1-node1"])
    assert port == PORTS["vpc1"]["vpc1-node1"] and reply["arp_sha"] == GW_A


def test_an_error_before_the_barrier_leaves_the_switch_not_programmed():
    svc = new_service()
    dp = connect(svc, "vpc0")
    st = svc.switches["vpc0"]
    group_mod = next(m for m in dp.sent if isinstance(m, ofpp.OFPGroupMod) and m.group_id == 1)
    svc.on_error(dp, group_mod.xid, 1, 6)
    svc.on_barrier(dp, st.barrier_xid)
    assert not st.programmed
    [row] = [s for s in svc.status()["switches"] if s["name"] == "vpc0"]
    assert row["errors"] == 1 and "OFPGroupMod" in row["last_error"]


def test_a_switch_not_in_the_fabric_is_left_alone():
    svc = new_service()
    dp = FakeDatapath(99)
    svc.on_port_desc(dp, {"other": 1}, more=False)
    assert dp.sent == [] and svc.state_of(dp) is None


def test_a_switch_found_by_its_local_port_name_is_programmed():
    svc = new_service()
    dp = FakeDatapath(99)
    svc.on_port_desc(dp, dict(PORTS["vpc2"], vpc2=0xfffffffe), more=False)
    assert svc.state_of(dp).name == "vpc2" and isinstance(dp.sent[-1], ofpp.OFPBarrierRequest)


def test_only_a_port_the_flows_use_asks_for_the_port_description_again():
    svc = new_service()
    dp = connect(svc, "vpc1")
    before = len(dp.sent)
    svc.on_port_status(dp, "vpc1-unrelated", 0)
    assert len(dp.sent) == before
    svc.on_port_status(dp, "vpc1-node3", 1)
    [request] = dp.sent[before:]
    assert isinstance(request, ofpp.OFPPortDescStatsRequest)


def test_run_time_changes_go_to_connected_switches_only():
    svc = new_service()
    core = connect(svc, "vpc0")
    edge = connect(svc, "vpc1")
    svc.on_disconnect(edge)
    assert not svc.switches["vpc1"].connected and svc.state_of(edge) is None
    sent_core, sent_edge = len(core.sent), len(edge.sent)
    svc.add_backend("web", Backend("node3", "192.168.0.11", 30080))
    reply_flow, group_mod = core.sent[sent_core:]             # "initial": no bucket yet
    assert isinstance(reply_flow, ofpp.OFPFlowMod) and group_mod.buckets == []
    # Two passing checks put it in service: one group modify, on the core only.
    for _ in range(2):
        svc.on_health_result({"id": "web/192.168.0.11:30080", "ok": True, "status": 200})
    [group_mod] = core.sent[sent_core + 2:]
    assert isinstance(group_mod, ofpp.OFPGroupMod) and len(group_mod.buckets) == 1
    assert len(edge.sent) == sent_edge
    assert [b["state"] for b in svc.vpc.backends_view("web")] == ["initial", "healthy",
                                                                  "initial"]


def test_invalid_ttl_is_answered_with_a_packet_out():
    svc = new_service()
    dp = connect(svc, "vpc2")
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst=GW_B, src="02:cb:01:00:00:02", ethertype=0x0800))
    p.add_protocol(ipv4.ipv4(src="192.168.1.10", dst="192.168.0.10", proto=6, ttl=1))
    p.add_protocol(tcp.tcp(src_port=40000, dst_port=80))
    p.serialize()
    before = len(dp.sent)
    svc.on_invalid_ttl(dp, PORTS["vpc2"]["vpc2-node2"], bytes(p.data), 0)
    [out] = dp.sent[before:]
    assert isinstance(out, ofpp.OFPPacketOut) and out.actions[0].port == 2


def test_a_full_program_is_one_write_that_ends_with_its_barrier():
    svc = new_service()
    dp = connect(svc, "vpc0")
    st = svc.switches["vpc0"]
    # features: clear and config (4 messages); port description: the program and its barrier
    assert dp.writes == 2 and len(dp.sent) == 4 + st.flows_sent + 1
    xids = [m.xid for m in dp.sent]
    assert len(set(xids)) == len(xids) and st.barrier_xid == xids[-1]
    assert isinstance(dp.sent[-1], ofpp.OFPBarrierRequest)


def test_checker_results_read_together_send_one_group_modify():
    svc = new_service()
    core = connect(svc, "vpc0")
    before, writes = len(core.sent), core.writes
    svc.on_health_results([{"id": f"web/{ip}:30080", "ok": True, "status": 200}
                           for _ in range(2) for ip in ("192.168.0.10", "192.168.1.10")])
    [group_mod] = core.sent[before:]
    assert isinstance(group_mod, ofpp.OFPGroupMod) and len(group_mod.buckets) == 2
    assert core.writes == writes + 1
    assert [b["state"] for b in svc.vpc.backends_view("web")] == ["healthy", "healthy"]
