"""kube-proxy's IPVS mode rendered as upstream's pkg/proxy/ipvs writes it: the virtual servers
and real servers (TestNodePort, TestClusterIP, TestLoadBalancer, TestOnlyLocalNodePorts,
TestSessionAffinity in proxier_test.go), the ipsets and their entries, the iptables rules that
match them (writeIptablesRules), and a change touching only what changed."""

from dataclasses import replace

import pytest

from testbed.kubernetes.dataplane.ipvs import ipsets as S
from testbed.kubernetes.dataplane.ipvs import rules
from testbed.kubernetes.dataplane.ipvs.proxier import IpvsProxy, ip_vs_missing
from testbed.kubernetes.dataplane.ipvs.state import RealServer, node_state
from testbed.kubernetes.dataplane.model import Endpoint, NodeContext, ServicePort
from testbed.kubernetes.dataplane.registry import dataplane_for

NODE = NodeContext("node1", "192.168.0.10", cluster_cidr="10.244.0.0/16")


def svc(name="web", *, node_port=None, lb=(), policy="Cluster", affinity=None,
        protocol="TCP", eps=None, hc=None, internal="Cluster", ext=()):
    if eps is None:
        eps = (Endpoint("10.244.1.2", 8080, "node1"), Endpoint("10.244.2.2", 8080, "node2"))
    return ServicePort("default", name, "", protocol, "10.96.0.10", 80, 8080, node_port=node_port,
                       load_balancer_ips=lb, external_traffic_policy=policy,
                       session_affinity_seconds=affinity, health_check_node_port=hc,
                       endpoints=eps, internal_traffic_policy=internal, external_ips=ext)


def vs_lines(text):
    return rules.split(text)[rules.PART_IPVSADM].splitlines()


def test_cluster_ip_is_a_virtual_server_bound_to_kube_ipvs0():
    text = rules.render([svc()], NODE)
    assert vs_lines(text) == [
        "-A -t 10.96.0.10:80 -s rr",
        "-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1",
        "-a -t 10.96.0.10:80 -r 10.244.2.2:8080 -m -w 1",
    ]
    ip = rules.split(text)[rules.PART_IP].splitlines()
    assert ip == ["link add kube-ipvs0 type dummy", "address add 10.96.0.10/32 dev kube-ipvs0"]
    state = node_state([svc()], NODE)
    assert state.sets[S.KUBE_CLUSTER_IP] == {"10.96.0.10,tcp:80"}
    assert state.sets[S.KUBE_IPVS_IPS] == {"10.96.0.10"}
    # hairpin: only this node's endpoints, "ip,proto:port,ip"
    assert state.sets[S.KUBE_LOOP_BACK] == {"10.244.1.2,tcp:8080,10.244.1.2"}


def test_node_port_is_a_virtual_server_on_the_node_address_not_bound():
    state = node_state([svc(node_port=30080)], NODE)
    assert ("TCP", "192.168.0.10", 30080) in state.virtual_servers
    assert "192.168.0.10" not in state.bound
    assert state.sets[S.KUBE_NODE_PORT_TCP] == {"30080"}
    assert not state.sets[S.KUBE_NODE_PORT_LOCAL_TCP]
    nat = rules.render_iptables(state)
    assert ('-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for '
            'masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ'
            in nat)


def test_udp_uses_u_and_the_udp_sets():
    state = node_state([svc(protocol="UDP", node_port=30053)], NODE)
    assert state.sets[S.KUBE_NODE_PORT_UDP] == {"30053"}
    assert state.sets[S.KUBE_CLUSTER_IP] == {"10.96.0.10,udp:80"}
    assert "-A -u 10.96.0.10:80 -s rr" in rules.render_ipvsadm(state)


def test_load_balancer_ip_is_bound_and_in_its_set():
    state = node_state([svc(node_port=30080, lb=("198.51.100.10",))], NODE)
    assert state.sets[S.KUBE_LOAD_BALANCER] == {"198.51.100.10,tcp:80"}
    assert "198.51.100.10" in state.bound
    assert ("TCP", "198.51.100.10", 80) in state.virtual_servers
    nat = rules.render_iptables(state)
    assert ("-A KUBE-SERVICES -m comment --comment \"Kubernetes service lb portal\" -m set "
            "--match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER") in nat
    assert "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ" in nat


def test_local_policy_keeps_local_real_servers_and_returns_before_masquerade():
    s = svc(node_port=30080, lb=("198.51.100.10",), policy="Local", hc=32000)
    state = node_state([s], NODE)
    local = (RealServer("10.244.1.2", 8080),)
    assert state.virtual_servers[("TCP", "192.168.0.10", 30080)][1] == local
    assert state.virtual_servers[("TCP", "198.51.100.10", 80)][1] == local
    # the cluster IP still reaches every endpoint (the policy is external only)
    assert len(state.virtual_servers[("TCP", "10.96.0.10", 80)][1]) == 2
    assert state.sets[S.KUBE_NODE_PORT_LOCAL_TCP] == {"30080"}
    assert state.sets[S.KUBE_LOAD_BALANCER_LOCAL] == {"198.51.100.10,tcp:80"}
    assert state.sets[S.KUBE_HEALTH_CHECK_NODE_PORT] == {"32000"}
    nat = rules.render_iptables(state).splitlines()
    ret = nat.index('-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP '
                    'port with externalTrafficPolicy=local" -m set --match-set '
                    'KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN')
    masq = next(i for i, line in enumerate(nat) if "KUBE-NODE-PORT-TCP dst" in line)
    assert ret < masq   # upstream: the Local set must come before the every-node-port set


def test_local_policy_without_local_endpoints_falls_back_to_the_cluster_ones():
    s = svc(node_port=30080, policy="Local",
            eps=(Endpoint("10.244.2.2", 8080, "node2"), Endpoint("10.244.3.2", 8080, "node3")))
    state = node_state([s], NODE)
    assert len(state.virtual_servers[("TCP", "192.168.0.10", 30080)][1]) == 2   # PR 97081


def test_client_ip_affinity_is_persistence():
    text = rules.render([svc(affinity=10800)], NODE)
    assert "-A -t 10.96.0.10:80 -s rr -p 10800" in vs_lines(text)


def test_cluster_ip_masquerade_rule_follows_the_local_detector():
    with_cidr = rules.render_iptables(node_state([svc()], NODE))
    assert "--match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in with_cidr
    no_cidr = rules.render_iptables(node_state([svc()], replace(NODE, cluster_cidr=None)))
    assert "--match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ" in no_cidr


def test_rules_of_empty_sets_are_not_written():
    text = rules.render_iptables(node_state([svc()], NODE))
    assert "KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER" not in text
    assert "KUBE-NODE-PORT-TCP" not in text
    # but the filter's guard of the node's own ports through service addresses always is
    assert ("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS "
            "dst -j REJECT") in text


def test_every_upstream_ipset_is_created_with_its_type():
    text = S.render_restore(node_state([svc()], NODE).sets)
    creates = [line.split()[1:3] for line in text.splitlines() if line.startswith("create")]
    assert dict(creates) == {
        "KUBE-LOOP-BACK": "hash:ip,port,ip", "KUBE-CLUSTER-IP": "hash:ip,port",
        "KUBE-EXTERNAL-IP": "hash:ip,port", "KUBE-EXTERNAL-IP-LOCAL": "hash:ip,port",
        "KUBE-LOAD-BALANCER": "hash:ip,port", "KUBE-LOAD-BALANCER-FW": "hash:ip,port",
        "KUBE-LOAD-BALANCER-LOCAL": "hash:ip,port",
        "KUBE-LOAD-BALANCER-SOURCE-IP": "hash:ip,port,ip",
        "KUBE-LOAD-BALANCER-SOURCE-CIDR": "hash:ip,port,net",
        "KUBE-NODE-PORT-TCP": "bitmap:port", "KUBE-NODE-PORT-LOCAL-TCP": "bitmap:port",
        "KUBE-NODE-PORT-UDP": "bitmap:port", "KUBE-NODE-PORT-LOCAL-UDP": "bitmap:port",
        "KUBE-NODE-PORT-SCTP-HASH": "hash:ip,port",
        "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "hash:ip,port",
        "KUBE-HEALTH-CHECK-NODE-PORT": "bitmap:port", "KUBE-IPVS-IPS": "hash:ip",
    }
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 comment" in text


def test_a_removed_endpoint_changes_only_its_real_servers():
    old = [svc(node_port=30080)]
    new = [replace(old[0], endpoints=old[0].endpoints[:1])]
    parts = rules.split(rules.render_partial(old, new, NODE))
    assert parts[rules.PART_IPVSADM].splitlines() == [
        "-d -t 10.96.0.10:80 -r 10.244.2.2:8080",
        "-d -t 192.168.0.10:30080 -r 10.244.2.2:8080",
    ]
    assert rules.PART_IP not in parts and rules.PART_IPSET not in parts
    assert rules.PART_SYSCTL not in parts
    assert parts[rules.PART_IPTABLES].startswith("*nat\n")   # always whole, without jumps
    assert "-A PREROUTING" not in parts[rules.PART_IPTABLES]


def test_a_removed_service_deletes_its_virtual_servers_addresses_and_entries():
    old = [svc(), svc("api", eps=())]
    old[1] = replace(old[1], cluster_ip="10.96.0.20")
    parts = rules.split(rules.render_partial(old, old[:1], NODE))
    assert parts[rules.PART_IPVSADM] == "-D -t 10.96.0.20:80\n"
    assert parts[rules.PART_IP] == "address del 10.96.0.20/32 dev kube-ipvs0\n"
    assert parts[rules.PART_IPSET].splitlines() == [
        "del KUBE-CLUSTER-IP 10.96.0.20,tcp:80", "del KUBE-IPVS-IPS 10.96.0.20"]


def test_affinity_switched_on_edits_the_virtual_server():
    parts = rules.split(rules.render_partial([svc()], [svc(affinity=60)], NODE))
    assert parts[rules.PART_IPVSADM] == "-E -t 10.96.0.10:80 -s rr -p 60\n"


def test_document_round_trip_and_bad_headers():
    text = rules.render([svc(node_port=30080)], NODE)
    parts = rules.split(text)
    assert list(parts) == list(rules.PARTS)
    assert rules.document(parts) == text
    with pytest.raises(ValueError, match="unknown part"):
        rules.split("### nft -f\nflush ruleset\n")
    with pytest.raises(ValueError, match="before the first"):
        rules.split("-A -t 1.2.3.4:80\n")


def test_registered_as_ipvs_and_kernel_check(tmp_path):
    assert dataplane_for("ipvs") is IpvsProxy
    assert ip_vs_missing(str(tmp_path / "ip_vs"), ("false",)) == "kernel lacks ip_vs"
    (tmp_path / "ip_vs").write_text("IP Virtual Server version 1.2.1\n")
    assert ip_vs_missing(str(tmp_path / "ip_vs"), ("false",)) is None


def test_apply_runs_each_part_with_its_tool_in_order(monkeypatch):
    calls = []

    def runner(node):
        def run(argv, stdin):
            calls.append((list(argv), stdin.decode() if stdin else None))
            return (1, "ipvsadm: bad") if argv[0] == "ipvsadm" and fail else (0, "")
        return run

    proxy = IpvsProxy.__new__(IpvsProxy)
    proxy.backend = "auto"
    monkeypatch.setattr(proxy, "_runner", runner)
    fail = False
    proxy.apply_text("node1", rules.render([svc(node_port=30080)], NODE))
    assert [c[0][0] for c in calls] == ["sysctl", "ip", "ipset", "ipvsadm", "iptables-restore"]
    assert calls[2][0] == ["ipset", "restore", "-exist"]
    assert calls[3][1].startswith("-A -t 10.96.0.10:80 -s rr\n")
    calls.clear()
    fail = True
    with pytest.raises(Exception, match="ipvsadm -R failed"):
        proxy.apply_text("node1", rules.render([svc()], NODE))
    assert [c[0][0] for c in calls] == ["sysctl", "ip", "ipset", "ipvsadm"]   # stops there
