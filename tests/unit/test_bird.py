"""BIRD 2 configs in the shape of Calico's confd templates (testbed.kubernetes.cni.bird), and
reading birdc's output. BIRD itself checks each config when it is installed (`bird -p`)."""

import dataclasses
import shutil
import subprocess

import pytest

from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.cni.bird import (
    keepalive,
    parse_protocols,
    parse_routes,
    render_node,
    render_speaker,
)
from testbed.kubernetes.node import node_setup
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology


def bgp_plan(**bgp):
    topo = load_topology("topologies/talk.yaml")
    cni = dataclasses.replace(topo.cni, routing="bgp",
                              bgp=dataclasses.replace(topo.cni.bgp, **bgp))
    return build_plan(dataclasses.replace(topo, cni=cni))


def test_node_config_has_a_blackhole_and_an_aggregation_per_block():
    plan = bgp_plan()
    conf = render_node(plan, plan.node("node1"))
    assert "router id 192.168.0.10;" in conf
    assert "route 10.244.0.0/26 blackhole;" in conf
    assert "if ( net = 10.244.0.0/26 ) then { accept; }" in conf
    assert "if ( net ~ 10.244.0.0/26 ) then { reject; }" in conf
    assert "10.244.0.64/26" not in conf                      # node2's block is not node1's
    assert "export filter calico_kernel_programming;" in conf
    assert "local 192.168.0.10 as 64512;" in conf


def test_node_sessions_mesh_and_fabric():
    plan = bgp_plan()
    conf = render_node(plan, plan.node("node1"))
    assert "protocol bgp Mesh_192_168_1_10 from bgp_template" in conf
    assert "protocol bgp Mesh_192_168_2_10 from bgp_template" in conf
    assert "protocol bgp Mesh_192_168_0_10" not in conf      # not with itself
    assert "neighbor 198.51.100.4 as 65000;" in conf
    # exactly one side of each mesh pair waits for the other
    node2 = render_node(plan, plan.node("node2"))
    pair = [c.split("protocol bgp " + m)[1].split("}")[0]
            for c, m in ((conf, "Mesh_192_168_1_10"), (node2, "Mesh_192_168_0_10"))]
    assert sorted("passive on" in p for p in pair) == [False, True]


def test_options_no_mesh_no_fabric_hold_time():
    plan = bgp_plan(node_to_node_mesh=False, hold_time_s=3)
    conf = render_node(plan, plan.node("node1"))
    assert "Mesh_" not in conf and "Global_198_51_100_4" in conf
    assert "hold time 3;" in conf and "keepalive time 1;" in conf
    assert keepalive(90) == 30
    plan = bgp_plan(fabric_peer=False)
    assert "Global_" not in render_node(plan, plan.node("node1"))
    assert "bgp0" not in [a.host for a in plan.attachments]


def test_speaker_imports_everything_and_reflects_only_in_ibgp():
    plan = bgp_plan()
    conf = render_speaker(plan)
    assert "local 198.51.100.4 as 65000;" in conf and "export none;" in conf
    assert conf.count("protocol bgp node_") == 3 and "rr client" not in conf
    ibgp = render_speaker(bgp_plan(fabric_as_number=64512))
    assert "rr client;" in ibgp and "export all;" in ibgp


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")
@pytest.mark.parametrize("which", ["node1", "node3", "speaker", "no-mesh"])
def test_bird_accepts_the_configs(tmp_path, which):
    plan = bgp_plan(node_to_node_mesh=which != "no-mesh", hold_time_s=3)
    text = render_speaker(plan) if which == "speaker" else \
        render_node(plan, plan.node("node3" if which == "node3" else "node1"))   # node3: no block
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    done = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_node_gets_no_vxlan_device_and_no_bridge():
    plan = bgp_plan()
    script = "\n".join(node_setup(plan, plan.node("node1"), offloads_off=True))
    assert "vxlan" not in script and "cni0" not in script and "bridge" not in script
    assert "ip route add 10.244.0.0/32 dev veth" in script
    assert "cali-nat-outgoing -s 10.244.0.0/16 ! -d 10.244.0.0/16" in script
    pod = plan.pods[0]
    assert "ip route add default via 169.254.1.1 dev eth0" in plugin_for(plan).setup_pod(plan, pod)


PROTOCOLS = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     1764592000
kernel1    Kernel     master4    up     1764592000
node_node1 BGP        ---        up     1764592003    Established
node_node2 BGP        ---        start  1764592001    Connect       Socket: Connection refused
"""


def test_parse_protocols():
    rows = parse_protocols(PROTOCOLS)
    assert [(r.name, r.proto, r.state) for r in rows] == [
        ("device1", "Device", "up"), ("kernel1", "Kernel", "up"),
        ("node_node1", "BGP", "up"), ("node_node2", "BGP", "start")]
    assert [r.established for r in rows] == [False, False, True, False]
    assert rows[3].info.startswith("Connect") and rows[2].since == "1764592003"


# `birdc show route all` on the fabric's speaker and on node1 of a running talk.yaml --cni bgp
SPEAKER_ROUTES = """\
BIRD 2.0.12 ready.
Table master4:
0.0.0.0/0            unicast [kernel1 12:55:47.425] * (10)
\tvia 198.51.100.1 on eth0
\tType: inherit univ
\tKernel.source: 3
\tKernel.metric: 0
10.244.0.0/26        unicast [node_node1 12:55:49.250 from 192.168.0.10] * (100/?) [AS64512i]
\tvia 198.51.100.1 on eth0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 64512
\tBGP.next_hop: 192.168.0.10
\tBGP.local_pref: 100
10.244.0.64/26       unicast [node_node2 12:55:49.430 from 192.168.1.10] * (100/?) [AS64512i]
\tvia 198.51.100.1 on eth0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 64512
\tBGP.next_hop: 192.168.1.10
\tBGP.local_pref: 100
"""
NODE1_ROUTES = """\
BIRD 2.0.12 ready.
Table master4:
0.0.0.0/0            unicast [kernel1 12:55:47.369] * (10)
\tvia 192.168.0.1 on eth0
\tType: inherit univ
\tKernel.source: 3
\tKernel.metric: 0
10.244.0.0/26        blackhole [static_blocks 12:55:47.367] * (200)
\tType: static univ
192.168.0.0/24       unicast [direct1 12:55:47.369] * (240)
\tdev eth0
\tType: device univ
10.244.0.2/32        unicast [kernel1 12:55:47.369] * (10)
\tdev veth612f7a0e
\tType: inherit univ
\tKernel.source: 3
\tKernel.metric: 0
\tKernel.scope: 253
10.244.0.1/32        unicast [kernel1 12:55:47.369] * (10)
\tdev vethc4719afa
\tType: inherit univ
\tKernel.source: 3
\tKernel.metric: 0
\tKernel.scope: 253
10.244.0.64/26       unicast [Mesh_192_168_1_10 12:55:49.402 from 192.168.1.10] * (100/?) [i]
\tvia 192.168.0.1 on eth0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path:
\tBGP.next_hop: 192.168.1.10
\tBGP.local_pref: 100
10.244.0.0/32        unicast [kernel1 12:55:47.369] * (10)
\tdev veth1ae6fac6
\tType: inherit univ
\tKernel.source: 3
\tKernel.metric: 0
\tKernel.scope: 253
"""


def test_parse_routes_keeps_the_bgp_routes_with_their_next_hops():
    routes = parse_routes(SPEAKER_ROUTES)
    assert [(r.prefix, r.protocol, r.next_hop, r.as_path) for r in routes] == [
        ("10.244.0.0/26", "node_node1", "192.168.0.10", "64512"),
        ("10.244.0.64/26", "node_node2", "192.168.1.10", "64512")]
    # on a node: the blackhole, the kernel's /32s and the default route are no BGP routes
    [mesh] = parse_routes(NODE1_ROUTES)
    assert (mesh.prefix, mesh.protocol, mesh.next_hop, mesh.as_path) == \
        ("10.244.0.64/26", "Mesh_192_168_1_10", "192.168.1.10", "")
