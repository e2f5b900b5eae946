"""The pods sweep's records as the plots and the report read them (a synthetic run directory),
and the load balancer's readiness measure against a fake load balancer."""

import os
import random

from testbed.analysis.plots import plot_run, written
from testbed.analysis.records import GROUP_FIELDS, RunWriter, read_records
from testbed.analysis.report import write_report
from testbed.analysis.rundata import PODS_SWEEP_SAMPLES, RunData, pod_shares
from testbed.cloud.lb import Target, TargetHealth
from testbed.experiments.scaling import lb_ready_s
from testbed.paths import REPO
from testbed.spec.experiment import load_resolved

SCALING = os.path.join(REPO, "experiments", "scaling.yaml")
STAGES = ("hosts", "fabric", "addresses", "controller", "switches", "workloads")
SIZES = (10, 100, 1000)


def make_pods_run(run_dir, repetitions=2, services=False):
    """A run directory as the runner leaves it for a pods sweep (and, if asked, a services one)."""
    rnd = random.Random(7)
    res = load_resolved(SCALING)
    with RunWriter(run_dir, resolved=res, git={}) as w:
        for rep in range(repetitions):
            for i, variant in enumerate(["nodeport-cluster", "container-native"]):
                for n in SIZES:
                    def rec(metric, value, variant=variant, rep=rep, n=n, **extra):
                        w.record("scaling", variant, rep, metric, value, workload="scaling",
                                 pods=n, **extra)
                    for k, stage in enumerate(STAGES):
                        rec("bringup_s", (k + 1) * n / 1000 * rnd.uniform(0.9, 1.1), stage=stage)
                    rec("bringup_s", 3 + n / 100 * rnd.uniform(0.9, 1.1))
                    rec("nodes", max(2, n // 20))
                    rec("sync_time_ms", 5 + n / 20)
                    rec("rules", 14 + 3 * n)
                    rec("lb_ready_s", 1 + (n / 120 if i else 0))
                    rec("latency_p50_ms", 0.8 + n / 1000 * (1.5 if i == 0 else 1))
                    rec("teardown_s", 0.4 + n / 400)
                    rows = [{"t": k / 100, "latency_ms": 1.0, "ok": True, "pod": f"web-{k % n}"}
                            for k in range(20)]
                    w.samples(variant, rep, f"{PODS_SWEEP_SAMPLES}{n}", rows)
                    if services:
                        w.record("scaling", variant, rep, "sync_time_ms", n * 0.1,
                                 workload="scaling", services=n)
    return run_dir


def test_pods_and_stage_tell_records_apart(tmp_path):
    run_dir = make_pods_run(str(tmp_path / "run"))
    assert {"pods", "stage"} <= set(GROUP_FIELDS)
    data = RunData(run_dir)
    whole = data.metric("bringup_s", workload="scaling", pods=100)
    hosts = data.metric("bringup_s", workload="scaling", pods=100, stage="hosts")
    assert set(whole) == set(hosts) == {"nodeport-cluster", "container-native"}
    assert whole["nodeport-cluster"].mean > 3 > hosts["nodeport-cluster"].mean
    assert len(read_records(run_dir)) == 2 * 2 * 3 * (len(STAGES) + 7)


def test_pods_sweep_figures_and_no_pod_share_from_other_clusters(tmp_path):
    run_dir = make_pods_run(str(tmp_path / "run"))
    result = plot_run(run_dir)
    names = {os.path.splitext(os.path.basename(f))[0] for f in written(result)}
    assert {"scaling-pods", "scaling-pods-stages"} <= names, result
    assert "scaling" not in names          # no services sweep in this run
    # the pods sweep's answers come from clusters other than the plan's: no pod shares
    assert pod_shares(RunData(run_dir)) == {}
    assert any(r.startswith("skipped pod-share") for r in result), result


def test_both_sweeps_figures_and_report_rows_by_size_whole_bring_up_before_its_stages(tmp_path):
    run_dir = make_pods_run(str(tmp_path / "run"), services=True)
    names = {os.path.splitext(os.path.basename(f))[0] for f in written(plot_run(run_dir))}
    assert {"scaling", "scaling-pods", "scaling-pods-stages"} <= names
    report = open(write_report(run_dir)).read()
    rows = [line for line in report.splitlines() if line.startswith("| `bringup_s`")]
    labels = [row.split("|")[3].strip() for row in rows]
    assert labels[:7] == ["scaling, pods 10"] + [f"scaling, pods 10, stage {s}" for s in STAGES]
    assert labels[7] == "scaling, pods 100" and len(labels) == 21
    sync = [line.split("|")[3].strip() for line in report.splitlines()
            if line.startswith("| `sync_time_ms`")]
    assert sync == [f"scaling, services {n}" for n in SIZES] + [f"scaling, pods {n}"
                                                                 for n in SIZES]
    assert "![A cluster built per number of pods" in report


class FakeLB:
    """Targets, the calls made, and in-service once every target is registered again."""

    def __init__(self, names):
        self.registered = {n: Target(n, f"192.168.0.{64 + k}", 8080) for k, n in enumerate(names)}
        self.calls = []

    def targets(self, service):
        return [TargetHealth(t, True, "healthy", {}) for t in self.registered.values()]

    def deregister(self, service, target):
        self.calls.append(("deregister", target.name))
        del self.registered[target.name]

    def register(self, service, target):
        self.calls.append(("register", target.name))
        self.registered[target.name] = target


class FakeCluster:
    def __init__(self, lb):
        self.lb = lb
        self.waited = []

    def wait_lb_ready(self, timeout=0.0):
        self.waited.append(sorted(self.lb.registered))


def test_lb_ready_deregisters_every_target_then_registers_them_all_and_waits():
    lb = FakeLB(["web-0", "web-1", "web-2"])
    cluster = FakeCluster(lb)
    seconds = lb_ready_s(cluster, "web")
    assert seconds >= 0
    assert lb.calls == [("deregister", "web-0"), ("deregister", "web-1"), ("deregister", "web-2"),
                        ("register", "web-0"), ("register", "web-1"), ("register", "web-2")]
    assert cluster.waited == [["web-0", "web-1", "web-2"]]   # waited once, all registered
