"""A tiny scaling run on real clusters, both sweeps: a cluster per pod count (4 and 8 pods,
2 per node) and 10 synthetic services on the topology's own; every figure the pods sweep
records is there, for both variants and both sizes, with the plots and the report."""

import json
import os
import subprocess
import sys

from testbed.analysis.records import read_meta, read_records
from testbed.paths import REPO

CNLB = [sys.executable, "-m", "testbed.cli"]
ZONES = os.path.join(REPO, "topologies", "zones.yaml")
VARIANTS = ("nodeport-cluster", "container-native")
SIZES = (4, 8)
PER_SIZE = {"bringup_s", "nodes", "sync_time_ms", "rules", "lb_ready_s", "latency_p50_ms",
            "latency_p99_ms", "errors", "teardown_s"}


def test_tiny_pods_sweep_records_every_figure_and_reports(no_leftovers, tmp_path):
    exp = tmp_path / "tiny.yaml"
    exp.write_text(f"name: tiny\nkind: scaling\ntopology: {ZONES}\nrepetitions: 1\n"
                   "services: [10]\npods: [4, 8]\npodsPerNode: 2\nvariants:\n"
                   "  nodeport-cluster: {mode: nodeport}\n"
                   "  container-native: {mode: container-native}\n"
                   "workloads: {latency: {requests: 20}}\n")
    out = tmp_path / "run"
    p = subprocess.run(CNLB + ["run", str(exp), "--out", str(out), "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    records = read_records(str(out))
    for variant in VARIANTS:
        mine = [r for r in records if r["variant"] == variant]
        for n in SIZES:
            at = [r for r in mine if r.get("pods") == n]
            assert {r["metric"] for r in at} == PER_SIZE, (variant, n, at)
            assert all(r["value"] is not None and r["workload"] == "scaling" for r in at), at
            assert all("services" not in r for r in at)
            stages = [r["stage"] for r in at if r["metric"] == "bringup_s" and "stage" in r]
            assert "workloads" in stages and len(stages) == len(set(stages)) >= 3, stages
            value = {r["metric"]: r["value"] for r in at if "stage" not in r}
            assert value["nodes"] == n // 2 and value["errors"] == 0, value
            assert value["lb_ready_s"] >= 0 and value["teardown_s"] >= 0
            rows = [json.loads(line) for line in
                    (out / "samples" / variant / f"r0-latency-pods-{n}.jsonl").open()]
            assert len(rows) == 20 and all(r["ok"] for r in rows)
            assert {r["pod"] for r in rows} <= {f"web-{k}" for k in range(n)}
        rules = {r["pods"]: r["value"] for r in mine if r["metric"] == "rules" and "pods" in r}
        assert rules[8] > rules[4], rules       # kube-proxy's chains grow with the endpoints
        services = {r["metric"] for r in mine if r.get("services") == 10}
        assert services >= {"sync_time_ms", "rules", "latency_p50_ms", "errors",
                            "endpoint_change_ms", "ruleset_bytes", "rules_kernel_kib"}, services
        assert {r.get("proxy_mode") for r in mine} == {"iptables"}   # the mode in every record
    meta = read_meta(str(out))
    assert meta["status"] == "ok" and not meta["faults"], meta["faults"]
    assert meta["experiment"]["pods"] == list(SIZES) and meta["experiment"]["pods_per_node"] == 2
    figures = os.listdir(out / "figures")
    for name in ("scaling", "scaling-pods", "scaling-pods-stages"):
        assert f"{name}.png" in figures and f"{name}.pdf" in figures, figures
    report = (out / "report.md").read_text()
    assert "| `lb_ready_s` | s | scaling, pods 8 |" in report
    assert "scaling, pods 4, stage workloads" in report and "scaling-pods.png" in report
