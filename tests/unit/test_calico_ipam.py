"""Calico-style IPAM (testbed.plan.calico_ipam) and the plan it gives with cni.routing bgp:
blocks affine to nodes, claimed on demand, another when a node fills its own."""

import dataclasses
import ipaddress

import pytest

from testbed.plan.addresses import allocate_pod, build_plan, with_pod
from testbed.plan.calico_ipam import Block, PoolExhausted, assign, blocks_of, claim
from testbed.spec.topology import load_topology


def test_first_pod_on_a_node_claims_the_lowest_free_block():
    ip, block = assign("10.244.0.0/16", 26, [Block("10.244.0.0/26", "node1")], "node2", [])
    assert (ip, block) == ("10.244.0.64", Block("10.244.0.64/26", "node2"))


def test_a_node_uses_its_own_block_until_it_is_full_then_claims_another():
    blocks = [Block("10.244.0.0/30", "node1")]
    used = ["10.244.0.0", "10.244.0.1", "10.244.0.2"]
    assert assign("10.244.0.0/24", 30, blocks, "node1", used) == ("10.244.0.3", blocks[0])
    ip, fresh = assign("10.244.0.0/24", 30, blocks, "node1", used + ["10.244.0.3"])
    assert (ip, fresh) == ("10.244.0.4", Block("10.244.0.4/30", "node1"))
    assert blocks_of(claim(blocks, fresh), "node1") == ["10.244.0.0/30", "10.244.0.4/30"]


def test_a_freed_address_is_reused_before_a_new_block():
    blocks = [Block("10.244.0.0/30", "node1"), Block("10.244.0.4/30", "node1")]
    used = ["10.244.0.0", "10.244.0.2", "10.244.0.3", "10.244.0.4"]
    assert assign("10.244.0.0/24", 30, blocks, "node1", used)[0] == "10.244.0.1"


def test_claim_is_idempotent():
    b = Block("10.244.0.0/26", "node1")
    assert claim([b], b) == [b]


def test_pool_exhausted_says_so():
    with pytest.raises(PoolExhausted, match="no free /31 block"):
        assign("10.244.0.0/30", 31, [Block("10.244.0.0/31", "a"), Block("10.244.0.2/31", "b")],
               "c", [])


def bgp_plan(mode="nodeport", block_size=26):
    topo = load_topology("topologies/talk.yaml", mode=mode)
    topo = dataclasses.replace(topo, cni=dataclasses.replace(topo.cni, routing="bgp",
                                                             block_size=block_size))
    return build_plan(topo)


@pytest.mark.parametrize("mode", ["nodeport", "container-native"])
def test_plan_routes_pods_from_blocks_in_both_modes(mode):
    plan = bgp_plan(mode)
    assert plan.overlay == "bgp" and plan.mtu == 1500      # no encapsulation to make room for
    assert plan.bgp is not None and plan.bgp.fabric_peer
    assert plan.attachment("bgp0").ip == "198.51.100.4"
    for pod in plan.pods:
        block = next(b for b in plan.blocks
                     if ipaddress.IPv4Address(pod.ip) in ipaddress.IPv4Network(b.cidr))
        assert block.node == pod.node and pod.prefixlen == 32 and pod.gateway == "169.254.1.1"
    # talk.yaml: 3 pods on node1, 1 on node2, none on node3 -> two blocks, node3 has none
    assert [(b.cidr, b.node) for b in plan.blocks] == [("10.244.0.0/26", "node1"),
                                                       ("10.244.0.64/26", "node2")]


def test_a_node_that_fills_its_block_gets_another_at_run_time():
    plan = bgp_plan(block_size=30)        # 4 addresses a block
    assert blocks_of(plan.blocks, "node1") == ["10.244.0.0/30"]   # web-0..2 hold 3
    pods = []
    for _ in range(2):
        pod = allocate_pod(plan, "web", "node1", 8080)
        with_pod(plan, pod)
        pods.append(pod)
    assert [p.ip for p in pods] == ["10.244.0.3", "10.244.0.8"]    # .4/30 is node2's
    assert blocks_of(plan.blocks, "node1") == ["10.244.0.0/30", "10.244.0.8/30"]


def test_other_modes_have_no_blocks():
    topo = load_topology("topologies/talk.yaml")
    plan = build_plan(topo)
    assert plan.overlay == "vxlan" and plan.blocks == [] and plan.bgp is None
    assert "bgp0" not in [a.host for a in plan.attachments]


def parse(text: str, mode=None):
    from testbed.spec.topology import parse_topology
    from testbed.spec.yamldoc import parse_document
    return parse_topology(parse_document("t.yaml", text), mode=mode)


TOPO = """\
name: t
vpc: {{cidr: 192.168.0.0/16, subnets: {{a: 192.168.0.0/24, b: 192.168.1.0/24}}}}
cni: {cni}
nodes: {{node1: {{subnet: a}}, {second}: {{subnet: {subnet}}}}}
deployments: {{web: {{replicas: 2}}}}
services: {{web: {{type: LoadBalancer, port: 80, targetPort: 8080}}}}
"""


def test_the_cni_bgp_fields_are_read():
    topo = parse(TOPO.format(cni="{routing: bgp, blockSize: 28, bgp: {asNumber: 65010, "
                                 "nodeToNodeMesh: false, fabricASNumber: 65010, holdTime: 6}}",
                             second="node2", subnet="b"))
    assert (topo.cni.routing, topo.cni.block_size) == ("bgp", 28)
    b = topo.cni.bgp
    assert (b.as_number, b.node_to_node_mesh, b.fabric_peer, b.fabric_as_number,
            b.hold_time_s) == (65010, False, True, 65010, 6)
    plan = build_plan(topo)
    assert [b.cidr for b in plan.blocks] == ["10.244.0.0/28", "10.244.0.16/28"]


@pytest.mark.parametrize("cni, second, subnet, mode, error", [
    ("{routing: calico}", "node2", "b", None, "cni.routing: "),
    ("{routing: bgp, bgp: {holdTime: 2}}", "node2", "b", None, "cni.bgp.holdTime: "),
    ("{routing: bgp, blockSize: 33}", "node2", "b", None, "cni.blockSize: "),
    ("{routing: bgp, bgp: {fabricPeer: false}}", "node2", "b", None,
     "only in its own subnet; nodes are in a, b"),
    ("{routing: bgp, bgp: {fabricPeer: false}}", "node2", "a", "container-native",
     "without the fabric's peering it routes none"),
    ("{routing: bgp}", "bgp0", "a", None, "nodes.bgp0: bgp0 is the fabric's BGP speaker"),
])
def test_bad_cni_bgp_settings_are_refused_at_their_line(cni, second, subnet, mode, error):
    from testbed.errors import InputError
    with pytest.raises(InputError) as exc:
        parse(TOPO.format(cni=cni, second=second, subnet=subnet), mode=mode)
    assert error in str(exc.value), str(exc.value)


def test_one_subnet_without_fabric_peering_is_fine():
    topo = parse(TOPO.format(cni="{routing: bgp, bgp: {fabricPeer: false}}", second="node2",
                             subnet="a"))
    plan = build_plan(topo)
    assert plan.bgp is not None and not plan.bgp.fabric_peer
    assert "bgp0" not in [a.host for a in plan.attachments]
