"""A real cluster from the talk's topology, in both modes: reachability as the mode promises,
the overlay carrying cross-node pod traffic in classic mode, the controller routing pod
addresses in container-native mode, and nothing left behind."""

import os

from testbed.emulation.cluster import Cluster
from testbed.emulation.reachability import reachability
from testbed.paths import REPO
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")


def counters(cluster, host, dev):
    out = cluster.sh(host, f"cat /sys/class/net/{dev}/statistics/tx_packets "
                           f"/sys/class/net/{dev}/statistics/rx_packets").stdout.split()
    return int(out[0]), int(out[1])


def test_classic_mode_reachability_and_vxlan(no_leftovers):
    topo = load_topology(TALK, mode="nodeport")
    with Cluster(topo) as cluster:
        plan = cluster.plan
        rows = reachability(cluster)
        bad = [r for r in rows if not r.ok]
        assert not bad, bad
        # clients cannot reach pod addresses: the VPC does not know the overlay
        assert any(r.group == "pod addresses" and not r.expect and r.answered == 0 for r in rows)

        # cross-node pod traffic goes through the VXLAN device
        remote = next(p for p in plan.pods if p.node == "node2")
        before = counters(cluster, "node1", "flannel.1")
        ping = cluster.sh("node1", f"ping -c 5 -i 0.2 -W 1 {remote.ip}")
        assert ping.returncode == 0, ping.stdout
        after = counters(cluster, "node1", "flannel.1")
        assert after[0] - before[0] >= 5 and after[1] - before[1] >= 5

        # an HTTP request from a node to a remote pod answers with that pod's name
        resp = cluster.sh("node1", f"curl -s -m 5 http://{remote.ip}:{remote.port}/")
        assert f'"pod":"{remote.name}"' in resp.stdout, resp


def test_container_native_reachability_and_pod_routes(no_leftovers):
    topo = load_topology(TALK, mode="container-native")
    with Cluster(topo) as cluster:
        plan = cluster.plan
        rows = reachability(cluster)
        bad = [r for r in rows if not r.ok]
        assert not bad, bad
        # the VPC routes pod addresses: a client reaches a pod directly
        pod = plan.pods[0]
        resp = cluster.sh("client1", f"curl -s -m 5 http://{pod.ip}:{pod.port}/")
        assert f'"pod":"{pod.name}"' in resp.stdout, resp
        assert '"client":"203.0.113.10"' in resp.stdout, resp
        # and the controller says it has a route for every pod
        routes = cluster.controller.api("GET", "/v1/routes")
        text = str(routes)
        for p in plan.pods:
            assert p.ip in text
        # no overlay in container-native mode
        assert cluster.sh("node1", "ip link show flannel.1").returncode != 0
