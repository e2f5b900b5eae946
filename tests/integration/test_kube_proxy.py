"""kube-proxy's rules on a real classic-mode cluster: packets take the turns upstream's would, in
every kube-proxy mode the testbed has (the cluster fixture's params: tests.integration.proxy_modes;
a mode the kernel cannot run is "not run: kernel lacks ..."). Tests that read one mode's own
state (iptables-save) run for that mode only."""

import dataclasses
import json
import os
from collections import Counter

import pytest

from testbed.emulation.cluster import Cluster
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import answers, node_addresses
from tests.integration.proxy_modes import MODES, skip_unless_runs, state_of

SERVICES = os.path.join(REPO, "tests", "data", "services.yaml")


@pytest.fixture(scope="module", params=MODES)
def cluster(request, machine_ready):
    from tests.integration.leftovers import snapshot
    skip_unless_runs(request.param)
    before = snapshot()
    with Cluster(load_topology(SERVICES, mode="nodeport"), proxy_mode=request.param) as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def svc(cluster, name):
    return next(s for s in cluster.plan.services if s.name == name)


@pytest.mark.parametrize("cluster", ["iptables"], indirect=True)
def test_nat_table_is_kube_proxys(cluster):
    save = cluster.sh("node1", "iptables-save -t nat").stdout
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        assert f":{chain} " in save
    assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in save
    assert save.count("-j DNAT --to-destination") == 4 * 4   # 4 endpoints x 4 services


def test_pod_reaches_cluster_ip_and_all_endpoints_answer(cluster):
    s = svc(cluster, "web-internal")
    got = answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 60)
    assert len(got) == 60
    assert {a["pod"] for a in got} == {"web-0", "web-1", "web-2", "web-3"}


def test_nodeport_cluster_policy_crosses_nodes_and_snats(cluster):
    node1 = cluster.plan.node("node1")
    got = answers(cluster, "client1", f"http://{node1.ip}:30080/", 60)
    assert len(got) == 60
    pods_by_node = Counter(a["node"] for a in got)
    assert pods_by_node["node2"] > 0, pods_by_node          # kube-proxy picked remote pods too
    # every pod saw node1 (one of its addresses), never the client
    assert {a["client"] for a in got} <= node_addresses(cluster, "node1")
    remote = [a for a in got if a["node"] == "node2"]
    assert {a["client"] for a in remote} == {"10.244.1.0"}    # node1's flannel.1: SNAT + VXLAN


def test_nodeport_local_policy_keeps_client_ip_and_stays_on_node(cluster):
    node2 = cluster.plan.node("node2")
    got = answers(cluster, "client1", f"http://{node2.ip}:30081/", 40)
    assert len(got) == 40
    assert {a["node"] for a in got} == {"node2"}
    assert {a["pod"] for a in got} == {"web-2", "web-3"}
    assert {a["client"] for a in got} == {"203.0.113.10"}


def test_health_check_node_port_answers_local_endpoint_count(cluster):
    s = svc(cluster, "web-local")
    node1 = cluster.plan.node("node1")
    out = cluster.sh("lb0", f"curl -s -w ' %{{http_code}}' http://{node1.ip}:{s.health_check_node_port}/healthz").stdout
    assert out.endswith(" 200") and '"localEndpoints": 2' in out.replace('":2', '": 2'), out


def test_session_affinity_sticks_one_client_to_one_pod(cluster):
    node1 = cluster.plan.node("node1")
    for client in ("client1", "client2"):
        got = answers(cluster, client, f"http://{node1.ip}:30082/", 15)
        assert len(got) == 15 and len({a["pod"] for a in got}) == 1, got


def test_kube_proxy_healthz_and_livez_answer_on_every_node(cluster):
    # upstream e2e (test/e2e/network/kube_proxy.go / service.go) reads :10256/healthz on nodes
    for node in cluster.plan.nodes:
        out = cluster.sh(node.name, "curl -s -w ' %{http_code}' http://127.0.0.1:10256/healthz")
        body, code = out.stdout.rsplit(" ", 1)
        assert code == "200", out
        assert set(json.loads(body)) == {"lastUpdated", "currentTime", "nodeEligible"}
    out = cluster.sh("node1", "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/x")
    assert out.stdout == "404"
    out = cluster.sh("node1", "curl -s -w ' %{http_code}' http://127.0.0.1:10256/livez").stdout
    assert out.endswith(" 200") and '"nodeEligible"' not in out


def test_kube_proxy_metrics_and_proxy_mode_inside_the_node(cluster):
    node1 = cluster.plan.node("node1")
    mode = cluster.proxy_mode
    assert cluster.sh("node1", "curl -s http://127.0.0.1:10249/proxyMode").stdout == mode
    text = cluster.sh("node1", "curl -s http://127.0.0.1:10249/metrics").stdout
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"}' in text
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds " in text
    if mode in ("iptables", "ipvs"):   # the modes that write iptables rules count them
        assert 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"}' in text
    # bound to the node's loopback, as upstream's 127.0.0.1:10249: not on its VPC address
    out = cluster.sh("lb0", f"curl -s -m 2 -o /dev/null -w '%{{http_code}}' "
                            f"http://{node1.ip}:10249/metrics")
    assert out.stdout == "000"


def _terminating_on(services, service, node):
    """`services` with `service`'s endpoints on `node` terminating but still serving."""
    def change(svc):
        if svc.name != service:
            return svc
        eps = tuple(dataclasses.replace(ep, ready=False, serving=True, terminating=True)
                    if ep.node == node else ep for ep in svc.endpoints)
        return dataclasses.replace(svc, endpoints=eps)
    return [change(s) for s in services]


def test_should_fail_health_check_node_port_if_there_are_only_terminating_endpoints(cluster):
    # upstream e2e test/e2e/network/service.go: "should fail health check node port if there
    # are only terminating endpoints" -- and the NodePort keeps serving them (the fallback).
    kp = cluster.kube_proxy
    s = svc(cluster, "web-local")
    node2 = cluster.plan.node("node2")
    kp.sync_all(_terminating_on(kp.services_source(), "web-local", "node2"))
    try:
        out = cluster.sh("lb0", f"curl -s -w ' %{{http_code}}' "
                                f"http://{node2.ip}:{s.health_check_node_port}/").stdout
        assert out.endswith(" 503") and '"localEndpoints": 0' in out, out
        got = answers(cluster, "client1", f"http://{node2.ip}:{s.node_port}/", 20)
        assert len(got) == 20 and {a["pod"] for a in got} == {"web-2", "web-3"}
        assert {a["client"] for a in got} == {"203.0.113.10"}
    finally:
        kp.sync_all()
    out = cluster.sh("lb0", f"curl -s -w ' %{{http_code}}' "
                            f"http://{node2.ip}:{s.health_check_node_port}/").stdout
    assert out.endswith(" 200"), out


def test_removed_pod_gets_no_more_requests(cluster):
    cluster.remove_pod("web-1", instant=True)   # the rules after a removal, not the clock
    assert cluster.kube_proxy.wait_synced()
    s = svc(cluster, "web-internal")
    got = answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 40)
    assert len(got) == 40
    assert "web-1" not in {a["pod"] for a in got}
    assert {a["pod"] for a in got} == {"web-0", "web-2", "web-3"}
    state = state_of(cluster, "node2")   # the mode's own state no longer holds the endpoint
    web1, web0 = cluster.plan.pod("web-1"), cluster.plan.pod("web-0")
    if state is not None:
        assert f"{web0.ip}:8080" in state and f"{web1.ip}:8080" not in state

