"""kubeProxy.conntrack.tcpBeLiberal on a real cluster: kube-proxy sets
nf_conntrack_tcp_be_liberal in each node's namespace (not the machine's), and the iptables
mode then writes no INVALID DROP rule (kubernetes#117924); services answer as before. The
default (strict, the rule written) is checked beside the boom server in test_e2e_conntrack."""

import subprocess

import pytest

from testbed.kubernetes.dataplane.iptables.proxier import TCP_BE_LIBERAL
from tests.integration.e2e_jig import cluster_from, hostnames, service

TOPOLOGY = """
name: liberal
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {}, node2: {}}
deployments: {web: {replicas: 2, placement: {node1: 1, node2: 1}}}
services: {web: {type: LoadBalancer, port: 80}}
kubeProxy: {conntrack: {tcpBeLiberal: true}}
kubernetes: {timing: instant}
"""


def machine_value() -> str:
    return subprocess.run(["sysctl", "-n", TCP_BE_LIBERAL], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def cluster(machine_ready, tmp_path_factory):
    before = machine_value()
    with cluster_from(tmp_path_factory.mktemp("liberal"), "liberal", TOPOLOGY) as c:
        yield c
    assert machine_value() == before, "the machine's own conntrack setting changed"


def test_each_node_is_liberal_and_has_no_invalid_drop_rule(cluster):
    for node in ("node1", "node2"):
        assert cluster.sh(node, f"sysctl -n {TCP_BE_LIBERAL}").stdout.strip() == "1"
        forward = cluster.sh(node, "iptables -S KUBE-FORWARD").stdout
        assert "-A KUBE-FORWARD" in forward and "INVALID" not in forward, forward
    svc = service(cluster, "web")
    pods = set(hostnames(cluster, "client1", f"http://{svc.vip}:80/", 20))
    assert pods == {"web-0", "web-1"}, pods
