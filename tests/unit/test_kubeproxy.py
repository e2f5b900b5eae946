"""kube-proxy's iptables mode, on text: names, probabilities, golden text, partial sync, apply.

Reference facts are upstream kubernetes' pkg/proxy/iptables/proxier.go and proxier_test.go
(TestOverallIPTablesRules, TestSortIPTablesRules). What every mode must do to packets (traces,
partial sync equals full sync, health state) is tests/unit/test_dataplane.py.
"""

from __future__ import annotations

import pytest

from testbed.kubernetes.dataplane.iptables import names, restore, rules
from testbed.kubernetes.dataplane.iptables.names import (
    endpoint_chain,
    service_chain,
    service_external_chain,
    service_firewall_chain,
    service_local_chain,
)
from testbed.kubernetes.dataplane.model import (
    Endpoint,
    NodeContext,
    ServicePort,
    categorize_endpoints,
    service_port_name,
)
from tests.unit.iptables_model import Tables, check_jumps, sort_like_upstream
from tests.unit.kubeproxy_cases import API, NODE1, NODE3, WEB
from tests.unit.kubeproxy_cases import replace_port as _replace

# --- chain names: inputs and names copied from upstream's proxier_test.go ------------------------


@pytest.mark.parametrize(
    "func, args, expected",
    [
        (service_chain, ("ns1/svc1:p80", "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O"),
        (service_chain, ("ns2/svc2:p80", "tcp"), "KUBE-SVC-GNZBNJ2PO5MGZ6GT"),
        (service_chain, ("ns3/svc3:p80", "tcp"), "KUBE-SVC-X27LE4BHSL4DOUIK"),
        (service_chain, ("ns4/svc4:p80", "tcp"), "KUBE-SVC-4SW47YFZTEDKD3PK"),
        (service_chain, ("ns5/svc5:p80", "tcp"), "KUBE-SVC-NUKIZ6OKUXPJNT4C"),
        (service_local_chain, ("ns2/svc2:p80", "tcp"), "KUBE-SVL-GNZBNJ2PO5MGZ6GT"),
        (service_external_chain, ("ns2/svc2:p80", "tcp"), "KUBE-EXT-GNZBNJ2PO5MGZ6GT"),
        (service_external_chain, ("ns4/svc4:p80", "tcp"), "KUBE-EXT-4SW47YFZTEDKD3PK"),
        (service_firewall_chain, ("ns5/svc5:p80", "tcp"), "KUBE-FW-NUKIZ6OKUXPJNT4C"),
        (endpoint_chain, ("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        (endpoint_chain, ("ns2/svc2:p80", "tcp", "10.180.0.2:80"), "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
        (endpoint_chain, ("ns3/svc3:p80", "tcp", "10.180.0.3:80"), "KUBE-SEP-OYPFS5VJICHGATKP"),
        (endpoint_chain, ("ns4/svc4:p80", "tcp", "10.180.0.4:80"), "KUBE-SEP-UKSFD7AGPMPPLUHC"),
        (endpoint_chain, ("ns4/svc4:p80", "tcp", "10.180.0.5:80"), "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
        (endpoint_chain, ("ns5/svc5:p80", "tcp", "10.180.0.3:80"), "KUBE-SEP-I77PXRDZVX7PMWMN"),
    ],
)
def test_chain_names_match_upstream(func, args, expected):
    assert func(*args) == expected
    assert len(expected) <= 28  # iptables' limit, the reason for hashing


def test_service_port_name_and_protocol_case():
    assert service_port_name("ns1", "svc1", "p80") == "ns1/svc1:p80"
    assert service_port_name("ns1", "svc1", "") == "ns1/svc1"
    # ServicePort hashes the lower-case protocol, as upstream does with strings.ToLower.
    svc = ServicePort("ns1", "svc1", "p80", "TCP", "172.30.0.41", 80, 80)
    assert names.svc_chain(svc) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert names.sep_chain(svc, Endpoint("10.180.0.1", 80)) == "KUBE-SEP-SXIVWICOYRO3J4NJ"


# --- probabilities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [(1, "1.0000000000"), (2, "0.5000000000"), (3, "0.3333333333"), (4, "0.2500000000"),
     (5, "0.2000000000"), (6, "0.1666666667"), (7, "0.1428571429"), (10, "0.1000000000")],
)
def test_compute_probability_matches_go_format(n, expected):
    assert rules.compute_probability(n) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10])
def test_probability_chain_spreads_evenly(n):
    # Rule i (0-based) carries 1/(n-i); the last rule has none. Each endpoint gets ~1/n.
    probs = [float(rules.compute_probability(n - i)) for i in range(n - 1)] + [1.0]
    left, shares = 1.0, []
    for p in probs:
        shares.append(left * p)
        left *= 1 - p
    assert shares == pytest.approx([1 / n] * n, abs=1e-9)


def test_compute_probability_rejects_zero():
    with pytest.raises(ValueError):
        rules.compute_probability(0)


# --- the two-service example (node1's table, hand-checked) ------------------------------------

# Written rule by rule from upstream's templates (see the notes at the end of each block); the
# hashes come from test_chain_names_match_upstream's function. Services are written in
# name order ("default/api:http" < "default/web:http"), endpoints in "ip:port" string order.
W, A = "CDGGSHYLG3RE2FKL", "KKDGWRPDK6Z5NCHS"  # port_proto_hash("default/{web,api}:http", "tcp")
W1, W2, W3 = "UIQK3OSOSTRHRPBX", "2AZ33KU3V5PGPQZH", "4EX2N4PG4ASNZOBF"  # 10.244.1.2/1.3/2.2
A1, A2, A3 = "HZ6UUAS7MKJ7K6UX", "RJRCIIA56UXVGUKS", "2YZUCXH75U2Y72EN"  # 10.244.1.4/2.3/2.4

GOLDEN_NODE1 = f"""\
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-NODEPORTS -m comment --comment "default/api:http health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-EXT-{A} - [0:0]
:KUBE-SVC-{A} - [0:0]
:KUBE-SVL-{A} - [0:0]
:KUBE-SEP-{A1} - [0:0]
:KUBE-SEP-{A2} - [0:0]
:KUBE-SEP-{A3} - [0:0]
:KUBE-EXT-{W} - [0:0]
:KUBE-SVC-{W} - [0:0]
:KUBE-SEP-{W1} - [0:0]
:KUBE-SEP-{W2} - [0:0]
:KUBE-SEP-{W3} - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "default/api:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j KUBE-SVC-{A}
-A KUBE-SERVICES -m comment --comment "default/api:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.11 --dport 80 -j KUBE-EXT-{A}
-A KUBE-NODEPORTS -m comment --comment default/api:http -m tcp -p tcp --dport 30081 -j KUBE-EXT-{A}
-A KUBE-SVC-{A} -m comment --comment "default/api:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-EXT-{A} -m comment --comment "pod traffic for default/api:http external destinations" -s 10.244.0.0/16 -j KUBE-SVC-{A}
-A KUBE-EXT-{A} -m comment --comment "masquerade LOCAL traffic for default/api:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-{A} -m comment --comment "route LOCAL traffic for default/api:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-{A}
-A KUBE-EXT-{A} -j KUBE-SVL-{A}
-A KUBE-SVC-{A} -m comment --comment "default/api:http -> 10.244.1.4:8080" -m recent --name KUBE-SEP-{A1} --rcheck --seconds 10800 --reap -j KUBE-SEP-{A1}
-A KUBE-SVC-{A} -m comment --comment "default/api:http -> 10.244.2.3:8080" -m recent --name KUBE-SEP-{A2} --rcheck --seconds 10800 --reap -j KUBE-SEP-{A2}
-A KUBE-SVC-{A} -m comment --comment "default/api:http -> 10.244.2.4:8080" -m recent --name KUBE-SEP-{A3} --rcheck --seconds 10800 --reap -j KUBE-SEP-{A3}
-A KUBE-SVC-{A} -m comment --comment "default/api:http -> 10.244.1.4:8080" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-{A1}
-A KUBE-SVC-{A} -m comment --comment "default/api:http -> 10.244.2.3:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-{A2}
-A KUBE-SVC-{A} -m comment --comment "default/api:http -> 10.244.2.4:8080" -j KUBE-SEP-{A3}
-A KUBE-SVL-{A} -m comment --comment "default/api:http -> 10.244.1.4:8080" -m recent --name KUBE-SEP-{A1} --rcheck --seconds 10800 --reap -j KUBE-SEP-{A1}
-A KUBE-SVL-{A} -m comment --comment "default/api:http -> 10.244.1.4:8080" -j KUBE-SEP-{A1}
-A KUBE-SEP-{A1} -m comment --comment default/api:http -s 10.244.1.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-{A1} -m comment --comment default/api:http -m recent --name KUBE-SEP-{A1} --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.4:8080
-A KUBE-SEP-{A2} -m comment --comment default/api:http -s 10.244.2.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-{A2} -m comment --comment default/api:http -m recent --name KUBE-SEP-{A2} --set -m tcp -p tcp -j DNAT --to-destination 10.244.2.3:8080
-A KUBE-SEP-{A3} -m comment --comment default/api:http -s 10.244.2.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-{A3} -m comment --comment default/api:http -m recent --name KUBE-SEP-{A3} --set -m tcp -p tcp -j DNAT --to-destination 10.244.2.4:8080
-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-{W}
-A KUBE-SERVICES -m comment --comment "default/web:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.10 --dport 80 -j KUBE-EXT-{W}
-A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-{W}
-A KUBE-SVC-{W} -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-EXT-{W} -m comment --comment "masquerade traffic for default/web:http external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-{W} -j KUBE-SVC-{W}
-A KUBE-SVC-{W} -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-{W1}
-A KUBE-SVC-{W} -m comment --comment "default/web:http -> 10.244.1.3:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-{W2}
-A KUBE-SVC-{W} -m comment --comment "default/web:http -> 10.244.2.2:8080" -j KUBE-SEP-{W3}
-A KUBE-SEP-{W1} -m comment --comment default/web:http -s 10.244.1.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-{W1} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-{W2} -m comment --comment default/web:http -s 10.244.1.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-{W2} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.3:8080
-A KUBE-SEP-{W3} -m comment --comment default/web:http -s 10.244.2.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-{W3} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.2:8080
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS
COMMIT
"""
# Checked against upstream's TestOverallIPTablesRules expectation:
# - KUBE-POSTROUTING / KUBE-MARK-MASQ / KUBE-FORWARD: same lines (upstream's fake iptables has
#   no --random-fully and counts nfacct; iptables 1.8.9 has random-fully, nfacct is off here).
# - "cluster IP" / "loadbalancer IP" / NodePort rules: same shape as ns2/svc2 and ns5/svc5.
# - KUBE-SVC's first rule "! -s <cluster CIDR> -j KUBE-MARK-MASQ": as ns1..ns5.
# - KUBE-EXT for Local (pod traffic, masquerade LOCAL, route LOCAL): as ns2/svc2; its last rule
#   "-j KUBE-SVL" exists here because node1 has a ready local endpoint (ns2 had none).
# - KUBE-EXT for Cluster ("masquerade traffic ... external destinations", then -j KUBE-SVC): ns3.
# - affinity: "--rcheck --seconds 10800 --reap" rules before the spread, "--set" before DNAT in
#   KUBE-SEP: as ns5/svc5. Probabilities 1/3, 1/2, none: as ns4 (1/2, none) extended to 3.
# - health check node port ACCEPT in filter KUBE-NODEPORTS: as ns2/svc2.
# - the nodeports rule: upstream's with --iptables-localhost-nodeports=false ("! -d 127.0.0.0/8").


def test_golden_two_service_table_rule_by_rule():
    got = rules.render([WEB, API], NODE1).splitlines()
    want = GOLDEN_NODE1.splitlines()
    for n, (g, w) in enumerate(zip(got, want, strict=False), 1):  # lengths compared below
        assert g == w, f"line {n} differs"
    assert len(got) == len(want)
    check_jumps(GOLDEN_NODE1)


def test_node_without_local_endpoints_drops_external_local_traffic():
    # node3 has no pod of either service: api (Local) external traffic is dropped in filter,
    # KUBE-EXT keeps only the short-circuit rules, and no KUBE-SVL chain exists.
    text = rules.render([WEB, API], NODE3)
    assert f":KUBE-SVL-{A} - [0:0]" not in text
    assert f"-A KUBE-EXT-{A} -j KUBE-SVL-{A}" not in text
    drops = [line for line in text.splitlines() if line.startswith("-A KUBE-EXTERNAL-SERVICES")]
    assert drops == [
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/api:http has no local endpoints"'
        " -m tcp -p tcp -d 198.51.100.11 --dport 80 -j DROP",
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/api:http has no local endpoints"'
        " -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30081 -j DROP",
    ]
    check_jumps(text)


def test_no_cluster_cidr_drops_the_local_detector_rules():
    node = NodeContext("node1", "192.168.0.11", None)
    text = rules.render([WEB, API], node)
    assert "! -s 10.244.0.0/16" not in text
    assert "pod traffic for" not in text
    assert "masquerade LOCAL traffic for default/api:http" in text  # needs no CIDR
    check_jumps(text)


def test_not_ready_endpoints_and_headless_services_are_skipped():
    svc = ServicePort("ns", "s", "", "UDP", "10.96.0.5", 53, 53,
                      endpoints=(Endpoint("10.244.1.9", 53, "node1", ready=False),))
    headless = ServicePort("ns", "h", "", "TCP", None, 80, 80,
                           endpoints=(Endpoint("10.244.1.8", 80, "node1"),))
    text = rules.render([svc, headless], NODE1)
    assert '-A KUBE-SERVICES -m comment --comment "ns/s has no endpoints" -m udp -p udp ' \
           "-d 10.96.0.5 --dport 53 -j REJECT" in text
    assert "KUBE-SEP-" not in text and "ns/h" not in text


def test_duplicate_service_ports_are_refused():
    with pytest.raises(ValueError, match="listed twice"):
        rules.render([WEB, WEB], NODE1)


@pytest.mark.parametrize("kwargs, message", [
    ({"protocol": "ICMP"}, "protocol"),
    ({"external_traffic_policy": "local"}, "externalTrafficPolicy"),
    ({"cluster_ip": "10.96.0.300"}, "cluster_ip"),
    ({"node_port": 70000}, "node_port"),
])
def test_bad_service_port_input_says_what_is_wrong(kwargs, message):
    base = dict(namespace="default", name="web", port_name="http", protocol="TCP",
                cluster_ip="10.96.0.10", port=80, target_port=8080)
    with pytest.raises(ValueError, match=message):
        ServicePort(**{**base, **kwargs})


def test_large_cluster_mode_drops_endpoint_comments():
    eps = tuple(Endpoint(f"10.244.{i // 250}.{i % 250 + 1}", 80, "node1") for i in range(1001))
    svc = ServicePort("ns", "big", "", "TCP", "10.96.0.9", 80, 80, endpoints=eps)
    text = rules.render([svc], NODE1)
    sep = names.sep_chain(svc, eps[0])
    assert f"-A {sep} -s 10.244.0.1 -j KUBE-MARK-MASQ" in text
    assert '"ns/big -> ' not in text
    assert '"ns/big cluster IP"' in text  # only the per-endpoint comments go


# --- upstream's TestOverallIPTablesRules, reproduced -------------------------------------------

# Upstream's expected output, as in proxier_test.go (already sorted by its sortIPTablesRules).
UPSTREAM_OVERALL = """\
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-FW-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3003 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3002 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"""

# What this renderer leaves out, on purpose, as edits to upstream's text: (old line, new line).
# None as new line removes the line.
UPSTREAM_EDITS = [
    # 1. --iptables-localhost-nodeports=false: no 127.0.0.0/8 NodePorts, no KUBE-FIREWALL,
    #    and the nodeports jump excludes loopback.
    (":KUBE-FIREWALL - [0:0]", None),
    ('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
     "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
     None),
    *[(f"-A KUBE-NODEPORTS -m comment --comment ns{n}/svc{n}:p80 -m tcp -p tcp -d 127.0.0.0/8 "
       f"--dport {port} -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-{h}", None)
      for n, port, h in ((2, 3001, "GNZBNJ2PO5MGZ6GT"), (3, 3003, "X27LE4BHSL4DOUIK"),
                         (5, 3002, "NUKIZ6OKUXPJNT4C"))],
    ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
     'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
     '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
     'the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 '
     "-j KUBE-NODEPORTS"),
    # 2. No nfacct counters.
    ("-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name "
     "ct_state_invalid_dropped_pkts -j DROP",
     "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"),
]


def _edited_upstream() -> str:
    lines = UPSTREAM_OVERALL.splitlines()
    for old, new in UPSTREAM_EDITS:
        assert lines.count(old) == 1, f"edit does not match upstream exactly once: {old}"
        i = lines.index(old)
        if new is None:
            del lines[i]
        else:
            lines[i] = new
    return "\n".join(lines) + "\n"


def _upstream_overall_services() -> list[ServicePort]:
    """TestOverallIPTablesRules' services and endpoint slices, in this module's model."""
    def sp(n, ip, **kw):
        return ServicePort(f"ns{n}", f"svc{n}", "p80", "TCP", ip, 80, 80, **kw)

    return [
        sp(1, "172.30.0.41", endpoints=(Endpoint("10.180.0.1", 80),)),
        sp(2, "172.30.0.42", node_port=3001, load_balancer_ips=("1.2.3.4",),
           external_ips=("192.168.99.22",), external_traffic_policy="Local",
           health_check_node_port=30000, endpoints=(Endpoint("10.180.0.2", 80),)),
        sp(3, "172.30.0.43", node_port=3003, endpoints=(Endpoint("10.180.0.3", 80),)),
        sp(4, "172.30.0.44", external_ips=("192.168.99.33",),
           endpoints=(Endpoint("10.180.0.4", 80), Endpoint("10.180.0.5", 80, "test-node"))),
        # upstream also gives ns5 healthCheckNodePort 30000 with Cluster policy; the API server
        # only allocates one for Local, and upstream writes its ACCEPT rule only once (same
        # port as ns2), so it is left out here.
        sp(5, "172.30.0.45", node_port=3002, load_balancer_ips=("5.6.7.8",),
           session_affinity_seconds=10800, load_balancer_source_ranges=("203.0.113.0/25",),
           endpoints=(Endpoint("10.180.0.3", 80),)),
        sp(6, "172.30.0.46"),
    ]


def test_reproduces_upstream_overall_rules():
    node = NodeContext("test-node", "192.168.0.2", "10.0.0.0/8", random_fully=False)
    got = sort_like_upstream(rules.render(_upstream_overall_services(), node))
    want = _edited_upstream()
    got_lines, want_lines = got.splitlines(), want.splitlines()
    assert [g for g in got_lines if g not in want_lines] == []
    assert [w for w in want_lines if w not in got_lines] == []
    assert got == want
    check_jumps(want)


# --- partial sync ------------------------------------------------------------------------------


def _after(*texts: str) -> dict:
    tables = Tables()
    for text in texts:
        tables.restore(text)
    return tables.snapshot()


def _assert_partial_equivalent(old, new, node=NODE1):
    partial = rules.render_partial(old, new, node)
    assert _after(rules.render(old, node), partial) == _after(rules.render(new, node))
    return partial


def test_partial_one_endpoint_change_rewrites_only_that_service():
    # WEB.endpoints[2] is 10.244.1.3 (chain W2); it moves to 10.244.1.9.
    moved = Endpoint("10.244.1.9", 8080, "node1")
    new_web = _replace(WEB, endpoints=WEB.endpoints[:2] + (moved,))
    partial = _assert_partial_equivalent([WEB, API], [new_web, API])
    assert f":KUBE-SVC-{W} - [0:0]" in partial
    assert f":KUBE-SEP-{W2} - [0:0]" in partial and f"-X KUBE-SEP-{W2}" in partial
    assert names.sep_chain(new_web, moved) in partial
    # api is unchanged: none of its chains is declared (that would flush it) or written,
    assert f"KUBE-SVC-{A} - [0:0]" not in partial and f"-A KUBE-SEP-{A1}" not in partial
    # but KUBE-SERVICES and KUBE-NODEPORTS are rewritten whole and still jump into them.
    assert f"--dport 80 -j KUBE-SVC-{A}" in partial
    assert f"--dport 30081 -j KUBE-EXT-{A}" in partial
    check_jumps(rules.render([new_web, API], NODE1))


def test_partial_with_nothing_changed_writes_no_service_chain():
    partial = rules.render_partial([WEB, API], [WEB, API], NODE1)
    declared = [line for line in partial.splitlines() if line.startswith(":")]
    assert all(not names.is_service_chain(line[1:].split()[0]) for line in declared)


def test_partial_across_large_cluster_threshold_rewrites_everything():
    eps = tuple(Endpoint(f"10.244.3.{i % 250 + 1}", 1000 + i // 250, "node2") for i in range(998))
    big = ServicePort("ns", "big", "", "TCP", "10.96.0.9", 80, 80, endpoints=eps)
    grown = _replace(big, endpoints=eps + (Endpoint("10.244.4.1", 80, "node2"),
                                           Endpoint("10.244.4.2", 80, "node2")))
    # WEB + API + big = 6 + 998 <= 1000; the grown one crosses it and every comment changes.
    _assert_partial_equivalent([WEB, API, big], [WEB, API, grown])
    _assert_partial_equivalent([WEB, API, grown], [WEB, API, big])


def test_full_render_deletes_stale_chains_it_is_told_about():
    before = Tables()
    before.restore(rules.render([WEB, API], NODE1))
    before.restore("*nat\n:CNI-FOO - [0:0]\n:KUBE-MARK-DROP - [0:0]\nCOMMIT\n")
    existing = set(before.chains("nat"))  # what iptables-save would list
    text = rules.render([API], NODE1, existing_chains=existing)
    for chain in (f"KUBE-SEP-{W1}", f"KUBE-SVC-{W}", f"KUBE-EXT-{W}"):
        assert f"-X {chain}" in text
    assert "KUBE-MARK-DROP" not in text and "CNI-FOO" not in text  # not kube-proxy's to delete
    before.restore(text)
    others = "*nat\n:CNI-FOO - [0:0]\n:KUBE-MARK-DROP - [0:0]\nCOMMIT\n"
    after = _after(rules.render([API], NODE1), others)
    assert before.snapshot() == after


# --- apply ---------------------------------------------------------------------------------------


class FakeRun:
    """Records argv; answers iptables -C as "missing" and restore with a canned result."""

    def __init__(self, restore_result=(0, ""), rule_exists=False):
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.restore_result = restore_result
        self.rule_exists = rule_exists

    def __call__(self, argv, stdin):
        self.calls.append((argv, stdin))
        if "-restore" in argv[0]:
            return self.restore_result
        if "-N" in argv:
            return (1, "iptables: Chain already exists.\n")
        if "-C" in argv:
            return (0, "") if self.rule_exists else (1, "iptables: Bad rule.\n")
        return (0, "")


@pytest.mark.parametrize("backend, restore_tool, iptables", [
    ("auto", "iptables-restore", "iptables"),
    ("legacy", "iptables-legacy-restore", "iptables-legacy"),
    ("nft", "iptables-nft-restore", "iptables-nft"),
])
def test_apply_runs_the_backend_tools(backend, restore_tool, iptables):
    run = FakeRun()
    text = rules.render([WEB], NODE1)
    restore.apply(run, text, backend=backend)
    argv, stdin = run.calls[-1]
    assert argv == [restore_tool, "--noflush", "--wait"] and stdin == text.encode()
    inserts = [a for a, _ in run.calls if "-I" in a]
    assert len(inserts) == len(restore.JUMP_RULES)
    assert inserts[-1] == [iptables, "-w", "-t", "nat", "-I", "POSTROUTING", "-m", "comment",
                           "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"]
    assert all(a[0] == iptables for a, _ in run.calls[:-1])


def test_apply_does_not_duplicate_existing_jumps_and_can_skip_them():
    run = FakeRun(rule_exists=True)
    restore.apply(run, "*nat\nCOMMIT\n")
    assert not [a for a, _ in run.calls if "-I" in a]
    run = FakeRun()
    restore.apply(run, "*nat\nCOMMIT\n", ensure_jumps=False, noflush=False)
    assert [a for a, _ in run.calls] == [["iptables-restore", "--wait"]]


@pytest.mark.parametrize("stderr", [
    "iptables-restore: line 9 failed\n",
    "iptables-nft-restore v1.8.9 (nf_tables): Couldn't load match `bogus':No such file or "
    "directory\n\nError occurred at line: 9\nTry `iptables-nft-restore -h' for more "
    "information.\n",
])
def test_apply_error_shows_the_lines_around_the_failing_one(stderr):
    text = rules.render([WEB], NODE1)
    lines = text.splitlines()
    run = FakeRun(restore_result=(1, stderr))
    with pytest.raises(restore.RestoreError) as err:
        restore.apply(run, text, backend="nft")
    message = str(err.value)
    assert err.value.line == 9
    assert "at input line 9" in message
    for n in range(6, 13):
        assert f"{n:6d}: {lines[n - 1]}" in message
    assert f">      9: {lines[8]}" in message
    assert f"{5:6d}: " not in message and f"{13:6d}: " not in message


def test_apply_error_without_line_number_still_reports_stderr():
    run = FakeRun(restore_result=(4, "Another app is currently holding the xtables lock."))
    with pytest.raises(restore.RestoreError, match="xtables lock") as err:
        restore.apply(run, "*nat\nCOMMIT\n", ensure_jumps=False)
    assert err.value.line is None


def test_detect_backend():
    assert restore.detect_backend("iptables v1.8.9 (nf_tables)\n") == "nft"
    assert restore.detect_backend("iptables v1.8.9 (legacy)\n") == "legacy"
    with pytest.raises(ValueError):
        restore.detect_backend("iptables v1.4.21\n")


def test_nat_chains_in_save():
    save = ("*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\nCOMMIT\n*nat\n"
            ":PREROUTING ACCEPT [0:0]\n:KUBE-SEP-X - [0:0]\n-A KUBE-SEP-X -j RETURN\nCOMMIT\n")
    assert restore.nat_chains_in_save(save) == {"PREROUTING", "KUBE-SEP-X"}


# --- internalTrafficPolicy and the terminating fallback, on text -------------------------------

ITP = ServicePort("ns1", "svc1", "", "TCP", "172.30.1.1", 80, 80, internal_traffic_policy="Local",
                  endpoints=(Endpoint("10.244.1.1", 80, "node1"),
                             Endpoint("10.244.2.1", 80, "node2")))
ITP_SVC, ITP_SVL = service_chain("ns1/svc1", "tcp"), service_local_chain("ns1/svc1", "tcp")


def test_internal_traffic_policy_local_jumps_to_the_local_chain():
    text = rules.render([ITP], NODE1)
    lines = text.splitlines()
    assert ('-A KUBE-SERVICES -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp'
            f" -d 172.30.1.1 --dport 80 -j {ITP_SVL}") in lines
    assert (f'-A {ITP_SVL} -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp'
            " -d 172.30.1.1 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ") in lines
    assert [line for line in lines if line.startswith(f"-A {ITP_SVL} ")][-1] == (
        f'-A {ITP_SVL} -m comment --comment "ns1/svc1 -> 10.244.1.1:80"'
        f" -j {endpoint_chain('ns1/svc1', 'tcp', '10.244.1.1:80')}")
    # a ClusterIP-only service with Local internal policy never uses the Cluster chain
    assert ITP_SVC not in text and "10.244.2.1" not in text
    check_jumps(text)


def test_internal_traffic_policy_local_without_local_endpoints_drops():
    text = rules.render([ITP], NODE3)
    assert ('-A KUBE-SERVICES -m comment --comment "ns1/svc1 has no local endpoints"'
            " -m tcp -p tcp -d 172.30.1.1 --dport 80 -j DROP") in text.splitlines()
    assert "KUBE-SVL-" not in text and "KUBE-SEP-" not in text
    assert "has no endpoints" not in text   # the service has endpoints, just none here


def test_internal_local_external_cluster_keeps_both_chains():
    """A NodePort with internalTrafficPolicy Local: cluster-IP traffic to KUBE-SVL, external
    traffic through KUBE-EXT to KUBE-SVC (upstream UsesClusterEndpoints: externally reachable)."""
    svc = _replace(ITP, node_port=30001)
    on3 = rules.render([svc], NODE3).splitlines()
    assert f"-A KUBE-EXT-{names.port_proto_hash('ns1/svc1', 'tcp')} -j {ITP_SVC}" in on3
    assert any("has no local endpoints" in line and "-j DROP" in line
               and line.startswith("-A KUBE-SERVICES") for line in on3)
    check_jumps("\n".join(on3))


def _ep(ip: str, node: str, ready: bool = True, serving: bool | None = None,
        terminating: bool = False) -> Endpoint:
    return Endpoint(ip, 80, node, ready, serving, terminating)


@pytest.mark.parametrize("svc_changes, eps, cluster, local, reachable, has_any", [
    # upstream topology_test.go TestCategorizeEndpoints, the cases without hints
    ({}, [_ep("10.1.2.3", "node1"), _ep("10.1.2.4", "node2")],
     {"10.1.2.3", "10.1.2.4"}, set(), {"10.1.2.3", "10.1.2.4"}, True),
    ({"internal_traffic_policy": "Local"}, [_ep("10.0.0.0", "node1"), _ep("10.0.0.1", "node2")],
     set(), {"10.0.0.0"}, {"10.0.0.0"}, True),
    ({"internal_traffic_policy": "Local"}, [_ep("10.0.0.0", "node2"), _ep("10.0.0.1", "node3")],
     set(), set(), set(), True),
    # externalTrafficPolicy Local: both lists; only the cluster list's members are reachable
    ({"external_traffic_policy": "Local", "node_port": 30001},
     [_ep("10.0.0.0", "node1"), _ep("10.0.0.1", "node2")],
     {"10.0.0.0", "10.0.0.1"}, {"10.0.0.0"}, {"10.0.0.0", "10.0.0.1"}, True),
    # no ready endpoints: serving-terminating ones, for Cluster and for Local each
    ({"external_traffic_policy": "Local", "node_port": 30001},
     [_ep("10.0.0.0", "node1", False, True, True), _ep("10.0.0.1", "node2", False, True, True),
      _ep("10.0.0.2", "node1", False, False, True)],
     {"10.0.0.0", "10.0.0.1"}, {"10.0.0.0"}, {"10.0.0.0", "10.0.0.1"}, True),
    # ready remote, only terminating local: Local falls back alone, reachable is the union
    ({"external_traffic_policy": "Local", "node_port": 30001},
     [_ep("10.0.0.0", "node1", False, True, True), _ep("10.0.0.1", "node2")],
     {"10.0.0.1"}, {"10.0.0.0"}, {"10.0.0.0", "10.0.0.1"}, True),
    # terminating and no longer serving: not usable at all
    ({}, [_ep("10.0.0.0", "node1", False, False, True)], set(), set(), set(), False),
    # not ready and not terminating (serving unset): not usable
    ({}, [_ep("10.0.0.0", "node1", False)], set(), set(), set(), False),
])
def test_categorize_endpoints(svc_changes, eps, cluster, local, reachable, has_any):
    svc = _replace(ServicePort("ns", "s", "", "TCP", "10.96.0.1", 80, 80), endpoints=tuple(eps),
                   **svc_changes)
    got = categorize_endpoints(svc, "node1")

    def ips(endpoints):
        return {ep.ip for ep in endpoints}
    assert ips(got.cluster_endpoints) == cluster
    assert ips(got.local_endpoints) == local
    assert ips(got.all_reachable_endpoints) == reachable
    assert got.has_any_endpoints == has_any
