"""The CNI seam: every plugin is in the registry, and each renders what its real model does."""

import dataclasses
import os

import pytest

from testbed.kubernetes.cni import PLUGINS, plugin_for
from testbed.kubernetes.node import node_setup
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")


def plan_of(mode: str, overlay: str = "vxlan"):
    topo = load_topology(TALK, mode=mode)
    return build_plan(dataclasses.replace(topo, cni=dataclasses.replace(topo.cni, overlay=overlay)))


def test_registry_has_the_four_plugins_and_refuses_others():
    assert set(PLUGINS) == {"vxlan", "host-gw", "vpc-native", "bgp"}
    plan = dataclasses.replace(plan_of("nodeport"), overlay="weave")
    with pytest.raises(ValueError, match="no CNI plugin named 'weave'"):
        plugin_for(plan)


@pytest.mark.parametrize("mode, overlay, plugin", [
    ("nodeport", "vxlan", "vxlan"), ("nodeport", "host-gw", "host-gw"),
    ("container-native", "vxlan", "vpc-native"), ("container-native", "host-gw", "vpc-native")])
def test_the_plan_picks_the_plugin(mode, overlay, plugin):
    assert plugin_for(plan_of(mode, overlay)).name == plugin


def test_vxlan_routes_other_nodes_pod_ranges_through_the_tunnel():
    plan = plan_of("nodeport")
    node1, others = plan.nodes[0], plan.nodes[1:]
    script = "\n".join(node_setup(plan, node1, offloads_off=True))
    assert "ip link add cni0 type bridge" in script
    assert "type vxlan id 1 " in script and "dstport 8472" in script
    for other in others:
        assert f"ip route add {other.pod_cidr} via " in script and "dev flannel.1 onlink" in script
        assert f"dst {other.ip}" in script   # FDB entry towards the remote VTEP


def test_host_gw_routes_via_the_other_nodes_without_a_tunnel():
    plan = plan_of("nodeport", "host-gw")
    script = "\n".join(node_setup(plan, plan.nodes[0], offloads_off=False))
    assert "vxlan" not in script
    for other in plan.nodes[1:]:
        assert f"ip route add {other.pod_cidr} via {other.ip} dev eth0" in script


def test_vpc_native_gives_each_pod_a_32_and_no_bridge():
    plan = plan_of("container-native")
    node = plan.nodes[0]
    script = "\n".join(node_setup(plan, node, offloads_off=False))
    assert "cni0" not in script and "vxlan" not in script
    for pod in plan.pods_on(node.name):
        assert f"ip route add {pod.ip}/32 dev {pod.veth} scope link" in script
    pod = plan.pods_on(node.name)[0]
    assert plugin_for(plan).detach_pod(plan, pod) == [
        f"ip route del {pod.ip}/32 dev {pod.veth} 2>/dev/null || true"]
    assert any("default via 169.254.1.1" in c for c in plugin_for(plan).setup_pod(plan, pod))


@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_flannel_masquerades_what_leaves_the_pod_range_as_flanneld_ip_masq_does(overlay):
    from testbed.kubernetes.cni.bridge import masq_rules
    plan = plan_of("nodeport", overlay)
    node = plan.nodes[0]
    script = "\n".join(node_setup(plan, node, offloads_off=True))
    assert masq_rules(plan.pod_cidr, node.pod_cidr) in script
    rules = masq_rules(plan.pod_cidr, node.pod_cidr).splitlines()
    masq = '-m comment --comment "flanneld masq"'
    # flannel's order: kube-proxy's marked traffic, pod-to-pod and traffic for this node's pods
    # are returned before anything is masqueraded
    assert rules[:4] == ["*nat", ":FLANNEL-POSTRTG - [0:0]",
                         f"-A POSTROUTING {masq} -j FLANNEL-POSTRTG",
                         f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {masq} -j RETURN"]
    assert rules[4:7] == [
        f"-A FLANNEL-POSTRTG -s {node.pod_cidr} -d {plan.pod_cidr} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {plan.pod_cidr} -d {node.pod_cidr} {masq} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {plan.pod_cidr} -d {node.pod_cidr} {masq} -j RETURN"]
    assert [r.split(masq)[1] for r in rules[7:9]] == [" -j MASQUERADE --random-fully"] * 2
    assert rules[-1] == "COMMIT"


def test_container_native_pods_are_not_masqueraded():
    plan = plan_of("container-native")
    assert "FLANNEL-POSTRTG" not in "\n".join(node_setup(plan, plan.nodes[0], offloads_off=True))


def test_ip_masq_false_leaves_pods_addresses_alone():
    plan = dataclasses.replace(plan_of("nodeport"), ip_masq=False)
    assert "FLANNEL-POSTRTG" not in "\n".join(node_setup(plan, plan.nodes[0], offloads_off=True))
