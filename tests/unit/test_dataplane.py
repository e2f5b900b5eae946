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

# Modes without a packet model here, each with why (a narrow allowance, named): the suite's
# expectations are iptables' verdicts, which these modes do not share by design.
NO_MODEL = {"ipvs": "IPVS falls back to cluster endpoints under a Local policy without local "
                    "ones (upstream PR 97081) and answers a service without endpoints from IPVS, "
                    "not a filter REJECT; tests/unit/test_ipvs_render.py tests its renderer"}
MODES = sorted(m for m in DATAPLANES if m not in NO_MODEL)

# --- the registry ---------------------------------------------------------------------------------


def test_registry_knows_iptables():
    assert dataplane_for("iptables") is KubeProxy
    assert KubeProxy.mode == "iptables" and issubclass(KubeProxy, ServiceDataPlane)


@pytest.mark.parametrize("mode", ["userspace", "", "IPTABLES"])
def test_registry_refuses_an_unknown_mode_naming_the_known_ones(mode):
    with pytest.raises(UnknownDataPlane, match="use one of: ") as err:
        dataplane_for(mode)
    assert repr(mode) in str(err.value)
    assert str(err.value).endswith(", ".join(sorted(DATAPLANES)))   # every mode, by name
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("mode", sorted(DATAPLANES))
def test_every_mode_is_registered_under_its_own_name_and_has_a_model(mode):
    assert DATAPLANES[mode].mode == mode
    if mode in NO_MODEL:
        return
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
    if mode in ("nftables", "ebpf") and verdicts == ["ACCEPT"]:
        # only the iptables mode accepts health check node ports by a rule (its filter
        # table's KUBE-NODEPORTS); nothing in nftables' kube-proxy table stands in their way,
        # nor in the eBPF mode's maps
        verdicts = []
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
    # ready, not ready, serving-terminating, terminating and no longer serving
    states = [(True, None, False), (True, None, False), (False, None, False),
              (False, True, True), (False, False, True)]
    eps = tuple(Endpoint(ip, 8080, f"node{ip.split('.')[2]}", *draw(st.sampled_from(states)))
                for ip in ips)
    return ServicePort(
        "default", name, draw(st.sampled_from(["", "http"])), draw(st.sampled_from(["TCP", "UDP"])),
        f"10.96.0.{index + 10}", 80, 8080,
        node_port=draw(st.sampled_from([None, 30000 + index])),
        load_balancer_ips=draw(st.sampled_from([(), (f"198.51.100.{index + 10}",)])),
        external_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
        session_affinity_seconds=draw(st.sampled_from([None, 60])),
        endpoints=eps,
        internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
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


def test_health_state_counts_pod_ips_once_over_all_ports_and_no_terminating_ones(mode):
    """Upstream's LocalReadyEndpoints: distinct ready local pod IPs of the Service, whatever
    its ports; a terminating pod is not counted even while it still serves."""
    state = DATAPLANES[mode].health_state
    https = _replace(API, port_name="https", port=443, endpoints=tuple(
        Endpoint(ep.ip, 8443, ep.node) for ep in API.endpoints))
    assert state([API, https], "node2")["services"][0]["local_endpoints"] == 2
    going = _replace(API, endpoints=(
        Endpoint("10.244.1.4", 8080, "node1", ready=False, serving=True, terminating=True),
        Endpoint("10.244.2.3", 8080, "node2")))
    assert state([going], "node1")["services"][0]["local_endpoints"] == 0


# --- upstream proxier_test.go: traffic policies and terminating endpoints ----------------------

POD_SRC = "10.244.9.2"   # a pod on another node, calling the service
SVC1 = ServicePort("ns1", "svc1", "", "TCP", "172.30.1.1", 80, 80)
SVC1_LB = _replace(SVC1, load_balancer_ips=("1.2.3.4",), node_port=30001,
                   health_check_node_port=30000, external_traffic_policy="Local")


def _trace(mode: str, svc: ServicePort, src: str, dst: str, dport: int = 80,
           node: NodeContext = NODE1):
    return _node(mode, node, [svc]).trace(Packet(src, dst, dport, frozenset({node.node_ip})))


def _outcome(trace) -> str:
    """upstream's packetFlowTest output: the endpoints, or the verdict."""
    return ", ".join(sorted(trace.destinations)) or ", ".join(trace.verdicts)


def _eps(*spec: tuple[str, str, bool, bool, bool]) -> tuple[Endpoint, ...]:
    """(ip, node, ready, serving, terminating) -> Endpoints on port 80."""
    return tuple(Endpoint(ip, 80, node, r, s, t) for ip, node, r, s, t in spec)


@pytest.mark.parametrize("policy, nodes, want", [
    ("Cluster", ("node1", "node8", "node9"), "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
    ("Local", ("node1", "node8", "node9"), "10.0.1.1:80"),
    ("Local", ("node1", "node1", "node9"), "10.0.1.1:80, 10.0.1.2:80"),
    ("Local", ("node0", "node8", "node9"), "DROP"),
], ids=["internalTrafficPolicy is cluster",
        "internalTrafficPolicy is local and there is one local endpoint",
        "internalTrafficPolicy is local and there are multiple local endpoints",
        "internalTrafficPolicy is local and there are no local endpoints"])
def test_internal_traffic_policy(mode, policy, nodes, want):
    """upstream TestInternalTrafficPolicy: pod to ClusterIP, then the endpoints deleted."""
    eps = tuple(Endpoint(f"10.0.1.{i}", 80, n) for i, n in enumerate(nodes, 1))
    svc = _replace(SVC1, internal_traffic_policy=policy, endpoints=eps)
    got = _trace(mode, svc, POD_SRC, "172.30.1.1")
    assert _outcome(got) == want and not got.masquerade, got.matched
    gone = _trace(mode, _replace(svc, endpoints=()), POD_SRC, "172.30.1.1")
    assert _outcome(gone) == "REJECT"


_R, _ST, _T = (True, True, False), (False, True, True), (False, False, True)


@pytest.mark.parametrize("eps, pod_to_cluster_ip, external_to_lb", [
    pytest.param(_eps(("10.0.1.1", "node1", *_R), ("10.0.1.2", "node1", *_R),
                      ("10.0.1.3", "node1", *_ST), ("10.0.1.4", "node1", *_T),
                      ("10.0.1.5", "node-1", *_R)),
                 "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", "10.0.1.1:80, 10.0.1.2:80",
                 id="ready endpoints exist"),
    pytest.param(_eps(("10.0.1.2", "node1", *_ST), ("10.0.1.3", "node1", *_ST),
                      ("10.0.1.4", "node1", *_T), ("10.0.1.5", "node-1", *_R)),
                 "10.0.1.5:80", "10.0.1.2:80, 10.0.1.3:80",
                 id="only terminating endpoints exist"),
    pytest.param(_eps(("10.0.1.5", "node-1", *_ST)), "10.0.1.5:80", "DROP",
                 id="terminating endpoints on remote node"),
    pytest.param(_eps(("10.0.1.5", "node1", *_T), ("10.0.1.6", "node-1", *_T)),
                 "REJECT", "REJECT", id="no usable endpoints on any node"),
])
def test_terminating_endpoints_traffic_policy_local(mode, eps, pod_to_cluster_ip,
                                                     external_to_lb):
    """upstream TestTerminatingEndpointsTrafficPolicyLocal (LoadBalancer, ETP Local)."""
    svc = _replace(SVC1_LB, endpoints=eps)
    assert _outcome(_trace(mode, svc, POD_SRC, "172.30.1.1")) == pod_to_cluster_ip
    external = _trace(mode, svc, CLIENT, "1.2.3.4")
    assert _outcome(external) == external_to_lb and not external.masquerade
    gone = _replace(svc, endpoints=())
    assert _outcome(_trace(mode, gone, POD_SRC, "172.30.1.1")) == "REJECT"
    assert _outcome(_trace(mode, gone, CLIENT, "1.2.3.4")) == "REJECT"


@pytest.mark.parametrize("eps, want", [
    pytest.param(_eps(("10.0.1.1", "node1", *_R), ("10.0.1.2", "node1", *_R),
                      ("10.0.1.3", "node1", *_ST), ("10.0.1.4", "node1", *_T),
                      ("10.0.1.5", "node-1", *_R)),
                 "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", id="ready endpoints exist"),
    pytest.param(_eps(("10.0.1.2", "node1", *_ST), ("10.0.1.3", "node1", *_ST),
                      ("10.0.1.4", "node1", *_T), ("10.0.1.5", "node-1", *_ST)),
                 "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", id="only terminating endpoints exist"),
    pytest.param(_eps(("10.0.1.5", "node-1", *_ST)), "10.0.1.5:80",
                 id="terminating endpoints on remote node"),
    pytest.param(_eps(("10.0.1.5", "node1", *_T), ("10.0.1.6", "node-1", *_T)), "REJECT",
                 id="no usable endpoints on any node"),
])
def test_terminating_endpoints_traffic_policy_cluster(mode, eps, want):
    """upstream TestTerminatingEndpointsTrafficPolicyCluster: with externalTrafficPolicy
    Cluster, pods and external clients get the same endpoints (external ones SNATed)."""
    svc = _replace(SVC1_LB, external_traffic_policy="Cluster", endpoints=eps)
    assert _outcome(_trace(mode, svc, POD_SRC, "172.30.1.1")) == want
    external = _trace(mode, svc, CLIENT, "1.2.3.4")
    assert _outcome(external) == want
    assert external.masquerade == (want != "REJECT")


def test_external_traffic_policy_local_on_a_node_port_service(mode):
    """A NodePort Service (no LB, no healthCheckNodePort) may have externalTrafficPolicy Local:
    the node's own pods only, client address kept; a node without one drops."""
    svc = _replace(SVC1, node_port=30001, external_traffic_policy="Local",
                   endpoints=_eps(("10.0.1.1", "node1", *_R), ("10.0.1.2", "node2", *_R)))
    on1 = _trace(mode, svc, CLIENT, NODE1.node_ip, 30001)
    assert _outcome(on1) == "10.0.1.1:80" and not on1.masquerade
    assert _outcome(_trace(mode, svc, CLIENT, NODE3.node_ip, 30001, NODE3)) == "DROP"
    assert DATAPLANES[mode].health_state([svc], "node1") == {"services": []}
