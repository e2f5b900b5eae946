"""Faults during an experiment: the run notices, records the fault in records and meta,
recovers, and finishes with every measurement."""

import os
import signal
import subprocess
import sys

from testbed.analysis.records import read_meta, read_records
from testbed.emulation.journal import StateDir, read_journal
from testbed.paths import REPO

QUICK = os.path.join(REPO, "experiments", "compare-quick.yaml")
CNLB = [sys.executable, "-m", "testbed.cli"]


def controller_pid():
    entries = read_journal(StateDir.for_cluster("current"))
    return [e["pid"] for e in entries if e["kind"] == "process" and e["what"] == "vpc controller"][-1]


def test_controller_dies_mid_run_is_recorded_and_recovered(no_leftovers, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(CNLB + ["run", QUICK, "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
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
    native = {r["metric"] for r in records if r["variant"] == "container-native" and r["value"] is not None}
    assert {"latency_p50_ms", "throughput_mbps", "path_hops"} <= native
