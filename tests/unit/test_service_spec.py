"""Services in Kubernetes' field names (ports, UDP, traffic policies, publishNotReadyAddresses),
the LB's address kind, and the `kubernetes:` timing section: accepted as upstream accepts them,
refused in one line each as the API server (or the flag parser) refuses them."""

import pytest

from testbed.errors import InputError
from testbed.spec.fields import format_seconds, go_duration
from testbed.spec.model import Timing, allocate_node_ports
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

BASE = """\
name: t
nodes:
  node1: {}
  node2: {}
deployments:
  web: {replicas: 2}
  dns: {replicas: 2, port: 5353}
"""


def topo(tail: str, mode: str | None = None):
    return parse_topology(parse_document("t.yaml", BASE + tail), mode=mode)


def problems(tail: str) -> list[str]:
    with pytest.raises(InputError) as err:
        topo(tail)
    return [str(p) for p in err.value.problems]


def one_problem(tail: str) -> str:
    found = problems(tail)
    assert len(found) == 1, found
    return found[0]


# -- ports and protocols --------------------------------------------------------------------------

def test_several_ports_with_tcp_and_udp_on_the_same_number():
    t = topo("""services:
  dns:
    type: LoadBalancer
    ports:
      - {name: dns-tcp, port: 53, targetPort: 5353}
      - {name: dns-udp, port: 53, targetPort: 5353, protocol: UDP}
      - {name: metrics, port: 9153, targetPort: 9153, nodePort: 31000}
""")
    svc = t.services[0]
    assert [(p.name, p.port, p.target_port, p.protocol) for p in svc.ports] == [
        ("dns-tcp", 53, 5353, "TCP"), ("dns-udp", 53, 5353, "UDP"),
        ("metrics", 9153, 9153, "TCP")]
    assert (svc.port, svc.target_port, svc.protocol, svc.node_port) == (53, 5353, "TCP", None)
    # upstream's allocator: TCP and UDP 53 share one node port; the written one is kept
    assert allocate_node_ports(t)["dns"].ports == (30000, 30000, 31000)


def test_the_shorthand_is_one_unnamed_port_and_udp_is_accepted():
    svc = topo("services:\n  web: {type: NodePort, protocol: UDP}\n").services[0]
    assert svc.ports == ()
    assert [(p.name, p.port, p.target_port, p.protocol) for p in svc.all_ports] == [
        ("", 80, 8080, "UDP")]


def test_a_single_listed_port_needs_no_name_and_its_target_defaults_to_the_pods_port():
    svc = topo("services:\n  dns:\n    ports: [{port: 53, protocol: UDP}]\n").services[0]
    assert svc.ports[0].name == "" and svc.ports[0].target_port == 5353


def test_sctp_is_refused_with_the_reason():
    line = one_problem("services:\n  web: {protocol: SCTP}\n")
    assert line.startswith("t.yaml:9: services.web.protocol: SCTP is not supported")
    assert "TCP and UDP" in line and " — " in line


def test_lower_case_protocol_gets_a_hint():
    assert "did you mean 'UDP'?" in one_problem(
        "services:\n  web:\n    ports: [{port: 53, protocol: udp}]\n")


@pytest.mark.parametrize("ports, where, text", [
    ("[{port: 80}, {port: 81}]", "services.web.ports[0]", "needs a name"),
    ("[{name: a, port: 80}, {name: a, port: 81}]", "services.web.ports[1].name",
     "'a' is also the name of ports[0]"),
    ("[{name: Http, port: 80}]", "services.web.ports[0].name", "not a valid port name"),
    ("[{name: a, port: 80}, {name: b, port: 80}]", "services.web.ports[1].port",
     "80/TCP is also ports[0]"),
    ("[{name: a}]", "services.web.ports[0].port", "missing required field"),
    ("[]", "services.web.ports", "no ports"),
    ("{http: 80}", "services.web.ports", "expected a list of ports"),
    ("[80]", "services.web.ports[0]", "expected a mapping"),
    ("[{name: a, port: 80, nodePort: 30001}, {name: b, port: 81, nodePort: 30001}]",
     "services.web.ports[1].nodePort", "already this service's TCP nodePort"),
    ("[{name: a, port: 80, targetPort: 0}]", "services.web.ports[0].targetPort", "outside"),
    ("[{name: a, port: 80, node: 1}]", "services.web.ports[0].node", "unknown key 'node'"),
])
def test_bad_ports_are_refused_as_the_api_server_does(ports, where, text):
    found = problems(f"services:\n  web:\n    type: NodePort\n    ports: {ports}\n")
    assert f": {where}: " in found[0] and text in found[0], found
    assert all(text in line for line in found), found   # one per port that is wrong


def test_a_port_field_beside_ports_is_refused():
    line = one_problem("services:\n  web:\n    port: 80\n    ports: [{port: 81}]\n")
    assert "services.web.port: 'port' is given beside 'ports'" in line


def test_a_node_port_may_serve_tcp_and_udp_of_one_service_but_not_two_services():
    t = topo("""services:
  dns:
    type: NodePort
    ports:
      - {name: tcp, port: 53, nodePort: 30053}
      - {name: udp, port: 53, protocol: UDP, nodePort: 30053}
""")
    assert allocate_node_ports(t)["dns"].ports == (30053, 30053)
    line = one_problem("""services:
  dns:
    type: NodePort
    ports: [{name: udp, port: 53, protocol: UDP, nodePort: 30053}]
  web: {type: NodePort, nodePort: 30053}
""")
    assert "services.web.nodePort: 30053 is already used by service 'dns'" in line


def test_a_clusterip_port_has_no_node_port():
    line = one_problem("services:\n  web:\n    type: ClusterIP\n"
                       "    ports: [{port: 80, nodePort: 30001}]\n")
    assert "services.web.ports[0].nodePort: a ClusterIP service has no nodePort" in line


def test_too_many_ports():
    ports = ", ".join(f"{{name: p{i}, port: {i + 1}}}" for i in range(101))
    assert "101 ports is more than the 100" in one_problem(
        f"services:\n  web:\n    ports: [{ports}]\n")


# -- traffic policies, publishNotReadyAddresses ----------------------------------------------------

def test_local_external_policy_on_a_node_port_service_is_allowed_without_health_port():
    t = topo("services:\n  web: {type: NodePort, externalTrafficPolicy: Local}\n")
    assert t.services[0].external_traffic_policy == "Local"
    assert allocate_node_ports(t)["web"].health_check is None
    line = one_problem("services:\n  web: {type: NodePort, externalTrafficPolicy: Local, "
                       "healthCheckNodePort: 30100}\n")
    assert "healthCheckNodePort: may only be set when type is LoadBalancer" in line


def test_internal_traffic_policy_and_publish_not_ready_addresses():
    svc = topo("services:\n  web: {type: ClusterIP, internalTrafficPolicy: Local, "
               "publishNotReadyAddresses: true}\n").services[0]
    assert svc.internal_traffic_policy == "Local" and svc.publish_not_ready_addresses
    default = topo("services:\n  web: {}\n").services[0]
    assert default.internal_traffic_policy == "Cluster"
    assert not default.publish_not_ready_addresses
    assert "did you mean 'Local'?" in one_problem(
        "services:\n  web: {internalTrafficPolicy: local}\n")
    assert "expected true or false" in one_problem(
        "services:\n  web: {publishNotReadyAddresses: sometimes}\n")


# -- the load balancer's address kind --------------------------------------------------------------

def test_load_balancer_address_kind():
    assert topo("services:\n  web: {}\n").load_balancer.address == "ip"
    t = topo("services:\n  web: {}\nloadBalancer: {address: hostname}\n")
    assert t.load_balancer.address == "hostname"
    line = one_problem("services:\n  web: {}\nloadBalancer: {address: dns}\n")
    assert "loadBalancer.address: 'dns' is not one of ip, hostname" in line


# -- the kubernetes: section -----------------------------------------------------------------------

def test_timing_defaults_are_upstreams():
    t = topo("services:\n  web: {}\n").kubernetes
    assert t == Timing()
    assert (t.readiness_period_s, t.readiness_failure_threshold, t.readiness_success_threshold,
            t.readiness_initial_delay_s) == (10.0, 3, 1, 0.0)
    assert t.termination_grace_period_s == 30.0 and t.min_sync_period_s == 1.0
    assert t.node_monitor_grace_period_s == 50.0       # Kubernetes 1.32 and later
    assert t.not_ready_toleration_s == 300.0 and t.lb_deregistration_delay_s == 300.0
    assert t.endpoint_updates_batch_period_s == 0.0 and not t.instant


def test_timing_section_is_read_in_kubernetes_names():
    t = topo("""services:
  web: {}
kubernetes:
  timing: instant
  readinessProbe: {periodSeconds: 0.5, initialDelaySeconds: 2, failureThreshold: 1,
                   successThreshold: 2}
  terminationGracePeriodSeconds: 5
  preStopSeconds: 5
  kubeProxy: {minSyncPeriod: 250ms}
  endpointUpdatesBatchPeriod: 1s
  nodeMonitorGracePeriod: 1m30s
  notReadyTolerationSeconds: 60
  loadBalancer: {registrationDelay: 10s, deregistrationLag: 2s, deregistrationDelay: 0}
""").kubernetes
    assert t.instant and t.readiness_period_s == 0.5 and t.readiness_initial_delay_s == 2
    assert (t.readiness_failure_threshold, t.readiness_success_threshold) == (1, 2)
    assert (t.termination_grace_period_s, t.pre_stop_s) == (5, 5)
    assert t.min_sync_period_s == 0.25 and t.endpoint_updates_batch_period_s == 1.0
    assert t.node_monitor_grace_period_s == 90.0 and t.not_ready_toleration_s == 60
    assert (t.lb_registration_delay_s, t.lb_deregistration_lag_s,
            t.lb_deregistration_delay_s) == (10.0, 2.0, 0.0)


@pytest.mark.parametrize("section, where, text", [
    ("{timing: fast}", "kubernetes.timing", "'fast' is not one of realistic, instant"),
    ("{readinessProbe: {periodSeconds: 0}}", "kubernetes.readinessProbe.periodSeconds",
     "outside"),
    ("{readinessProbe: {failureThreshold: 0}}", "kubernetes.readinessProbe.failureThreshold",
     "outside"),
    ("{readinessProbe: {timeoutSeconds: 1}}", "kubernetes.readinessProbe.timeoutSeconds",
     "unknown key"),
    ("{kubeProxy: {minSyncPeriod: 1}}", "kubernetes.kubeProxy.minSyncPeriod", "has no unit"),
    ("{kubeProxy: {minSyncPeriod: 1 second}}", "kubernetes.kubeProxy.minSyncPeriod",
     "expected a duration"),
    ("{nodeMonitorGracePeriod: 2h}", "kubernetes.nodeMonitorGracePeriod",
     "longer than 1h"),
    ("{loadBalancer: {deregistrationDelay: 61m}}",
     "kubernetes.loadBalancer.deregistrationDelay", "longer than 1h"),
    ("{terminationGracePeriodSeconds: 10, preStopSeconds: 20}", "kubernetes.preStopSeconds",
     "longer than terminationGracePeriodSeconds"),
    ("{terminationGracePeriodSeconds: -1}", "kubernetes.terminationGracePeriodSeconds",
     "outside"),
    ("[realistic]", "kubernetes", "expected a mapping"),
])
def test_bad_timing_is_refused_in_one_line(section, where, text):
    line = one_problem(f"services:\n  web: {{}}\nkubernetes: {section}\n")
    assert f": {where}: " in line and text in line and " — " in line, line


@pytest.mark.parametrize("raw, seconds", [
    ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("250us", 0.00025),
    (0, 0.0), ("0s", 0.0), ("1.5s", 1.5)])
def test_go_durations(raw, seconds):
    assert go_duration(3600)(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["1", 5, "s", "1x", "-1s", True, None, "1s 2s"])
def test_bad_go_durations(raw):
    with pytest.raises(ValueError):
        go_duration(3600)(raw)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.25, "250ms"), (1, "1s"),
                                           (90, "1m30s"), (300, "5m"), (3600, "1h")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
