"""Where the cloud LB sends traffic and health checks to ip targets when the pods and the
Service disagree on ports: an LB created while its service has no pods checks the port it
would check with them (the first TCP targetPort, else the pods' containerPort: never a UDP
listener's port), and a pod registered later gets each listener's targetPort, not its own
containerPort (testbed.cloud.fabric._listener_entries, L4LoadBalancer.listeners)."""

import json
import types

import pytest

from testbed.cloud.fabric import render_fabric
from testbed.cloud.lb import L4LoadBalancer, Target
from testbed.plan.addresses import build_plan
from testbed.plan.changes import apply_service, taken_node_ports
from testbed.spec.services import read_one_service
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

TOPO = """\
name: t
nodes: {node1: {}, node2: {}}
deployments:
  udp-cycle: {replicas: REPLICAS, port: 8080}
services:
  udp-cycle-svc:
    type: LoadBalancer
    selector: udp-cycle
    ports: PORTS
loadBalancer: {vip: 198.51.100.10, targets: nodeport}
"""
UDP_ONLY = "[{name: udp, port: 80, targetPort: 80, protocol: UDP}]"
UDP_AND_TCP = ("[{name: udp, port: 80, targetPort: 80, protocol: UDP}, "
               "{name: http, port: 81, targetPort: 9000}]")


def fabric_lbs(replicas: int, ports: str = UDP_ONLY, mode: str = "container-native"):
    text = TOPO.replace("REPLICAS", str(replicas)).replace("PORTS", ports)
    topo = parse_topology(parse_document("t.yaml", text), mode=mode)
    plan = build_plan(topo)
    return topo, plan, render_fabric(plan, topo.load_balancer.health_check)["load_balancers"]


def health_ports(lbs) -> set[int]:
    return {lb["health_check"]["port"] for lb in lbs}


@pytest.mark.parametrize("replicas", [0, 2])
def test_a_udp_only_service_is_checked_on_the_pods_container_port_with_or_without_pods(
        replicas):
    _, _, lbs = fabric_lbs(replicas)
    assert {lb["protocol"] for lb in lbs} == {"udp"}
    assert health_ports(lbs) == {8080}      # not 80, the UDP listener's port
    assert len(lbs[0]["backends"]) == replicas


@pytest.mark.parametrize("replicas", [0, 2])
def test_a_service_with_a_tcp_port_is_checked_on_its_target_port_with_or_without_pods(
        replicas):
    _, _, lbs = fabric_lbs(replicas, UDP_AND_TCP)
    assert health_ports(lbs) == {9000}


def test_an_lb_applied_while_running_without_pods_checks_the_container_port():
    """`cnlb service apply` of a second UDP LoadBalancer service on the running cluster."""
    topo, plan, _ = fabric_lbs(0)
    doc = parse_document("svc.yaml", "mutability: {type: LoadBalancer, selector: udp-cycle, "
                         f"ports: {UDP_ONLY}}}\n")
    svc = read_one_service(doc, topo.deployments, taken_node_ports(plan, but="mutability"))
    topo, plan = apply_service(plan, topo, svc)
    lbs = [lb for lb in render_fabric(plan, topo.load_balancer.health_check)["load_balancers"]
           if lb["service"] == "mutability"]
    assert health_ports(lbs) == {8080} and lbs[0]["backends"] == []


def test_instance_targets_are_checked_as_before_without_a_pod():
    _, plan, lbs = fabric_lbs(0, mode="nodeport")
    assert plan.load_balancers[0].health_port is None
    assert {len(lb["backends"]) for lb in lbs} == {2}    # the nodes


class FakeController:
    def __init__(self, config: str):
        self.config = config
        self.calls: list[tuple] = []
        self.proc = types.SimpleNamespace(pid=1)

    def api(self, method, path, body=None, timeout=5.0):
        self.calls.append((method, path, body))


def test_a_pod_added_later_is_registered_at_every_listeners_target_port(tmp_path):
    """The pod's server declares 8080 (its containerPort); the Service's listeners send to 80
    (UDP) and 9000 (TCP): those are the ports it must be registered and deregistered at."""
    _, _, lbs = fabric_lbs(0, UDP_AND_TCP)
    path = tmp_path / "fabric.json"
    path.write_text(json.dumps({"load_balancers": lbs}))
    lb = L4LoadBalancer(FakeController(str(path)), "ip")
    assert [(ref.lb, ref.backend_port) for ref in lb.listeners("udp-cycle-svc")] == [
        ("udp-cycle-svc", 80), ("udp-cycle-svc:http", 9000)]
    pod = Target("udp-cycle-0", "192.168.0.100", 8080)
    lb.register("udp-cycle-svc", pod)
    lb.deregister("udp-cycle-svc", pod)
    assert lb.controller.calls == [
        ("POST", "/v1/lbs/udp-cycle-svc/backends",
         {"name": "udp-cycle-0", "ip": "192.168.0.100", "port": 80}),
        ("POST", "/v1/lbs/udp-cycle-svc:http/backends",
         {"name": "udp-cycle-0", "ip": "192.168.0.100", "port": 9000}),
        ("DELETE", "/v1/lbs/udp-cycle-svc/backends/192.168.0.100/80", None),
        ("DELETE", "/v1/lbs/udp-cycle-svc:http/backends/192.168.0.100/9000", None)]


def test_a_fabric_without_backend_ports_keeps_the_targets_own_port(tmp_path):
    path = tmp_path / "fabric.json"
    path.write_text(json.dumps({"load_balancers": [{"name": "web"}]}))
    lb = L4LoadBalancer(FakeController(str(path)), "ip")
    lb.register("web", Target("web-0", "192.168.0.100", 8080))
    assert lb.controller.calls[0][2]["port"] == 8080
