"""Upstream's [sig-network] LoadBalancers e2e tests (kubernetes/kubernetes
test/e2e/network/loadbalancer.go) that change a LoadBalancer service on a running cluster or
cycle its server pods under a UDP client, in both LB modes (classic: instance targets on the
nodes' node ports; container-native: the pods' own addresses as ip targets). Services are
created and changed with `cnlb service apply | set | delete` (Cluster.apply_service / ...),
as upstream's jig does with the API. Each test is named after the upstream It it mirrors and
quotes it; docs/e2e.md lists the others and how the thresholds were scaled.

The control plane's timing is instant: upstream deletes a server pod with DeleteSync (it waits
until the pod is gone), which is what an instant removal is; the clock's own effects are
test_e2e_service_changes.py's. The LB's deregistration delay is 2 s, not an NLB's default
300 s: an NLB keeps a UDP flow on a deregistered target for the whole delay (the client's
datagrams go to the removed pod and are lost), then ends it, and the client's next datagram is
a new flow to a registered target; with 300 s no UDP test could see backend 2 within LAG_S.
"""

from __future__ import annotations

import pytest

from testbed.errors import InputError
from tests.integration.e2e_jig import (
    affinity_holds,
    apply,
    check_affinity,
    cluster_from,
    hostnames,
    node_ip,
    service,
    udp_answers,
    udp_client,
    wait_for,
)

CLIENT = "client1"          # "the test itself": outside the cluster, through the cloud LB
EXEC = "exec-0"
# upstream's LoadBalancerLagTimeoutDefault (2 min) and KubeProxyLagTimeout: the LB checks every
# 500 ms (2 in a row to join or leave) and kube-proxy syncs at once here
LAG_S = 10.0

TOPOLOGY = """
name: e2e-lb-run
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {}, node2: {}}
deployments:
  exec: {replicas: 1, placement: {node1: 1}}
  aff: {replicas: 3, placement: {node1: 2, node2: 1}}
  udp-server: {replicas: 2, placement: {node1: 1, node2: 1}}
  udp-cycle: {replicas: 0}
services:
  base: {type: ClusterIP, selector: exec, port: 80}
loadBalancer: {vip: 198.51.100.10, targets: nodeport,
               healthCheck: {interval: 500ms, timeout: 300ms, healthyThreshold: 2,
                             unhealthyThreshold: 2}}
kubernetes: {timing: instant, loadBalancer: {deregistrationDelay: 2s}}
clients: {client1: {}}
"""


@pytest.fixture(scope="module", params=["nodeport", "container-native"])
def cluster(request, machine_ready, tmp_path_factory):
    with cluster_from(tmp_path_factory.mktemp("e2e-lb-run"), "lbrun", TOPOLOGY,
                      request.param) as c:
        yield c


def pods_of(c, deployment: str) -> set[str]:
    live = c.live_pods()
    return {p.name for p in c.plan.pods if p.deployment == deployment and p.name in live}


def _switch_affinity(c, name: str, policy: str) -> None:
    """upstream's execAffinityTestForLBServiceWithTransition: the LB service starts with
    ClientIP affinity; switched to None, answers from the LB's address must stop holding to one
    pod; back to ClientIP, they must hold again (checkAffinity from the test itself)."""
    got = apply(c, f"{name}: {{type: LoadBalancer, selector: aff, port: 80, targetPort: 8080, "
                   f"externalTrafficPolicy: {policy}, sessionAffinity: ClientIP}}\n")
    target = f"http://{got['vip']}:80/"
    c.set_service(name, {"sessionAffinity": "None"})
    trace = check_affinity(c, CLIENT, target, should_hold=False)
    assert not affinity_holds(trace), trace
    c.set_service(name, {"sessionAffinity": "ClientIP"})
    trace = check_affinity(c, CLIENT, target, should_hold=True)
    assert affinity_holds(trace), trace
    c.delete_service(name)


# [LoadBalancers] "should be able to switch session affinity for LoadBalancer service with ESIPP
# on [Slow] [LinuxOnly]" (now "... with Local traffic policy")
def test_should_be_able_to_switch_session_affinity_for_loadbalancer_service_with_esipp_on(
        cluster):
    _switch_affinity(cluster, "aff-lb-esipp-switch", "Local")


# [LoadBalancers] "should be able to switch session affinity for LoadBalancer service with ESIPP
# off [Slow] [LinuxOnly]" (now "... with Cluster traffic policy")
def test_should_be_able_to_switch_session_affinity_for_loadbalancer_service_with_esipp_off(
        cluster):
    _switch_affinity(cluster, "aff-lb-switch", "Cluster")


def _udp_pods(c, host: str, ip: str, port: int) -> set[str]:
    return {a["pod"] for a in udp_answers(c, host, ip, port, 6)}


def _udp_reachable(c, host: str, ip: str, port: int, pods: set[str]) -> None:
    """upstream's testReachableUDP: the service answers (every pod in time, here)."""
    seen: set[str] = set()

    def every() -> bool:
        seen.update(_udp_pods(c, host, ip, port))
        return seen >= pods
    wait_for(f"udp {ip}:{port} answered by {sorted(pods)} from {host}", every, LAG_S)


def _udp_unreachable(c, host: str, ip: str, port: int) -> None:
    """upstream's testNotReachableUDP: no answer, within the lag."""
    wait_for(f"udp {ip}:{port} not answered from {host}",
             lambda: not _udp_pods(c, host, ip, port), LAG_S)


# [LoadBalancers] "should be able to change the type and ports of a UDP service [Slow]"
def test_should_be_able_to_change_the_type_and_ports_of_a_udp_service(cluster):
    """As upstream's: ClusterIP -> NodePort (reachable on the node port) -> LoadBalancer (the
    same node port kept, reachable through the LB) -> another node port (the old one stops
    answering) -> another service port (the LB's old port stops answering) -> back to
    ClusterIP (neither the LB nor the node port answers)."""
    c = cluster
    name = "mutability-test"
    pods = pods_of(c, "udp-server")
    node1 = node_ip(c, "node1")
    got = apply(c, f"{name}: {{type: ClusterIP, selector: udp-server, ports: ["
                   "{name: udp, port: 80, targetPort: 80, protocol: UDP}]}\n")
    ip = got["cluster_ip"]
    _udp_reachable(c, EXEC, ip, 80, pods)

    got = c.set_service(name, {"type": "NodePort"})
    node_port = got["node_port"]
    assert node_port and got["cluster_ip"] == ip
    _udp_reachable(c, EXEC, node1, node_port, pods)

    got = c.set_service(name, {"type": "LoadBalancer"})
    vip = got["vip"]
    assert vip and got["node_port"] == node_port, "the node port must be kept"
    _udp_reachable(c, EXEC, node1, node_port, pods)
    _udp_reachable(c, CLIENT, vip, 80, pods)

    # change the node port
    got = c.set_service(name, ["ports=[{name: udp, port: 80, targetPort: 80, protocol: UDP, "
                               f"nodePort: {node_port + 1}}}]"])
    assert got["node_port"] == node_port + 1 and got["vip"] == vip
    _udp_reachable(c, EXEC, node1, node_port + 1, pods)
    _udp_unreachable(c, EXEC, node1, node_port)
    _udp_reachable(c, CLIENT, vip, 80, pods)

    # change the service port
    got = c.set_service(name, ["ports=[{name: udp, port: 81, targetPort: 80, protocol: UDP, "
                               f"nodePort: {node_port + 1}}}]"])
    assert got["vip"] == vip
    _udp_reachable(c, CLIENT, vip, 81, pods)
    _udp_unreachable(c, CLIENT, vip, 80)
    _udp_reachable(c, EXEC, node1, node_port + 1, pods)

    # back to ClusterIP: the LB and the node port go
    got = c.set_service(name, {"type": "ClusterIP"})
    assert got["node_port"] is None and got["vip"] is None
    _udp_unreachable(c, CLIENT, vip, 81)
    _udp_unreachable(c, EXEC, node1, node_port + 1)
    _udp_reachable(c, EXEC, ip, 81, pods)
    c.delete_service(name)


def _server_cycles(c, second_node: str) -> None:
    """upstream: a UDP LoadBalancer service without endpoints; the test itself keeps sending
    from one source port through the LB; backend 1 appears on node1 and must answer; backend 2
    appears on `second_node`, backend 1 is deleted, and backend 2 must answer."""
    name = "udp-cycle-svc"
    # container-native: the LB is created while the service has no pods, so it must check its
    # ip targets on the pods' own port (UDP only: no TCP targetPort) and register the pods
    # added later at the listener's targetPort (80), not their containerPort
    got = apply(c, f"{name}: {{type: LoadBalancer, selector: udp-cycle, ports: ["
                   "{name: udp, port: 80, targetPort: 80, protocol: UDP}]}\n")
    with udp_client(c, CLIENT, got["vip"], 80, rate=5) as client:
        backend1 = c.add_pod("udp-cycle", node="node1")
        c.wait_lb_ready()
        wait_for(f"backend 1 ({backend1}) answering", lambda: client.answered_by(backend1),
                 LAG_S)
        backend2 = c.add_pod("udp-cycle", node=second_node)
        c.wait_lb_ready()
        c.remove_pod(backend1)
        since = len(client.rows)
        wait_for(f"backend 2 ({backend2}) answering",
                 lambda: client.answered_by(backend2, since), LAG_S)
    assert len(client.source_ports()) == 1, "the client must keep one source port"
    answered = {r["pod"] for r in client.rows if r.get("pod")}
    assert answered == {backend1, backend2}, answered   # upstream: both hostnames, no other
    c.remove_pod(backend2)
    c.delete_service(name)


# [LoadBalancers] "should be able to preserve UDP traffic when server pod cycles for a
# LoadBalancer service on different nodes"
def test_should_be_able_to_preserve_udp_traffic_when_server_pod_cycles_for_a_loadbalancer_service_on_different_nodes(cluster):  # noqa: E501
    _server_cycles(cluster, "node2")


# [LoadBalancers] "should be able to preserve UDP traffic when server pod cycles for a
# LoadBalancer service on the same nodes"
def test_should_be_able_to_preserve_udp_traffic_when_server_pod_cycles_for_a_loadbalancer_service_on_the_same_nodes(cluster):  # noqa: E501
    _server_cycles(cluster, "node1")



# [LoadBalancers] "should be able to create LoadBalancer Service without NodePort and change it
# [Slow]"
def test_should_be_able_to_create_loadbalancer_service_without_nodeport_and_change_it(cluster):
    """upstream: a ClusterIP service over one pod, changed to type LoadBalancer with
    allocateLoadBalancerNodePorts false, gets its LB and no node port and answers through the
    LB; allocateLoadBalancerNodePorts true then allocates a node port, the LB's address stays
    and it still answers. In classic mode the LB's instance targets are the nodes' node ports,
    so the testbed refuses the first change in one line and the service stays as it was."""
    c = cluster
    name = "reallocate-nodeport"   # upstream: reallocate-nodeport-test (20 characters here)
    apply(c, f"{name}: {{type: ClusterIP, selector: exec, port: 80, targetPort: 8080}}\n")
    no_node_ports = {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False}
    if c.plan.mode == "nodeport":
        with pytest.raises(InputError, match="allocateLoadBalancerNodePorts: false leaves"):
            c.set_service(name, no_node_ports)
        assert service(c, name).type == "ClusterIP"
        c.delete_service(name)
        return
    got = c.set_service(name, no_node_ports)
    vip = got["vip"]
    assert vip and got["node_port"] is None, got
    url = f"http://{vip}:80/"
    wait_for("the LB answering", lambda: "exec-0" in hostnames(c, CLIENT, url, 3), LAG_S)

    got = c.set_service(name, {"allocateLoadBalancerNodePorts": True})
    assert got["node_port"] and got["vip"] == vip, got
    wait_for("the LB answering", lambda: "exec-0" in hostnames(c, CLIENT, url, 3), LAG_S)
    c.delete_service(name)
