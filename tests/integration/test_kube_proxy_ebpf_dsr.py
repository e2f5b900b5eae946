"""Direct server return in kube-proxy's eBPF mode on a real cluster (tests/data/dsr.yaml: host-gw
routing, every pod on node2): a NodePort request entering node1 reaches its pod on node2 with
the client's own address, and the reply leaves node2 for the client with node1's address and
node port as its source — it never enters node1 (counted on node1's uplink, and by the reply's
TTL). Through the cloud LB the same, with the VIP un-DNATed at the fabric. Nothing of it is
left after the cluster."""

import os

import pytest

from testbed.emulation.cluster import Cluster
from testbed.kubernetes.dataplane.ebpf.proxier import EbpfKubeProxy
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import answers, probe

DSR = os.path.join(REPO, "tests", "data", "dsr.yaml")
CHAIN = "CNLB-DSR-TEST"


@pytest.fixture(scope="module")
def cluster(machine_ready):
    if EbpfKubeProxy.unavailable():
        pytest.skip(EbpfKubeProxy.unavailable())
    from tests.integration.leftovers import snapshot
    before = snapshot()
    with Cluster(load_topology(DSR, mode="nodeport")) as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def count_rules(cluster, node: str, hook: str, rules: dict[str, str]) -> None:
    """Counting rules (no target) in the node's own mangle table at `hook`, one comment each."""
    text = f"*mangle\n:{CHAIN} - [0:0]\n-A {hook} -j {CHAIN}\n"
    text += "".join(f"-A {CHAIN} {match} -m comment --comment {name}\n"
                    for name, match in rules.items())
    out = cluster.sh(node, f"iptables-restore --noflush --wait <<'R'\n{text}COMMIT\nR\n")
    assert out.returncode == 0, out.stderr


def counted(cluster, node: str) -> dict[str, int]:
    out = cluster.sh(node, f"iptables -w -t mangle -L {CHAIN} -v -x -n").stdout
    return {line.split("/*")[1].split("*/")[0].strip(): int(line.split()[0])
            for line in out.splitlines() if "/*" in line}


def test_the_maps_mark_the_frontends_dsr_and_node2s_pods_remote(cluster):
    kp = cluster.kube_proxy
    assert kp.options.mode == "dsr"
    node1 = cluster.plan.node("node1")
    text = kp.render_node("node1", kp.services)
    assert f"service {node1.ip}:30080/TCP backends=2 flags=snat|dsr " in text
    assert text.count(" remote\n") >= 2   # node port and LB address: both pods on node2


def test_nodeport_on_node1_reaches_node2_with_the_clients_address_and_replies_skip_node1(
        cluster):
    node1 = cluster.plan.node("node1")
    client = cluster.plan.attachment("client1").ip
    # what node1's netfilter sees enter its uplink, after cnlb_ingress translated it: the
    # client's requests (DNATed to the pod's port) and any reply coming back through node1
    # (reverse-translated to node1's node port, as without DSR); on node2, what leaves its
    # uplink with node1's node port as source
    count_rules(cluster, "node1", "PREROUTING", {
        "requests-in": f"-i eth0 -p tcp -s {client} --dport 8080",
        "reply-via-node1": "-i eth0 -p tcp --sport 30080"})
    count_rules(cluster, "node2", "POSTROUTING", {
        "reply-from-node2": f"-o eth0 -p tcp -s {node1.ip} --sport 30080 -d {client}"})
    got = answers(cluster, "client1", f"http://{node1.ip}:30080/", 20)
    assert len(got) == 20
    assert {a["node"] for a in got} == {"node2"}
    assert {a["client"] for a in got} == {client}          # no SNAT: the client's own address
    on1, on2 = counted(cluster, "node1"), counted(cluster, "node2")
    assert on1["requests-in"] >= 20 * 3, on1                # SYN, request, ACKs/FIN per request
    assert on1["reply-via-node1"] == 0, on1                  # no reply came back through node1
    assert on2["reply-from-node2"] >= 20 * 2, on2            # SYN-ACK, answer... left node2


def test_through_the_vip_the_reply_is_two_routed_hops_from_the_pod(cluster):
    """SYN-ACK TTLs: pod → node2 → the VPC router → client (2 hops), as a local pod's reply,
    where the SNAT path adds node1 (3: tests/integration/test_lb_hops.py)."""
    client = cluster.plan.attachment("client1").ip
    rows = probe(cluster, 30)
    ok = [r for r in rows if r.get("status") == 200 and r.get("error") is None]
    assert len(ok) == 30, rows[:3]
    assert {r["node"] for r in ok} == {"node2"}
    assert {r["client"] for r in ok} == {client}
    assert {64 - r["syn_ack_ttl"] for r in ok} == {2}


def test_dsr_state_lives_in_node2s_revnat_map(cluster):
    """The pod's node learnt node1's frontend from the option (cnlb_revnat entries whose
    rewrite back has node1's address as source)."""
    node1 = cluster.plan.node("node1")
    entries = cluster.kube_proxy.dump("node2", "cnlb_revnat")
    sources = {e["value"]["saddr"] for e in entries}
    import ipaddress
    as_bpftool = int.from_bytes(ipaddress.IPv4Address(node1.ip).packed, "little")
    assert as_bpftool in sources, sources
