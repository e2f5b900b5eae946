"""kube-proxy's nftables mode with kubeProxy.nftables.coldStartInSteps on a real cluster: each
node, without the table at start, got its first sync as several `nft -f` transactions; the
table they left is the one upstream's one transaction leaves (as `nft -j` lists it); traffic
goes through it; a later change is one partial transaction. The steps themselves are unit-tested
on the nft model (tests/unit/test_nftables_coldstart.py) and measured at 10,000 services by
bench/kubeproxy_sync.py --backends nftables-steps."""

import dataclasses
import os

import pytest

from testbed.emulation.cluster import Cluster
from testbed.kubernetes.dataplane.nftables import listing
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import answers

SERVICES = os.path.join(REPO, "tests", "data", "services.yaml")


@pytest.fixture(scope="module")
def cluster(machine_ready):
    from tests.integration.leftovers import snapshot
    before = snapshot()
    topo = load_topology(SERVICES, mode="nodeport")
    topo = dataclasses.replace(topo, kube_proxy=dataclasses.replace(
        topo.kube_proxy, mode="nftables", nftables_cold_start_in_steps=True))
    with Cluster(topo) as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def _state(cluster, node: str) -> dict:
    """The table as `nft -j` lists it, handles left out, elements sorted (the bench's form)."""
    return listing.table_state(cluster.sh(node, "nft -j list table ip kube-proxy").stdout)


def test_each_node_cold_started_in_steps_to_the_one_transaction_table(cluster):
    kp = cluster.kube_proxy
    assert kp.cold_start_in_steps
    assert set(kp.cold_starts) == {n.name for n in cluster.plan.nodes}
    assert all(count >= 2 for count in kp.cold_starts.values()), kp.cold_starts
    node1 = cluster.plan.node("node1")
    got = answers(cluster, "client1", f"http://{node1.ip}:30080/", 12)
    assert len(got) == 12 and len({a["pod"] for a in got}) > 1, got
    stepped = _state(cluster, "node1")
    # the same services in one transaction, on node1 itself: its table removed, then loaded
    with kp.sync_lock:   # no sync of kube-proxy's own in between
        one = kp.render_node("node1", kp.applied["node1"])
        cluster.sh("node1", "nft delete table ip kube-proxy")
        kp.apply_text("node1", one)
    assert _state(cluster, "node1") == stepped
    assert len(answers(cluster, "client1", f"http://{node1.ip}:30080/", 4)) == 4


def test_a_later_change_is_one_partial_transaction(cluster):
    kp = cluster.kube_proxy
    synced = len(kp.sync_times)
    cluster.remove_pod("web-1", instant=True)
    assert kp.wait_synced()
    assert {kind for _, _, kind in kp.sync_times[synced:]} == {"partial"}
    web = next(s for s in cluster.plan.services if s.name == "web-internal")
    got = answers(cluster, "web-0", f"http://{web.cluster_ip}:{web.port}/", 30)
    assert len(got) == 30 and "web-1" not in {a["pod"] for a in got}
