"""spec.loadBalancerSourceRanges end to end, without root: the topology field and its one-line
errors, kube-proxy's firewall in each mode (upstream's KUBE-FW- chains and KUBE-PROXY-FIREWALL,
the nftables firewall- chains and firewall-ips map, the IPVS KUBE-LOAD-BALANCER-FW sets, as
TestLoadBalancerSourceRanges in pkg/proxy/ipvs/proxier_test.go expects them), and the cloud
LB's own filter (the VPC controller's flows, HAProxy's ACL). The upstream golden texts with a
firewalled service are in test_kubeproxy.py and test_nftables_rules.py."""

from __future__ import annotations

import subprocess

import pytest

from controllers.config import ConfigError, parse_new_load_balancer
from testbed.cloud.fabric import render_fabric
from testbed.cloud.lb import haproxy as hx
from testbed.emulation.services import lb_changes, lb_entries
from testbed.errors import InputError
from testbed.kubernetes.dataplane.ipvs import ipsets as S
from testbed.kubernetes.dataplane.ipvs import rules as ipvs_rules
from testbed.kubernetes.dataplane.ipvs.state import node_state
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort, service_ports
from testbed.kubernetes.dataplane.registry import DATAPLANES
from testbed.plan.addresses import build_plan
from testbed.plan.changes import apply_service
from testbed.spec.services import read_one_service, service_body, set_fields_document
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document
from tests.unit.dataplane_models import MODELS
from tests.unit.kubeproxy_cases import NODE1, WEB, WEB_PODS, WEB_VIP
from tests.unit.kubeproxy_cases import replace_port as _replace
from tests.unit.test_controller_lb_runtime import VIP2, entry, to
from tests.unit.test_l7 import FAST, needs_haproxy
from tests.unit.test_lb_cloud import healthy
from tests.unit.traces import Packet
from tests.unit.vpc_fixtures import PORTS, make

ALLOWED, OTHER = "203.0.113.10", "203.0.113.200"   # inside / outside 203.0.113.0/25
RANGE = "203.0.113.0/25"

TOPOLOGY = """\
name: t
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {subnet: az-a}}
deployments: {web: {replicas: 1}}
services:
  web: {SERVICE}
loadBalancer: {vip: 198.51.100.10, targets: nodeport}
clients: {client1: {}}
"""


def _topology(service: str, proxy_mode: str | None = None):
    text = TOPOLOGY.replace("{SERVICE}", service)
    return parse_topology(parse_document("t.yaml", text), proxy_mode=proxy_mode)


def _problems(service: str, proxy_mode: str | None = None) -> list[str]:
    with pytest.raises(InputError) as err:
        _topology(service, proxy_mode)
    return [str(p) for p in err.value.problems]


# --- the field --------------------------------------------------------------------------------


def test_ranges_are_read_normalized_and_reach_the_model():
    topo = _topology("{type: LoadBalancer, loadBalancerSourceRanges: [203.0.113.7/25, "
                     "10.0.0.0/8]}")
    assert topo.services[0].load_balancer_source_ranges == (RANGE, "10.0.0.0/8")
    plan = build_plan(topo)
    (port,) = service_ports(plan)
    assert port.load_balancer_source_ranges == (RANGE, "10.0.0.0/8")
    assert plan.load_balancers[0].source_ranges == (RANGE, "10.0.0.0/8")
    assert service_body(topo.services[0])["loadBalancerSourceRanges"] == [RANGE, "10.0.0.0/8"]


@pytest.mark.parametrize("service, want", [
    ("{type: LoadBalancer, loadBalancerSourceRanges: [nope]}",
     "t.yaml:6: services.web.loadBalancerSourceRanges[0]: 'nope' is not a CIDR — "),
    ("{type: LoadBalancer, loadBalancerSourceRanges: ['2001:db8::/32']}",
     "services.web.loadBalancerSourceRanges[0]: '2001:db8::/32' is IPv6"),
    ("{type: LoadBalancer, loadBalancerSourceRanges: 203.0.113.0/25}",
     "services.web.loadBalancerSourceRanges: expected a list of CIDRs, got a string"),
    ("{type: NodePort, loadBalancerSourceRanges: [203.0.113.0/25]}",
     "services.web.loadBalancerSourceRanges: may only be used when type is LoadBalancer, not "
     "NodePort — remove loadBalancerSourceRanges or set type: LoadBalancer"),
])
def test_bad_ranges_are_one_line_naming_file_field_and_fix(service, want):
    (problem,) = _problems(service)
    assert want in problem and " — " in problem and "\n" not in problem


def test_every_proxy_mode_takes_them():
    """The ebpf mode enforces them too (cnlb_src_range): no mode refuses a topology."""
    for mode in ("iptables", "nftables", "ipvs", "ebpf"):
        topo = _topology("{type: LoadBalancer, loadBalancerSourceRanges: [203.0.113.0/25]}",
                         proxy_mode=mode)
        assert topo.services[0].load_balancer_source_ranges == (RANGE,)


def test_cnlb_service_set_changes_them_and_the_lb_is_replaced():
    topo = _topology("{type: LoadBalancer}")
    plan = build_plan(topo)
    (svc,) = topo.services
    doc = set_fields_document(svc, ["loadBalancerSourceRanges=[203.0.113.0/25]"])
    changed = read_one_service(doc, topo.deployments, {})
    assert changed.load_balancer_source_ranges == (RANGE,)
    topo2, plan2 = apply_service(plan, topo, changed)
    before = lb_entries(render_fabric(plan, topo.load_balancer.health_check), "web")
    after = lb_entries(render_fabric(plan2, topo2.load_balancer.health_check), "web")
    assert "source_ranges" not in before[0] and after[0]["source_ranges"] == [RANGE]
    assert lb_changes(before, after).remove == ("web",)   # its listener is created again
    with pytest.raises(InputError) as err:
        read_one_service(set_fields_document(svc, ["type=NodePort",
                                                   "loadBalancerSourceRanges=[1.2.3.0/24]"]),
                         topo.deployments, {})
    assert "cnlb service set:2: web.loadBalancerSourceRanges: may only be used" in str(err.value)


def test_the_model_refuses_what_is_not_an_ipv4_cidr():
    with pytest.raises(ValueError, match="is not an IPv4 CIDR"):
        _replace(WEB, load_balancer_source_ranges=("10.0.0.0/33",))
    assert _replace(WEB, load_balancer_source_ranges=("10.1.2.3/8",)) \
        .load_balancer_source_ranges == ("10.0.0.0/8",)


# --- kube-proxy: packets, per mode with a packet model ----------------------------------------

FIREWALLED = _replace(WEB, load_balancer_source_ranges=(RANGE,))
MODES = ("iptables", "nftables", "ebpf")


def _trace(mode: str, services, src: str, dst: str = WEB_VIP, dport: int = 80,
           node: NodeContext = NODE1, local: bool = False):
    model = MODELS[mode]()
    model.load(DATAPLANES[mode].render(list(services), node))
    return model.trace(Packet(src, dst, dport, frozenset({node.node_ip}), local_origin=local))


@pytest.mark.parametrize("mode", MODES)
def test_only_sources_in_the_ranges_reach_the_lb_ip(mode):
    allowed = _trace(mode, [FIREWALLED], ALLOWED)
    assert allowed.destinations == WEB_PODS and allowed.masquerade
    denied = _trace(mode, [FIREWALLED], OTHER)
    assert denied.destinations == set() and denied.verdicts == ["DROP"]
    # upstream: "nodeports are not subject to loadBalancerSourceRanges"
    assert _trace(mode, [FIREWALLED], OTHER, NODE1.node_ip, 30080).destinations == WEB_PODS


@pytest.mark.parametrize("mode", ("iptables", "nftables"))
def test_the_node_itself_passes_when_a_range_holds_its_ip(mode):
    """upstream's allowFromNode: a node reaching a VIP bound to itself has the VIP as source."""
    with_node = _replace(WEB, load_balancer_source_ranges=(RANGE, "192.168.0.0/24"))
    assert _trace(mode, [with_node], WEB_VIP).destinations == WEB_PODS
    assert _trace(mode, [FIREWALLED], WEB_VIP).verdicts == ["DROP"]
    text = DATAPLANES[mode].render([with_node], NODE1)
    other_node = NodeContext("node9", "172.31.0.9", NODE1.cluster_cidr)
    assert DATAPLANES[mode].render([with_node], other_node).count(WEB_VIP) \
        < text.count(WEB_VIP)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("old, new", [
    ([WEB], [FIREWALLED]),
    ([FIREWALLED], [WEB]),
    ([FIREWALLED], [_replace(WEB, load_balancer_source_ranges=("203.0.113.128/25",))]),
    ([FIREWALLED], [_replace(FIREWALLED, endpoints=())]),
])
def test_partial_sync_of_a_range_change_equals_a_full_sync(mode, old, new):
    plane = DATAPLANES[mode]
    partial = MODELS[mode]()
    partial.load(plane.render(old, NODE1))
    partial.load(plane.render_partial(old, new, NODE1))
    full = MODELS[mode]()
    full.load(plane.render(new, NODE1))
    assert partial.snapshot() == full.snapshot()


# --- the ebpf mode: cnlb_src_range (Cilium's lb4_src_range) -------------------------------------


def _ebpf_lines(services, kind: str, node: NodeContext = NODE1) -> list[str]:
    text = DATAPLANES["ebpf"].render(list(services), node)
    return [ln for ln in text.splitlines() if ln.split()[0] == kind]


def test_ebpf_flags_only_the_lb_ip_and_writes_its_ranges():
    """upstream: "nodeports are not subject to loadBalancerSourceRanges"; Cilium flags only its
    LoadBalancer frontends."""
    flagged = [ln.split()[1] for ln in _ebpf_lines([FIREWALLED], "service")
               if "source-range" in ln]
    assert flagged == [f"{WEB_VIP}:80/TCP"]
    assert _ebpf_lines([FIREWALLED], "range") == [f"range {WEB_VIP}:80/TCP {RANGE}  # "
                                                  f"{WEB.port_name_string}"]
    assert _ebpf_lines([WEB], "range") == []
    assert _trace("ebpf", [FIREWALLED], OTHER, "10.96.0.10", 80).destinations == WEB_PODS


def test_ebpf_a_pod_outside_the_ranges_is_dropped_under_either_scope():
    """A Local policy's LB IP has an internal entry for pods and the node (any endpoint):
    it carries the flag too, and shares the external entry's ranges (Cilium's rev_nat_id)."""
    local = _replace(FIREWALLED, external_traffic_policy="Local")
    assert len([ln for ln in _ebpf_lines([local], "service") if "source-range" in ln]) == 2
    assert len(_ebpf_lines([local], "range")) == 1
    denied = _trace("ebpf", [local], "10.244.1.9")   # a pod on node1
    assert denied.verdicts == ["DROP"] and "scope=1" in denied.matched[0]
    pods_ok = _replace(local, load_balancer_source_ranges=(RANGE, "10.244.0.0/16"))
    assert _trace("ebpf", [pods_ok], "10.244.1.9").destinations == WEB_PODS


def test_ebpf_the_node_itself_passes_when_a_range_holds_its_ip():
    """The node's own connection to the LB IP leaves from its address (cnlb_host): a range
    holding the node's IP admits it, as upstream's allowFromNode does for the iptables mode."""
    with_node = _replace(WEB, load_balancer_source_ranges=(RANGE, "192.168.0.0/24"))
    assert _trace("ebpf", [with_node], NODE1.node_ip, local=True).destinations == WEB_PODS
    assert _trace("ebpf", [FIREWALLED], NODE1.node_ip, local=True).verdicts == ["DROP"]


def test_ebpf_any_prefix_of_several_ranges_admits():
    two = _replace(WEB, load_balancer_source_ranges=("203.0.113.7/32", "10.0.0.0/8"))
    assert _trace("ebpf", [two], "203.0.113.7").destinations == WEB_PODS
    assert _trace("ebpf", [two], "10.9.8.7").destinations == WEB_PODS
    assert _trace("ebpf", [two], "203.0.113.8").verdicts == ["DROP"]
    # another service's ranges are not this one's
    api = _replace(WEB, name="api", cluster_ip="10.96.0.11", node_port=30081,
                   load_balancer_ips=("198.51.100.11",),
                   load_balancer_source_ranges=("203.0.113.8/32",))
    assert _trace("ebpf", [two, api], "203.0.113.8").verdicts == ["DROP"]
    assert _trace("ebpf", [two, api], "203.0.113.8", "198.51.100.11").destinations == WEB_PODS


def test_ebpf_a_flag_is_written_after_its_ranges_and_cleared_before_they_go():
    """A partial sync never leaves the LB IP open: the flag after its ranges, and gone before
    them."""
    added = DATAPLANES["ebpf"].render_partial([WEB], [FIREWALLED], NODE1).splitlines()
    assert [ln.split()[0] for ln in added] == ["range", "service"]
    removed = DATAPLANES["ebpf"].render_partial([FIREWALLED], [WEB], NODE1).splitlines()
    assert [ln.split()[:2] for ln in removed] == [["service", f"{WEB_VIP}:80/TCP"],
                                                  ["delete", "range"]]
    assert "source-range" not in removed[0]


def test_iptables_without_endpoints_writes_no_firewall_chain():
    """usesFWChain needs endpoints in the iptables mode (the nftables mode writes it anyway)."""
    text = DATAPLANES["iptables"].render([_replace(FIREWALLED, endpoints=())], NODE1)
    assert ":KUBE-FW-" not in text and "traffic not accepted" not in text
    assert "firewall-ips { 198.51.100.10 . tcp . 80" in DATAPLANES["nftables"].render(
        [_replace(FIREWALLED, endpoints=())], NODE1)


def test_iptables_jumps_to_the_proxy_firewall_from_input_output_and_forward():
    from testbed.kubernetes.dataplane.iptables.restore import JUMP_RULES
    got = {(r.chain, r.comment) for r in JUMP_RULES if r.target == "KUBE-PROXY-FIREWALL"}
    assert got == {(c, "kubernetes load balancer firewall") for c in ("INPUT", "OUTPUT",
                                                                       "FORWARD")}


# --- IPVS (upstream TestLoadBalancerSourceRanges) ------------------------------------------------

IPVS_NODE = NodeContext("node1", "100.101.102.103", "10.244.0.0/16")


def _ipvs_svc(ranges: tuple[str, ...]) -> ServicePort:
    return ServicePort("ns1", "p80", "p80", "TCP", "10.20.30.41", 80, 80, node_port=3001,
                       load_balancer_ips=("1.2.3.4",), load_balancer_source_ranges=ranges,
                       endpoints=WEB.endpoints)


def test_ipvs_fills_upstreams_firewall_sets():
    state = node_state([_ipvs_svc(("10.0.0.0/8",))], IPVS_NODE)
    assert state.sets[S.KUBE_LOAD_BALANCER] == {"1.2.3.4,tcp:80"}
    assert state.sets[S.KUBE_LOAD_BALANCER_FW] == {"1.2.3.4,tcp:80"}
    assert state.sets[S.KUBE_LOAD_BALANCER_SOURCE_CIDR] == {"1.2.3.4,tcp:80,10.0.0.0/8"}
    assert state.sets[S.KUBE_LOAD_BALANCER_SOURCE_IP] == frozenset()
    text = ipvs_rules.split(ipvs_rules.render([_ipvs_svc(("10.0.0.0/8",))], IPVS_NODE))
    iptables = text[ipvs_rules.PART_IPTABLES]
    assert "-A KUBE-PROXY-FIREWALL -m comment --comment " in iptables
    assert "--match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL" in iptables
    assert "--match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN" in iptables
    assert "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP" in iptables
    assert "add KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.4,tcp:80,10.0.0.0/8" in \
        text[ipvs_rules.PART_IPSET]


def test_ipvs_allows_the_vip_as_source_when_a_range_holds_the_node():
    state = node_state([_ipvs_svc(("100.101.0.0/16",))], IPVS_NODE)
    assert state.sets[S.KUBE_LOAD_BALANCER_SOURCE_IP] == {"1.2.3.4,tcp:80,1.2.3.4"}
    change = ipvs_rules.render_partial([_ipvs_svc(())], [_ipvs_svc(("100.101.0.0/16",))],
                                       IPVS_NODE)
    assert "add KUBE-LOAD-BALANCER-FW 1.2.3.4,tcp:80" in change


# --- the cloud LB's own filter --------------------------------------------------------------------


def test_the_l4_lb_admits_only_clients_in_its_source_ranges():
    vpc, fab = make()
    lb = parse_new_load_balancer(vpc.fabric, entry(source_ranges=[RANGE]))
    fab.apply(vpc.add_lb(lb, PORTS))
    healthy(vpc, fab, lb="api")
    assert to(fab, VIP2, 8000, src=ALLOWED) in {("192.168.0.10", 30001), ("192.168.1.10", 30001)}
    assert to(fab, VIP2, 8000, src=OTHER) is None
    row = next(r for r in vpc.balancer.lbs_view() if r["name"] == "api")
    assert row["source_ranges"] == [RANGE]
    with pytest.raises(ConfigError, match=r"source_ranges\[0\]: 'x' is not an IPv4 CIDR"):
        parse_new_load_balancer(vpc.fabric, entry(name="bad", source_ranges=["x"]))


def test_the_l7_lb_refuses_connections_from_other_clients():
    topo = _topology("{type: LoadBalancer, loadBalancerSourceRanges: [203.0.113.0/25]}")
    text = hx.render_config(build_plan(topo).load_balancers, FAST, "/run/x/haproxy.sock")
    assert "    acl load_balancer_source_ranges src 203.0.113.0/25\n" \
        "    tcp-request connection reject if !load_balancer_source_ranges\n" in text


@needs_haproxy
def test_haproxy_accepts_the_acl(tmp_path):
    topo = _topology("{type: LoadBalancer, loadBalancerSourceRanges: [203.0.113.0/25, "
                     "10.0.0.0/8]}")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(hx.render_config(build_plan(topo).load_balancers, FAST, str(tmp_path / "s")))
    proc = subprocess.run([hx.HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
