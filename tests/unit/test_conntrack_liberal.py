"""kubeProxy.conntrack.tcpBeLiberal (KubeProxyConntrackConfiguration.tcpBeLiberal): the
topology field, and the iptables mode's INVALID DROP rule, written only where conntrack is not
liberal (kubernetes#117924: upstream's conntrackTCPLiberal)."""

import pytest

from testbed.errors import InputError
from testbed.kubernetes.dataplane.iptables import rules
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

BASE = "name: t\nnodes: {node1: {}}\ndeployments: {web: {}}\nservices: {web: {}}\n"
DROP = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
SERVICES = [ServicePort("default", "web", "", "TCP", "10.96.0.10", 80, 8080)]


def kube_proxy(extra: str):
    return parse_topology(parse_document("t.yaml", BASE + extra)).kube_proxy


def test_off_by_default_and_set_by_the_file():
    assert kube_proxy("").conntrack_tcp_be_liberal is False
    assert kube_proxy("kubeProxy: {conntrack: {tcpBeLiberal: true}}\n").conntrack_tcp_be_liberal


def test_a_bad_value_is_one_line_naming_the_field():
    with pytest.raises(InputError) as err:
        kube_proxy("kubeProxy: {conntrack: {tcpBeLiberal: yes please}}\n")
    assert "kubeProxy.conntrack.tcpBeLiberal" in str(err.value)
    with pytest.raises(InputError, match="kubeProxy.conntrack"):
        kube_proxy("kubeProxy: {conntrack: {maxPerCore: 0}}\n")


def test_the_drop_rule_only_where_conntrack_is_strict():
    strict = NodeContext("node1", "192.168.0.10", "10.244.0.0/16")
    liberal = NodeContext("node1", "192.168.0.10", "10.244.0.0/16", conntrack_tcp_liberal=True)
    assert DROP in rules.render(SERVICES, strict).splitlines()
    text = rules.render(SERVICES, liberal)
    assert DROP not in text.splitlines() and "-A KUBE-FORWARD" in text   # the rest stays
    # nodes that differ only in it get their own text
    assert rules.render_key(SERVICES, strict) != rules.render_key(SERVICES, liberal)
