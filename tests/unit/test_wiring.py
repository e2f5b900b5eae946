"""How a cluster is wired: the batches of `ip` lines and the ovs-vsctl transactions (pure)."""

import os

import pytest

from testbed.emulation import wiring
from testbed.emulation.hosts import batched
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")


@pytest.fixture(params=["nodeport", "container-native"])
def plan(request):
    return build_plan(load_topology(TALK, mode=request.param))


def test_every_host_gets_a_named_namespace_of_ours(plan):
    lines = wiring.namespace_lines(wiring.host_names(plan))
    hosts = [a.host for a in plan.attachments] + [p.name for p in plan.pods]
    assert lines == [f"netns add cnlb-{h}" for h in hosts]
    assert wiring.netns_file("web-0") == "/run/netns/cnlb-web-0"


def test_veths_are_made_inside_their_namespaces_and_only_switch_ports_stay_in_root(plan):
    lines = wiring.veth_lines(plan)
    adds = [line for line in lines if line.startswith("link add")]
    assert len(adds) == len(plan.attachments) + len(plan.pods)
    for att in plan.attachments:
        assert (f"link add {att.port} type veth peer name eth0 netns cnlb-{att.host} "
                f"address {att.mac}") in lines
        # the root end gets no IPv6 link-local address and is up
        assert f"link set {att.port} addrgenmode none" in lines
        assert f"link set {att.port} up" in lines
    for pod in plan.pods:
        line = next(line for line in adds if line.startswith(f"link add {pod.veth} "))
        assert f"netns cnlb-{pod.node} " in line
        assert f"peer name eth0 netns cnlb-{pod.name} " in line
        assert line.endswith(f"address {pod.mac}")
    # nothing but switch ports is ever named in the root namespace
    assert set(wiring.root_ports(plan)) == {a.port for a in plan.attachments}


def _transaction(args):
    """ovs-vsctl arguments split into their commands."""
    cmds, cur = [], []
    for a in args + ["--"]:
        if a == "--":
            cmds.append(cur)
            cur = []
        else:
            cur.append(a)
    return cmds


def test_bridges_ports_and_patch_uplinks_in_one_transaction(plan):
    cmds = _transaction(wiring.bridge_args(plan, "cnlb-cluster", "talk", userspace=True))
    bridges = [c[1] for c in cmds if c[0] == "add-br"]
    assert bridges == [s.name for s in plan.switches]
    sets = {c[2]: c[3:] for c in cmds if c[:2] == ["set", "bridge"]}
    for sw in plan.switches:
        assert "fail_mode=secure" in sets[sw.name] and "datapath_type=netdev" in sets[sw.name]
        assert f"other_config:datapath-id={sw.dpid:016x}" in sets[sw.name]
        assert "external_ids:cnlb-cluster=talk" in sets[sw.name]
    ports = {c[2]: c[1] for c in cmds if c[0] == "add-port"}
    ifaces = {c[2]: c[3:] for c in cmds if c[:2] == ["set", "interface"]}
    for att in plan.attachments:
        assert ports[att.port] == att.switch
        assert ifaces[att.port] == [f"ofport_request={wiring.port_no(att.port)}"]
    core = next(s.name for s in plan.switches if s.role == "core")
    for sw in (s for s in plan.switches if s.role == "subnet"):
        assert ports[sw.uplink] == sw.name and ports[sw.core_port] == core
        assert f"options:peer={sw.core_port}" in ifaces[sw.uplink]
        assert f"options:peer={sw.uplink}" in ifaces[sw.core_port]
        assert "type=patch" in ifaces[sw.uplink] and "type=patch" in ifaces[sw.core_port]
    kernel = _transaction(wiring.bridge_args(plan, "cnlb-cluster", "talk", userspace=False))
    assert not any("datapath_type=netdev" in c for c in kernel)


def test_afxdp_makes_every_host_port_an_af_xdp_socket_on_the_userspace_datapath(plan):
    cmds = _transaction(wiring.bridge_args(plan, "cnlb-cluster", "talk", userspace=False,
                                           afxdp=True))
    sets = {c[2]: c[3:] for c in cmds if c[:2] == ["set", "bridge"]}
    assert all("datapath_type=netdev" in sets[sw.name] for sw in plan.switches)
    ifaces = {c[2]: c[3:] for c in cmds if c[:2] == ["set", "interface"]}
    for att in plan.attachments:
        assert ifaces[att.port] == [f"ofport_request={wiring.port_no(att.port)}", "type=afxdp"]
    for sw in (s for s in plan.switches if s.role == "subnet"):   # patch ports stay patch ports
        assert "type=patch" in ifaces[sw.uplink] and "type=afxdp" not in ifaces[sw.uplink]


def test_every_bridge_is_pointed_at_the_controller(plan):
    cmds = _transaction(wiring.controller_args(plan, 6699))
    created = [c for c in cmds if c[:2] == ["create", "Controller"] or "create" in c]
    assert len(created) == len(plan.switches)
    assert all('target="tcp:127.0.0.1:6699"' in c for c in created)
    assert {c[2] for c in cmds if c[:2] == ["set", "bridge"]} == {s.name for s in plan.switches}


def test_plain_ip_scripts_need_no_shell():
    assert wiring.ip_only(["ip link set lo up", "ip addr add 10.0.0.1/24 dev eth0"]) == [
        "link set lo up", "addr add 10.0.0.1/24 dev eth0"]
    assert wiring.ip_only(["ip link set lo up", "echo 1 > /proc/sys/x"]) is None
    assert wiring.ip_only(["ip route show | grep x"]) is None


def test_runs_of_one_tool_become_one_batch():
    out = batched(["ip a", "ip b", "bridge fdb x", "bridge fdb y", "echo 1 > f", "ip c",
                   "tc q", "tc r", "ip d | grep x"])
    assert out == ["ip -batch - <<'CNLB_BATCH'\na\nb\nCNLB_BATCH",
                   "bridge -batch - <<'CNLB_BATCH'\nfdb x\nfdb y\nCNLB_BATCH",
                   "echo 1 > f", "ip c", "tc -batch - <<'CNLB_BATCH'\nq\nr\nCNLB_BATCH",
                   "ip d | grep x"]
    assert wiring.tc_batch(["tc qdisc add dev p root", "ip x"]) == ["qdisc add dev p root"]
