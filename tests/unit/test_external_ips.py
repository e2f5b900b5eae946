"""A Service's externalIPs (spec.externalIPs): read and refused as the docs say, carried through
the plan into kube-proxy's model, rendered by every mode with upstream's rules, and routed by
the VPC to the first node (fabric.json's external_ips, the router's /32)."""

import os
import re
import subprocess
import sys

import pytest

from controllers.config import ConfigError, parse_fabric
from controllers.openflow import COOKIE_EXTERNAL_IP, T_NEXTHOP, cookie
from controllers.vpc import Vpc
from testbed.cli.render import kube_proxy_first_sync
from testbed.cloud.fabric import render_fabric
from testbed.emulation.session import format_status
from testbed.errors import InputError
from testbed.kubernetes.dataplane.iptables.names import service_chains
from testbed.kubernetes.dataplane.model import service_ports
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.plan.changes import apply_service, taken_node_ports
from testbed.spec.model import HealthCheck
from testbed.spec.services import read_one_service, service_body, set_fields_document
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

BASE = """\
name: t
nodes:
  node1: {}
  node2: {}
deployments:
  web: {replicas: 2}
"""
EXTERNAL_IP = "192.0.2.250"   # upstream's 203.0.113.250 is the testbed's internet side
GOOD = f"""services:
  externalip-test:
    type: ClusterIP
    selector: web
    ports: [{{name: http, port: 80}}]
    externalIPs: [{EXTERNAL_IP}]
"""


def topo(tail: str, proxy_mode: str | None = None):
    return parse_topology(parse_document("t.yaml", BASE + tail), proxy_mode=proxy_mode)


def one_problem(tail: str) -> str:
    with pytest.raises(InputError) as err:
        topo(tail)
    found = [str(p) for p in err.value.problems]
    assert len(found) == 1, found
    return found[0]


def service(ips: str, extra: str = "", stype: str = "ClusterIP") -> str:
    return f"services:\n  web: {{type: {stype}, port: 80, externalIPs: {ips}{extra}}}\n"


# -- the spec --

def test_external_ips_are_read_into_the_service_and_the_plan():
    t = topo(GOOD)
    assert t.services[0].external_ips == (EXTERNAL_IP,)
    plan = build_plan(t)
    assert plan.services[0].external_ips == (EXTERNAL_IP,)
    (sp,) = service_ports(plan)
    assert sp.external_ips == (EXTERNAL_IP,) and sp.externally_accessible


def test_a_clusterip_service_with_external_ips_may_set_external_traffic_policy():
    # upstream's ExternallyAccessible: a ClusterIP service with externalIPs is one
    t = topo(service(f"[{EXTERNAL_IP}]", ", externalTrafficPolicy: Local"))
    assert t.services[0].external_traffic_policy == "Local"
    (sp,) = service_ports(build_plan(t))
    assert sp.external_policy_local
    assert "externalTrafficPolicy" in one_problem(
        "services:\n  web: {type: ClusterIP, port: 80, externalTrafficPolicy: Local}\n")


@pytest.mark.parametrize("ips, wanted", [
    ("[192.0.2]", "services.web.externalIPs[0]: '192.0.2' is not an IPv4 address"),
    ("[7]", "services.web.externalIPs[0]: 7 is not an IPv4 address"),
    ("[2001:db8::1]", "'2001:db8::1' is not an IPv4 address"),
    ("192.0.2.1", "services.web.externalIPs: expected a list of addresses, got a string"),
    ("[127.0.0.1]", "127.0.0.1 is in the loopback range"),
    ("[224.0.0.5]", "224.0.0.5 is in the multicast range"),
    ("[198.51.100.10]", "198.51.100.10 is in the testbed's load balancer range"),
    ("[203.0.113.250]", "203.0.113.250 is in the testbed's internet side"),
    ("[192.0.2.1, 192.0.2.1]", "externalIPs[1]: 192.0.2.1 is also externalIPs[0]"),
    ("[192.168.0.10]", "192.168.0.10 is inside subnet default (192.168.0.0/24), where nodes"),
    ("[10.244.1.9]", "10.244.1.9 is inside the pod range cni.podCIDR (10.244.0.0/16)"),
    ("[10.96.0.10]", "10.96.0.10 is inside the service range cni.serviceCIDR (10.96.0.0/12)"),
])
def test_bad_external_ips_are_one_line_naming_the_field_and_the_fix(ips, wanted):
    line = one_problem(service(ips))
    assert line.startswith("t.yaml:8: services.web.externalIPs"), line
    assert wanted in line and " — " in line, line


def test_two_services_serving_one_external_ip_on_one_port_are_refused():
    line = one_problem(f"""services:
  web: {{type: ClusterIP, port: 80, externalIPs: [{EXTERNAL_IP}]}}
  api: {{type: ClusterIP, selector: web, port: 80, externalIPs: [{EXTERNAL_IP}]}}
""")
    assert line.startswith("t.yaml:9: services.api.externalIPs: 192.0.2.250 port 80/TCP is "
                           "also an external IP of service 'web'"), line
    # another port on the same address is fine, as upstream allows
    topo(f"""services:
  web: {{type: ClusterIP, port: 80, externalIPs: [{EXTERNAL_IP}]}}
  api: {{type: ClusterIP, selector: web, port: 81, externalIPs: [{EXTERNAL_IP}]}}
""")


def test_validate_exits_2_with_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + service("[10.96.0.10]"))
    before = set(os.listdir(tmp_path))
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "validate", str(path)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith(f"{path}:8: "), p.stderr
    assert set(os.listdir(tmp_path)) == before


# -- a running cluster's changes keep them --

def test_service_set_keeps_external_ips_and_refuses_to_change_them():
    t = topo(GOOD)
    plan = build_plan(t)
    svc = t.services[0]
    assert service_body(svc)["externalIPs"] == [EXTERNAL_IP]

    def set_(*args):
        doc = set_fields_document(svc, args)
        new = read_one_service(doc, t.deployments, taken_node_ports(plan, but=svc.name))
        return apply_service(plan, t, new)

    _, new_plan = set_("type=NodePort")
    assert new_plan.services[0].external_ips == (EXTERNAL_IP,)
    with pytest.raises(InputError) as err:
        set_("externalIPs=[192.0.2.9]")
    assert "externalIPs cannot change on a running cluster" in str(err.value.problems[0])


# -- kube-proxy's rules, as upstream writes them --

def first_sync(mode: str, tail: str = GOOD, node: str = "node1") -> str:
    t = topo(tail, proxy_mode=mode)
    return kube_proxy_first_sync(t, build_plan(t), node)


def test_iptables_jumps_the_external_ip_to_kube_ext_and_masquerades_it():
    t = topo(GOOD)
    (sp,) = service_ports(build_plan(t))
    ext, svc = service_chains(sp).ext, service_chains(sp).svc
    out = first_sync("iptables")
    assert (f'-A KUBE-SERVICES -m comment --comment "default/externalip-test:http external IP" '
            f"-m tcp -p tcp -d {EXTERNAL_IP} --dport 80 -j {ext}") in out
    assert (f'-A {ext} -m comment --comment "masquerade traffic for '
            f'default/externalip-test:http external destinations" -j KUBE-MARK-MASQ') in out
    assert f"-A {ext} -j {svc}" in out


def test_iptables_local_policy_drops_the_external_ip_on_a_node_without_local_pods():
    tail = f"""services:
  web: {{type: ClusterIP, port: 80, externalIPs: [{EXTERNAL_IP}],
         externalTrafficPolicy: Local}}
"""
    text = BASE.replace("web: {replicas: 2}", "web: {replicas: 1, placement: {node2: 1}}")
    t = parse_topology(parse_document("t.yaml", text + tail))
    out = kube_proxy_first_sync(t, build_plan(t), "node1")
    assert (f'-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/web has no local '
            f'endpoints" -m tcp -p tcp -d {EXTERNAL_IP} --dport 80 -j DROP') in out


def test_nftables_puts_the_external_ip_in_service_ips_towards_the_external_chain():
    out = first_sync("nftables")
    line = next(x for x in out.splitlines() if f"{EXTERNAL_IP} . tcp . 80" in x)
    assert line.startswith("add element ip kube-proxy service-ips { 192.0.2.250 . tcp . 80 : "
                           "goto external-"), line
    chain = line.split("goto ")[1].rstrip(" }")
    assert f"add rule ip kube-proxy {chain} jump mark-for-masquerade" in out


def test_ipvs_and_ebpf_serve_the_external_ip_too():
    ipvs = first_sync("ipvs")
    assert f"-A -t {EXTERNAL_IP}:80 -s rr" in ipvs
    assert f"add KUBE-EXTERNAL-IP {EXTERNAL_IP},tcp:80" in ipvs
    ebpf = first_sync("ebpf")
    assert f"service {EXTERNAL_IP}:80/TCP" in ebpf and "external-ip" in ebpf


# -- the VPC routes each to the first node --

def fabric_of(tail: str = GOOD) -> dict:
    return render_fabric(build_plan(topo(tail)), HealthCheck())


def test_the_fabric_routes_each_external_ip_to_the_first_node():
    fab = fabric_of(f"""services:
  web: {{type: ClusterIP, port: 80, externalIPs: [{EXTERNAL_IP}, 192.0.2.7]}}
  api: {{type: NodePort, selector: web, port: 81, externalIPs: [{EXTERNAL_IP}]}}
""")
    assert fab["external_ips"] == [
        {"ip": EXTERNAL_IP, "node": "node1", "services": ["web", "api"]},
        {"ip": "192.0.2.7", "node": "node1", "services": ["web"]}]
    parsed = parse_fabric(fab)
    vpc = Vpc(parsed)
    rows = [r for r in vpc.routes_view() if r["kind"] == "external-ip"]
    node1 = parsed.host("node1")
    assert [(r["prefix"], r["via"], r["next_hop_mac"], r["name"]) for r in rows] == [
        (f"{EXTERNAL_IP}/32", "node1", node1.mac, "web,api"),
        ("192.0.2.7/32", "node1", node1.mac, "web")]
    # the /32 is in every switch's program (the shared flows) with its own cookie
    ours = [m for m in vpc.kept_flows() if m.cookie == cookie(COOKIE_EXTERNAL_IP, EXTERNAL_IP)]
    assert len(ours) == 1 and ours[0].table_id == T_NEXTHOP
    assert ours[0].match["ipv4_dst"] == EXTERNAL_IP


def test_a_fabric_without_external_ips_has_none():
    assert fabric_of("services:\n  web: {type: ClusterIP, port: 80}\n")["external_ips"] == []


@pytest.mark.parametrize("entry, message", [
    ({"ip": EXTERNAL_IP, "node": "client1"}, "external_ips[0].node: 'client1' is not a host"),
    ({"ip": EXTERNAL_IP, "node": "nodeX"}, "external_ips[0].node: 'nodeX' is not a host"),
    ({"ip": "192.168.0.10", "node": "node1"}, "external_ips[0].ip: 192.168.0.10 is host node1's"),
    ({"ip": "x", "node": "node1"}, "external_ips[0].ip: 'x' is not an IPv4 address"),
])
def test_the_controller_refuses_a_bad_external_ip_route(entry, message):
    fab = fabric_of()
    fab["external_ips"] = [entry]
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_fabric(fab)


def test_the_controller_refuses_an_external_ip_given_twice():
    fab = fabric_of()
    fab["external_ips"] = fab["external_ips"] * 2
    with pytest.raises(ConfigError, match="given twice"):
        parse_fabric(fab)



def test_cnlb_status_lists_a_services_external_ips_and_their_node():
    svc = {"name": "web", "type": "ClusterIP", "cluster_ip": "10.96.0.10", "port": 80,
           "node_port": None, "external_traffic_policy": "Cluster",
           "external_ips": [EXTERNAL_IP, "192.0.2.7"], "external_ips_via": "node1"}
    status = {"cluster": "t", "mode": "nodeport", "file": "t.yaml", "holder": None,
              "owner": {"pid": 1, "alive": True},
              "controller": {"pid": 2, "alive": True, "rest": "http://127.0.0.1:1/v1/"},
              "nodes": [], "pods": [], "services": [svc, {**svc, "name": "api",
                                                          "external_ips": []}],
              "load_balancers": []}
    lines = format_status(status)
    at = lines.index("services:")
    assert lines[at + 2] == "    externalIPs 192.0.2.250 192.0.2.7 (the VPC routes them to node1)"
    assert lines[at + 3].startswith("  api ") and len(lines) == at + 4
