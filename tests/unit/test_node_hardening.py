"""Node hardening as upstream does it: a node never has route_localnet=1 without the rule
kube-proxy and kubelet write beside it (KUBE-FIREWALL "block incoming localnet connections",
the CVE-2020-8558 fix), which drops packets to 127.0.0.0/8 that come from elsewhere."""

import os
import re

import pytest

from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.cni.base import sysctl
from testbed.kubernetes.dataplane.iptables.proxier import render_node_rules
from testbed.kubernetes.node import node_setup
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology

TOPOLOGIES = sorted(os.path.join(REPO, "topologies", f)
                    for f in os.listdir(os.path.join(REPO, "topologies")) if f.endswith(".yaml"))
MODES = ["nodeport", "container-native"]

SETS_LOCALNET = re.compile(r"(route_localnet|route\.localnet)\S*\s*=?\s*1\b|"
                           r"echo\s+1\s*>\s*/proc/sys/net/ipv4/conf/\S+/route_localnet")


def sets_route_localnet(lines: list[str]) -> bool:
    return any(SETS_LOCALNET.search(line) for line in lines)


def blocks_localnet(rules: str) -> bool:
    """True when the filter table drops new connections to 127.0.0.0/8 from elsewhere on
    INPUT, as upstream's KUBE-FIREWALL rule does."""
    table, chains_from_input, drops = None, {"INPUT"}, []
    for line in rules.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if table != "filter" or not line.startswith("-A "):
            continue
        chain = line.split()[1]
        jump = re.search(r"-j (\S+)", line)
        if chain == "INPUT" and jump:
            chains_from_input.add(jump.group(1))
        if ("-d 127.0.0.0/8" in line and "! -s 127.0.0.0/8" in line
                and "! --ctstate RELATED,ESTABLISHED,DNAT" in line and line.endswith("-j DROP")):
            drops.append(chain)
    return any(chain in chains_from_input for chain in drops)


def node_scripts(plan) -> dict:
    """What testbed.emulation.cluster runs in each node's namespace: its set-up and its pods'
    halves."""
    out = {}
    for node in plan.nodes:
        lines = node_setup(plan, node, offloads_off=True)
        for pod in plan.pods_on(node.name):
            lines += plugin_for(plan).attach_pod(plan, pod)
        out[node.name] = lines
    return out


@pytest.mark.parametrize("path", TOPOLOGIES, ids=os.path.basename)
@pytest.mark.parametrize("mode", MODES)
def test_no_node_has_route_localnet_without_the_localnet_drop_rule(path, mode):
    plan = build_plan(load_topology(path, mode=mode))
    for node, lines in node_scripts(plan).items():
        if sets_route_localnet(lines):
            assert blocks_localnet(render_node_rules(plan, node)), (
                f"{node}: route_localnet=1 without KUBE-FIREWALL's localnet DROP rule")


def test_route_localnet_is_not_set_since_nothing_needs_it():
    # kube-proxy here excludes 127.0.0.0/8 from NodePorts (upstream's
    # --iptables-localhost-nodeports=false): no reason to open the loopback range at all
    plan = build_plan(load_topology(os.path.join(REPO, "topologies", "talk.yaml"), mode="nodeport"))
    assert not any(sets_route_localnet(lines) for lines in node_scripts(plan).values())
    assert "! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in render_node_rules(plan, plan.nodes[0].name)


def test_the_checks_tell_a_bad_node_from_a_good_one():
    assert sets_route_localnet([sysctl("net.ipv4.conf.all.route_localnet", 1)])
    assert sets_route_localnet(["sysctl -w net.ipv4.conf.eth0.route_localnet=1"])
    assert not sets_route_localnet([sysctl("net.ipv4.conf.all.route_localnet", 0),
                                    sysctl("net.ipv4.conf.all.rp_filter", 1)])
    upstream = ("*filter\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n"
                '-A KUBE-FIREWALL -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment '
                '"block incoming localnet connections" -m conntrack ! --ctstate '
                "RELATED,ESTABLISHED,DNAT -j DROP\nCOMMIT\n")
    assert blocks_localnet(upstream)
    assert not blocks_localnet(upstream.replace("-A INPUT -j KUBE-FIREWALL\n", ""))
    assert not blocks_localnet(upstream.replace("*filter", "*nat"))
