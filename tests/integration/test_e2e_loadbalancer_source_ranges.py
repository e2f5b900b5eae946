"""Upstream's [sig-network] LoadBalancers e2e test of spec.loadBalancerSourceRanges
(kubernetes/kubernetes test/e2e/network/loadbalancer.go), in both LB modes (classic: instance
targets; container-native: ip targets) and with kube-proxy's iptables, nftables and eBPF modes.

Upstream's clients are two pods on different nodes; a pod calling the LB IP is caught by
kube-proxy on its own node (the VIP is reported as an IP), so they test kube-proxy's firewall
(KUBE-FW- / firewall-, the eBPF mode's cnlb_src_range map). Here the test itself calls too,
from two clients on the internet side: their connections go through the cloud LB, which
filters the VIP's traffic as an NLB's security group does (the VPC controller's flows). The
ranges are changed with `cnlb service set` (Cluster.set_service), as upstream's jig updates
the Service.
"""

from __future__ import annotations

import pytest

from tests.integration.e2e_jig import CURL_OK, apply, cluster_from, curl_status, wait_for

LAG_S = 10.0   # upstream's loadBalancerLagTimeout (2 min, scaled: docs/e2e.md)
ACCEPT, DROP = "accept-0", "drop-0"             # upstream's acceptPod and dropPod
INSIDE, OUTSIDE = "client1", "client2"          # the test itself, from two addresses

TOPOLOGY = """
name: e2e-lb-ranges
vpc: {{cidr: 192.168.0.0/16, subnets: {{az-a: 192.168.0.0/24, az-b: 192.168.1.0/24}}}}
nodes: {{node1: {{subnet: az-a}}, node2: {{subnet: az-b}}}}
deployments:
  web: {{replicas: 2, placement: {{node1: 1, node2: 1}}}}
  accept: {{replicas: 1, placement: {{node1: 1}}}}
  drop: {{replicas: 1, placement: {{node2: 1}}}}
services:
  base: {{type: ClusterIP, selector: accept, port: 80}}
loadBalancer: {{vip: 198.51.100.10, targets: nodeport,
               healthCheck: {{interval: 500ms, timeout: 300ms, healthyThreshold: 2,
                             unhealthyThreshold: 2}}}}
kubeProxy: {{mode: {proxy_mode}}}
kubernetes: {{timing: instant}}
clients: {{client1: {{}}, client2: {{}}}}
"""

# kube-proxy's firewall (the pods' calls) is each proxy mode's (the ebpf mode's cnlb_src_range
# map); the cloud LB's filter (the clients') each LB mode's: four clusters cover both axes
PARAMS = [("nodeport", "iptables"), ("nodeport", "nftables"), ("nodeport", "ebpf"),
          ("container-native", "iptables")]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{lb}-{p}" for lb, p in PARAMS])
def cluster(request, machine_ready, tmp_path_factory):
    lb_mode, proxy_mode = request.param
    with cluster_from(tmp_path_factory.mktemp("e2e-lb-ranges"), "lbranges",
                      TOPOLOGY.format(proxy_mode=proxy_mode), lb_mode) as c:
        yield c


def _address(c, host: str) -> str:
    """A pod's or a client's address (what a source range names)."""
    return c.plan.pod(host).ip if host in (ACCEPT, DROP) else c.plan.attachment(host).ip


def _reachable(c, host: str, url: str) -> None:
    """upstream's checkReachabilityFromPod(true, ...): a request answers, within the lag."""
    wait_for(f"{url} reachable from {host}",
             lambda: curl_status(c, host, url, timeout_s=2) == CURL_OK, LAG_S)


def _unreachable(c, host: str, url: str) -> None:
    """checkReachabilityFromPod(false, ...): no answer (dropped: the connect times out, 1 s
    being some thousand round trips here), within the lag; then a second request to be sure it
    was not one lost packet."""
    wait_for(f"{url} unreachable from {host}",
             lambda: curl_status(c, host, url, timeout_s=1) != CURL_OK, LAG_S)
    assert curl_status(c, host, url, timeout_s=1) != CURL_OK


def _ranges(c, *hosts: str) -> list[str]:
    return [f"{_address(c, h)}/32" for h in hosts]


# [LoadBalancers] "should only allow access from service loadbalancer source ranges [Slow]"
def test_should_only_allow_access_from_service_loadbalancer_source_ranges(cluster):
    c = cluster
    ranges = _ranges(c, ACCEPT, INSIDE)
    got = apply(c, "ranges: {type: LoadBalancer, selector: web, port: 80, targetPort: 8080, "
                   f"loadBalancerSourceRanges: [{', '.join(ranges)}]}}\n")
    url = f"http://{got['vip']}:80/"
    for host in (ACCEPT, INSIDE):
        _reachable(c, host, url)
    for host in (DROP, OUTSIDE):
        _unreachable(c, host, url)

    # "Update service LoadBalancerSourceRange and check reachability"
    c.set_service("ranges", {"loadBalancerSourceRanges": _ranges(c, DROP, OUTSIDE)})
    for host in (DROP, OUTSIDE):
        _reachable(c, host, url)
    for host in (ACCEPT, INSIDE):
        _unreachable(c, host, url)

    # "Delete LoadBalancerSourceRange field and check reachability"
    c.set_service("ranges", {"loadBalancerSourceRanges": None})
    for host in (ACCEPT, DROP, INSIDE, OUTSIDE):
        _reachable(c, host, url)
    c.delete_service("ranges")
