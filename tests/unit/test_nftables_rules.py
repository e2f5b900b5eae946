"""kube-proxy's nftables mode against upstream's expectations (pkg/proxy/nftables/proxier_test.go).

The names (hashAndTruncate), the whole ruleset of TestOverallNFTablesRules (dumped from a model
of nftables, as upstream dumps knftables.Fake), upstream's packet flow tests on it, what a
partial sync writes, and the proxier on a fake cluster: one `nft -f -` per node.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from testbed.kubernetes.dataplane.model import Endpoint, NodeContext, ServicePort
from testbed.kubernetes.dataplane.nftables import names, rules
from testbed.kubernetes.dataplane.nftables.proxier import NFTablesProxy
from testbed.kubernetes.dataplane.registry import dataplane_for
from tests.unit.kubeproxy_cases import API, NODE1, NODE2, WEB
from tests.unit.kubeproxy_cases import replace_port as _replace
from tests.unit.nftables_model import ModelError, NFTablesNode, Ruleset, check_references
from tests.unit.test_proxier import FakeCluster, servers_listen  # noqa: F401 (a fixture)
from tests.unit.traces import Packet

# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, want", [
    (("ns1", "svc1", "tcp", "p80"), "ULMVA6XW-ns1/svc1/tcp/p80"),
    (("ns2", "svc2", "TCP", "p80"), "42NFTM6N-ns2/svc2/tcp/p80"),
    (("ns5", "svc5", "tcp", "p80"), "HVFWP5L3-ns5/svc5/tcp/p80"),
])
def test_service_chain_names_hash_like_upstream(args, want):
    assert names.service_port_chain_name_base(*args) == want


@pytest.mark.parametrize("endpoint, want", [
    ("10.180.0.1:80", "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"),
])
def test_endpoint_chain_names_hash_like_upstream(endpoint, want):
    assert names.endpoint_chain_name_base("ns1", "svc1", "tcp", "p80", endpoint) == want


def test_long_names_are_cut_with_their_hash_kept():
    base = names.hash_and_truncate("n" * 300)
    assert len(base) == names.CHAIN_NAME_BASE_LENGTH_MAX and base.endswith("...")
    assert base[:9] == names.hash_and_truncate("n" * 300)[:9] != names.hash_and_truncate(
        "n" * 299)[:9]


def test_only_per_service_names_have_a_slash():
    svc = _replace(WEB)
    for chain in names.service_chains(svc):
        assert names.is_service_chain_name(chain)
    for chain in (names.SERVICES, names.MARK_MASQ, names.REJECT_CHAIN, names.FILTER_INPUT):
        assert not names.is_service_chain_name(chain)
    assert names.is_affinity_set_name(names.affinity_set(svc, svc.endpoints[0]))


# --- upstream TestOverallNFTablesRules ----------------------------------------------------------

TEST_NODE = NodeContext("test-node", "192.168.0.2", "10.0.0.0/8")


def _upstream_services() -> list[ServicePort]:
    def ep(ip: str, node: str | None = None) -> Endpoint:
        return Endpoint(ip, 80, node)

    return [
        ServicePort("ns1", "svc1", "p80", "TCP", "172.30.0.41", 80, 80,
                    endpoints=(ep("10.180.0.1"),)),
        ServicePort("ns2", "svc2", "p80", "TCP", "172.30.0.42", 80, 80, node_port=3001,
                    load_balancer_ips=("1.2.3.4",), external_ips=("192.168.99.22",),
                    external_traffic_policy="Local", health_check_node_port=30000,
                    endpoints=(ep("10.180.0.2"),)),   # no node name: not local
        ServicePort("ns3", "svc3", "p80", "TCP", "172.30.0.43", 80, 80, node_port=3003,
                    endpoints=(ep("10.180.0.3"),)),
        ServicePort("ns4", "svc4", "p80", "TCP", "172.30.0.44", 80, 80,
                    external_ips=("192.168.99.33",),
                    endpoints=(ep("10.180.0.4"), ep("10.180.0.5", "test-node"))),
        ServicePort("ns5", "svc5", "p80", "TCP", "172.30.0.45", 80, 80, node_port=3002,
                    load_balancer_ips=("5.6.7.8",), session_affinity_seconds=10800,
                    load_balancer_source_ranges=("203.0.113.0/25",),
                    endpoints=(ep("10.180.0.3"),)),
        ServicePort("ns6", "svc6", "p80", "TCP", "172.30.0.46", 80, 80),
    ]


BASE_RULES = """
add table ip kube-proxy { comment "rules for kube-proxy" ; }

add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }

add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }

add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check

add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports

add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"""  # noqa: E501

SERVICE_RULES = """
# svc1
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }

# svc2
add chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 }
add chain ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit local traffic"
add chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.22 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }
add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment "ns2/svc2:p80" : drop }
add element ip kube-proxy no-endpoint-services { 192.168.99.22 . tcp . 80 comment "ns2/svc2:p80" : drop }

# svc3
add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80
add chain ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }

# svc4
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 goto service-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy service-ips { 192.168.99.33 . tcp . 80 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }

# svc5
add set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip daddr 172.30.0.45 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-HVFWP5L3-ns5/svc5/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 }
add chain ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-HVFWP5L3-ns5/svc5/tcp/p80 goto service-HVFWP5L3-ns5/svc5/tcp/p80
add chain ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }
add rule ip kube-proxy endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add chain ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80
add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop
add element ip kube-proxy cluster-ips { 172.30.0.45 }
add element ip kube-proxy service-ips { 172.30.0.45 . tcp . 80 : goto service-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-ips { 5.6.7.8 . tcp . 80 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3002 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }
add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 comment "ns5/svc5:p80" : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }

# svc6
add element ip kube-proxy cluster-ips { 172.30.0.46 }
add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
"""  # noqa: E501


def _lines(text: str) -> list[str]:
    return sorted(line for line in textwrap.dedent(text).splitlines()
                  if line and not line.startswith("#"))


def _loaded(services, node=TEST_NODE) -> Ruleset:
    rs = Ruleset()
    rs.load(rules.render(services, node))
    return rs


def test_overall_nftables_rules_as_upstream():
    """upstream TestOverallNFTablesRules, without what the testbed leaves out on purpose: the
    ServiceCIDR drop rule."""
    assert _loaded(_upstream_services()).dump() == _lines(BASE_RULES + SERVICE_RULES)


def _flow(rs: Ruleset, src: str, dst: str, dport: int, protocol: str = "tcp",
          local: bool = False) -> tuple[str, bool]:
    """upstream's packetFlowTest: (output, masq)."""
    local_ips = frozenset({"192.168.0.2", "192.168.1.2", "192.168.99.11"})
    got = NFTablesNode()
    got.ruleset = rs
    t = got.trace(Packet(src, dst, dport, local_ips, protocol=protocol, local_origin=local))
    return ", ".join(sorted(t.destinations)) or ", ".join(t.verdicts), t.masquerade


def test_no_endpoints_reject():
    """upstream TestNoEndpointsReject: cluster IP, external IP, NodePort and LB IP."""
    svc = ServicePort("ns1", "svc1", "p80", "TCP", "172.30.0.41", 80, 80, node_port=3001,
                      external_ips=("192.168.99.11",), load_balancer_ips=("1.2.3.4",))
    rs = _loaded([svc])
    for src in ("10.0.0.2", "203.0.113.2"):
        for dst, port in (("172.30.0.41", 80), ("192.168.99.11", 80), ("192.168.0.2", 3001),
                          ("1.2.3.4", 80)):
            if src == "203.0.113.2" and dst == "172.30.0.41":
                continue
            assert _flow(rs, src, dst, port)[0] == "REJECT", (src, dst)


def test_cluster_ip_general():
    """upstream TestClusterIPGeneral, but for the ServiceCIDR drop (see docs)."""
    local = "test-node"
    svc1 = ServicePort("ns1", "svc1", "http", "TCP", "172.30.0.41", 80, 80,
                       endpoints=(Endpoint("10.180.0.1", 80, local),))
    two = (("10.180.0.1", local), ("10.180.2.1", "node2"))

    def port(name: str, proto: str, p: int, target: int) -> ServicePort:
        return ServicePort("ns2", "svc2", name, proto, "172.30.0.42", p, target,
                           endpoints=tuple(Endpoint(ip, target, n) for ip, n in two))

    rs = _loaded([svc1, port("http", "TCP", 80, 80), port("https", "TCP", 443, 8443),
                  port("dns-udp", "UDP", 53, 53), port("dns-tcp", "TCP", 53, 5353),
                  port("dns-sctp", "SCTP", 53, 53)])
    assert _flow(rs, "10.180.0.2", "172.30.0.41", 80) == ("10.180.0.1:80", False)
    assert _flow(rs, "10.180.0.1", "172.30.0.41", 80) == ("10.180.0.1:80", True)   # hairpin
    assert _flow(rs, "10.180.0.2", "172.30.0.42", 80)[0] == "10.180.0.1:80, 10.180.2.1:80"
    assert _flow(rs, "10.180.0.2", "172.30.0.42", 443)[0] == "10.180.0.1:8443, 10.180.2.1:8443"
    assert _flow(rs, "10.180.0.2", "172.30.0.42", 53)[0] == "10.180.0.1:5353, 10.180.2.1:5353"
    assert _flow(rs, "10.180.0.2", "172.30.0.42", 53, "udp")[0] == "10.180.0.1:53, 10.180.2.1:53"
    assert _flow(rs, "10.180.0.2", "172.30.0.42", 53, "sctp")[0] == "10.180.0.1:53, 10.180.2.1:53"
    # a port the cluster IP does not have: rejected by cluster-ips-check
    assert _flow(rs, "10.180.0.2", "172.30.0.42", 80, "udp")[0] == "REJECT"
    assert _flow(rs, "10.180.0.2", "172.30.0.41", 443)[0] == "REJECT"


def test_node_ports_only_on_the_node_address():
    """nftables' default --nodeport-addresses=primary: the node's IP, not 127.0.0.1 nor any
    other local address."""
    svc = ServicePort("ns1", "svc1", "p80", "TCP", "172.30.0.41", 80, 80, node_port=3001,
                      endpoints=(Endpoint("10.180.0.1", 80, "node2"),))
    rs = _loaded([svc])
    assert _flow(rs, "203.0.113.2", "192.168.0.2", 3001) == ("10.180.0.1:80", True)
    assert _flow(rs, "203.0.113.2", "192.168.1.2", 3001)[0] == ""
    assert _flow(rs, "127.0.0.1", "127.0.0.1", 3001, local=True)[0] == ""


# --- partial sync ---------------------------------------------------------------------------


def test_one_endpoint_change_writes_only_that_service():
    web2 = _replace(WEB, endpoints=WEB.endpoints[:2] + (Endpoint("10.244.1.9", 8080, "node1"),))
    text = rules.render_partial([WEB, API], [web2, API], NODE1)
    assert "table" not in text and "api" not in text
    assert all("default/web/" in line for line in text.splitlines()), text
    # the service's map elements still point at the same chains: none is written
    assert "element" not in text
    assert "delete chain ip kube-proxy endpoint-" in text and "10.244.1.9" in text


def test_changed_verdicts_are_deleted_then_added():
    gone = _replace(WEB, endpoints=())
    text = rules.render_partial([WEB, API], [gone, API], NODE1)
    lines = text.splitlines()
    delete = "delete element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 }"
    add = ('add element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 comment'
           ' "default/web:http" : goto reject-chain }')
    assert delete in lines and add in lines
    assert lines.index(delete) < lines.index(add)


def test_nothing_changed_writes_nothing():
    assert rules.render_partial([WEB, API], [API, WEB], NODE1) == ""


def test_two_services_claiming_one_address_end_as_a_full_sync_leaves_them():
    """Upstream keeps one element per key; a partial sync must agree with a full one even
    when a misconfigured Service claims another's LB IP and port."""
    twin = _replace(WEB, name="web2", cluster_ip="10.96.0.11")
    for old, new in (([WEB], [WEB, twin]), ([WEB, twin], [WEB]), ([twin], [WEB, twin]),
                     ([WEB, twin], [twin])):
        node = NFTablesNode()
        node.load(rules.render(old, NODE1))
        node.load(rules.render_partial(old, new, NODE1))
        full = NFTablesNode()
        full.load(rules.render(new, NODE1))
        assert node.snapshot() == full.snapshot(), (old, new)


def test_stale_affinity_sets_and_chains_go():
    plain = _replace(API, session_affinity_seconds=None)
    node = NFTablesNode()
    node.load(rules.render([API], NODE2))
    assert any(n.startswith("affinity-") for n in node.ruleset.state.containers)
    node.load(rules.render_partial([API], [plain], NODE2))
    assert not any(n.startswith("affinity-") for n in node.ruleset.state.containers)
    node.load(rules.render_partial([plain], [], NODE2))
    assert not any("/" in c for c in node.ruleset.chains())


def test_full_render_removes_what_is_there_and_unused():
    node = NFTablesNode()
    node.load(rules.render([WEB, API], NODE2))
    chains = list(node.ruleset.chains())
    sets = list(node.ruleset.state.containers)
    node.load(rules.render([WEB], NODE2, chains, sets))
    fresh = NFTablesNode()
    fresh.load(rules.render([WEB], NODE2))
    assert node.snapshot() == fresh.snapshot()


def test_model_refuses_what_nft_refuses():
    rs = Ruleset()
    rs.load(rules.render([WEB], NODE1))
    with pytest.raises(ModelError, match="busy"):
        rs.load("delete chain ip kube-proxy " + names.service_chains(WEB).cluster)
    with pytest.raises(ModelError, match="no such chain"):
        rs.load("add rule ip kube-proxy services goto nowhere")
    with pytest.raises(ModelError, match="no element"):
        rs.load("delete element ip kube-proxy service-ips { 10.1.1.1 . tcp . 1 }")
    with pytest.raises(AssertionError, match="created but not used"):
        check_references(rules.render([WEB], NODE1) + "add chain ip kube-proxy endpoint-X/y\n")


# --- the proxier on a fake cluster --------------------------------------------------------------


def test_registered_as_nftables():
    assert dataplane_for("nftables") is NFTablesProxy and NFTablesProxy.mode == "nftables"


def test_every_text_the_mode_gives_is_nft_input_not_iptables():
    """What `cnlb render kube-proxy --proxy-mode nftables` prints (render_first) and what syncs
    load: nft commands only, whatever the class takes from the iptables mode."""
    old, new = [WEB, API], [_replace(WEB, endpoints=WEB.endpoints[:1]), API]
    texts = [NFTablesProxy.render_first(old, NODE1), NFTablesProxy.render(old, NODE1),
             NFTablesProxy.render_partial(old, new, NODE1)]
    assert texts[0] == texts[1] == rules.render(old, NODE1)
    for text in texts:
        assert text and all(line.split(" ")[0] in ("add", "flush", "delete")
                            for line in text.splitlines()), text[:200]


class _Cluster(FakeCluster):
    """test_proxier's fake cluster, with the node servers' launcher recording its args."""

    def launch_node_servers(self, module: str, args_by_node: dict) -> dict:
        return {node: self.host(node).popen([sys.executable, "-m", module, *args])
                for node, args in args_by_node.items()}


def _nft_runs(cluster: FakeCluster) -> list:
    return [p for p in cluster.log if p.argv[:1] == ["nft"]]


def test_each_node_loads_one_nft_transaction_whole_then_partial(tmp_path):
    from testbed.plan.addresses import build_plan
    from testbed.spec.topology import load_topology
    from tests.unit.test_proxier import TOPOLOGY
    path = tmp_path / "local.yaml"
    path.write_text(TOPOLOGY)
    plan = build_plan(load_topology(str(path), mode="nodeport"))
    cluster = _Cluster(plan, tmp_path)
    kp = NFTablesProxy(cluster)
    kp.sync_all()
    first = sorted(_nft_runs(cluster), key=lambda p: p.node)
    assert [(p.node, p.argv) for p in first] == [(n.name, ["nft", "-f", "-"]) for n in plan.nodes]
    assert not [p for p in cluster.log if "iptables" in p.argv[0]]   # no iptables at all
    assert {p.node for p in cluster.log if "--proxy-mode" in p.argv
            and p.argv[p.argv.index("--proxy-mode") + 1] == "nftables"} == {"node1", "node2"}
    for proc in first:
        assert proc.fed.decode() == kp.render_node(proc.node, kp.applied[proc.node])
        assert f"add element ip kube-proxy nodeport-ips {{ {plan.node(proc.node).ip} }}" \
            in proc.fed.decode()
    cluster.dead.add("web-2")
    kp.sync_all()
    later = _nft_runs(cluster)[len(first):]
    assert len(later) == 2 and all(b"add table" not in p.fed for p in later)
    assert [kind for _, _, kind in kp.sync_times] == ["full", "full", "partial", "partial"]
    kp.sync_all()   # nothing changed: nothing loaded
    assert len(_nft_runs(cluster)) == 4
