"""Routed hops to the answering pod, counted from SYN-ACK TTLs (64 − TTL): the container-native
path has fewer than the classic path when kube-proxy sends the request to another node."""

import os

from testbed.emulation.cluster import Cluster
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import entry_node, probe

TALK = os.path.join(REPO, "topologies", "talk.yaml")


def test_container_native_path_has_fewer_routed_hops(machine_ready):
    with Cluster(load_topology(TALK, mode="container-native")) as native:
        native_hops = {64 - r["syn_ack_ttl"] for r in probe(native, 20)}
    with Cluster(load_topology(TALK, mode="nodeport")) as classic:
        rows = probe(classic, 60)
        crossing = [r for r in rows if r["node"] != entry_node(classic, r["client"])]
        local = [r for r in rows if r["node"] == entry_node(classic, r["client"])]
    assert crossing, "no request crossed nodes in 60 tries"
    classic_hops = {64 - r["syn_ack_ttl"] for r in crossing}
    assert native_hops == {2}, native_hops          # VPC router + the pod's node
    assert classic_hops == {3}, classic_hops        # VPC router + entry node + pod's node
    assert {64 - r["syn_ack_ttl"] for r in local} <= {2}
