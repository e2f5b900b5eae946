"""The cloud LB as the testbed renders and drives it: one controller LB per listener, UDP,
client-IP affinity, the address kind, kube-proxy's /healthz for instance targets of Cluster
services, the deregistration delay from the control plane's clock; L4LoadBalancer's calls for
several listeners and for the lags."""

import json
import types

import pytest

from controllers.config import parse_fabric
from testbed.cloud.fabric import render_fabric
from testbed.cloud.lb import L4LoadBalancer, Target
from testbed.plan.addresses import PROXY_HEALTHZ_PORT, build_plan
from testbed.spec.model import Timing
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

TOPO = """\
name: t
nodes:
  node1: {}
  node2: {}
deployments:
  dns: {replicas: 2, port: 5353}
services:
  dns:
    type: LoadBalancer
    ports:
      - {name: dns-tcp, port: 53, targetPort: 5353}
      - {name: dns-udp, port: 53, targetPort: 5353, protocol: UDP}
      - {name: metrics, port: 9153, targetPort: 9153}
    sessionAffinity: ClientIP
    externalTrafficPolicy: POLICY
loadBalancer: {vip: 198.51.100.10, targets: nodeport, address: hostname}
"""


def fabric(mode="nodeport", policy="Cluster", timing=None):
    topo = parse_topology(parse_document("t.yaml", TOPO.replace("POLICY", policy)), mode=mode)
    plan = build_plan(topo)
    return plan, render_fabric(plan, topo.load_balancer.health_check, timing=timing)


@pytest.mark.parametrize("mode", ["nodeport", "container-native"])
def test_one_controller_lb_per_listener_on_one_vip(mode):
    plan, fab = fabric(mode)
    lbs = fab["load_balancers"]
    assert [(lb["name"], lb["protocol"], lb["port"]) for lb in lbs] == [
        ("dns", "tcp", 53), ("dns:dns-udp", "udp", 53), ("dns:metrics", "tcp", 9153)]
    assert {(lb["vip"], lb["service"]) for lb in lbs} == {("198.51.100.10", "dns")}
    svc = plan.services[0]
    want = [p.target_port if mode == "container-native" else p.node_port for p in svc.all_ports]
    assert [lb["backend_port"] for lb in lbs] == want
    assert [{b["port"] for b in lb["backends"]} for lb in lbs] == [{p} for p in want]
    assert all(lb["session_affinity"] == "client_ip" and lb["address"] == "hostname"
               for lb in lbs)
    parsed = parse_fabric(fab)              # the controller takes it
    assert [lb.sticky for lb in parsed.load_balancers] == [True] * 3


def test_instance_targets_of_a_cluster_service_are_checked_on_kube_proxys_healthz():
    _, fab = fabric("nodeport", "Cluster")
    assert {(lb["health_check"]["port"], lb["health_check"]["path"])
            for lb in fab["load_balancers"]} == {(PROXY_HEALTHZ_PORT, "/healthz")}


def test_local_services_keep_their_health_check_node_port_and_pods_their_own():
    plan, fab = fabric("nodeport", "Local")
    hcnp = plan.services[0].health_check_node_port
    assert hcnp and {lb["health_check"]["port"] for lb in fab["load_balancers"]} == {hcnp}
    _, fab = fabric("container-native", "Local")
    assert {lb["health_check"]["port"] for lb in fab["load_balancers"]} == {5353}


def test_the_deregistration_delay_comes_from_the_clock():
    _, fab = fabric()
    assert fab["load_balancers"][0]["deregistration_delay_s"] == 300.0
    _, fab = fabric(timing=Timing(lb_deregistration_delay_s=15.0))
    assert {lb["deregistration_delay_s"] for lb in fab["load_balancers"]} == {15.0}


class FakeController:
    def __init__(self, config):
        self.config = config
        self.calls = []
        self.proc = types.SimpleNamespace(pid=1)

    def api(self, method, path, body=None, timeout=5.0):
        self.calls.append((method, path, body))


def l4(tmp_path, mode="container-native"):
    _, fab = fabric(mode)
    path = tmp_path / "fabric.json"
    path.write_text(json.dumps(fab))
    return L4LoadBalancer(FakeController(str(path)), "ip")


def test_a_target_is_registered_on_every_listener_at_its_port(tmp_path):
    lb = l4(tmp_path)
    lb.register("dns", Target("dns-2", "192.168.0.105", 5353))
    lb.deregister("dns", Target("dns-2", "192.168.0.105", 5353))
    assert lb.controller.calls == [
        ("POST", "/v1/lbs/dns/backends", {"name": "dns-2", "ip": "192.168.0.105", "port": 5353}),
        ("POST", "/v1/lbs/dns:dns-udp/backends",
         {"name": "dns-2", "ip": "192.168.0.105", "port": 5353}),
        ("POST", "/v1/lbs/dns:metrics/backends",
         {"name": "dns-2", "ip": "192.168.0.105", "port": 9153}),
        ("DELETE", "/v1/lbs/dns/backends/192.168.0.105/5353", None),
        ("DELETE", "/v1/lbs/dns:dns-udp/backends/192.168.0.105/5353", None),
        ("DELETE", "/v1/lbs/dns:metrics/backends/192.168.0.105/9153", None)]


def test_the_clocks_lags_go_to_the_controller(tmp_path):
    lb = l4(tmp_path)
    target = Target("dns-2", "192.168.0.105", 5353)
    timing = Timing(lb_registration_delay_s=2.0, lb_deregistration_lag_s=3.0,
                    lb_deregistration_delay_s=20.0)
    lb.register_timed("dns", target, timing)
    lb.deregister_timed("dns", target, timing)
    lb.deregister_timed("dns", target, Timing(mode="instant", lb_deregistration_lag_s=3.0))
    calls = lb.controller.calls
    assert calls[0][2]["after_s"] == 2.0
    assert calls[3][1] == "/v1/lbs/dns/backends/192.168.0.105/5353?after_s=3.0&drain_s=20.0"
    assert calls[6][1] == "/v1/lbs/dns/backends/192.168.0.105/5353?drain_s=300.0"


def test_a_service_the_fabric_does_not_name_is_its_own_single_listener(tmp_path):
    lb = L4LoadBalancer(FakeController("/nonexistent/fabric.json"), "ip")
    lb.register("web", Target("web-0", "192.168.0.100", 8080))
    assert lb.controller.calls == [("POST", "/v1/lbs/web/backends",
                                    {"name": "web-0", "ip": "192.168.0.100", "port": 8080})]
