"""Pod servers on a real cluster: each one listens inside its pod's namespace (started by the
launcher with --netns), a crashed one is found and restarted, a new pod's server answers, and
teardown leaves no server and no zombie behind; pods answer UDP on their Services'
targetPorts and serve every port of them."""

import json
import os
import signal
import time
from dataclasses import replace

from testbed.emulation.cluster import Cluster
from testbed.paths import HTTPPROBE, REPO
from testbed.spec.model import ServicePortSpec, Topology
from testbed.spec.topology import load_topology
from tests.integration.helpers import answers

TALK = os.path.join(REPO, "topologies", "talk.yaml")


def _state(pid: int) -> str | None:
    """A process's state letter (Z: a zombie), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_servers_crash_restart_grow_and_leave_nothing(no_leftovers):
    with Cluster(load_topology(TALK, mode="container-native")) as c:
        servers = dict(c.pod_servers)
        launcher = c.control.launchers.pods().proc.pid
        # each answers from inside its own pod: its address and name
        for pod in c.plan.pods:
            got = c.sh("client1", f"curl -s -m 3 http://{pod.ip}:{pod.port}/").stdout
            assert f'"pod":"{pod.name}"' in got and f'"server":"{pod.ip}"' in got, got
        assert all(c.control.server_running(p.name) for p in c.plan.pods)

        os.kill(servers["web-1"].pid, signal.SIGKILL)   # a crash nobody asked for
        deadline = time.time() + 5
        while c.control.dead_pod_servers() != ["web-1"] and time.time() < deadline:
            time.sleep(0.05)
        assert c.control.dead_pod_servers() == ["web-1"]
        c.control.restart_pod_servers(["web-1"])
        web1 = c.plan.pod("web-1")
        got = c.sh("client1", f"curl -s -m 3 http://{web1.ip}:{web1.port}/").stdout
        assert '"pod":"web-1"' in got and c.pod_servers["web-1"].pid != servers["web-1"].pid

        c.fail_pod("web-0", instant=True)
        assert not c.control.server_running("web-0") and c.pod_servers.get("web-0") is None

        new = c.add_pod("web", node="node3")
        pod = c.plan.pod(new)
        got = c.sh("client1", f"curl -s -m 3 http://{pod.ip}:{pod.port}/").stdout
        assert f'"pod":"{new}","node":"node3"' in got, got
        # the LB registers the new pod once it is Ready: its first readiness probe can be a
        # whole period (10 s, upstream's default) away, so wait for that, then for the LB
        deadline = time.time() + 30
        while not getattr(c.endpoint_conditions().get(new), "ready", False) \
                and time.time() < deadline:
            time.sleep(0.2)
        c.wait_lb_ready()
        seen: set[str] = set()
        while new not in seen and time.time() < deadline:
            seen |= {a["pod"] for a in answers(c, "client1", "http://198.51.100.10/", 20)}
        assert new in seen, seen
        pids = [s.pid for s in c.pod_servers.values()] + [launcher]
    assert [_state(pid) for pid in pids] == [None] * len(pids)   # gone, and collected


def _with_udp_service(topo: Topology) -> Topology:
    """The talk's cluster plus a ClusterIP Service over the web pods with one UDP port (53 ->
    5353, in the single-port form) and a two-port one (TCP 81 -> 8081, UDP 54 -> 5354)."""
    web = next(s for s in topo.services if s.selector == "web")
    dns = replace(web, name="dns", type="ClusterIP", port=53, target_port=5353, protocol="UDP",
                  node_port=None, health_check_node_port=None, load_balancer_ip=None,
                  external_traffic_policy="Cluster", ports=(), health_via=None)
    both = replace(dns, name="both", port=81, target_port=8081, protocol="TCP",
                   ports=(ServicePortSpec("http", 81, 8081),
                          ServicePortSpec("dns", 54, 5354, "UDP")))
    return replace(topo, services=(*topo.services, dns, both))


def _probe(c: Cluster, host: str, url: str, *flags: str) -> list[dict]:
    out = c.exec(host, [HTTPPROBE, "--url", url, "--requests", "3", "--timeout-ms", "1000",
                        *flags], timeout=30).stdout
    return [r for r in map(json.loads, out.splitlines()) if not r.get("summary")]


def test_pods_answer_udp_and_every_port_of_their_services(no_leftovers):
    with Cluster(_with_udp_service(load_topology(TALK, mode="container-native"))) as c:
        for pod in c.plan.pods:
            for port in (5353, 5354):
                rows = _probe(c, "client1", f"udp://{pod.ip}:{port}")
                assert [(r["error"], r["pod"], r["server"]) for r in rows] == \
                    [(None, pod.name, pod.ip)] * 3, rows
                assert len({r["local_port"] for r in rows}) == 3   # a new flow each
            kept = _probe(c, "client1", f"udp://{pod.ip}:5353", "--keepalive")
            assert len({r["local_port"] for r in kept}) == 1 and all(r["pod"] for r in kept)
            for port in (pod.port, 8081):   # TCP: the container port and the other target
                got = c.sh("client1", f"curl -s -m 3 http://{pod.ip}:{port}/").stdout
                assert f'"pod":"{pod.name}"' in got, got
        pids = [s.pid for s in c.pod_servers.values()]
    assert [_state(pid) for pid in pids] == [None] * len(pids)
