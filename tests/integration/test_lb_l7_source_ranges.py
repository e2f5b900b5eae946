"""loadBalancerSourceRanges at the L7 cloud load balancer (HAProxy in lb7, an ALB's security
group): a client in the ranges is served through the VIP, one outside has its connection
refused by the frontend's ACL. The ranges are the topology's: the l7 LB does not change its
listeners while it runs (docs/services.md). The L4 LB and kube-proxy's firewall are
test_e2e_loadbalancer_source_ranges.py's."""

from __future__ import annotations

from tests.integration.e2e_jig import CURL_OK, CURL_TIMEOUT, cluster_from, curl_status, wait_for

LAG_S = 10.0

TOPOLOGY = """
name: l7-ranges
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {}}
deployments: {web: {replicas: 2}}
services:
  web: {type: LoadBalancer, port: 80, loadBalancerSourceRanges: [203.0.113.10/32]}
loadBalancer: {vip: 198.51.100.10, targets: nodeport, kind: l7,
               healthCheck: {interval: 500ms, timeout: 300ms, healthyThreshold: 2,
                             unhealthyThreshold: 2}}
kubernetes: {timing: instant}
clients: {client1: {}, client2: {}}
"""


def _served(c, client: str) -> bool:
    url = f"http://{c.plan.load_balancers[0].vip}:80/"
    wait_for(f"{url} served to client1",
             lambda: curl_status(c, "client1", url, timeout_s=2) == CURL_OK, LAG_S)
    got = curl_status(c, client, url, timeout_s=2)
    assert got != CURL_TIMEOUT, f"{client}: curl exit {got} (want served or refused)"
    return got == CURL_OK


def test_the_l7_lb_serves_only_clients_in_the_source_ranges(machine_ready, tmp_path):
    with cluster_from(tmp_path, "l7ranges", TOPOLOGY) as c:
        assert c.plan.attachment("client1").ip == "203.0.113.10"
        assert not _served(c, "client2")
    # the control: without the ranges the same client is served
    open_lb = TOPOLOGY.replace(", loadBalancerSourceRanges: [203.0.113.10/32]", "")
    with cluster_from(tmp_path, "l7open", open_lb) as c:
        assert _served(c, "client2")
