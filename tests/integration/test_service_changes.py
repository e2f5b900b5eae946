"""Services changed while the cluster runs (`cnlb service apply | set | delete`, here through
Cluster.apply_service / set_service / delete_service): kube-proxy's partial syncs on every node,
the pod servers' ports, the cloud LB created, replaced and removed. Tests named after upstream's
test/e2e/network/service.go where one matches, on a small cluster in both LB modes where the
LB matters: web's two pods on node1, none on node2 (so Local has a node without endpoints), an
exec pod on node2 as upstream's exec pod.
"""

from __future__ import annotations

import pytest

from testbed.spec.yamldoc import parse_document
from tests.integration.e2e_jig import (
    CURL_OK,
    CURL_REFUSED,
    affinity_holds,
    check_affinity,
    cluster_from,
    curl_status,
    hostnames,
    node_ip,
    service,
    udp_answers,
    wait_for,
)

TOPOLOGY = """
name: svc-changes
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes:
  node1: {}
  node2: {}
deployments:
  web: {replicas: 2, placement: {node1: 2}}
  exec: {replicas: 1, placement: {node2: 1}}
services:
  base: {type: ClusterIP, selector: web, port: 80, targetPort: 8080}
loadBalancer: {vip: 198.51.100.10, targets: nodeport}
clients: {client1: {}}
"""

WEB = {"web-0", "web-1"}
EXEC = "exec-0"
LAG_S = 10.0     # a change is applied when the call returns; this only absorbs the first SYN


@pytest.fixture(scope="module", params=["nodeport", "container-native"])
def cluster(request, machine_ready, tmp_path_factory):
    with cluster_from(tmp_path_factory.mktemp("svc"), "svc", TOPOLOGY, request.param) as c:
        yield c


def apply(c, text: str) -> dict:
    return c.apply_service(parse_document("svc.yaml", text))


def served(c, host: str, url: str, want: set[str] = WEB) -> set[str]:
    """The pods that answered requests from host to url, asked 6 at a time until every pod in
    want has answered (or LAG_S passed: then the ones that did)."""
    seen: set[str] = set()

    def all_seen() -> bool:
        seen.update(hostnames(c, host, url, 6))
        return seen >= want
    try:
        wait_for(f"{url} answered by {sorted(want)} from {host}", all_seen, LAG_S)
    except AssertionError:
        pass
    return seen


def test_should_be_able_to_change_the_type_and_ports_of_a_tcp_service(cluster):
    """upstream: "should be able to change the type and ports of a TCP service [Slow]" — and
    ClusterIP -> NodePort -> LoadBalancer keeps its ClusterIP and its nodePort (the API
    server's patchAllocatedValues), answering at each step."""
    c = cluster
    apply(c, "mutable: {type: ClusterIP, selector: web, port: 80, targetPort: 8080}\n")
    s = service(c, "mutable")
    ip = s.cluster_ip
    assert served(c, EXEC, f"http://{ip}:80/") == WEB
    nodeport = c.set_service("mutable", {"type": "NodePort"})["node_port"]
    assert service(c, "mutable").cluster_ip == ip
    assert served(c, EXEC, f"http://{node_ip(c, 'node1')}:{nodeport}/") == WEB
    lb = c.set_service("mutable", ["type=LoadBalancer"])
    assert (lb["node_port"], lb["cluster_ip"]) == (nodeport, ip) and lb["lb"]["created"]
    vip = lb["vip"]
    assert served(c, "client1", f"http://{vip}:80/") == WEB
    # the ports change: the listener is replaced, the old port answers nothing
    c.set_service("mutable", ["port=81"])
    assert served(c, "client1", f"http://{vip}:81/") == WEB
    assert curl_status(c, "client1", f"http://{vip}:80/", timeout_s=2) != CURL_OK
    assert served(c, EXEC, f"http://{ip}:81/") == WEB
    c.delete_service("mutable")


@pytest.mark.parametrize("cluster", ["nodeport"], indirect=True, scope="module")
def test_should_be_able_to_update_service_type_to_nodeport_listening_on_same_port_number_but_different_protocols(cluster):  # noqa: E501
    """upstream: "should be able to update service type to NodePort listening on same port
    number but different protocols": one nodePort for TCP and UDP 53, each answering."""
    c = cluster   # no cloud LB involved: one mode is enough
    apply(c, "dns: {type: ClusterIP, selector: web, port: 53, targetPort: 8080}\n")
    got = c.set_service("dns", ["type=NodePort",
                                "ports=[{name: tcp, port: 53, targetPort: 8080}, "
                                "{name: udp, port: 53, targetPort: 5353, protocol: UDP}]"])
    tcp, udp = got["ports"]
    assert tcp["node_port"] == udp["node_port"] is not None and udp["protocol"] == "UDP"
    assert sorted(got["restarted_pods"]) == sorted(WEB)   # now serving UDP 5353 too
    node1 = node_ip(c, "node1")
    assert served(c, EXEC, f"http://{node1}:{tcp['node_port']}/") == WEB
    answered = wait_for("UDP on the node port", lambda: udp_answers(
        c, EXEC, node1, udp["node_port"], 4), LAG_S)
    assert {a["pod"] for a in answered} <= WEB
    c.delete_service("dns")


@pytest.mark.parametrize("cluster", ["nodeport"], indirect=True, scope="module")
def test_should_be_able_to_switch_session_affinity_for_service_with_type_clusterip(cluster):
    """upstream: "should be able to switch session affinity for service with type clusterIP
    [LinuxOnly]"."""
    c = cluster   # kube-proxy only: one mode is enough
    apply(c, "affinity: {type: ClusterIP, selector: web, port: 80, targetPort: 8080}\n")
    url = f"http://{service(c, 'affinity').cluster_ip}:80/"
    assert not affinity_holds(check_affinity(c, EXEC, url, should_hold=False))
    c.set_service("affinity", {"sessionAffinity": "ClientIP"})
    assert affinity_holds(check_affinity(c, EXEC, url, should_hold=True))
    c.set_service("affinity", {"sessionAffinity": "None"})
    assert not affinity_holds(check_affinity(c, EXEC, url, should_hold=False))
    c.delete_service("affinity")


def hc_status(c, node: str, port: int) -> int:
    """The HTTP status node's health-check node port answers from exec-0 (0: nothing)."""
    out = c.sh(EXEC, f"curl -s -o /dev/null -w '%{{http_code}}' -m 2 "
                     f"http://{node_ip(c, node)}:{port}/", timeout=10).stdout
    return int(out or 0)


def test_external_traffic_policy_local_opens_the_health_check_node_port_and_cluster_closes_it(
        cluster):
    """ETP Cluster -> Local: kube-proxy opens the healthCheckNodePort on every node (200 where
    web has pods, 503 on node2) and the LB checks it; back to Cluster it closes."""
    c = cluster
    apply(c, "etp: {type: LoadBalancer, selector: web, port: 80, targetPort: 8080}\n")
    vip = service(c, "etp").vip
    assert served(c, "client1", f"http://{vip}/") == WEB
    got = c.set_service("etp", {"externalTrafficPolicy": "Local"})
    hc = got["health_check_node_port"]
    assert hc and (hc_status(c, "node1", hc), hc_status(c, "node2", hc)) == (200, 503)
    assert served(c, "client1", f"http://{vip}/") == WEB
    if c.plan.mode == "nodeport":   # the LB now checks the nodes on that port
        rows = c.lb.targets("etp")
        assert {r.detail.get("health_check_port") for r in rows} == {hc}
    got = c.set_service("etp", {"externalTrafficPolicy": "Cluster"})
    assert got["health_check_node_port"] is None
    assert curl_status(c, EXEC, f"http://{node_ip(c, 'node1')}:{hc}/") == CURL_REFUSED
    assert served(c, "client1", f"http://{vip}/") == WEB
    c.delete_service("etp")


def test_should_release_nodeports_on_delete(cluster):
    """upstream: "should release NodePorts on delete": after delete the node port is refused
    (kube-proxy's REJECT / nothing listening), the VIP answers nothing, and a new service can
    take the same node port and VIP."""
    c = cluster
    got = apply(c, "gone: {type: LoadBalancer, selector: web, port: 80, targetPort: 8080}\n")
    nodeport, vip = got["node_port"], got["vip"]
    node1 = node_ip(c, "node1")
    assert served(c, "client1", f"http://{vip}/") == WEB
    assert served(c, EXEC, f"http://{node1}:{nodeport}/") == WEB
    assert c.delete_service("gone")["lb"]["removed"] == ["gone"]
    assert curl_status(c, EXEC, f"http://{node1}:{nodeport}/") == CURL_REFUSED
    assert curl_status(c, "client1", f"http://{vip}/", timeout_s=2) != CURL_OK
    again = apply(c, f"again: {{type: LoadBalancer, selector: web, port: 80, targetPort: 8080, "
                     f"nodePort: {nodeport}, loadBalancerIP: {vip}}}\n")
    assert (again["node_port"], again["vip"]) == (nodeport, vip)
    assert served(c, "client1", f"http://{vip}/") == WEB
    c.delete_service("again")
    assert [s.name for s in c.plan.services] == ["base"]

