"""Upstream's Services e2e test of spec.externalIPs (kubernetes/kubernetes test/e2e/network/
service.go, "should be possible to connect to a service via ExternalIP when the external IP is
not assigned to a node"), on a 2-node cluster in every kube-proxy mode the testbed has (the
fixture's params: tests.integration.proxy_modes) in classic mode, and with iptables in
container-native mode.

Upstream creates a ClusterIP service with externalIPs [203.0.113.250] and two pods, then checks
from an exec pod that the service answers on its cluster IP and on the external IP. Here
203.0.113.0/24 is the testbed's internet side (the clients' network), so the address is
192.0.2.250, from RFC 5737's other block, as upstream's comment asks: an address no host has.
The VPC routes it to the first node, as a cluster admin's route would; the test also asks it
from client1, outside the VPC, and checks that no node has it on an interface.
"""

from __future__ import annotations

import os

import pytest

from testbed.emulation.cluster import Cluster
from testbed.emulation.session import format_status
from testbed.emulation.status import status_of
from testbed.spec.topology import load_topology
from tests.integration.e2e_jig import hostnames, service
from tests.integration.proxy_modes import MODES, skip_unless_runs

EXTERNAL_IP = "192.0.2.250"
PODS = {"externalip-test-0", "externalip-test-1"}
# upstream's CheckServiceReachability dials each address until it answers; 20 requests reach
# both pods but for 2 * (1/2)^20
TRIES = 20

TOPOLOGY = f"""
name: e2e-extip
vpc: {{cidr: 192.168.0.0/16, subnets: {{az-a: 192.168.0.0/24, az-b: 192.168.1.0/24}}}}
nodes:
  node1: {{subnet: az-a}}
  node2: {{subnet: az-b}}
deployments:
  externalip-test: {{replicas: 2, placement: {{node1: 1, node2: 1}}, port: 9376}}
  execpod: {{replicas: 1, placement: {{node2: 1}}}}
services:
  externalip-test:
    type: ClusterIP
    ports: [{{name: http, port: 80, targetPort: 9376, protocol: TCP}}]
    externalIPs: [{EXTERNAL_IP}]
loadBalancer: {{vip: 198.51.100.10, targets: nodeport}}
clients:
  client1: {{}}
"""

PARAMS = [("nodeport", m) for m in MODES] + [("container-native", "iptables")]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{a}-{b}" for a, b in PARAMS])
def cluster(request, machine_ready, tmp_path_factory):
    from tests.integration.leftovers import snapshot
    mode, proxy_mode = request.param
    skip_unless_runs(proxy_mode)
    path = tmp_path_factory.mktemp("e2e-extip") / "extip.yaml"
    path.write_text(TOPOLOGY)
    before = snapshot()
    with Cluster(load_topology(os.fspath(path), mode=mode), proxy_mode=proxy_mode) as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def test_should_be_possible_to_connect_to_a_service_via_externalip_when_the_external_ip_is_not_assigned_to_a_node(cluster):  # noqa: E501
    # upstream: "should be possible to connect to a service via ExternalIP when the external
    # IP is not assigned to a node" -- CheckServiceReachability from the exec pod: the cluster
    # IP and each external IP on the service's port
    svc = service(cluster, "externalip-test")
    assert svc.external_ips == (EXTERNAL_IP,)
    for address in (svc.cluster_ip, EXTERNAL_IP):
        got = hostnames(cluster, "execpod-0", f"http://{address}:80/", TRIES)
        assert len(got) == TRIES and set(got) == PODS, (address, got)
    # and from outside the cluster: the VPC routes the address to a node, whose kube-proxy
    # rules send it to the pods
    got = hostnames(cluster, "client1", f"http://{EXTERNAL_IP}:80/", TRIES)
    assert len(got) == TRIES and set(got) == PODS, got


def test_the_external_ip_is_on_no_node_and_the_vpc_routes_it_to_the_first_node(cluster):
    for node in cluster.plan.nodes:
        lines = cluster.sh(node.name, "ip -o -4 addr show").stdout.splitlines()
        has = [x for x in lines if f" {EXTERNAL_IP}/" in x]
        if cluster.proxy_mode == "ipvs":
            # upstream's IPVS proxier binds every service address to its dummy kube-ipvs0,
            # so that the node accepts it; no other interface has it
            assert all(" kube-ipvs0 " in x for x in has), has
        else:
            assert has == [], has
    routes = cluster.controller.api("GET", "/v1/routes")
    rows = [r for r in routes if r["kind"] == "external-ip"]
    assert [(r["prefix"], r["via"]) for r in rows] == [(f"{EXTERNAL_IP}/32", "node1")]
    shown = "\n".join(format_status(status_of(cluster)))   # what `cnlb status` prints
    assert f"externalIPs {EXTERNAL_IP} (the VPC routes them to node1)" in shown, shown
