"""Changing one Service of a cluster's plan (pure: `cnlb service apply | set | delete`): what
stays (ClusterIP, node ports, VIP, other services), what is allocated, what is released."""

import pytest

from testbed.errors import InputError
from testbed.plan.addresses import build_plan
from testbed.plan.changes import apply_service, delete_service, taken_node_ports
from testbed.spec.services import read_one_service, service_body, set_fields_document
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import Document, parse_document

BASE = """\
name: t
nodes:
  node1: {}
  node2: {}
deployments:
  web: {replicas: 2}
services:
  web: {type: ClusterIP, port: 80}
  api: {type: LoadBalancer, selector: web, port: 8000, nodePort: 30000}
"""


@pytest.fixture
def cluster():
    topo = parse_topology(parse_document("t.yaml", BASE))
    return topo, build_plan(topo)


def set_(topo, plan, name, *args):
    """`cnlb service set NAME args...`, the pure part."""
    svc = next(s for s in topo.services if s.name == name)
    doc = set_fields_document(svc, args)
    new = read_one_service(doc, topo.deployments, taken_node_ports(plan, but=name))
    return apply_service(plan, topo, new)


def apply_(topo, plan, text):
    """`cnlb service apply FILE`, the pure part."""
    doc = parse_document("svc.yaml", text)
    name = next(iter(doc.data))
    new = read_one_service(doc, topo.deployments, taken_node_ports(plan, but=name))
    return apply_service(plan, topo, new)


def svc_of(plan, name):
    return next(s for s in plan.services if s.name == name)


def test_clusterip_to_nodeport_to_loadbalancer_keeps_the_node_port(cluster):
    topo, plan = cluster
    ip = svc_of(plan, "web").cluster_ip
    topo, plan = set_(topo, plan, "web", "type=NodePort")
    web = svc_of(plan, "web")
    assert web.node_port == 30001 and web.cluster_ip == ip   # 30000 is api's
    topo, plan = set_(topo, plan, "web", "type=LoadBalancer")
    web = svc_of(plan, "web")
    assert (web.node_port, web.cluster_ip) == (30001, ip)
    lb = next(lb for lb in plan.load_balancers if lb.service == "web")
    assert web.vip == lb.vip == "198.51.100.11"                # .10 is api's
    assert {b.port for b in lb.backends} == {30001}
    assert svc_of(plan, "api") == svc_of(build_plan(parse_topology(
        parse_document("t.yaml", BASE))), "api")               # the other service is untouched


def test_back_to_clusterip_releases_node_port_and_vip(cluster):
    topo, plan = cluster
    topo, plan = set_(topo, plan, "api", "type=ClusterIP")
    api = svc_of(plan, "api")
    assert api.node_port is None and api.vip is None and plan.load_balancers == []
    assert 30000 not in taken_node_ports(plan)
    assert next(s for s in topo.services if s.name == "api").node_port is None


def test_external_traffic_policy_local_takes_a_health_check_port_and_cluster_frees_it(cluster):
    topo, plan = cluster
    topo, plan = set_(topo, plan, "api", "externalTrafficPolicy=Local")
    api = svc_of(plan, "api")
    assert api.health_check_node_port == 30001 and api.node_port == 30000
    lb = plan.load_balancers[0]
    assert {b.health_port for b in lb.backends} == {30001}
    topo, plan = set_(topo, plan, "api", "externalTrafficPolicy=Cluster")
    assert svc_of(plan, "api").health_check_node_port is None
    assert {b.health_port for b in plan.load_balancers[0].backends} == {30000}


def test_session_affinity_on_and_off(cluster):
    topo, plan = cluster
    topo, plan = set_(topo, plan, "api", "sessionAffinity=ClientIP",
                      "sessionAffinityTimeout=60")
    assert (svc_of(plan, "api").session_affinity,
            svc_of(plan, "api").session_affinity_timeout) == ("ClientIP", 60)
    topo, plan = set_(topo, plan, "api", "sessionAffinity=None")
    assert svc_of(plan, "api").session_affinity == "None"


def test_port_changes_keep_node_ports_of_the_same_port_and_protocol(cluster):
    topo, plan = cluster
    topo, plan = set_(topo, plan, "api",
                      "ports=[{name: http, port: 8000}, {name: dns, port: 53, protocol: UDP}]")
    api = svc_of(plan, "api")
    assert [(p.name, p.port, p.protocol, p.node_port) for p in api.ports] == [
        ("http", 8000, "TCP", 30000), ("dns", 53, "UDP", 30001)]
    assert [(x.port, x.protocol, x.backend_port) for x in plan.load_balancers[0].listeners] == [
        (8000, "TCP", 30000), (53, "UDP", 30001)]


def test_apply_creates_a_service_with_fresh_addresses(cluster):
    topo, plan = cluster
    topo, plan = apply_(topo, plan, "dns: {type: LoadBalancer, selector: web, "
                                    "protocol: UDP, port: 53}\n")
    dns = svc_of(plan, "dns")
    assert dns.node_port == 30001 and dns.vip == "198.51.100.11" and dns.protocol == "UDP"
    assert dns.cluster_ip not in {s.cluster_ip for s in plan.services if s.name != "dns"}
    assert [s.name for s in topo.services] == ["web", "api", "dns"]


def test_delete_releases_the_node_port_and_the_vip_for_the_next_service(cluster):
    topo, plan = cluster
    topo, plan = delete_service(plan, topo, "api")
    assert [s.name for s in plan.services] == ["web"] and plan.load_balancers == []
    topo, plan = apply_(topo, plan, "new: {selector: web}\n")
    assert (svc_of(plan, "new").node_port, svc_of(plan, "new").vip) == (30000, "198.51.100.10")
    with pytest.raises(KeyError):
        delete_service(plan, topo, "nothing")


def test_a_node_port_of_another_service_is_refused_in_one_line(cluster):
    topo, plan = cluster
    with pytest.raises(InputError) as err:
        set_(topo, plan, "web", "type=NodePort", "nodePort=30000")
    (line,) = [str(p) for p in err.value.problems]
    assert line.startswith("cnlb service set:2: web.nodePort: 30000 is already used by "
                           "service 'api'"), line


def test_bad_values_in_set_point_at_their_argument(cluster):
    topo, plan = cluster
    with pytest.raises(InputError) as err:
        set_(topo, plan, "api", "sessionAffinity=ClientIP", "type=NodPort")
    assert str(err.value.problems[0]).startswith("cnlb service set:2: api.type:")
    with pytest.raises(InputError) as err:
        set_(topo, plan, "api", "type")
    assert "is not field=value" in str(err.value.problems[0])


def test_a_file_with_two_services_is_refused(cluster):
    topo, plan = cluster
    with pytest.raises(InputError) as err:
        apply_(topo, plan, "a: {}\nb: {}\n")
    assert "expected one service, got 2" in str(err.value.problems[0])


def test_service_body_reads_back_as_the_same_service(cluster):
    topo, _ = cluster
    for svc in topo.services:
        doc = Document("x", {svc.name: service_body(svc)}, {})
        assert read_one_service(doc, topo.deployments, {}) == svc
