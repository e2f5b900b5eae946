"""A Service's metadata.labels: read and written back as a file has them, and the two that make
kube-proxy ignore a service (service.kubernetes.io/service-proxy-name and
service.kubernetes.io/headless), as upstream's e2e tests "should implement
service.kubernetes.io/service-proxy-name" and ".../headless" toggle them."""

import pytest

from testbed.errors import InputError
from testbed.kubernetes.dataplane.model import not_proxied, service_ports
from testbed.plan.addresses import build_plan
from testbed.plan.changes import apply_service, taken_node_ports
from testbed.spec.services import read_one_service, service_body, set_fields_document
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

BASE = """\
name: t
nodes: {node1: {}}
deployments: {web: {replicas: 2}}
services:
  plain: {type: ClusterIP, selector: web, labels: {app: web, tier: "1"}}
  other:
    type: ClusterIP
    selector: web
    labels: {service.kubernetes.io/service-proxy-name: foo-bar}
  headless: {type: NodePort, selector: web, labels: {service.kubernetes.io/headless: ""}}
"""


def topo_plan(text: str = BASE):
    topo = parse_topology(parse_document("t.yaml", text))
    return topo, build_plan(topo)


def test_labels_are_read_sorted_and_written_back():
    topo, plan = topo_plan()
    plain = next(s for s in topo.services if s.name == "plain")
    assert plain.labels == (("app", "web"), ("tier", "1"))
    assert service_body(plain)["labels"] == {"app": "web", "tier": "1"}
    assert next(s for s in plan.services if s.name == "headless").labels == (
        ("service.kubernetes.io/headless", ""),)


def test_kube_proxy_ignores_services_labelled_service_proxy_name_or_headless():
    _, plan = topo_plan()
    assert {p.name for p in service_ports(plan)} == {"plain"}
    assert not_proxied((("service.kubernetes.io/headless", ""),))
    assert not not_proxied((("service.kubernetes.io/other", "x"),))


def test_setting_and_removing_the_label_toggles_kube_proxy():
    topo, plan = topo_plan()

    def set_(*args):
        svc = next(s for s in topo.services if s.name == "plain")
        new = read_one_service(set_fields_document(svc, args), topo.deployments,
                               taken_node_ports(plan, but="plain"))
        return apply_service(plan, topo, new)

    topo, plan = set_("labels={service.kubernetes.io/service-proxy-name: foo-bar}")
    assert service_ports(plan) == []
    topo, plan = set_("labels=null")
    assert {p.name for p in service_ports(plan)} == {"plain"}


@pytest.mark.parametrize("labels, says", [
    ("[a]", "expected a mapping"),
    ("{-bad: x}", "'-bad' is not a label key"),
    ("{app: 'not ok!'}", "'not ok!' is not a label value"),
])
def test_bad_labels_are_one_line_each(labels, says):
    text = BASE.replace("labels: {app: web, tier: \"1\"}", f"labels: {labels}")
    with pytest.raises(InputError) as err:
        topo_plan(text)
    assert says in str(err.value)
