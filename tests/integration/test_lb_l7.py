"""The L7 cloud load balancer (HAProxy in lb7) on a real cluster, in both modes: the pod server's
JSON says who served and that the client's address came in X-Forwarded-For; one kept-alive
client connection is balanced per request; `cnlb status` lists the targets; targets are
registered and deregistered at run time and leave service on failing health checks; and a
crashed run's HAProxy is stopped by `cnlb clean` like everything else it journaled."""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.emulation.cluster import Cluster
from testbed.emulation.journal import STATE_ROOT, StateDir, alive, read_journal
from testbed.emulation.session import format_status
from testbed.emulation.status import status_of
from testbed.paths import REPO
from testbed.plan.addresses import L7_HOST_IP
from testbed.spec.topology import load_topology
from tests.integration.helpers import VIP, answers

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")
CNLB = [sys.executable, "-m", "testbed.cli"]
CLIENT_IP = "203.0.113.10"


def test_a_killed_run_leaves_haproxy_to_clean_which_stops_it(no_leftovers):
    """First in the file: the module's clusters are not built yet (one at a time)."""
    proc = subprocess.Popen(CNLB + ["up", MINIMAL, "--lb", "l7"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "is up" in line:
            break
    else:
        raise AssertionError("never up:\n" + "".join(seen))
    state = StateDir(os.path.join(STATE_ROOT, "current"))
    haproxy = [(e["pid"], e.get("start")) for e in read_journal(state)
               if e["kind"] == "process" and "haproxy" in e.get("what", "")]
    assert len(haproxy) == 1 and alive(*haproxy[0])
    assert os.path.exists(state.file("haproxy.cfg")) and os.path.exists(state.file("haproxy.sock"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert alive(*haproxy[0])                 # the crash left it running
    p = subprocess.run(CNLB + ["clean"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert not alive(*haproxy[0])
    assert not os.path.exists(state.path)


@pytest.fixture(scope="module", params=["nodeport", "container-native"])
def l7(request, machine_ready):
    with Cluster(load_topology(MINIMAL, mode=request.param), load_balancer="l7") as c:
        yield c


def in_service(cluster) -> set[str]:
    return {t.target.name for t in cluster.lb.targets("web") if t.in_service}


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"not {what} within {timeout:.0f}s"
        time.sleep(0.1)


def test_the_pod_names_itself_and_sees_the_client_in_x_forwarded_for(l7):
    got = answers(l7, "client1", f"http://{VIP}/", 12)
    assert len(got) == 12
    assert {a["forwarded_for"] for a in got} == {CLIENT_IP}
    assert {a["pod"] for a in got} <= {p.name for p in l7.plan.pods}
    if l7.plan.mode == "container-native":   # the proxy's address is the peer, as with ALB
        assert {a["client"] for a in got} == {str(L7_HOST_IP)}
        assert {a["pod"] for a in got} == {p.name for p in l7.plan.pods}


def test_the_experiments_rows_carry_forwarded_for_and_count_the_client_address_kept(l7):
    """What the compare and rollout experiments record: httpprobe passes the pod's
    forwarded_for on, and source_ip_preserved is judged on it (the peer is the proxy's address,
    or a node's after kube-proxy's SNAT)."""
    from testbed.experiments.client import client_address_seen, probe, sample_rows
    from testbed.spec.experiment import Variant
    rows = sample_rows(l7, Variant("v", l7.plan.mode, lb="l7"), probe(l7, "web", 10))
    assert len(rows) == 10 and all(r["ok"] for r in rows), rows
    assert {r["forwarded_for"] for r in rows} == {CLIENT_IP}
    assert all(r["source_ip"] != CLIENT_IP for r in rows)
    assert all(client_address_seen(r, CLIENT_IP) for r in rows)


def test_one_kept_alive_client_connection_is_balanced_per_request(l7):
    out = l7.sh("client1", "curl -s -m 10 " + " ".join([f"http://{VIP}/"] * 9)).stdout
    got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(got) == 9
    if l7.plan.mode == "container-native":   # the targets are the pods
        assert len({a["pod"] for a in got}) >= 2, got
    else:   # the targets are nodes: each pins its kept-alive connection to one pod, so the
        # per-request choice shows as the entry node kube-proxy SNATed to (an address of its
        # pod range: cni0 for a local pod, flannel.1 for a remote one)
        entry = {n.name for a in got for n in l7.plan.nodes
                 if ipaddress.ip_address(a["client"]) in ipaddress.ip_network(n.pod_cidr)}
        assert len(entry) >= 2, got


def test_status_lists_the_l7_targets_and_their_states(l7):
    status = status_of(l7)
    (lb,) = status["load_balancers"]
    lines = format_status(status)
    assert any(line.startswith(f"load balancer {VIP}:80 -> web") and line.endswith(", l7):")
               for line in lines), lines
    backends = lb["backends"]
    want = {n.name for n in l7.plan.nodes} if l7.plan.mode == "nodeport" else \
        {p.name for p in l7.plan.pods}
    assert {b["name"] for b in backends} == want
    assert all(b["lb"] == "l7" and b["in_service"] and b["state"] == "healthy" and
               b["check"] == "L7OK" for b in backends), backends
    for name in want:
        assert any(line.split()[:1] == [name] and line.endswith("in service") for line in lines)


@pytest.mark.parametrize("l7", ["container-native"], indirect=True, scope="module")
def test_a_failed_target_leaves_service_after_the_unhealthy_threshold(l7):
    # ip targets only: a failed pod is a failed target
    l7.fail_pod("web-2", instant=True)
    wait_until(lambda: "web-2" not in in_service(l7), "out of service")
    states = {t.target.name: t.state for t in l7.lb.targets("web")}
    assert states["web-2"] == "unhealthy"
    got = answers(l7, "client1", f"http://{VIP}/", 10)
    assert len(got) == 10 and "web-2" not in {a["pod"] for a in got}


@pytest.mark.parametrize("l7", ["container-native"], indirect=True, scope="module")
def test_registration_and_deregistration_at_run_time(l7):
    # ip targets only: pods are registered one by one
    new = l7.add_pod("web", node="node2")
    wait_until(lambda: new in in_service(l7), f"{new} in service")
    l7.remove_pod("web-0", instant=True)
    wait_until(lambda: "web-0" not in in_service(l7), "web-0 out of service")
    got = answers(l7, "client1", f"http://{VIP}/", 16)
    pods = {a["pod"] for a in got}
    assert len(got) == 16 and new in pods and "web-0" not in pods
