"""The address plan: deterministic, unique, inside the right ranges, names the kernel accepts."""

import ipaddress
import os
from dataclasses import replace

import pytest

from testbed.cloud.fabric import render_fabric
from testbed.emulation.reachability import expected_probes
from testbed.paths import REPO
from testbed.plan.addresses import allocate_pod, build_plan, veth_name, with_pod
from testbed.spec.topology import load_topology

TOPOLOGIES = [os.path.join(REPO, "topologies", f) for f in ("minimal.yaml", "talk.yaml", "large.yaml")]
MODES = ["nodeport", "container-native"]


@pytest.mark.parametrize("path", TOPOLOGIES, ids=os.path.basename)
@pytest.mark.parametrize("mode", MODES)
def test_plan_is_deterministic_and_unique(path, mode):
    plan = build_plan(load_topology(path, mode=mode))
    assert plan.to_dict() == build_plan(load_topology(path, mode=mode)).to_dict()
    ips = [a.ip for a in plan.attachments] + [p.ip for p in plan.pods]
    macs = [a.mac for a in plan.attachments] + [p.mac for p in plan.pods] + [p.veth_mac for p in plan.pods]
    assert len(ips) == len(set(ips)) and len(macs) == len(set(macs))
    for name in [a.port for a in plan.attachments] + [p.veth for p in plan.pods]:
        assert len(name) <= 15           # IFNAMSIZ - 1


def test_classic_pods_live_in_their_nodes_range():
    plan = build_plan(load_topology(TOPOLOGIES[1], mode="nodeport"))
    for pod in plan.pods:
        node = plan.node(pod.node)
        assert ipaddress.IPv4Address(pod.ip) in ipaddress.IPv4Network(node.pod_cidr)
        assert pod.gateway == node.cni0_ip and pod.prefixlen == 24
    assert all(b.port == 30080 for b in plan.load_balancers[0].backends)
    assert {b.name for b in plan.load_balancers[0].backends} == {"node1", "node2", "node3"}
    assert render_fabric(plan, load_topology(TOPOLOGIES[1]).load_balancer.health_check)["pod_routes"] == []


def test_container_native_pods_take_vpc_addresses_of_their_nodes_subnet():
    topo = load_topology(TOPOLOGIES[1], mode="container-native")
    plan = build_plan(topo)
    for pod in plan.pods:
        subnet = topo.subnet(plan.node(pod.node).subnet)
        assert ipaddress.IPv4Address(pod.ip) in subnet.cidr and pod.prefixlen == 32
        assert pod.gateway == "169.254.1.1"
    lb = plan.load_balancers[0]
    assert [(b.name, b.port) for b in lb.backends] == [(p.name, 8080) for p in plan.pods]
    fabric = render_fabric(plan, topo.load_balancer.health_check)
    assert {r["ip"] for r in fabric["pod_routes"]} == {p.ip for p in plan.pods}


def test_allocated_pod_takes_the_lowest_free_address_and_joins_the_service():
    plan = build_plan(load_topology(TOPOLOGIES[1], mode="nodeport"))
    pod = allocate_pod(plan, "web", "node3", 8080)
    assert (pod.name, pod.ip) == ("web-4", "10.244.3.2")
    with_pod(plan, pod)
    assert "web-4" in plan.services[0].endpoints


@pytest.mark.parametrize("mode", MODES)
def test_reachability_expectations_follow_the_mode(mode):
    plan = build_plan(load_topology(TOPOLOGIES[1], mode=mode))
    client_to_pods = {p.expect for p in expected_probes(plan) if p.group == "pod addresses"}
    assert client_to_pods == {mode == "container-native"}


def test_a_veth_name_taken_on_the_node_is_rehashed():
    first = veth_name("web-0")
    other = veth_name("web-0", {first})
    assert other != first and other.startswith("veth") and len(other) <= 15
    plan = build_plan(load_topology(TOPOLOGIES[1], mode="nodeport"))
    # a pod on node3 that already holds the next pod's veth name: the new pod takes another
    plan.pods[0] = replace(plan.pods[0], node="node3", veth=veth_name("web-4"))
    pod = allocate_pod(plan, "web", "node3", 8080)
    assert pod.name == "web-4" and pod.veth == veth_name("web-4", {veth_name("web-4")})


def test_a_large_cluster_pings_each_pod_from_its_node_and_one_other():
    from collections import Counter

    from testbed.emulation.reachability import FULL_MESH_MAX, pods_pinged_by
    plan = build_plan(load_topology(os.path.join(REPO, "bench", "pods5000.yaml"),
                                    mode="container-native"))
    assert len(plan.nodes) * len(plan.pods) > FULL_MESH_MAX
    probes = [p for p in expected_probes(plan) if p.group == "pods"]
    by_pod = Counter(p.target for p in probes)
    assert set(by_pod) == {p.name for p in plan.pods}          # every pod is pinged
    assert set(by_pod.values()) == {2} and len(probes) == 2 * len(plan.pods)
    node_of = {p.name: p.node for p in plan.pods}
    sources: dict = {}
    for p in probes:
        sources.setdefault(p.target, set()).add(p.source)
    # by its own node and by one other
    assert all(node_of[pod] in s and len(s) == 2 for pod, s in sources.items())
    own = {p.name for p in pods_pinged_by(plan, "node1", 0) if p.node == "node1"}
    assert own == {p.name for p in plan.pods if p.node == "node1"}
