"""kube-proxy's nftables mode on a real classic-mode cluster, what only this mode has: the kernel
holds upstream's table and no KUBE- iptables rule, affinity lives in sets, a Service without
endpoints is rejected through no-endpoint-services, and a change is a partial sync. The
behaviour every mode shares (ClusterIP, NodePort SNAT, Local, affinity, health-check node port)
is tests/integration/test_kube_proxy.py's, run once per mode."""

import dataclasses
import os

import pytest

from testbed.emulation.cluster import Cluster
from testbed.kubernetes.dataplane.nftables import rules
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.e2e_jig import CURL_REFUSED
from tests.integration.helpers import answers

SERVICES = os.path.join(REPO, "tests", "data", "services.yaml")


@pytest.fixture(scope="module")
def cluster(machine_ready):
    from tests.integration.leftovers import snapshot
    before = snapshot()
    with Cluster(load_topology(SERVICES, mode="nodeport"), proxy_mode="nftables") as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def svc(cluster, name):
    return next(s for s in cluster.plan.services if s.name == name)


def _table(cluster, node: str) -> str:
    return cluster.sh(node, "nft list table ip kube-proxy").stdout


def test_the_kube_proxy_table_and_no_kube_iptables_rules(cluster):
    listing = _table(cluster, "node1")
    for name in ("chain services", "map service-ips", "map service-nodeports",
                 "map no-endpoint-services", "set cluster-ips", "set nodeport-ips",
                 "chain mark-for-masquerade", "numgen random mod 4 vmap"):
        assert name in listing, name
    chains = {line.split()[1] for line in listing.splitlines() if line.strip().startswith("chain ")}
    assert chains >= rules.service_chain_names(cluster.kube_proxy.services, cluster.kube_proxy
                                               .context("node1"))
    # iptables mode is not also active (the kubelet's own chains are there, as on any node);
    # the CNI's own iptables rules are still there
    save = cluster.sh("node1", "iptables-save").stdout
    kubelets = (":KUBE-IPTABLES-HINT ", ":KUBE-KUBELET-CANARY ")
    assert not [line for line in save.splitlines()
                if "KUBE-" in line and not line.startswith(kubelets)], save
    assert "FLANNEL" in save
    assert cluster.sh("node1", "curl -s http://127.0.0.1:10249/proxyMode").stdout == "nftables"


def test_session_affinity_is_kept_in_the_endpoints_affinity_sets(cluster):
    node1 = cluster.plan.node("node1")
    for client in ("client1", "client2"):
        got = answers(cluster, client, f"http://{node1.ip}:30082/", 15)
        assert len(got) == 15 and len({a["pod"] for a in got}) == 1, got
    # upstream: one set per endpoint, the client address added by the endpoint chain (before
    # SNAT) with the affinity timeout; node1 sent them to the pods it picked
    listing = cluster.sh("node1", "nft list sets ip").stdout
    sets = [block for block in listing.split("\tset ") if block.startswith("affinity-")]
    assert sets and all("timeout 3h" in block for block in sets), listing
    assert any("elements = { 203.0.113." in block for block in sets), listing


def _without_endpoints(services, service):
    return [dataclasses.replace(s, endpoints=()) if s.name == service else s for s in services]


def test_service_without_endpoints_is_rejected(cluster):
    kp = cluster.kube_proxy
    s = svc(cluster, "web-internal")
    kp.sync_all(_without_endpoints(kp.services_source(), "web-internal"))
    try:
        out = cluster.sh("web-0", f"curl -s -m 3 -o /dev/null http://{s.cluster_ip}:{s.port}/")
        assert out.returncode == CURL_REFUSED, out
        assert f"{s.cluster_ip} . tcp . {s.port} comment" in _table(cluster, "node1")
    finally:
        kp.sync_all()
    assert len(answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 5)) == 5


def test_removed_pod_is_a_partial_sync_and_gets_no_more_requests(cluster):
    kp = cluster.kube_proxy
    synced = len(kp.sync_times)
    cluster.remove_pod("web-1", instant=True)
    assert kp.wait_synced()
    assert {kind for _, _, kind in kp.sync_times[synced:]} == {"partial"}
    s = svc(cluster, "web-internal")
    got = answers(cluster, "web-0", f"http://{s.cluster_ip}:{s.port}/", 40)
    assert len(got) == 40 and {a["pod"] for a in got} == {"web-0", "web-2", "web-3"}
    web1 = cluster.plan.pod("web-1")
    for node in ("node1", "node2"):
        listing = _table(cluster, node)
        assert f"{web1.ip}:8080" not in listing and f"{web1.ip}/8080" not in listing
        # what the node holds is what a full sync of the same services writes
        chains = {line.split()[1] for line in listing.splitlines()
                  if line.strip().startswith("chain ") and "/" in line}
        assert chains == rules.service_chain_names(kp.services, kp.context(node))
    metrics = cluster.sh("node1", "curl -s http://127.0.0.1:10249/metrics").stdout
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in metrics
