"""Faults during an experiment: the run notices, records the fault in records and meta,
recovers, and finishes with every measurement."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from testbed.analysis.records import read_meta, read_records
from testbed.emulation.cluster import Cluster
from testbed.emulation.journal import StateDir, read_journal
from testbed.paths import REPO
from testbed.spec.model import Timing
from testbed.spec.topology import load_topology

# compare-quick's container-native variant and the workloads the assertions read: the other
# variants would only add minutes before the kill.
QUICK_NATIVE = f"""
name: controller-dies
topology: {os.path.join(REPO, "topologies", "minimal.yaml")}
seed: 42
repetitions: 1
warmup: 500ms
variants:
  container-native: {{mode: container-native}}
workloads:
  latency: {{requests: 100}}
  throughput: {{duration: 2s}}
  path: {{requests: 30}}
"""
CNLB = [sys.executable, "-m", "testbed.cli"]


def controller_pid():
    entries = read_journal(StateDir.for_cluster("current"))
    return [e["pid"] for e in entries
            if e["kind"] == "process" and e["what"] == "vpc controller"][-1]


def test_controller_dies_mid_run_is_recorded_and_recovered(no_leftovers, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "e.yaml").write_text(QUICK_NATIVE)
    proc = subprocess.Popen(CNLB + ["run", str(tmp_path / "e.yaml"), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    killed = False
    for line in proc.stdout:
        seen.append(line)
        if not killed and "[container-native rep 1/1]" in line:
            os.kill(controller_pid(), signal.SIGKILL)
            killed = True
    proc.wait(300)
    output = "".join(seen)
    assert proc.returncode == 0, output
    assert killed and "the VPC controller died" in output, output
    meta = read_meta(str(out))
    assert meta["status"] == "ok"
    assert any(f["kind"] == "controller-died" for f in meta["faults"]), meta["faults"]
    records = read_records(str(out))
    assert any(r["metric"] == "fault" and r.get("kind") == "controller-died" for r in records)
    native = {r["metric"] for r in records
              if r["variant"] == "container-native" and r["value"] is not None}
    assert {"latency_p50_ms", "throughput_mbps", "path_hops"} <= native


# -- the control plane's clock (topology `kubernetes:` timing) -----------------------------------
# Upstream's e2e tests wait minutes for what these see in seconds: every delay below is
# upstream's default scaled down (grace period 30 s -> 6 s, readiness period 10 s -> 0.5 s,
# node monitor grace period 50 s -> 2 s, not-ready toleration 300 s -> 3 s).

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")   # web-0, -1 on node1, web-2 on node2
SHORT = Timing(readiness_period_s=0.5, readiness_failure_threshold=2,
               termination_grace_period_s=6, pre_stop_s=4, node_monitor_grace_period_s=2,
               not_ready_toleration_s=3, lb_deregistration_delay_s=1)


def clocked(mode, timing=SHORT):
    return Cluster(replace(load_topology(MINIMAL, mode=mode), kubernetes=timing))


def cluster_ip_answers(cluster, node, n):
    """n requests from a node to the service's cluster IP, a new connection each: the pods
    that answered (None for a request that got no answer)."""
    svc = cluster.plan.services[0]
    script = (f"for i in $(seq {n}); do r=$(curl -s -m 2 http://{svc.cluster_ip}:{svc.port}/); "
              'echo "$r"; done')   # one line per request, empty when nothing answered
    lines = cluster.sh(node, script, timeout=n * 3 + 10).stdout.splitlines()
    return [json.loads(line)["pod"] if line.startswith("{") else None for line in lines]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout:.0f}s"
        time.sleep(0.1)


def actions_of(cluster, target=None):
    return [(r["action"], r["target"]) for r in cluster.control.timeline()
            if "action" in r and not r.get("skipped") and (target is None or r["target"] in target)]


# Mirrors test/e2e/network/service.go "should fallback to terminating endpoints when there are
# no ready endpoints with internalTrafficPolicy=Cluster": every pod of the service is deleted
# (preStop 4 s, grace period 6 s); while they terminate their endpoints are ready=false,
# serving=true, terminating=true, and kube-proxy still sends new connections to them.
def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints(
        no_leftovers):
    with clocked("nodeport") as c:
        pods = sorted(c.live_pods())
        for pod in pods:
            c.remove_pod(pod)
        wait_for("published terminating", lambda: all(
            c.endpoint_conditions().get(p, (None,) * 3)[2] for p in pods))
        conditions = c.endpoint_conditions()
        assert all((conditions[p].ready, conditions[p].serving) == (False, True) for p in pods)
        answered = cluster_ip_answers(c, "node2", 5)   # within the preStop window
        assert set(answered) <= set(pods) and None not in answered, answered
        wait_for("deleted", lambda: set(pods) <= c.removed_pods, timeout=30)
        assert c.endpoint_conditions() == {}
        assert cluster_ip_answers(c, "node2", 2) == [None, None]
        steps = [a for a, t in actions_of(c, {pods[0]})]
        assert steps.index("pod-terminating") < steps.index("sigterm") \
            < steps.index("pod-deleted"), steps


# The readiness prober, as test/e2e/common/node/container_probe.go's readiness tests check it
# on one pod: after failureThreshold failed probes (period 0.5 s, threshold 2) the pod leaves
# the service's endpoints; once it passes again it comes back.
def test_a_pod_failing_readiness_leaves_the_endpoints_and_comes_back(no_leftovers):
    with clocked("nodeport") as c:
        c.pod_servers["web-2"].send_signal(signal.SIGUSR1)    # /readyz answers 503
        wait_for("not ready", lambda: not c.endpoint_conditions()["web-2"].ready)
        assert c.endpoint_conditions()["web-2"].serving is False
        time.sleep(1.5)   # kube-proxy's min sync period (1 s) has passed
        assert "web-2" not in cluster_ip_answers(c, "node1", 20)
        c.pod_servers["web-2"].send_signal(signal.SIGUSR2)    # ready again
        wait_for("ready", lambda: c.endpoint_conditions()["web-2"].ready)
        wait_for("answering", lambda: "web-2" in cluster_ip_answers(c, "node1", 10))
        assert [a for a, _ in actions_of(c, {"web-2"})][:2] == ["pod-not-ready", "endpoints"]
        assert "pod-ready" in [a for a, _ in actions_of(c, {"web-2"})]


# Mirrors test/e2e/network/service.go "should create endpoints for unready pods": a Service
# with publishNotReadyAddresses lists a pod whose readiness probe fails (the endpoints
# controller publishes it ready), so kube-proxy keeps sending to it, while a Service without
# the field over the same pods drops it. Upstream waits for a pod that never becomes ready; here
# web-2 stops being ready (period 0.5 s, threshold 2).
def test_should_create_endpoints_for_unready_pods(no_leftovers):
    topo = replace(load_topology(MINIMAL, mode="nodeport"), kubernetes=SHORT)
    web = topo.services[0]
    tolerant = replace(web, name="web-tolerant", type="ClusterIP", node_port=None,
                       health_check_node_port=None, load_balancer_ip=None,
                       publish_not_ready_addresses=True)
    with Cluster(replace(topo, services=(web, tolerant))) as c:
        c.pod_servers["web-2"].send_signal(signal.SIGUSR1)    # /readyz answers 503
        wait_for("not ready", lambda: not c.endpoint_conditions()["web-2"].ready)
        assert c.kube_proxy.wait_synced()
        time.sleep(1.5)   # kube-proxy's min sync period (1 s) has passed
        assert c.kube_proxy.wait_synced()
        assert "web-2" not in cluster_ip_answers(c, "node1", 20)
        tolerant_ip = next(s.cluster_ip for s in c.plan.services if s.name == "web-tolerant")
        script = (f"for i in $(seq 30); do curl -s -m 2 http://{tolerant_ip}:{web.port}/; "
                  "echo; done")
        pods = [json.loads(line)["pod"] for line in c.sh("node1", script, timeout=100)
                .stdout.splitlines() if line.startswith("{")]
        assert len(pods) == 30 and "web-2" in pods, pods


# A node dies, container-native: its pod stays a ready endpoint until the node is NotReady
# (node monitor grace period 2 s), then it is not ready and its ip target is deregistered;
# after the not-ready toleration (3 s) it is evicted and recreated on the other node.
def test_node_failure_follows_not_ready_then_eviction(no_leftovers):
    with clocked("container-native") as c:
        assert c.fail_node("node2") == []            # nothing moves yet
        assert c.endpoint_conditions()["web-2"].ready
        wait_for("evicted", lambda: c.control.rescheduled.get("node2"), timeout=60)
        (new,) = c.control.rescheduled["node2"]
        assert c.plan.pod(new).node == "node1" and "web-2" in c.removed_pods
        order = [a for a, t in actions_of(c, {"node2", "web-2"})]
        for earlier, later in [("node-down", "node-not-ready"), ("node-not-ready", "endpoints"),
                               ("endpoints", "lb-deregister"), ("lb-deregister", "evict")]:
            assert order.index(earlier) < order.index(later), order
        c.wait_lb_ready()
        wait_for("the new pod serving", lambda: c.endpoint_conditions()[new].ready)


def test_instant_timing_is_todays_picture(no_leftovers):
    with clocked("container-native", replace(SHORT, mode="instant")) as c:
        moved = c.fail_node("node2")
        assert len(moved) == 1 and "web-2" in c.removed_pods and c.control.prober is None
        c.remove_pod("web-0")
        assert "web-0" in c.removed_pods and "web-0" not in c.endpoint_conditions()
