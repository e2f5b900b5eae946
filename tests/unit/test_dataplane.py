"""Every service data plane (kube-proxy mode) against one behaviour suite, and the registry.

The suite runs once per mode in DATAPLANES, with that mode's packet model from
tests/unit/dataplane_models.py (as upstream's packet tracer runs against iptables and nftables
alike): where a connection's first packet goes, partial sync equals full sync, health state.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.kubernetes.dataplane.base import ServiceDataPlane
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.model import Endpoint, NodeContext, ServicePort
from testbed.kubernetes.dataplane.registry import DATAPLANES, UnknownDataPlane, dataplane_for
from tests.unit.dataplane_models import MODELS, NodeModel
from tests.unit.kubeproxy_cases import (
    API,
    API_PODS,
    API_VIP,
    CLIENT,
    NODE1,
    NODE2,
    NODE3,
    WEB,
    WEB_PODS,
    WEB_VIP,
)
from tests.unit.kubeproxy_cases import replace_port as _replace
from tests.unit.traces import Packet

MODES = sorted(DATAPLANES)

# --- the registry ---------------------------------------------------------------------------------


def test_registry_knows_iptables():
    assert dataplane_for("iptables") is KubeProxy
    assert KubeProxy.mode == "iptables" and issubclass(KubeProxy, ServiceDataPlane)


@pytest.mark.parametrize("mode", ["ipvs", "", "IPTABLES"])
def test_registry_refuses_an_unknown_mode_naming_the_known_ones(mode):
    with pytest.raises(UnknownDataPlane, match="one of: iptables") as err:
        dataplane_for(mode)
    assert repr(mode) in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_registered_under_its_own_name_and_has_a_model(mode):
    assert DATAPLANES[mode].mode == mode
    assert mode in MODELS, f"add a packet model for {mode!r} to tests/unit/dataplane_models.py"


# --- the behaviour suite, once per mode -----------------------------------------------------------


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


def _node(mode: str, node: NodeContext, services=(WEB, API)) -> NodeModel:
    """A model of `node` after the mode's full sync of `services`."""
    model = MODELS[mode]()
    model.load(DATAPLANES[mode].render(list(services), node))
    return model


def _assert_partial_equivalent(mode: str, old, new, node=NODE1) -> None:
    plane = DATAPLANES[mode]
    partial = _node(mode, node, old)
    partial.load(plane.render_partial(old, new, node))
    assert partial.snapshot() == _node(mode, node, new).snapshot()


@pytest.mark.parametrize("node, src, dst, dport, local_origin, dnat, masq, verdicts", [
    # Cluster policy: any pod in the cluster, always SNATed to the node.
    (NODE1, CLIENT, "192.168.0.11", 30080, False, WEB_PODS, True, []),
    (NODE1, CLIENT, WEB_VIP, 80, False, WEB_PODS, True, []),
    (NODE2, CLIENT, "192.168.1.11", 30080, False, WEB_PODS, True, []),
    # Local policy: only this node's pods, client IP kept.
    (NODE1, CLIENT, "192.168.0.11", 30081, False, {"10.244.1.4:8080"}, False, []),
    (NODE1, CLIENT, API_VIP, 80, False, {"10.244.1.4:8080"}, False, []),
    (NODE2, CLIENT, API_VIP, 80, False, {"10.244.2.3:8080", "10.244.2.4:8080"}, False, []),
    # ... a pod calling the LB VIP is sent to any pod (as if via the cloud LB), no SNAT,
    (NODE1, "10.244.1.2", API_VIP, 80, False, API_PODS, False, []),
    # ... the node itself calling it goes to any pod too, SNATed (its source is the VIP path).
    (NODE1, "192.168.0.11", API_VIP, 80, True, API_PODS, True, []),
    # ClusterIP: from a pod no SNAT; from outside the pod CIDR SNAT.
    (NODE1, "10.244.2.9", "10.96.0.10", 80, False, WEB_PODS, False, []),
    (NODE1, CLIENT, "10.96.0.10", 80, False, WEB_PODS, True, []),
    # Hairpin: a pod reaching itself via the service is SNATed (on the path back to itself).
    (NODE1, "10.244.1.2", "10.96.0.10", 80, False, WEB_PODS, True, []),
    # Health-check node port is accepted by filter; a wrong port matches nothing.
    (NODE1, CLIENT, "192.168.0.11", 32000, False, set(), False, ["ACCEPT"]),
    (NODE1, CLIENT, "192.168.0.11", 30099, False, set(), False, []),
    # NodePorts are not served on loopback (localhost nodeports off).
    (NODE1, "127.0.0.1", "127.0.0.1", 30080, True, set(), False, []),
])
def test_packet_trace(mode, node, src, dst, dport, local_origin, dnat, masq, verdicts):
    local_ips = frozenset({node.node_ip})
    result = _node(mode, node).trace(Packet(src, dst, dport, local_ips, local_origin=local_origin))
    assert result.destinations == dnat, result.matched
    assert result.masquerade == masq, result.matched
    assert result.verdicts == verdicts, result.matched


def test_packet_trace_local_policy_on_node_without_pods_is_dropped(mode):
    node3 = _node(mode, NODE3)
    local_ips = frozenset({NODE3.node_ip})
    outside = node3.trace(Packet(CLIENT, "192.168.2.11", 30081, local_ips))
    assert outside.destinations == set() and outside.verdicts == ["DROP"]
    # but a pod on that node still reaches the service through the LB VIP
    pod = node3.trace(Packet("10.244.3.5", API_VIP, 80, local_ips))
    assert pod.destinations == API_PODS and pod.verdicts == []


def test_packet_trace_service_without_endpoints_is_rejected(mode):
    node = _node(mode, NODE1, [_replace(WEB, endpoints=())])
    result = node.trace(Packet("10.244.1.5", "10.96.0.10", 80, frozenset({"192.168.0.11"})))
    assert result.destinations == set() and result.verdicts == ["REJECT"]
    outside = node.trace(Packet(CLIENT, "192.168.0.11", 30080, frozenset({"192.168.0.11"})))
    assert outside.verdicts == ["REJECT"]


@pytest.mark.parametrize("new", [
    pytest.param([API], id="service removed"),
    pytest.param([WEB, API, _replace(WEB, name="web2", cluster_ip="10.96.0.11")], id="added"),
    pytest.param([_replace(WEB, external_traffic_policy="Local"), API], id="policy to Local"),
    pytest.param([WEB, _replace(API, endpoints=API.endpoints[:1])], id="remote endpoints gone"),
    pytest.param([WEB, _replace(API, endpoints=API.endpoints[1:2])], id="local endpoint gone"),
    pytest.param([WEB, _replace(API, endpoints=())], id="no endpoints left"),
    pytest.param([WEB, _replace(API, session_affinity_seconds=None)], id="affinity off"),
    pytest.param([_replace(WEB, node_port=None, load_balancer_ips=()), API], id="to ClusterIP"),
    pytest.param([WEB, API], id="nothing changed"),
])
def test_partial_equals_full(mode, new):
    _assert_partial_equivalent(mode, [WEB, API], new)


_POOL_IPS = [f"10.244.{n}.{h}" for n in (1, 2) for h in (2, 3, 4)]


@st.composite
def _service(draw, name: str, index: int) -> ServicePort | None:
    if not draw(st.booleans()):
        return None
    ips = draw(st.lists(st.sampled_from(_POOL_IPS), unique=True, max_size=4))
    eps = tuple(Endpoint(ip, 8080, f"node{ip.split('.')[2]}",
                         ready=draw(st.sampled_from([True, True, False]))) for ip in ips)
    return ServicePort(
        "default", name, draw(st.sampled_from(["", "http"])), draw(st.sampled_from(["TCP", "UDP"])),
        f"10.96.0.{index + 10}", 80, 8080,
        node_port=draw(st.sampled_from([None, 30000 + index])),
        load_balancer_ips=draw(st.sampled_from([(), (f"198.51.100.{index + 10}",)])),
        external_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
        session_affinity_seconds=draw(st.sampled_from([None, 60])),
        endpoints=eps,
    )


@st.composite
def _old_and_new(draw):
    old, new = [], []
    for i, name in enumerate(["a", "b", "c", "d"]):
        before = draw(_service(name, i))
        after = before if draw(st.booleans()) else draw(_service(name, i))
        old += [before] if before else []
        new += [after] if after else []
    return old, new


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=150, deadline=None)
@given(_old_and_new(), st.sampled_from([NODE1, NODE2, NodeContext("n3", "192.168.2.11", None)]))
def test_partial_equals_full_for_random_changes(mode, pair, node):
    old, new = pair
    _assert_partial_equivalent(mode, old, new, node)
    MODELS[mode]().check(DATAPLANES[mode].render(new, node))


def test_health_state_counts_local_ready_endpoints(mode):
    state = DATAPLANES[mode].health_state
    assert state([WEB, API], "node1") == {"services": [
        {"namespace": "default", "name": "api", "port": 32000, "local_endpoints": 1}]}
    assert state([WEB, API], "node2")["services"][0]["local_endpoints"] == 2
    assert state([WEB, API], "node3")["services"][0]["local_endpoints"] == 0
    not_ready = _replace(API, endpoints=(Endpoint("10.244.1.4", 8080, "node1", ready=False),))
    assert state([not_ready], "node1")["services"][0]["local_endpoints"] == 0
