"""A short compare run on a real cluster: records for every variant and metric, no errors, the
plain veth beside each variant and the testbed's own cost derived from it, the datapath that ran,
the figures and the report; and an interrupted run keeps what it measured and leaves nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.analysis.records import read_meta, read_records
from testbed.paths import REPO

QUICK = os.path.join(REPO, "experiments", "compare-quick.yaml")
CNLB = [sys.executable, "-m", "testbed.cli"]
# compare-quick cut to what the interrupted runs need: a first variant measured whole (its
# throughput recorded), a second one the signal arrives in
INTERRUPTED = f"""
name: interrupted
topology: {os.path.join(REPO, "topologies", "minimal.yaml")}
seed: 42
repetitions: 1
warmup: 500ms
variants:
  nodeport-cluster: {{mode: nodeport, externalTrafficPolicy: Cluster}}
  nodeport-local:   {{mode: nodeport, externalTrafficPolicy: Local}}
workloads:
  latency: {{requests: 50}}
  throughput: {{duration: 1s}}
"""
METRICS = ["latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "requests_per_s",
           "throughput_mbps", "path_hops", "cross_node_bytes_fraction", "jain_fairness",
           "source_ip_preserved", "errors",
           "p50_over_veth", "hop_cost_us"]
# `direct` sends to the pods' own addresses: only the one-request-at-a-time workloads
DIRECT_METRICS = set(METRICS) - {"requests_per_s", "throughput_mbps"}


def test_compare_quick_run_records_every_variant_and_metric(no_leftovers, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(CNLB + ["run", QUICK, "--out", str(out), "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    records = read_records(str(out))
    variants = {"nodeport-cluster", "nodeport-local", "container-native", "direct"}
    for variant in variants:
        got = {r["metric"] for r in records if r["variant"] == variant and r["value"] is not None}
        missing = (DIRECT_METRICS if variant == "direct" else set(METRICS)) - got
        assert not missing, (variant, missing)
        veth = [r for r in records if r["variant"] == variant and r.get("workload") == "veth"]
        assert {r["metric"] for r in veth} >= {"latency_p50_ms", "path_hops"}, veth
        assert all(r["value"] == 0 for r in veth if r["metric"] == "path_hops"), veth
    assert not {r["workload"] for r in records if r["variant"] == "direct"} & {"keepalive", "load",
                                                                                 "throughput"}
    errors = [r for r in records if r["metric"] == "errors" and r["value"]]
    assert not errors, errors
    by = {(r["variant"], r["metric"]): r["value"] for r in records if r.get("workload") == "path"}
    # the talk's claims, as measured: client address kept by container-native and Local only,
    # no cross-node bytes for container-native, fewer hops than the classic Cluster path
    assert by[("container-native", "source_ip_preserved")] == 1
    assert by[("nodeport-local", "source_ip_preserved")] == 1
    assert by[("nodeport-cluster", "source_ip_preserved")] == 0
    assert by[("container-native", "cross_node_bytes_fraction")] == 0
    assert by[("container-native", "path_hops")] == 2
    assert by[("direct", "path_hops")] == 2 and by[("direct", "source_ip_preserved")] == 1
    # the direct variant's requests reach every pod, one block each
    direct = [r for r in records if r["variant"] == "direct" and r["metric"] == "pod_share"]
    assert len(direct) == 3 and all(r["value"] > 0 for r in direct), direct
    extra = [r for r in records if r["metric"] == "extra_hop_cost_us"]
    assert [(r["variant"], r["over"]) for r in extra] == [("nodeport-cluster", "container-native")]
    meta = read_meta(str(out))
    assert meta["status"] == "ok"
    assert set(meta["datapaths"]) == variants
    assert set(meta["datapaths"].values()) <= {"kernel (system)", "userspace (netdev)"}
    for key in ("kernel", "datapath", "iptables_backend", "tools"):
        assert key in meta["environment"]
    assert meta["git"]["revision"]
    figures = os.listdir(out / "figures")
    for name in ("latency-cdf-latency", "throughput", "pod-share", "path",
                 "diagram-container-native"):
        assert f"{name}.png" in figures and f"{name}.pdf" in figures, figures
    report = (out / "report.md").read_text()
    assert all(v in report for v in variants)
    assert "## The testbed's own cost" in report and "per extra hop" in report
    assert f"OVS datapath that ran: **{meta['datapaths']['direct']}**" in report


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_keeps_records_and_leaves_nothing(no_leftovers, tmp_path, sig):
    out = tmp_path / "run"
    (tmp_path / "e.yaml").write_text(INTERRUPTED)
    proc = subprocess.Popen(CNLB + ["run", str(tmp_path / "e.yaml"), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "[nodeport-local rep 1/1] latency" in line or not line:
            break
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    records = read_records(str(out))
    assert {r["variant"] for r in records} >= {"nodeport-cluster"}
    assert any(r["metric"] == "throughput_mbps" for r in records)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted"
