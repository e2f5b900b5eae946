"""Services in the plan and in kube-proxy's model: every port with its node port, the LB's
listeners, the address kind (ip or hostname), the traffic policies, publishNotReadyAddresses."""

import pytest

from testbed.cloud.fabric import render_fabric
from testbed.kubernetes.dataplane.model import (
    EndpointConditions,
    endpoint_conditions,
    published_conditions,
    service_ports,
)
from testbed.plan.addresses import PROXY_HEALTHZ_PORT, Listener, PortPlan, build_plan
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

BASE = """\
name: t
nodes:
  node1: {}
  node2: {}
deployments:
  dns: {replicas: 2, port: 5353}
"""
DNS = """services:
  dns:
    type: LoadBalancer
    ports:
      - {name: dns-tcp, port: 53, targetPort: 5353}
      - {name: dns-udp, port: 53, targetPort: 5353, protocol: UDP}
      - {name: metrics, port: 9153, targetPort: 9153, nodePort: 31000}
    internalTrafficPolicy: Local
    publishNotReadyAddresses: true
"""


def plan_of(tail: str, mode: str = "nodeport"):
    topo = parse_topology(parse_document("t.yaml", BASE + tail), mode=mode)
    return build_plan(topo)


def test_every_port_is_in_the_plan_with_its_node_port():
    svc = plan_of(DNS).services[0]
    assert svc.ports == (PortPlan("dns-tcp", 53, 5353, "TCP", 30000),
                         PortPlan("dns-udp", 53, 5353, "UDP", 30000),
                         PortPlan("metrics", 9153, 9153, "TCP", 31000))
    assert (svc.port, svc.node_port, svc.protocol) == (53, 30000, "TCP")
    assert svc.internal_traffic_policy == "Local" and svc.publish_not_ready_addresses


def test_the_shorthand_is_filled_in_as_one_unnamed_port():
    svc = plan_of("services:\n  dns: {type: NodePort, port: 53, protocol: UDP}\n").services[0]
    assert svc.ports == (PortPlan("", 53, 5353, "UDP", 30000),) == svc.all_ports


@pytest.mark.parametrize("mode, backend_ports", [
    ("nodeport", (30000, 30000, 31000)), ("container-native", (5353, 5353, 9153))])
def test_the_lb_has_one_listener_per_port(mode, backend_ports):
    lb = plan_of(DNS, mode).load_balancers[0]
    assert lb.listeners == tuple(
        Listener(n, p, proto, b) for (n, p, proto), b in zip(
            [("dns-tcp", 53, "TCP"), ("dns-udp", 53, "UDP"), ("metrics", 9153, "TCP")],
            backend_ports, strict=True))
    assert lb.port == 53 and all(b.port == backend_ports[0] for b in lb.backends)
    assert lb.address == "ip"


@pytest.mark.parametrize("mode, health_port", [("nodeport", PROXY_HEALTHZ_PORT),
                                               ("container-native", 5353)])
def test_a_udp_only_service_is_health_checked_over_tcp(mode, health_port):
    tail = "services:\n  dns: {port: 53, protocol: UDP}\n"
    plan = plan_of(tail, mode)
    assert {b.health_port for b in plan.load_balancers[0].backends} == {health_port}
    topo = parse_topology(parse_document("t.yaml", BASE + tail))
    fabric = render_fabric(plan, topo.load_balancer.health_check)
    assert fabric["load_balancers"][0]["health_check"]["port"] == health_port


def test_a_tcp_port_after_a_udp_one_is_the_health_checked_one():
    plan = plan_of("services:\n  dns:\n    ports: [{name: u, port: 53, protocol: UDP}, "
                   "{name: t, port: 53}]\n")
    assert {b.health_port for b in plan.load_balancers[0].backends} == {30000}


def test_service_ports_gives_one_service_port_per_port():
    plan = plan_of(DNS)
    sps = service_ports(plan)
    assert [(s.port_name, s.protocol, s.port, s.node_port, s.target_port) for s in sps] == [
        ("dns-tcp", "TCP", 53, 30000, 5353), ("dns-udp", "UDP", 53, 30000, 5353),
        ("metrics", "TCP", 9153, 31000, 9153)]
    assert all(s.internal_traffic_policy == "Local" for s in sps)
    assert all(s.load_balancer_ips == (plan.services[0].vip,) for s in sps)
    pods = {p.ip for p in plan.pods}
    assert {ep.ip for ep in sps[2].endpoints} == pods
    assert {ep.port for ep in sps[2].endpoints} == {9153}
    assert [s.port_name_string for s in sps] == ["default/dns:dns-tcp", "default/dns:dns-udp",
                                                 "default/dns:metrics"]


def test_a_hostname_load_balancer_gives_kube_proxy_no_vip():
    plan = plan_of(DNS + "loadBalancer: {address: hostname}\n")
    assert plan.load_balancers[0].address == "hostname"
    assert all(s.load_balancer_ips == () for s in service_ports(plan))
    assert all(s.node_port for s in service_ports(plan))   # the LB still sends to node ports


def test_publish_not_ready_addresses_lists_not_ready_pods_as_ready():
    tail = DNS.replace("    publishNotReadyAddresses: true\n", "")
    for publish, plan in ((True, plan_of(DNS)), (False, plan_of(tail))):
        pods = [p.name for p in plan.pods]
        conditions = {pods[0]: endpoint_conditions(pod_ready=False, terminating=False),
                      pods[1]: endpoint_conditions(pod_ready=True, terminating=True)}
        eps = service_ports(plan, conditions=conditions)[0].endpoints
        assert [ep.ready for ep in eps] == [publish, publish]
        assert [(ep.serving, ep.terminating) for ep in eps] == [(False, False), (True, True)]


def test_endpoint_conditions_follow_the_endpointslice_controller():
    assert endpoint_conditions(True, False) == EndpointConditions(True, True, False)
    assert endpoint_conditions(False, False) == EndpointConditions(False, False, False)
    assert endpoint_conditions(True, True) == EndpointConditions(False, True, True)
    assert endpoint_conditions(False, True, True) == EndpointConditions(True, False, True)
    c = EndpointConditions(False, False, True)
    assert published_conditions(c, True) == EndpointConditions(True, False, True)
    assert published_conditions(c, False) == c


def test_local_external_policy_on_a_node_port_service_reaches_kube_proxy():
    plan = plan_of("services:\n  dns: {type: NodePort, externalTrafficPolicy: Local}\n")
    (sp,) = service_ports(plan)
    assert sp.external_policy_local and sp.health_check_node_port is None
    assert plan.load_balancers == []
