"""Calico-style BGP routing (cni.routing bgp) on the talk's cluster: every node's BIRD peers
with the others and with the fabric's speaker, the VPC routes exactly the blocks the nodes
own, pods talk across nodes by plain routed IP (no VXLAN device), both LB modes serve through
it, and a failed node's routes are withdrawn after the hold time. Nothing is left behind."""

import dataclasses
import os
import re
import time

import pytest

from testbed.emulation.cluster import Cluster
from testbed.emulation.session import format_status
from testbed.emulation.status import status_of
from testbed.paths import REPO
from testbed.plan.calico_ipam import blocks_of
from testbed.spec.topology import load_topology
from tests.integration.helpers import VIP, answers

TALK = os.path.join(REPO, "topologies", "talk.yaml")
HOLD_S = 3   # BGP's shortest hold time: a failed node's routes go within seconds


def bgp_topology(mode: str):
    topo = load_topology(TALK, mode=mode)
    cni = dataclasses.replace(topo.cni, routing="bgp",
                              bgp=dataclasses.replace(topo.cni.bgp, hold_time_s=HOLD_S))
    return dataclasses.replace(topo, cni=cni)


def owned_blocks(c) -> dict:
    """Every healthy node's blocks -> its address, from the plan (the IPAM's allocation)."""
    return {b: n.ip for n in c.plan.nodes if n.name not in c.failed_nodes
            for b in blocks_of(c.plan.blocks, n.name)}


def controller_routes(c) -> dict:
    return {r["prefix"]: r["next_hop"] for r in c.controller.api("GET", "/v1/bgp")["routes"]}


def wait_for(what, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return what()


@pytest.fixture(scope="class")
def classic(machine_ready):
    with Cluster(bgp_topology("nodeport")) as c:
        yield c


class TestClassicOnBgp:
    """nodeport mode: LB -> NodePort -> kube-proxy -> a pod, pods routed by BGP."""

    def test_sessions_are_established(self, classic):
        for node in classic.plan.nodes:
            rows = {p.name: p for p in classic.bgp.protocols(node.name) if p.proto == "BGP"}
            assert len(rows) == 3, rows                    # 2 mesh peers + the fabric
            assert all(p.established for p in rows.values()), rows
        speaker = [p for p in classic.bgp.protocols("bgp0") if p.proto == "BGP"]
        assert len(speaker) == 3 and all(p.established for p in speaker), speaker
        view = classic.controller.api("GET", "/v1/bgp")
        assert {n["node"] for n in view["neighbors"] if n["established"]} == \
            {"node1", "node2", "node3"}

    def test_learned_routes_equal_the_allocated_blocks(self, classic):
        blocks = owned_blocks(classic)
        assert blocks == {"10.244.0.0/26": "192.168.0.10", "10.244.0.64/26": "192.168.1.10"}
        assert {r.prefix: r.next_hop for r in classic.bgp.learned()} == blocks
        assert controller_routes(classic) == blocks
        shown = format_status(status_of(classic))   # `cnlb status` lists what the fabric learned
        assert {f"  learned   {b:<18} via {n}" for b, n in (("10.244.0.0/26", "node1"),
                                                          ("10.244.0.64/26", "node2"))} <= \
            {line.split(" (")[0] for line in shown}
        assert sum(1 for line in shown if line.startswith("  neighbour ")
                   and "Established" in line) == 3
        # each node holds a blackhole for its own block and a route to the others' blocks
        routes = classic.sh("node1", "ip route show root 10.244.0.0/16").stdout
        assert "blackhole 10.244.0.0/26 proto bird" in routes
        assert re.search(r"10\.244\.0\.64/26 via 192\.168\.0\.1 dev eth0 proto bird", routes)

    def test_no_vxlan_device_and_no_bridge(self, classic):
        for node in classic.plan.nodes:
            links = classic.sh(node.name, "ip -d -o link show").stdout
            assert "vxlan" not in links and "cni0" not in links and "flannel" not in links

    def test_pod_to_pod_across_nodes_is_routed_with_the_expected_ttl(self, classic):
        # web-0 on node1 -> web-3 on node2: node1, the VPC router and node2 each take one off
        # the reply's TTL 64 (over VXLAN the VPC's hop would be hidden in the tunnel: 62)
        out = classic.sh("web-0", "ping -n -c 1 -W 2 10.244.0.64").stdout
        assert re.search(r"ttl=61\b", out), out

    def test_the_vip_serves_from_every_pod_through_node_ports(self, classic):
        got = answers(classic, "client1", f"http://{VIP}/", 40)
        assert len(got) == 40
        assert {a["pod"] for a in got} == {p.name for p in classic.plan.pods}

    def test_a_failed_node_has_its_routes_withdrawn(self, classic):
        classic.fail_node("node2", instant=True)
        # its sessions drop after the hold time; the speaker withdraws its block, the VPC
        # forgets it, and web-3's replacement announces from its new node's block
        assert wait_for(lambda: "10.244.0.64/26" not in controller_routes(classic),
                        HOLD_S + 10), controller_routes(classic)
        speaker = {p.name: p for p in classic.bgp.protocols("bgp0")}
        assert not speaker["node_node2"].established
        assert wait_for(lambda: controller_routes(classic) == owned_blocks(classic), 20), \
            (controller_routes(classic), owned_blocks(classic))
        assert "192.168.1.10" not in controller_routes(classic).values()


def test_container_native_on_bgp_targets_pods_learned_by_bgp(no_leftovers):
    with Cluster(bgp_topology("container-native")) as c:
        assert c.controller.api("GET", "/v1/pods") == []    # no per-pod VPC routes: blocks only
        assert controller_routes(c) == owned_blocks(c)
        got = answers(c, "client1", f"http://{VIP}/", 40)
        assert len(got) == 40
        assert {a["pod"] for a in got} == {p.name for p in c.plan.pods}
        assert {a["client"] for a in got} == {"203.0.113.10"}   # straight to the pod
        birds = [pid for pid in c.bgp.procs.values()]
        sockets = [c.bgp.sock(h) for h in c.bgp.procs]
        assert all(os.path.exists(s) for s in sockets)
    assert all(p.poll() is not None for p in birds)
    assert not any(os.path.exists(s) for s in sockets)
