"""Run records: written as they come, readable after a crash, latest symlink, meta rewrite."""

import json
import os
import subprocess
import sys

import pytest

from testbed.analysis.records import (
    METRICS,
    RunWriter,
    git_revision,
    new_run_dir,
    read_meta,
    read_records,
    read_samples,
    summarize,
)
from testbed.paths import REPO
from testbed.spec.experiment import load_resolved

REQUIRED = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "requests_per_s",
            "throughput_mbps", "path_hops", "cross_node_bytes_fraction", "jain_fairness",
            "source_ip_preserved", "errors")


class Clock:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        self.t += 1.0
        return self.t


def writer(path, **kw):
    kw.setdefault("git", {"revision": "0" * 40, "dirty": False})
    kw.setdefault("clock", Clock())
    return RunWriter(str(path), **kw)


def test_canonical_metrics_have_units():
    for name in REQUIRED:
        assert name in METRICS and METRICS[name].unit
    assert METRICS["throughput_mbps"].unit == "Mbit/s" and METRICS["latency_p99_ms"].unit == "ms"


def test_records_are_appended_with_the_required_fields(tmp_path):
    w = writer(tmp_path / "run")
    row = w.record("compare", "container-native", 0, "latency_p50_ms", 0.64, workload="latency")
    assert row["unit"] == "ms"
    w.record("compare", "container-native", 0, "source_ip_preserved", True, workload="path")
    rows = read_records(str(tmp_path / "run"))
    assert [r["metric"] for r in rows] == ["latency_p50_ms", "source_ip_preserved"]
    for r in rows:
        assert {"experiment", "variant", "repetition", "metric", "value", "unit", "time"} <= set(r)
    assert rows[1]["value"] == 1 and rows[0]["workload"] == "latency"


def test_record_rejects_wrong_units_and_unknown_metrics_without_unit(tmp_path):
    w = writer(tmp_path / "run")
    with pytest.raises(ValueError, match="Mbit/s"):
        w.record("e", "v", 0, "throughput_mbps", 1.0, unit="Gbit/s")
    with pytest.raises(ValueError, match="give its unit"):
        w.record("e", "v", 0, "made_up", 1.0)
    w.record("e", "v", 0, "made_up", 1.0, unit="widgets")
    with pytest.raises(ValueError):
        w.record("e", "v", 0, "errors", "three")
    w.record("e", "v", 0, "jain_fairness", float("nan"))     # stored as null, not invalid JSON
    assert read_records(str(tmp_path / "run"))[-1]["value"] is None


def test_a_cut_last_line_loses_only_that_line(tmp_path):
    run = tmp_path / "run"
    w = writer(run)
    for i in range(5):
        w.record("e", "v", i, "errors", 0)
    with open(run / "records.jsonl", "a") as fh:          # a crash in the middle of a write
        fh.write('{"experiment": "e", "variant": "v", "repe')
    rows = read_records(str(run))
    assert [r["repetition"] for r in rows] == [0, 1, 2, 3, 4]


def test_a_killed_writer_keeps_every_line_written(tmp_path):
    run = tmp_path / "run"
    code = (f"import os, sys; sys.path.insert(0, {REPO!r})\n"
            "from testbed.analysis.records import RunWriter\n"
            f"w = RunWriter({str(run)!r}, git={{}})\n"
            "for i in range(3): w.record('e', 'v', i, 'errors', 0)\n"
            "w.samples('v', 0, 'latency', [{'latency_ms': 1.0}])\n"
            "os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert len(read_records(str(run))) == 3
    assert read_meta(str(run))["status"] == "running"       # never finished: the meta says so
    assert read_samples(str(run)) == {("v", 0, "latency"): [{"latency_ms": 1.0}]}


def test_meta_is_written_at_start_and_rewritten_at_finish(tmp_path):
    run = tmp_path / "run"
    res = load_resolved(os.path.join(REPO, "experiments", "compare-quick.yaml"))
    env = {"kernel": "6.1.0", "datapath": "netdev", "iptables": "nft", "tools": {"wrk": "4.1.0"}}
    w = writer(run, resolved=res, environment=env)
    meta = read_meta(str(run))
    assert meta["status"] == "running" and meta["finished"] is None
    assert meta["variants"] == ["nodeport-cluster", "nodeport-local", "container-native", "direct"]
    assert meta["experiment"]["name"] == "compare-quick" and meta["topology"]["name"] == "minimal"
    assert meta["topology_source"]["text"].startswith("#")
    assert meta["plans"]["container-native"]["mode"] == "container-native"
    assert meta["environment"]["tools"]["wrk"] == "4.1.0" and meta["service"] == "web"
    w.fault("tool", "wrk exited 1", variant="nodeport-local")
    assert read_meta(str(run))["faults"][0]["detail"] == "wrk exited 1"   # kept at once
    w.record("compare-quick", "nodeport-local", 0, "errors", 0)
    w.finish("ok")
    meta = read_meta(str(run))
    assert meta["status"] == "ok" and meta["finished"] and meta["duration_s"] > 0
    assert meta["counts"]["records"] == 1 and len(meta["faults"]) == 1
    assert not any(n.endswith(".tmp") or ".tmp-" in n for n in os.listdir(run))


def test_context_manager_marks_failures_and_interrupts(tmp_path):
    with pytest.raises(RuntimeError):
        with writer(tmp_path / "a"):
            raise RuntimeError("cluster did not come up")
    meta = read_meta(str(tmp_path / "a"))
    assert meta["status"] == "failed" and "cluster did not come up" in meta["faults"][0]["detail"]
    with pytest.raises(KeyboardInterrupt):
        with writer(tmp_path / "b"):
            raise KeyboardInterrupt
    assert read_meta(str(tmp_path / "b"))["status"] == "interrupted"
    with writer(tmp_path / "c"):
        pass
    assert read_meta(str(tmp_path / "c"))["status"] == "ok"


def test_a_run_directory_is_never_reused(tmp_path):
    writer(tmp_path / "run").finish()
    with pytest.raises(FileExistsError):
        writer(tmp_path / "run")


def test_samples_go_to_their_own_file(tmp_path):
    w = writer(tmp_path / "run")
    path = w.samples("nodeport-local", 2, "latency",
                     [{"t": 0.0, "latency_ms": 0.9, "pod": "web-0"}])
    assert path.endswith(os.path.join("samples", "nodeport-local", "r2-latency.jsonl"))
    w.samples("nodeport-local", 2, "latency", [{"t": 0.1, "latency_ms": 1.1, "pod": "web-1"}])
    got = read_samples(str(tmp_path / "run"))
    assert [r["pod"] for r in got[("nodeport-local", 2, "latency")]] == ["web-0", "web-1"]


def test_distribution_records_shares_jain_and_entry_nodes(tmp_path):
    w = writer(tmp_path / "run")
    index = w.distribution("e", "local", 0, {"web-0": 30, "web-3": 10}, {"node1": 30, "node2": 10},
                           endpoints=["web-0", "web-1", "web-2", "web-3"])
    rows = read_records(str(tmp_path / "run"))
    share = {r["pod"]: r["value"] for r in rows if r["metric"] == "pod_share"}
    assert share == {"web-0": 0.75, "web-1": 0.0, "web-2": 0.0, "web-3": 0.25}
    assert index == pytest.approx(40 ** 2 / (4 * (900 + 100)))
    assert {r["node"] for r in rows if r["metric"] == "entry_share"} == {"node1", "node2"}


def test_summarize_averages_within_a_repetition_then_over_repetitions(tmp_path):
    w = writer(tmp_path / "run")
    for rep, values in enumerate([[1.0, 3.0], [4.0], [6.0]]):
        for v in values:
            w.record("e", "a", rep, "path_hops", v, workload="path")
    summary = summarize(read_records(str(tmp_path / "run")))
    ci = summary[("a", "path_hops", (("workload", "path"),))]
    assert ci.n == 3 and ci.mean == pytest.approx(4.0)


def test_new_run_dir_and_latest_symlink(tmp_path):
    root = str(tmp_path / "results")
    first = new_run_dir(root, "compare", now=0)
    assert os.path.basename(first).endswith("-compare") and os.path.isdir(first)
    assert len(os.path.basename(first)) == len("YYYYmmdd-HHMMSS-compare")
    assert os.readlink(os.path.join(root, "latest")) == os.path.basename(first)
    second = new_run_dir(root, "compare", now=0)          # same second: suffixed
    assert second == first + "-2"
    assert os.path.realpath(os.path.join(root, "latest")) == os.path.realpath(second)
    assert not [n for n in os.listdir(root) if n.startswith(".latest")]


def test_latest_that_is_a_real_directory_is_left_alone(tmp_path):
    root = tmp_path / "results"
    (root / "latest").mkdir(parents=True)
    with pytest.warns(UserWarning, match="not a symlink"):
        new_run_dir(str(root), "x")
    assert (root / "latest").is_dir() and not (root / "latest").is_symlink()


def test_git_revision_of_this_repository_and_of_a_non_repository(tmp_path):
    info = git_revision(REPO)
    if info["revision"] is not None:
        assert len(info["revision"]) == 40 and isinstance(info["dirty"], bool)
    outside = git_revision(str(tmp_path))
    assert outside["revision"] is None and "error" in outside


def test_records_are_plain_json_lines(tmp_path):
    w = writer(tmp_path / "run")
    w.record("e", "v", 0, "throughput_mbps", 941.2, workload="throughput", client="client1")
    w.finish()
    with open(tmp_path / "run" / "records.jsonl") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["client"] == "client1"


def test_agreement_of_two_runs(tmp_path):
    from testbed.analysis.agreement import agreement, format_agreement
    from testbed.analysis.records import RunWriter

    def run(name, values):
        w = RunWriter(str(tmp_path / name), experiment={"name": "e"}, git={"revision": "x"})
        for rep, v in enumerate(values):
            w.record("e", "v", rep, "latency_p50_ms", v, workload="latency")
        w.finish()
        return str(tmp_path / name)

    a = run("a", [1.0, 1.1, 0.9])
    b = run("b", [1.05, 1.15, 0.95])
    c = run("c", [5.0, 5.1, 4.9])
    same = agreement(a, b)
    assert len(same) == 1 and same[0]["intervals_overlap"]
    assert abs(same[0]["relative_difference"] - 0.05 / 1.05) < 1e-9
    apart = agreement(a, c)
    assert not apart[0]["intervals_overlap"]
    assert "0/1 intervals overlap" in format_agreement(apart)
