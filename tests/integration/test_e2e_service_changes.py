"""Upstream's [sig-network] Services e2e tests (kubernetes/kubernetes test/e2e/network/service.go)
that create, change and delete services on a running cluster or delete pods that go on serving
while they terminate, on one classic-mode cluster with Kubernetes' clock (scaled: readiness
probe every 0.5 s, a terminating pod serves through a 15 s preStop as upstream's agnhost
--delay-shutdown does). Services are made with `cnlb service apply | set | delete` (here
Cluster.apply_service / set_service / delete_service), as upstream's tests create them with the
API; each test's pods are a deployment of their own, as upstream's replication controllers are.
Each test is named after the upstream It it mirrors and quotes it; docs/e2e.md lists every
upstream test of the file and how the thresholds were scaled.

Upstream's pause and exec pods are exec-0 (node1) and exec-1 (node2); a hostNetwork pod is its
node's own namespace. Also here, because it needs the same clock: conntrack.go's "should be
able to preserve UDP traffic when initial unready endpoints get ready".
"""

from __future__ import annotations

import signal

import pytest

from tests.integration.e2e_jig import (
    CURL_OK,
    affinity_holds,
    apply,
    check_affinity,
    cluster_from,
    curl_status,
    endpoints_settle,
    hostnames,
    node_ip,
    pod_ip,
    programmed_endpoints,
    service,
    udp_answers,
    udp_client,
    verify_down,
    verify_up,
    wait_for,
)

# upstream's KubeProxyLagTimeout (2 min) and KubeProxyEndpointLagTimeout (30 s): a change that
# reaches every node; here one sync of kube-proxy (at most 1 s late) plus a readiness period
LAG_S = 10.0
PRE_STOP_S = 15      # upstream: --delay-shutdown=100 and a 100 s grace period (300 s for PNRA)

TOPOLOGY = f"""
name: e2e-svc-run
vpc: {{cidr: 192.168.0.0/16, subnets: {{az-a: 192.168.0.0/24}}}}
nodes: {{node1: {{}}, node2: {{}}}}
kubernetes:
  readinessProbe: {{periodSeconds: 0.5, failureThreshold: 2, initialDelaySeconds: 2}}
  terminationGracePeriodSeconds: {PRE_STOP_S + 5}
  preStopSeconds: {PRE_STOP_S}
deployments:
  exec: {{replicas: 2, placement: {{node1: 1, node2: 1}}}}
  multi: {{replicas: 0}}
  edit: {{replicas: 0}}
  up-down-1: {{replicas: 3}}
  up-down-2: {{replicas: 3}}
  up-down-3: {{replicas: 3}}
  service-deletion: {{replicas: 1}}
  affinity-np: {{replicas: 3}}
  tolerate: {{replicas: 1, placement: {{node1: 1}}}}
  not-tolerate: {{replicas: 1, placement: {{node1: 1}}}}
  term-itp: {{replicas: 1, placement: {{node1: 1}}}}
  term-etp-cluster: {{replicas: 1, placement: {{node1: 1}}}}
  term-etp-local: {{replicas: 1, placement: {{node1: 1}}}}
  multiproto: {{replicas: 1}}
  multiproto-lb: {{replicas: 1}}
  udp-unready: {{replicas: 0}}
  proxy-disabled: {{replicas: 3}}
  proxy-toggled: {{replicas: 3}}
  headless: {{replicas: 3}}
  headless-toggled: {{replicas: 3}}
services:
  base: {{type: ClusterIP, selector: exec, port: 80}}
loadBalancer: {{vip: 198.51.100.10, targets: nodeport}}
"""

EXEC0, EXEC1 = "exec-0", "exec-1"     # on node1, node2


@pytest.fixture(scope="module")
def cluster(machine_ready, tmp_path_factory):
    with cluster_from(tmp_path_factory.mktemp("e2e-svc-run"), "svcrun", TOPOLOGY) as c:
        yield c


def pods_of(c, deployment: str) -> set[str]:
    live = c.live_pods()
    return {p.name for p in c.plan.pods if p.deployment == deployment and p.name in live}


def eps(c, pods: set[str], port: int) -> set[str]:
    return {f"{pod_ip(c, p)}:{port}" for p in pods}


def url(ip: str, port: int) -> str:
    return f"http://{ip}:{port}/"


def _label_toggles_kube_proxy(c, label: str) -> None:
    """upstream: a service created with the label is never served; one created without it is,
    stops being served once labelled, and is served again once the label is removed (kube-proxy
    watches only services without it)."""
    disabled, toggled = ("headless", "headless-toggled") if "headless" in label else (
        "proxy-disabled", "proxy-toggled")
    hosts = ("node1", EXEC0)
    got = apply(c, f"{disabled}: {{type: ClusterIP, selector: {disabled}, port: 80, "
                   f"targetPort: 8080, labels: {{{label}}}}}\n")
    disabled_url = url(got["cluster_ip"], 80)
    pods, ip = _start_serve_hostname(c, toggled)
    verify_up(c, hosts, url(ip, 80), pods, LAG_S)
    verify_down(c, "node1", disabled_url, LAG_S)
    c.set_service(toggled, [f"labels={{{label}}}"])
    verify_down(c, "node1", url(ip, 80), LAG_S)
    c.set_service(toggled, ["labels=null"])
    verify_up(c, hosts, url(ip, 80), pods, LAG_S)
    verify_down(c, "node1", disabled_url, LAG_S)
    for name in (disabled, toggled):
        c.delete_service(name)


# "should implement service.kubernetes.io/service-proxy-name"
def test_should_implement_service_kubernetes_io_service_proxy_name(cluster):
    _label_toggles_kube_proxy(cluster, "service.kubernetes.io/service-proxy-name: foo-bar")


# "should implement service.kubernetes.io/headless"
def test_should_implement_service_kubernetes_io_headless(cluster):
    _label_toggles_kube_proxy(cluster, "service.kubernetes.io/headless: ''")


# "should serve multiport endpoints from pods" [Conformance]
def test_should_serve_multiport_endpoints_from_pods(cluster):
    """Upstream's pods each declare one of the two named target ports (pod1 svc1 -> 100, pod2
    svc2 -> 101); here a service selects a deployment and each pod serves every target port of
    the services selecting it, so both pods are endpoints of both ports."""
    c = cluster
    apply(c, "multi-endpoint-test: {type: ClusterIP, selector: multi, ports: ["
             "{name: portname1, port: 80, targetPort: 100}, "
             "{name: portname2, port: 81, targetPort: 101}]}\n")
    ip = service(c, "multi-endpoint-test").cluster_ip

    def endpoints_are(pods: set[str]) -> None:
        endpoints_settle(c, "multi-endpoint-test", eps(c, pods, 100), LAG_S, "portname1")
        endpoints_settle(c, "multi-endpoint-test", eps(c, pods, 101), LAG_S, "portname2")

    endpoints_are(set())
    pod1 = c.add_pod("multi", node="node1")
    endpoints_are({pod1})
    pod2 = c.add_pod("multi", node="node2")
    endpoints_are({pod1, pod2})
    # upstream's CheckServiceReachability from an exec pod: both ports answer
    for port in (80, 81):
        verify_up(c, (EXEC1,), url(ip, port), {pod1, pod2}, LAG_S)
    c.remove_pod(pod1, instant=True)    # upstream's DeletePodOrFail: the endpoint goes
    endpoints_are({pod2})
    c.remove_pod(pod2, instant=True)
    endpoints_are(set())
    c.delete_service("multi-endpoint-test")


# "should be updated after adding or deleting ports"
def test_should_be_updated_after_adding_or_deleting_ports(cluster):
    c = cluster
    name = "edit-port-test"
    apply(c, f"{name}: {{type: ClusterIP, selector: edit, ports: ["
             "{name: portname1, port: 80, targetPort: 100}]}\n")
    ip = service(c, name).cluster_ip
    endpoints_settle(c, name, set(), LAG_S, "portname1")
    pod1 = c.add_pod("edit", node="node1")
    endpoints_settle(c, name, eps(c, {pod1}, 100), LAG_S, "portname1")
    verify_up(c, (EXEC1,), url(ip, 80), {pod1}, LAG_S)

    # adding a port: the running pod's server listens on the new target port too
    got = c.set_service(name, ["ports=[{name: portname1, port: 80, targetPort: 100}, "
                               "{name: portname2, port: 81, targetPort: 101}]"])
    assert got["restarted_pods"] == [pod1]
    pod2 = c.add_pod("edit", node="node2")
    endpoints_settle(c, name, eps(c, {pod1, pod2}, 100), LAG_S, "portname1")
    endpoints_settle(c, name, eps(c, {pod1, pod2}, 101), LAG_S, "portname2")
    verify_up(c, (EXEC1,), url(ip, 80), {pod1, pod2}, LAG_S)
    verify_up(c, (EXEC1,), url(ip, 81), {pod1, pod2}, LAG_S)

    # deleting it: port 81 has no endpoints and no rules; port 80 goes on
    c.set_service(name, ["ports=[{name: portname1, port: 80, targetPort: 100}]"])
    endpoints_settle(c, name, set(), LAG_S, "portname2")
    endpoints_settle(c, name, eps(c, {pod1, pod2}, 100), LAG_S, "portname1")
    verify_up(c, (EXEC1,), url(ip, 80), {pod1, pod2}, LAG_S)
    assert curl_status(c, EXEC1, url(ip, 81), timeout_s=2) != CURL_OK
    for pod in (pod1, pod2):
        c.remove_pod(pod, instant=True)
    c.delete_service(name)


def _start_serve_hostname(c, name: str) -> tuple[set[str], str]:
    """upstream's StartServeHostnameService: the service over its pods (the deployment of the
    same name, 3 pods); the pods and the ClusterIP."""
    got = apply(c, f"{name}: {{type: ClusterIP, selector: {name}, port: 80, targetPort: 8080}}\n")
    return pods_of(c, name), got["cluster_ip"]


def _stop_serve_hostname(c, name: str) -> None:
    """upstream's StopServeHostnameService: the pods go (their RC deleted and collected), then
    the service."""
    for pod in sorted(pods_of(c, name)):
        c.remove_pod(pod, instant=True)
    c.delete_service(name)


# "should be able to up and down services"
def test_should_be_able_to_up_and_down_services(cluster):
    c = cluster
    # verifyServeHostnameServiceUp asks from a hostNetwork pod and from an exec pod
    hosts = ("node1", EXEC0)
    pods1, ip1 = _start_serve_hostname(c, "up-down-1")
    pods2, ip2 = _start_serve_hostname(c, "up-down-2")
    verify_up(c, hosts, url(ip1, 80), pods1, LAG_S)
    verify_up(c, hosts, url(ip2, 80), pods2, LAG_S)

    _stop_serve_hostname(c, "up-down-1")
    verify_down(c, "node1", url(ip1, 80), LAG_S)
    verify_up(c, hosts, url(ip2, 80), pods2, LAG_S)

    pods3, ip3 = _start_serve_hostname(c, "up-down-3")
    assert ip3 != ip2, f"service IPs conflict: {ip2}"
    verify_up(c, hosts, url(ip2, 80), pods2, LAG_S)
    verify_up(c, hosts, url(ip3, 80), pods3, LAG_S)
    for name in ("up-down-2", "up-down-3"):
        c.delete_service(name)


# "should work after the service has been recreated"
def test_should_work_after_the_service_has_been_recreated(cluster):
    c = cluster
    name = "service-deletion"
    hosts = ("node1", EXEC0)
    pods, ip = _start_serve_hostname(c, name)
    verify_up(c, hosts, url(ip, 80), pods, LAG_S)
    c.delete_service(name)
    assert name not in {s.name for s in c.plan.services}, "the service is still there"
    verify_down(c, "node1", url(ip, 80), LAG_S)
    again = apply(c, f"{name}: {{type: ClusterIP, selector: {name}, port: 80, "
                     "targetPort: 8080}\n")
    verify_up(c, hosts, url(again["cluster_ip"], 80), pods, LAG_S)
    c.delete_service(name)


# "should be able to switch session affinity for NodePort service [LinuxOnly]" [Conformance]
def test_should_be_able_to_switch_session_affinity_for_nodeport_service(cluster):
    """upstream's execAffinityTestForNonLBServiceWithTransition on a NodePort service: the
    first node's IP and the node port, from an exec pod; None, then ClientIP again."""
    c = cluster
    name = "affinity-np-switch"   # upstream: affinity-nodeport-transition (20 characters here)
    got = apply(c, f"{name}: {{type: NodePort, selector: affinity-np, port: 80, "
                   "targetPort: 8080, sessionAffinity: ClientIP}\n")
    target = url(node_ip(c, "node1"), got["node_port"])
    pods = pods_of(c, "affinity-np")
    # CheckServiceReachability: the service answers (with ClientIP affinity, from one pod)
    wait_for(f"{target} answering", lambda: set(hostnames(c, EXEC0, target, 3)) <= pods
             and hostnames(c, EXEC0, target, 1), LAG_S)
    c.set_service(name, {"sessionAffinity": "None"})
    trace = check_affinity(c, EXEC0, target, should_hold=False)
    assert not affinity_holds(trace), trace
    c.set_service(name, {"sessionAffinity": "ClientIP"})
    trace = check_affinity(c, EXEC0, target, should_hold=True)
    assert affinity_holds(trace), trace
    c.delete_service(name)


def _terminate(c, pod: str, unready: bool = False) -> None:
    """Delete a pod on the cluster's clock; it goes on serving through its preStop (upstream:
    agnhost --delay-shutdown). unready: its readiness probe fails meanwhile, as agnhost's
    /readyz does once it is shutting down (upstream's PublishNotReadyAddresses tests probe it);
    wait until the endpoint says so and kube-proxy has synced it."""
    c.remove_pod(pod)
    if unready:
        c.pod_servers[pod].send_signal(signal.SIGUSR1)    # /readyz answers 503
    wait_for(f"{pod} terminating{' and not serving' if unready else ''}", lambda: (
        (cond := c.endpoint_conditions().get(pod)) is not None and cond.terminating
        and cond.serving is not unready), LAG_S)
    assert c.kube_proxy.wait_synced()


def _one_webserver(c, name: str, deployment: str, spec: str) -> tuple[str, dict]:
    """The service over a deployment of one pod on node1 (upstream's webserver-pod on node0),
    its endpoint programmed on node1 (with internalTrafficPolicy Local node2 writes no rules for
    it: upstream's validateEndpointsPortsOrFail reads the API, which lists it for every node)."""
    got = apply(c, f"{name}: {{selector: {deployment}, port: 80, targetPort: 8080, {spec}}}\n")
    (pod,) = pods_of(c, deployment)
    want = eps(c, {pod}, 8080)
    wait_for(f"{name} endpoints {sorted(want)} on node1",
             lambda: programmed_endpoints(c, "node1", name) == want, LAG_S)
    return pod, got


def _answered_by(c, host: str, target: str, pod: str) -> None:
    """upstream's execHostnameTest: one request from host is answered by pod."""
    assert hostnames(c, host, target, 1) == [pod], (host, target)


# "should be able to connect to terminating and unready endpoints if PublishNotReadyAddresses is
# true"
def test_should_be_able_to_connect_to_terminating_and_unready_endpoints_if_publishnotreadyaddresses_is_true(cluster):  # noqa: E501
    c = cluster
    pod, got = _one_webserver(c, "svc-tolerate-unready", "tolerate",
                              "type: NodePort, publishNotReadyAddresses: true")
    _terminate(c, pod, unready=True)
    targets = [url(got["cluster_ip"], 80), url(node_ip(c, "node1"), got["node_port"]),
               url(node_ip(c, "node2"), got["node_port"])]
    for _ in range(5):                     # upstream: 5 rounds, 5 s apart
        for target in targets:
            _answered_by(c, EXEC1, target, pod)
    c.delete_service("svc-tolerate-unready")


# "should not be able to connect to terminating and unready endpoints if PublishNotReadyAddresses
# is false"
def test_should_not_be_able_to_connect_to_terminating_and_unready_endpoints_if_publishnotreadyaddresses_is_false(cluster):  # noqa: E501
    c = cluster
    pod, got = _one_webserver(c, "svc-not-tolerate", "not-tolerate", "type: NodePort")
    _terminate(c, pod, unready=True)
    node_ports = [url(node_ip(c, n), got["node_port"]) for n in ("node1", "node2")]
    for target in node_ports:              # the change has reached both nodes
        verify_down(c, EXEC1, target, LAG_S)
    for _ in range(5):
        for target in [url(got["cluster_ip"], 80)] + node_ports:
            assert curl_status(c, EXEC1, target, timeout_s=2) != CURL_OK, target
    c.delete_service("svc-not-tolerate")


# "should fallback to local terminating endpoints when there are no ready endpoints with
# internalTrafficPolicy=Local"
def test_should_fallback_to_local_terminating_endpoints_when_there_are_no_ready_endpoints_with_internaltrafficpolicy_local(cluster):  # noqa: E501
    c = cluster
    pod, got = _one_webserver(c, "svc-term-itp", "term-itp",
                              "type: ClusterIP, internalTrafficPolicy: Local")
    _terminate(c, pod)
    target = url(got["cluster_ip"], 80)
    for _ in range(5):
        _answered_by(c, EXEC0, target, pod)            # the endpoint's node
        # the other node has no local endpoint: dropped (upstream: a 5 s connect timeout)
        assert curl_status(c, EXEC1, target, timeout_s=1) != CURL_OK
    c.delete_service("svc-term-itp")


# "should fallback to terminating endpoints when there are no ready endpoints with
# externallTrafficPolicy=Cluster" (sic)
def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints_with_externaltrafficpolicy_cluster(cluster):  # noqa: E501
    c = cluster
    pod, got = _one_webserver(c, "svc-term-etp-cluster", "term-etp-cluster",
                              "type: NodePort")
    _terminate(c, pod)
    target = url(node_ip(c, "node1"), got["node_port"])
    for _ in range(5):
        _answered_by(c, EXEC0, target, pod)
        _answered_by(c, EXEC1, target, pod)
    c.delete_service("svc-term-etp-cluster")


# "should fallback to local terminating endpoints when there are no ready endpoints with
# externalTrafficPolicy=Local"
def test_should_fallback_to_local_terminating_endpoints_when_there_are_no_ready_endpoints_with_externaltrafficpolicy_local(cluster):  # noqa: E501
    c = cluster
    pod, got = _one_webserver(c, "svc-term-etp-local", "term-etp-local",
                              "type: NodePort, externalTrafficPolicy: Local")
    _terminate(c, pod)
    np0 = url(node_ip(c, "node1"), got["node_port"])
    np1 = url(node_ip(c, "node2"), got["node_port"])
    for _ in range(5):
        # node2 has no local endpoint: external traffic to it is dropped
        assert curl_status(c, EXEC0, np1, timeout_s=1) != CURL_OK
        _answered_by(c, EXEC0, np0, pod)
        _answered_by(c, EXEC1, np0, pod)
    c.delete_service("svc-term-etp-local")


def _udp_answers_from(c, host: str, ip: str, port: int) -> set[str]:
    return {a["pod"] for a in udp_answers(c, host, ip, port, 3)}


# "should serve endpoints on same port and different protocols" [Conformance]
def test_should_serve_endpoints_on_same_port_and_different_protocols(cluster):
    c = cluster
    name = "multiprotocol-test"
    tcp = "{name: tcp-port, port: 80, targetPort: 80}"
    udp = "{name: udp-port, port: 80, targetPort: 80, protocol: UDP}"
    got = apply(c, f"{name}: {{type: ClusterIP, selector: multiproto, ports: [{tcp}, {udp}]}}\n")
    ip = got["cluster_ip"]
    (pod,) = pods_of(c, "multiproto")
    endpoints_settle(c, name, eps(c, {pod}, 80), LAG_S, "tcp-port")
    endpoints_settle(c, name, eps(c, {pod}, 80), LAG_S, "udp-port")
    # testEndpointReachability, TCP and UDP (upstream: within 30 s)
    verify_up(c, (EXEC0,), url(ip, 80), {pod}, LAG_S)
    wait_for("UDP answered", lambda: _udp_answers_from(c, EXEC0, ip, 80) == {pod}, LAG_S)

    c.set_service(name, [f"ports=[{tcp}]"])            # TCP only
    verify_up(c, (EXEC0,), url(ip, 80), {pod}, LAG_S)
    wait_for("UDP no longer forwarded", lambda: not _udp_answers_from(c, EXEC0, ip, 80), LAG_S)

    c.set_service(name, [f"ports=[{udp}]"])            # UDP only
    wait_for("UDP answered", lambda: _udp_answers_from(c, EXEC0, ip, 80) == {pod}, LAG_S)
    verify_down(c, EXEC0, url(ip, 80), LAG_S)
    c.delete_service(name)


# "should serve endpoints on same port and different protocol for internal traffic on Type
# LoadBalancer"
def test_should_serve_endpoints_on_same_port_and_different_protocol_for_internal_traffic_on_type_loadbalancer(cluster):  # noqa: E501
    c = cluster
    name = "multiproto-lb-test"
    got = apply(c, f"{name}: {{type: LoadBalancer, selector: multiproto-lb, ports: ["
                   "{name: portname1, port: 80, targetPort: 100}, "
                   "{name: portname2, port: 80, targetPort: 100, protocol: UDP}]}\n")
    (pod,) = pods_of(c, "multiproto-lb")
    endpoints_settle(c, name, eps(c, {pod}, 100), LAG_S, "portname1")
    endpoints_settle(c, name, eps(c, {pod}, 100), LAG_S, "portname2")
    # CheckServiceReachability of a LoadBalancer service: the ClusterIP and every node's node
    # port, for each of its ports
    tcp, udp = got["ports"]
    assert tcp["node_port"] and udp["node_port"]
    dials = [(got["cluster_ip"], 80, 80)] + [
        (node_ip(c, n.name), tcp["node_port"], udp["node_port"]) for n in c.plan.nodes]
    for ip, tcp_port, udp_port in dials:
        verify_up(c, (EXEC0,), url(ip, tcp_port), {pod}, LAG_S)
        wait_for(f"UDP {ip}:{udp_port} answered",
                 lambda i=ip, p=udp_port: _udp_answers_from(c, EXEC0, i, p) == {pod}, LAG_S)
    c.delete_service(name)


# conntrack.go [sig-network] Conntrack "should be able to preserve UDP traffic when initial
# unready endpoints get ready"
def test_should_be_able_to_preserve_udp_traffic_when_initial_unready_endpoints_get_ready(cluster):
    """Upstream's server pod waits in an init container, so its endpoint exists not ready for a
    while; kube-proxy must not flush the client's conntrack entries when the not-ready endpoint
    appears and then leave a blackhole entry when it turns ready. Here the readiness probe's
    initial delay (2 s) holds the new pod not ready."""
    c = cluster
    name = "udp-unready-svc"
    got = apply(c, f"{name}: {{type: ClusterIP, selector: udp-unready, ports: ["
                   "{name: udp, port: 80, targetPort: 80, protocol: UDP}]}\n")
    with udp_client(c, EXEC0, got["cluster_ip"], 80) as client:
        wait_for("the client sending", lambda: len(client.rows) >= 5, LAG_S)
        backend = c.add_pod("udp-unready", node="node2")
        wait_for(f"{backend} published not ready", lambda: (
            (cond := c.endpoint_conditions().get(backend)) is not None and not cond.ready), LAG_S)
        wait_for(f"{backend} ready", lambda: c.endpoint_conditions()[backend].ready, LAG_S)
        # upstream: the client's log shows the backend within a minute
        wait_for(f"{backend} answering the client", lambda: client.answered_by(backend), LAG_S)
    assert len(client.source_ports()) == 1, "the client must keep one source port"
    c.remove_pod(backend, instant=True)
    c.delete_service(name)
