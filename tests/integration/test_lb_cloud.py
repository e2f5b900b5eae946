"""The cloud LB as a cloud's LB behaves, on a real cluster in both modes: client-IP affinity,
a UDP listener,
a deregistered target draining its connections and cut after the deregistration delay, and a
pod calling an LB reported by hostname (kube-proxy has no rule for its VIP) through the VPC --
from a node without a local endpoint of an externalTrafficPolicy Local service, answered by a
pod on another node of the same subnet (the reply goes through the LB to be un-NATed)."""

import json
import subprocess
import sys
import time

import pytest

from testbed.cloud.lb import Target
from testbed.emulation.cluster import Cluster
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document
from tests.integration.helpers import answers

TOPOLOGY = """\
name: lbcloud
vpc:
  cidr: 192.168.0.0/16
  subnets: {az-a: 192.168.0.0/24, az-b: 192.168.1.0/24}
nodes:
  node1: {subnet: az-a}
  node2: {subnet: az-b}
  node3: {subnet: az-a}
deployments:
  web: {replicas: 3, placement: {node1: 2, node2: 1}}
  cli: {replicas: 1, placement: {node3: 1}}
services:
  web: {type: LoadBalancer, port: 80, targetPort: 8080, externalTrafficPolicy: Local,
        sessionAffinity: ClientIP}
  web-any: {type: LoadBalancer, selector: web, port: 80, targetPort: 8080,
            externalTrafficPolicy: Local}
  dns: {type: LoadBalancer, selector: web, port: 53, targetPort: 8080, protocol: UDP}
loadBalancer: {vip: 198.51.100.10, targets: container-native, address: hostname}
kubernetes:
  loadBalancer: {deregistrationDelay: 4s}
clients:
  client1: {}
"""
STICKY_VIP, ANY_VIP, UDP_VIP = "198.51.100.10", "198.51.100.11", "198.51.100.12"
DRAIN_S = 4.0

# A keep-alive HTTP client: one request on the same connection per line read on stdin, one line
# out per request (the answer, or the error).
KEEPALIVE = """
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=2)
for _ in sys.stdin:
    try:
        conn.request("GET", "/")
        print(conn.getresponse().read().decode().strip(), flush=True)
    except Exception as e:
        print(json.dumps({"error": type(e).__name__}), flush=True)
        conn.auto_open = 0
"""

# n datagrams to VIP:53, each from a new socket (a new source port); one JSON list out: the
# answers, each with the address it came from.
UDP_CLIENT = """
import json, socket, sys
out = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"hello", (sys.argv[1], 53))
    try:
        data, peer = s.recvfrom(65536)
        out.append(dict(json.loads(data), peer=list(peer)))
    except OSError as e:
        out.append({"error": str(e)})
    s.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module", params=["container-native", "nodeport"])
def cloud(request, machine_ready):
    topo = parse_topology(parse_document("lbcloud.yaml", TOPOLOGY), mode=request.param)
    with Cluster(topo) as c:
        yield c


def target_of(cluster, pod_name: str) -> Target:
    """The LB target that served pod_name: the pod (ip targets), or its node (instance targets;
    externalTrafficPolicy Local keeps a request on the node it entered)."""
    pod = cluster.plan.pod(pod_name)
    want = pod.name if cluster.plan.mode == "container-native" else pod.node
    return next(t.target for t in cluster.lb.targets("web") if t.target.name == want)


def test_the_same_client_always_reaches_the_same_pod_with_client_ip_affinity(cloud):
    got = answers(cloud, "client1", f"http://{STICKY_VIP}/", 20)
    assert len(got) == 20 and len({a["pod"] for a in got}) == 1, got
    assert len({a["client_port"] for a in got}) > 1          # new connections, one pod
    spread = answers(cloud, "client1", f"http://{ANY_VIP}/", 30)
    assert len({a["pod"] for a in spread}) > 1               # no affinity: spread


def test_a_pod_reaches_a_hostname_lbs_vip_from_a_node_without_a_local_endpoint(cloud):
    """The pod on node3 calls the VIP. Container-native: with its own address (VPC-routable).
    Classic: flannel's --ip-masq gives its packets node3's address as they leave for the VPC,
    which does not know the overlay, as on a real flannel cluster."""
    native = cloud.plan.mode == "container-native"
    address = cloud.plan.pod("cli-0").ip if native else cloud.plan.node("node3").ip
    got = answers(cloud, "cli-0", f"http://{ANY_VIP}/", 30)
    assert len(got) == 30, got
    assert {a["client"] for a in got} == {address}          # the address the LB's target saw
    same_subnet = {p.name for p in cloud.plan.pods_on("node1")}
    assert same_subnet & {a["pod"] for a in got}              # answered across node1 -> node3


def test_a_deregistered_target_keeps_its_connection_until_the_delay_then_it_is_cut(cloud):
    client = cloud.host("client1").popen([sys.executable, "-c", KEEPALIVE, STICKY_VIP],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)

    def ask() -> dict:
        client.stdin.write("\n")
        client.stdin.flush()
        return json.loads(client.stdout.readline())

    try:
        first = ask()
        target = target_of(cloud, first["pod"])
        cloud.lb.deregister("web", target)
        rows = {r.target.name: r.state for r in cloud.lb.targets("web")}
        assert rows[target.name] == "draining"
        # New connections go to the others at once; the open one still reaches its pod.
        assert first["pod"] not in {a["pod"] for a in answers(cloud, "client1",
                                                              f"http://{STICKY_VIP}/", 5)}
        second = ask()
        assert (second["pod"], second["client_port"]) == (first["pod"], first["client_port"])
        time.sleep(DRAIN_S + 1.5)
        assert "error" in ask()                               # cut
    finally:
        client.stdin.close()
        client.kill()
        client.wait(5)


def test_a_udp_listener_balances_datagrams_and_answers_from_the_vip(cloud):
    out = cloud.exec("client1", [sys.executable, "-c", UDP_CLIENT, UDP_VIP, "20"], timeout=90)
    got = json.loads(out.stdout)
    assert all("error" not in a for a in got), got
    assert {tuple(a["peer"]) for a in got} == {(UDP_VIP, 53)}
    assert len({a["pod"] for a in got}) > 1
    if cloud.plan.mode == "container-native":               # (Cluster policy: kube-proxy SNATs)
        assert {a["client"] for a in got} == {"203.0.113.10"}


def test_instance_targets_of_a_cluster_service_are_checked_on_kube_proxys_healthz(cloud):
    rows = cloud.controller.api("GET", "/v1/lbs/dns/backends")
    want = 10256 if cloud.plan.mode == "nodeport" else cloud.plan.pods[0].port
    assert {r["health_check_port"] for r in rows} == {want}
    assert all(r["in_service"] for r in rows), rows
