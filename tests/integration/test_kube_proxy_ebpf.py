"""kube-proxy's eBPF mode on a real classic-mode cluster: the behaviour the iptables mode's tests
check (cluster IP, NodePort with SNAT, Local keeping the client's address, affinity, the
health-check node port, refusal without endpoints), then Maglev switched on by a partial
sync, and nothing of it left after the cluster (bpffs pins, programs, maps, tc filters)."""

import dataclasses
import os
from collections import Counter

import pytest

from testbed.emulation.cluster import Cluster
from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.ebpf.proxier import EbpfKubeProxy
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import answers, node_addresses

SERVICES = os.path.join(REPO, "tests", "data", "services.yaml")
CURL_REFUSED = 7   # curl: "Failed to connect" — a RST at once, not a timeout (28)


@pytest.fixture(scope="module")
def cluster(machine_ready):
    if EbpfKubeProxy.unavailable():
        pytest.skip(EbpfKubeProxy.unavailable())
    from tests.integration.leftovers import snapshot
    before = snapshot()
    with Cluster(load_topology(SERVICES, mode="nodeport"), proxy_mode="ebpf") as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def svc(cluster, name):
    return next(s for s in cluster.plan.services if s.name == name)


def test_programs_are_attached_and_no_kube_proxy_rules(cluster):
    kp = cluster.kube_proxy
    assert kp.mode == "ebpf"
    out = cluster.sh("node1", "tc filter show dev flannel.1 ingress").stdout
    assert "cnlb_ingress" in out and "direct-action" in out, out
    pod_veth = cluster.plan.pod("web-0").veth
    assert "cnlb_ingress" in cluster.sh("node1", f"tc filter show dev {pod_veth} ingress").stdout
    assert "KUBE-SERVICES" not in cluster.sh("node1", "iptables-save -t nat").stdout
    services = {_frontend_addr(e["key"]) for e in kp.dump("node1", "cnlb_services")}
    want = {f.frontend.addr for f in maps.frontends(kp.services, kp.context("node1"))}
    assert services == want and cluster.plan.node("node1").ip in services


def test_pod_reaches_cluster_ip_and_all_endpoints_answer(cluster):
    s = svc(cluster, "web-internal")
    got = answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 60)
    assert len(got) == 60
    assert {a["pod"] for a in got} == {"web-0", "web-1", "web-2", "web-3"}
    # east-west keeps the client pod's address (no SNAT), even from the other node
    assert {a["client"] for a in got if a["pod"] != "web-0"} == {cluster.plan.pod("web-0").ip}


def test_nodeport_cluster_policy_crosses_nodes_and_snats(cluster):
    node1 = cluster.plan.node("node1")
    got = answers(cluster, "client1", f"http://{node1.ip}:30080/", 60)
    assert len(got) == 60
    pods_by_node = Counter(a["node"] for a in got)
    assert pods_by_node["node2"] > 0 and pods_by_node["node1"] > 0, pods_by_node
    # every pod saw node1 (the address its route to the pod leaves by), never the client
    assert {a["client"] for a in got} <= node_addresses(cluster, "node1")
    remote = [a for a in got if a["node"] == "node2"]
    assert {a["client"] for a in remote} == {"10.244.1.0"}    # node1's flannel.1, as MASQUERADE


def test_nodeport_local_policy_keeps_client_ip_and_stays_on_node(cluster):
    node2 = cluster.plan.node("node2")
    got = answers(cluster, "client1", f"http://{node2.ip}:30081/", 40)
    assert len(got) == 40
    assert {a["node"] for a in got} == {"node2"}
    assert {a["pod"] for a in got} == {"web-2", "web-3"}
    assert {a["client"] for a in got} == {"203.0.113.10"}


def test_load_balancer_vip_through_the_cloud_lb(cluster):
    got = answers(cluster, "client1", "http://198.51.100.10/", 20)
    assert len(got) == 20


def test_health_check_node_port_answers_local_endpoint_count(cluster):
    s = svc(cluster, "web-local")
    node1 = cluster.plan.node("node1")
    out = cluster.sh("lb0", f"curl -s -w ' %{{http_code}}' "
                            f"http://{node1.ip}:{s.health_check_node_port}/healthz").stdout
    assert out.endswith(" 200") and '"localEndpoints": 2' in out.replace('":2', '": 2'), out
    mode = cluster.sh("node1", "curl -s http://127.0.0.1:10249/proxyMode").stdout
    assert mode == "ebpf"


def test_session_affinity_sticks_one_client_to_one_pod(cluster):
    node1 = cluster.plan.node("node1")
    for client in ("client1", "client2"):
        got = answers(cluster, client, f"http://{node1.ip}:30082/", 15)
        assert len(got) == 15 and len({a["pod"] for a in got}) == 1, got


def test_node_itself_reaches_cluster_ip_and_local_service_vip(cluster):
    # the node's own traffic: translated by cnlb_host at the uplink's egress, then sent where
    # the route to the pod leaves (flannel.1 or cni0)
    s = svc(cluster, "web-internal")
    got = answers(cluster, "node1", f"http://{s.cluster_ip}:{s.port}/", 30)
    assert len(got) == 30 and {a["node"] for a in got} == {"node1", "node2"}
    local = svc(cluster, "web-local")
    got = answers(cluster, "node1", f"http://{local.vip}/", 20)   # Local: every pod, SNATed
    assert len(got) == 20 and {a["node"] for a in got} == {"node1", "node2"}
    assert {a["client"] for a in got} <= node_addresses(cluster, "node1")


def test_pod_reaches_a_local_policy_vip_on_every_pod_with_its_own_address(cluster):
    # upstream's short-circuit: a pod calling the LB's address is sent to any endpoint
    local = svc(cluster, "web-local")
    got = answers(cluster, "web-2", f"http://{local.vip}/", 30)
    assert len(got) == 30 and {a["node"] for a in got} == {"node1", "node2"}
    assert {a["client"] for a in got if a["pod"] != "web-2"} == {cluster.plan.pod("web-2").ip}


def _without_endpoints(services, service):
    return [dataclasses.replace(s, endpoints=()) if s.name == service else s for s in services]


def test_service_without_endpoints_is_refused(cluster):
    kp = cluster.kube_proxy
    s = svc(cluster, "web-internal")
    kp.sync_all(_without_endpoints(kp.services_source(), "web-internal"))
    try:
        out = cluster.sh("web-0", f"curl -s -m 3 -o /dev/null http://{s.cluster_ip}:{s.port}/")
        assert out.returncode == CURL_REFUSED, out
        entry = [e for e in kp.dump("node1", "cnlb_services")
                 if e["value"]["count"] == 0]
        assert len(entry) == 1, entry
    finally:
        kp.sync_all()
    assert len(answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 5)) == 5


def test_maglev_by_partial_sync_keeps_a_connection_on_one_pod_everywhere(cluster):
    kp = cluster.kube_proxy
    kp.options = maps.Options(algorithm="maglev", maglev_m=251)
    kp.sync_all()
    try:
        tables = kp.dump("node1", "cnlb_maglev")
        assert len(tables) == len([f for f in maps.frontends(kp.services, kp.context("node1"))
                                   if f.backends])
        # built in userspace from the same backends: the same table on every node, so a
        # connection hashes to the same pod whichever node it enters by
        s = svc(cluster, "web-internal")
        on = {n: [t["value"] for t in kp.dump(n, "cnlb_maglev")
                  if _frontend_addr(t["key"]) == s.cluster_ip] for n in ("node1", "node2")}
        assert on["node1"] and on["node1"] == on["node2"]
        node1 = cluster.plan.node("node1")
        spread = answers(cluster, "client1", f"http://{node1.ip}:30080/", 40)
        assert len({a["pod"] for a in spread}) > 1
    finally:
        kp.options = maps.Options()
        kp.sync_all()


def _frontend_addr(key) -> str:
    """A dumped frontend key's address (bpftool prints the __be32 as a host-order int)."""
    import ipaddress
    import struct
    return str(ipaddress.IPv4Address(struct.pack("<I", key["addr"] & 0xffffffff)))


def test_removed_pod_gets_no_more_requests(cluster):
    cluster.remove_pod("web-1", instant=True)
    assert cluster.kube_proxy.wait_synced()
    s = svc(cluster, "web-internal")
    got = answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 40)
    assert len(got) == 40
    assert {a["pod"] for a in got} == {"web-0", "web-2", "web-3"}
    web1 = cluster.plan.pod("web-1")
    backends = cluster.kube_proxy.dump("node2", "cnlb_backends")
    assert web1.ip not in str(backends)
