"""Stale UDP conntrack entries (testbed/kubernetes/dataplane/conntrack.py), after upstream's
pkg/proxy/conntrack cleanup_test.go and the conntrack tool's arguments in its conntrack.go."""

from __future__ import annotations

from testbed.kubernetes.dataplane import conntrack
from testbed.kubernetes.dataplane.model import Endpoint, ServicePort

UDP = ServicePort("ns", "dns", "dns", "UDP", "10.96.0.10", 53, 5353, node_port=30053,
                  load_balancer_ips=("198.51.100.53",), external_ips=("203.0.113.53",),
                  endpoints=(Endpoint("10.244.1.2", 5353, "node1"),
                             Endpoint("10.244.2.2", 5353, "node2")))


def _with(svc: ServicePort, *eps: Endpoint) -> ServicePort:
    fields = {f: getattr(svc, f) for f in ServicePort.__dataclass_fields__}
    return ServicePort(**{**fields, "endpoints": eps})


def test_tool_arguments_are_upstreams():
    assert conntrack.clear_entries_for_ip_port("10.96.0.10", 53) == [
        "conntrack", "-D", "--orig-dst", "10.96.0.10", "-p", "udp", "--dport", "53"]
    assert conntrack.clear_entries_for_port(30053) == [
        "conntrack", "-D", "-p", "udp", "--dport", "30053"]
    assert conntrack.clear_entries_for_nat("10.96.0.10", "10.244.1.2") == [
        "conntrack", "-D", "--orig-dst", "10.96.0.10", "--dst-nat", "10.244.1.2", "-p", "udp"]
    assert conntrack.clear_entries_for_port_nat("10.244.1.2", 30053) == [
        "conntrack", "-D", "-p", "udp", "--dport", "30053", "--dst-nat", "10.244.1.2"]


def test_deleted_endpoint_flows_are_cleared_from_every_service_address():
    new = _with(UDP, UDP.endpoints[1])
    assert conntrack.stale_entries_commands([UDP], [new]) == [
        conntrack.clear_entries_for_port_nat("10.244.1.2", 30053),
        conntrack.clear_entries_for_nat("10.96.0.10", "10.244.1.2"),
        conntrack.clear_entries_for_nat("203.0.113.53", "10.244.1.2"),
        conntrack.clear_entries_for_nat("198.51.100.53", "10.244.1.2"),
    ]


def test_an_endpoint_that_stops_serving_is_stale_a_terminating_serving_one_is_not():
    terminating = Endpoint("10.244.1.2", 5353, "node1", False, True, True)
    assert conntrack.stale_entries_commands([UDP], [_with(UDP, terminating, UDP.endpoints[1])]) \
        == []
    gone = Endpoint("10.244.1.2", 5353, "node1", False, False, True)
    cmds = conntrack.stale_entries_commands([UDP], [_with(UDP, gone, UDP.endpoints[1])])
    assert conntrack.clear_entries_for_nat("10.96.0.10", "10.244.1.2") in cmds


def test_newly_active_service_clears_its_black_hole_entries():
    empty = _with(UDP)
    assert conntrack.stale_entries_commands([empty], [UDP]) == [
        conntrack.clear_entries_for_ip_port("10.96.0.10", 53),
        conntrack.clear_entries_for_ip_port("203.0.113.53", 53),
        conntrack.clear_entries_for_ip_port("198.51.100.53", 53),
        conntrack.clear_entries_for_port(30053),
    ]
    assert conntrack.stale_entries_commands([], [UDP])[0] == \
        conntrack.clear_entries_for_ip_port("10.96.0.10", 53)


def _policies(svc: ServicePort, internal: str, external: str, *eps: Endpoint) -> ServicePort:
    fields = {f: getattr(svc, f) for f in ServicePort.__dataclass_fields__}
    return ServicePort(**{**fields, "internal_traffic_policy": internal,
                          "external_traffic_policy": external, "endpoints": eps})


def test_newly_active_is_judged_by_what_the_node_can_use():
    """kubernetes#126934: with internalTrafficPolicy Local, node1 dropped its clients' packets
    while only node2 had an endpoint; when node1 gets its own, node1's drop entries must go,
    though the service was active across the cluster all along."""
    on_node2 = _policies(UDP, "Local", "Cluster", UDP.endpoints[1])
    on_both = _policies(UDP, "Local", "Cluster", *UDP.endpoints)
    assert conntrack.stale_entries_commands([on_node2], [on_both], "node1") == [
        conntrack.clear_entries_for_ip_port("10.96.0.10", 53)]
    assert conntrack.stale_entries_commands([on_node2], [on_both], "node2") == []
    assert conntrack.stale_entries_commands([on_node2], [on_both]) == []   # cluster-wide


def test_external_local_clears_the_external_addresses_and_the_node_port_only():
    on_node2 = _policies(UDP, "Cluster", "Local", UDP.endpoints[1])
    on_both = _policies(UDP, "Cluster", "Local", *UDP.endpoints)
    assert conntrack.stale_entries_commands([on_node2], [on_both], "node1") == [
        conntrack.clear_entries_for_ip_port("203.0.113.53", 53),
        conntrack.clear_entries_for_ip_port("198.51.100.53", 53),
        conntrack.clear_entries_for_port(30053),
    ]


def test_deleted_service_port_is_cleared_and_tcp_is_never_touched():
    assert conntrack.stale_entries_commands([UDP], [])[-1] == conntrack.clear_entries_for_port(
        30053)
    tcp = ServicePort("ns", "web", "", "TCP", "10.96.0.20", 80, 80, node_port=30080,
                      endpoints=(Endpoint("10.244.1.3", 80, "node1"),))
    assert conntrack.stale_entries_commands([tcp], [_with(tcp)]) == []
    assert conntrack.stale_entries_commands([], [tcp]) == []
    assert conntrack.stale_entries_commands([UDP], [UDP]) == []


def test_script_runs_each_command_and_ignores_nothing_to_delete():
    text = conntrack.script([conntrack.clear_entries_for_port(30053)])
    assert text == "conntrack -D -p udp --dport 30053 >/dev/null 2>&1; true"
