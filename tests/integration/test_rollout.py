"""A rolling update on a real cluster (testbed.emulation.rollout), container-native with
readiness gates, through the L4 and the L7 (HAProxy) load balancer: under steady load through
the VIP, on new and on kept-alive connections, every pod is replaced, every new pod ends up
serving, nothing of the old pods stays (no namespace, no LB target, no endpoint; the module's
cluster checks that nothing at all is left, HAProxy included), and the service answers
throughout (upstream's 95% for "should not have connectivity disruption during rolling
update"; here the gate should make it whole). Behind the L7 LB every answer names the client
in X-Forwarded-For. `cnlb status` shows the rollout in progress, then complete."""

from __future__ import annotations

import json
import threading
import time

import pytest

from testbed.analysis.rollout import MIN_SUCCESS_RATE
from testbed.emulation.rollout import rollout
from testbed.emulation.session import format_status
from testbed.emulation.status import status_of
from testbed.paths import HTTPPROBE
from tests.integration.e2e_jig import cluster_from, hostnames, wait_for

CLIENT = "client1"
URL = "http://198.51.100.10/"
TOPOLOGY = """
name: rollout
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {}, node2: {}}
deployments:
  web: {replicas: 3, strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}},
        readinessGates: [{conditionType: target-health.cnlb.io/load-balancer}]}
services:
  web: {type: LoadBalancer, port: 80, targetPort: 8080}
loadBalancer: {vip: 198.51.100.10, targets: container-native, kind: %s,
               healthCheck: {interval: 500ms, timeout: 300ms, healthyThreshold: 2}}
clients: {client1: {}}
kubernetes:
  readinessProbe: {periodSeconds: 1}
  terminationGracePeriodSeconds: 4
  preStopSeconds: 1
  loadBalancer: {registrationDelay: 1s, deregistrationLag: 500ms, deregistrationDelay: 2s}
"""


CLIENT_IP = "203.0.113.10"
EXPERIMENT = """
kind: rollout
topology: rollout.yaml
repetitions: 1
warmup: 0s
duration: 10s      # the gated rollout takes about 5 s from 2 s
at: 2s
rate: 50
variants:
  classic-l4: {mode: nodeport, lb: l4}
  cn-l7-gates: {mode: container-native, lb: l7, readinessGates: true}
"""


def test_the_rollout_experiment_runs_both_loads_through_both_lbs(machine_ready, tmp_path):
    """First in the file: the module's clusters are not built yet (one at a time). The
    runner's own path: two variants, each load's records, forwarded_for in the L7 samples, the
    report's success-rate table and the figure."""
    from testbed.analysis.records import read_records, read_samples
    from testbed.experiments.run import run_experiment
    (tmp_path / "rollout.yaml").write_text(TOPOLOGY % "l4")
    (tmp_path / "e.yaml").write_text(EXPERIMENT)
    result = run_experiment(str(tmp_path / "e.yaml"), out=str(tmp_path / "run"))
    rates = {(r["variant"], r["workload"]): r["value"] for r in read_records(result.out)
             if r["metric"] == "success_rate"}
    assert set(rates) == {(v, w) for v in ("classic-l4", "cn-l7-gates")
                          for w in ("rollout", "rollout-keepalive")}
    assert all(rate >= MIN_SUCCESS_RATE for rate in rates.values()), rates
    l7_rows = read_samples(result.out, "rollout-keepalive")[("cn-l7-gates", 0,
                                                             "rollout-keepalive")]
    assert l7_rows and {r["forwarded_for"] for r in l7_rows if r["ok"]} == {CLIENT_IP}
    assert {r["generation"] for r in l7_rows if r["ok"]} == {"old", "new"}
    report = open(result.report).read()
    assert "## Success rate during the rollout" in report and "| `cn-l7-gates` | l7 |" in report
    assert any(f.endswith("rollout.png") for f in result.figures)


@pytest.fixture(scope="module", params=["l4", "l7"])
def cluster(request, machine_ready, tmp_path_factory):
    with cluster_from(tmp_path_factory.mktemp("rollout"), "rollout", TOPOLOGY % request.param,
                      mode="container-native") as c:
        yield c


def test_rollout_replaces_every_pod_and_the_service_answers_throughout(cluster):
    old = sorted(p.name for p in cluster.plan.pods if p.name in cluster.live_pods())
    assert old == ["web-0", "web-1", "web-2"]
    loads: dict[str, list[dict]] = {"new": [], "kept-alive": []}

    def load(rows: list[dict], *flags: str) -> None:
        # 16 s of load: the rollout takes about 5 s here (3 pods, each registered after 1 s
        # and two checks 500 ms apart), so the load outlasts it threefold
        out = cluster.exec(CLIENT, [HTTPPROBE, "--url", URL, "--duration", "16", "--rate", "50",
                                    "--timeout-ms", "1000", *flags], timeout=60).stdout
        rows.extend(r for r in map(json.loads, filter(None, out.splitlines()))
                    if not r.get("summary"))

    probes = [threading.Thread(target=load, args=(loads["new"],)),
              threading.Thread(target=load, args=(loads["kept-alive"], "--keepalive"))]
    for p in probes:
        p.start()
    try:
        rolling = rollout(cluster, "web")
        time.sleep(0.5)
        (shown,) = status_of(cluster)["rollouts"]
        assert shown["state"] == "in progress" and shown["deployment"] == "web"
        assert any(line.startswith("rollout web: in progress for ")
                   for line in format_status(status_of(cluster)))
        status = rolling.wait(timeout=60)
    finally:
        for p in probes:
            p.join()
    assert status.error is None and status.completed is not None, status.to_dict()
    new = set(status.new_pods)
    assert len(new) == 3 and not new & set(old)
    # the gate held each old pod until a new one was in service: scaled up before every
    # scale-down, never more than replicas + maxSurge pods
    assert [e["rs"] for e in status.events] == ["new", "old"] * 3
    for kind, rows in loads.items():
        ok = sum(1 for r in rows if r.get("error") is None and r.get("status") == 200)
        assert rows and ok / len(rows) >= MIN_SUCCESS_RATE, f"{kind}: {ok}/{len(rows)} answered"
    if cluster.lb_kind == "l7":   # the pod's peer is HAProxy; the client is in X-Forwarded-For
        answered = [r for rows in loads.values() for r in rows if r.get("status") == 200]
        assert {r.get("forwarded_for") for r in answered} == {CLIENT_IP}
    (shown,) = status_of(cluster)["rollouts"]
    assert shown["state"] == "complete" and sorted(shown["new_pods"]) == sorted(new)
    # every new pod serves through the VIP, and only new pods do
    assert set(hostnames(cluster, CLIENT, URL, 30)) == new
    # nothing of the old pods is left once their grace period is over
    wait_for("old pods deleted", lambda: set(old) <= cluster.control.states.removed_pods, 15)
    targets = {t.target.name for t in cluster.lb.targets("web")}
    assert targets == new
    assert set(cluster.endpoint_conditions()) & set(old) == set()
    timeline = [row.get("action") for row in cluster.control.timeline()]
    assert timeline.count("gate-true") == 3 and "rollout-complete" in timeline
