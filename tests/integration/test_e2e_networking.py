"""Upstream's [sig-network] Networking e2e tests (kubernetes/kubernetes
test/e2e/network/networking.go) that apply to an emulated cluster, on one classic-mode cluster
set up as upstream's NetworkingTestConfig is: netserver pods (the endpoints) on both nodes, a
test-container pod, a NodePort service with an HTTP and a UDP port over the netservers, and a
ClientIP-affinity service over them. Each test is named after the upstream It it mirrors and
quotes it; docs/e2e.md lists the others and how the thresholds were scaled.

"node" dials come from the node's own namespace, which is what a hostNetwork pod shares.
"""

from __future__ import annotations

import pytest

from tests.integration.e2e_jig import (
    answers,
    apply,
    cluster_from,
    node_ip,
    service,
    udp_answers,
    wait_for,
)

# upstream's MaxTries for a dial (at least 10, more with more endpoints): enough requests that
# every endpoint answers some with random picks among 3 (missing one: (2/3)^20 < 0.1%)
MAX_TRIES = 20
# upstream's SessionAffinityChecks
SESSION_AFFINITY_CHECKS = 10
NETSERVERS = {"netserver-0", "netserver-1", "netserver-2"}

TOPOLOGY = """
name: e2e-net
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {}, node2: {}}
deployments:
  netserver: {replicas: 3, placement: {node1: 2, node2: 1}}
  test-container: {replicas: 1, placement: {node1: 1}}
services:
  node-port-service:
    type: NodePort
    selector: netserver
    ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: udp, port: 90, targetPort: 8081, protocol: UDP}
  session-affinity:
    type: ClusterIP
    selector: netserver
    sessionAffinity: ClientIP
    ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: udp, port: 90, targetPort: 8081, protocol: UDP}
loadBalancer: {vip: 198.51.100.10, targets: nodeport}
"""

TEST_CONTAINER = "test-container-0"


@pytest.fixture(scope="module")
def cluster(machine_ready, tmp_path_factory):
    with cluster_from(tmp_path_factory.mktemp("e2e-net"), "net", TOPOLOGY) as c:
        yield c


def port_of(c, svc: str, name: str):
    return next(p for p in service(c, svc).ports if p.name == name)


def targets(c, proto: str) -> list[tuple[str, int]]:
    """upstream's two dials of a Granular Check: the cluster IP on the service port, and the
    first node's IP on the NodePort."""
    s = service(c, "node-port-service")
    p = port_of(c, "node-port-service", proto)
    return [(s.cluster_ip, p.port), (node_ip(c, "node1"), p.node_port)]


def dial(c, host: str, proto: str, ip: str, port: int, tries: int = MAX_TRIES) -> list[str]:
    """upstream's Dial...: `tries` requests; the endpoints that answered."""
    if proto == "http":
        got = answers(c, host, f"http://{ip}:{port}/", tries)
    else:
        got = udp_answers(c, host, ip, port, tries)
    return [a["pod"] for a in got]


def all_endpoints_answer(c, host: str, proto: str, endpoints: set[str] = NETSERVERS) -> None:
    for ip, port in targets(c, proto):
        got = dial(c, host, proto, ip, port)
        assert set(got) == endpoints, (host, proto, ip, port, got)
        assert len(got) == MAX_TRIES, f"{MAX_TRIES - len(got)} of {MAX_TRIES} unanswered"


# "should check kube-proxy urls"
def test_should_check_kube_proxy_urls(cluster):
    # from a hostNetwork pod: kube-proxy's /healthz on 10256, its /proxyMode on 127.0.0.1:10249
    health = cluster.sh("node1", "curl -s -i -m 2 http://127.0.0.1:10256/healthz").stdout
    assert health.startswith("HTTP/1.1 200 OK"), health
    assert "lastUpdated" in health, health
    mode = cluster.sh("node1", "curl -s -w ' %{http_code}' -m 2 "
                               "http://127.0.0.1:10249/proxyMode").stdout
    assert mode.endswith(" 200") and mode.startswith("iptables"), mode


# [Granular Checks: Services] "should function for pod-Service: http"
def test_granular_checks_services_should_function_for_pod_service_http(cluster):
    all_endpoints_answer(cluster, TEST_CONTAINER, "http")


# [Granular Checks: Services] "should function for pod-Service: udp"
def test_granular_checks_services_should_function_for_pod_service_udp(cluster):
    all_endpoints_answer(cluster, TEST_CONTAINER, "udp")


# [Granular Checks: Services] "should function for node-Service: http"
def test_granular_checks_services_should_function_for_node_service_http(cluster):
    all_endpoints_answer(cluster, "node1", "http")


# [Granular Checks: Services] "should function for node-Service: udp"
def test_granular_checks_services_should_function_for_node_service_udp(cluster):
    all_endpoints_answer(cluster, "node1", "udp")


# [Granular Checks: Services] "should function for endpoint-Service: http"
def test_granular_checks_services_should_function_for_endpoint_service_http(cluster):
    all_endpoints_answer(cluster, "netserver-0", "http")


# [Granular Checks: Services] "should function for endpoint-Service: udp"
def test_granular_checks_services_should_function_for_endpoint_service_udp(cluster):
    all_endpoints_answer(cluster, "netserver-0", "udp")


# [Granular Checks: Services] "should support basic nodePort: udp functionality"
def test_granular_checks_services_should_support_basic_nodeport_udp_functionality(cluster):
    # from the node (hostNetwork) to its own IP on the UDP NodePort
    port = port_of(cluster, "node-port-service", "udp").node_port
    got = dial(cluster, "node1", "udp", node_ip(cluster, "node1"), port)
    assert set(got) == NETSERVERS and len(got) == MAX_TRIES, got


def _one_endpoint(cluster, proto: str) -> None:
    s = service(cluster, "session-affinity")
    port = port_of(cluster, "session-affinity", proto).port
    got = dial(cluster, TEST_CONTAINER, proto, s.cluster_ip, port, SESSION_AFFINITY_CHECKS)
    assert len(got) == SESSION_AFFINITY_CHECKS, got
    assert len(set(got)) == 1, f"expected 1 endpoint, got {set(got)}"


# [Granular Checks: Services] "should function for client IP based session affinity: http
# [LinuxOnly]"
def test_granular_checks_services_should_function_for_client_ip_based_session_affinity_http(
        cluster):
    _one_endpoint(cluster, "http")


# [Granular Checks: Services] "should function for client IP based session affinity: udp
# [LinuxOnly]"
def test_granular_checks_services_should_function_for_client_ip_based_session_affinity_udp(
        cluster):
    _one_endpoint(cluster, "udp")


# [Granular Checks: Services] "should be able to handle large requests: http"
def test_granular_checks_services_should_be_able_to_handle_large_requests_http(cluster):
    # upstream echoes a 2000-byte message through /echo; the pod server has no echo path, so the
    # same message rides in the request's query string and must be answered
    ip, port = targets(cluster, "http")[0]
    msg = "42" * 1000
    got = answers(cluster, TEST_CONTAINER, f"http://{ip}:{port}/echo?msg={msg}", 5)
    assert len(got) == 5 and {a["pod"] for a in got} <= NETSERVERS, got


# [Granular Checks: Services] "should be able to handle large requests: udp"
def test_granular_checks_services_should_be_able_to_handle_large_requests_udp(cluster):
    # a 2000-byte datagram through the cluster IP is answered (the pod server echoes only first
    # lines of up to 64 characters, so the answer, not the echo, is what is checked)
    ip, port = targets(cluster, "udp")[0]
    got = udp_answers(cluster, TEST_CONTAINER, ip, port, 5, payload="n" + "o" * 1999)
    assert len(got) == 5 and {a["pod"] for a in got} <= NETSERVERS, got


def _copy_of_node_port_service(cluster, name: str) -> dict:
    """A NodePort service over the netservers as NetworkingTestConfig creates its own (upstream
    makes one per test; the tests below delete theirs, so they make it here)."""
    return apply(cluster, f"{name}: {{type: NodePort, selector: netserver, ports: ["
                          "{name: http, port: 80, targetPort: 8080}, "
                          "{name: udp, port: 90, targetPort: 8081, protocol: UDP}]}\n")


def _node_port_of(got: dict, proto: str) -> int:
    return next(p["node_port"] for p in got["ports"] if p["name"] == proto)


def _update_node_port(cluster, proto: str) -> None:
    """upstream: from a node (hostNetwork), its own IP on the node port reaches every endpoint;
    the service is deleted; then 10 tries get no endpoint at all."""
    got = _copy_of_node_port_service(cluster, f"node-port-{proto}")
    ip, port = node_ip(cluster, "node1"), _node_port_of(got, proto)
    got_eps = dial(cluster, "node1", proto, ip, port)
    assert set(got_eps) == NETSERVERS and len(got_eps) == MAX_TRIES, got_eps
    cluster.delete_service(f"node-port-{proto}")
    # kube-proxy's sync lands when the call returns; the 10 tries must all go unanswered
    wait_for(f"{proto} node port {port} answering nobody",
             lambda: not dial(cluster, "node1", proto, ip, port, 10), 10.0)


# [Granular Checks: Services] "should update nodePort: http [Slow]"
def test_granular_checks_services_should_update_nodeport_http(cluster):
    _update_node_port(cluster, "http")


# [Granular Checks: Services] "should update nodePort: udp [Slow]"
def test_granular_checks_services_should_update_nodeport_udp(cluster):
    _update_node_port(cluster, "udp")


# [Granular Checks: Services] "should function for multiple endpoint-Services with same
# selector"
def test_granular_checks_services_should_function_for_multiple_endpoint_services_with_same_selector(cluster):  # noqa: E501
    """upstream: a second NodePort service over the same pods; both answer from an endpoint
    pod (cluster IP and node port); the first is deleted and the second goes on answering."""
    c = cluster
    first = _copy_of_node_port_service(c, "node-port-first")
    second = apply(c, "node-port-second: {type: NodePort, selector: netserver, ports: ["
                      "{name: http, port: 80, targetPort: 8080}]}\n")
    node1 = node_ip(c, "node1")
    dials = {"first": [(first["cluster_ip"], 80), (node1, _node_port_of(first, "http"))],
             "second": [(second["cluster_ip"], 80), (node1, _node_port_of(second, "http"))]}

    def every_endpoint_answers(which: str) -> None:
        for ip, port in dials[which]:
            got = dial(c, "netserver-0", "http", ip, port)
            assert set(got) == NETSERVERS and len(got) == MAX_TRIES, (which, ip, port, got)

    every_endpoint_answers("first")
    every_endpoint_answers("second")
    c.delete_service("node-port-first")
    every_endpoint_answers("second")
    c.delete_service("node-port-second")


def _update_endpoints(cluster, proto: str, pod: str) -> None:
    """upstream's DeleteNetProxyPod then a dial that must reach every remaining endpoint and
    only them (minTries = maxTries)."""
    before = {p.name for p in cluster.plan.pods if p.deployment == "netserver"
              and p.name in cluster.live_pods()}
    assert pod in before
    all_endpoints_answer(cluster, TEST_CONTAINER, proto, before)
    cluster.remove_pod(pod, instant=True)   # the endpoint update, not the termination's clock
    ip, port = targets(cluster, proto)[0]
    # kube-proxy's rules follow within its sync pacing (upstream's KubeProxyLagTimeout, 2 min;
    # 10 s here): until then a request may still go to the removed pod and get no answer

    def settled() -> bool:
        got = dial(cluster, TEST_CONTAINER, proto, ip, port, 5)
        return len(got) == 5 and pod not in got

    wait_for(f"{proto} answered without {pod}", settled, 10.0)
    all_endpoints_answer(cluster, TEST_CONTAINER, proto, before - {pod})


# [Granular Checks: Services] "should update endpoints: http"
def test_granular_checks_services_should_update_endpoints_http(cluster):
    _update_endpoints(cluster, "http", "netserver-0")


# [Granular Checks: Services] "should update endpoints: udp"
def test_granular_checks_services_should_update_endpoints_udp(cluster):
    _update_endpoints(cluster, "udp", "netserver-1")
