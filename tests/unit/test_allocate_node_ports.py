"""spec.allocateLoadBalancerNodePorts: a LoadBalancer service without node ports (container-
native LBs send to the pods), its checks, and its changes on a running cluster as upstream's
Service REST storage makes them (false -> true allocates; true -> false keeps what is there)."""

import pytest

from testbed.errors import InputError
from testbed.plan.addresses import build_plan
from testbed.plan.changes import apply_service, taken_node_ports
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
services:
  web: {type: LoadBalancer, port: 80, allocateLoadBalancerNodePorts: false}
  api: {type: LoadBalancer, selector: web, port: 8000}
"""


def topology(text: str = BASE, mode: str = "container-native"):
    return parse_topology(parse_document("t.yaml", text), mode=mode)


def svc_of(plan, name):
    return next(s for s in plan.services if s.name == name)


def set_(topo, plan, name, *args):
    """`cnlb service set NAME args...`, the pure part."""
    svc = next(s for s in topo.services if s.name == name)
    new = read_one_service(set_fields_document(svc, args), topo.deployments,
                           taken_node_ports(plan, but=name))
    return apply_service(plan, topo, new)


def test_false_allocates_no_node_port_and_the_lb_sends_to_the_pods():
    topo = topology()
    plan = build_plan(topo)
    web, api = svc_of(plan, "web"), svc_of(plan, "api")
    assert web.node_port is None and api.node_port == 30000
    lb = next(lb for lb in plan.load_balancers if lb.service == "web")
    assert {b.port for b in lb.backends} == {8080}   # ip targets: the pods' port


def test_a_written_node_port_is_kept_and_a_local_policy_still_gets_its_health_check_port():
    topo = topology(BASE.replace("port: 80, allocate", "port: 80, nodePort: 30500, "
                                 "externalTrafficPolicy: Local, allocate"))
    web = svc_of(build_plan(topo), "web")
    assert web.node_port == 30500 and web.health_check_node_port is not None


def test_instance_targets_need_node_ports_one_line_naming_the_field():
    with pytest.raises(InputError) as err:
        topology(mode="nodeport")
    (problem,) = err.value.problems
    assert problem.path == "services.web.allocateLoadBalancerNodePorts", problem
    assert str(problem).startswith("t.yaml:8: services.web.allocateLoadBalancerNodePorts: false")
    assert "mode nodeport" in problem.what and "container-native" in problem.fix
    # with a nodePort written on its port, the service works with instance targets too
    written = topology(BASE.replace("port: 80, allocate", "port: 80, nodePort: 30500, allocate"),
                       mode="nodeport")
    assert svc_of(build_plan(written), "web").node_port == 30500


def test_only_on_load_balancer_services():
    with pytest.raises(InputError, match="may only be used when type is LoadBalancer"):
        topology(BASE.replace("web: {type: LoadBalancer", "web: {type: NodePort"))


def test_true_on_a_running_cluster_allocates_and_keeps_the_vip():
    topo = topology()
    plan = build_plan(topo)
    vip = svc_of(plan, "web").vip
    topo, plan = set_(topo, plan, "web", "allocateLoadBalancerNodePorts=true")
    web = svc_of(plan, "web")
    assert web.node_port == 30001 and web.vip == vip   # 30000 is api's
    # back to false: upstream keeps the allocated port (the user removes it by hand)
    topo, plan = set_(topo, plan, "web", "allocateLoadBalancerNodePorts=false")
    assert svc_of(plan, "web").node_port == 30001


def test_false_set_on_a_classic_cluster_is_refused():
    topo = topology(BASE.replace(", allocateLoadBalancerNodePorts: false", ""), mode="nodeport")
    plan = build_plan(topo)
    topo, plan = set_(topo, plan, "web", "type=ClusterIP")   # releases its node port
    with pytest.raises(InputError, match="instance targets are the nodes' node ports"):
        set_(topo, plan, "web", "type=LoadBalancer", "allocateLoadBalancerNodePorts=false")


def test_the_body_writes_false_and_a_type_change_drops_it():
    topo = topology()
    web = next(s for s in topo.services if s.name == "web")
    assert service_body(web)["allocateLoadBalancerNodePorts"] is False
    doc = set_fields_document(web, ["type=ClusterIP"])
    assert "allocateLoadBalancerNodePorts" not in doc.data["web"]
