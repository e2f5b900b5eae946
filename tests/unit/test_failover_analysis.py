"""The failover experiment's analysis (testbed.analysis.failover): outage and degraded times and
successful requests per second from the samples, the clock's steps as figure marks, the figure
with one panel per variant and the report's table of the clock each variant ran on; and the
experiment file's fail-pod event. No cluster: synthetic run directories."""

import json
import os

import pytest

from testbed.analysis.failover import (
    outage_bin_s,
    timeline_marks,
    timing_blocks,
    window,
    window_metrics,
)
from testbed.analysis.plots import plot_run, written
from testbed.analysis.records import METRICS, RunWriter, read_records
from testbed.analysis.report import write_report
from testbed.errors import InputError
from testbed.paths import REPO
from testbed.spec.experiment import Variant, load_experiment, load_resolved
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")
TIMING = os.path.join(REPO, "topologies", "talk-timing.yaml")
RATE = 200


def load(fail: tuple[float, float] = (5.0, 7.0), every: int = 1) -> list[dict]:
    """10 s at RATE/s; in [fail) every `every`-th request fails (1: all of them)."""
    return [{"t": i / RATE, "ok": not (fail[0] <= i / RATE < fail[1] and i % every == 0)}
            for i in range(10 * RATE)]


def test_a_dead_stretch_is_an_outage_of_its_length():
    w = window(load(), 0.0, 10.0, outage_bin_s(RATE))
    assert outage_bin_s(RATE) == pytest.approx(0.1)
    assert (w.requests, w.errors) == (2000, 400)
    assert w.outage_s == pytest.approx(2.0) and w.degraded_s == pytest.approx(2.0)
    assert w.successes_per_s == pytest.approx(160.0)


def test_a_brown_out_degrades_without_an_outage():
    # one request in four fails for 2 s: the service is degraded, not out
    w = window(load(every=4), 0.0, 10.0, 0.1)
    assert w.outage_s == 0 and w.degraded_s == pytest.approx(2.0)
    assert w.errors == 100


def test_a_bin_with_no_request_started_counts_as_out():
    rows = [r for r in load(fail=(0, 0)) if not 3.0 <= r["t"] < 3.5]
    w = window(rows, 0.0, 10.0, 0.1)
    assert w.outage_s == pytest.approx(0.5) and w.errors == 0


def test_a_window_a_sliver_longer_than_its_bins_has_no_empty_last_bin():
    # events fire a little after their time: [3.0005, 8.0008) is 50 bins and 0.3 ms
    w = window(load(fail=(0, 0)), 3.0005, 8.0008, 0.1)
    assert w.outage_s == 0 and w.degraded_s == 0 and w.errors == 0


def test_window_metrics_for_the_run_and_each_event_window():
    events = [{"t": 2.0, "action": "remove-pod"}, {"t": 6.0, "action": "fail-node"}]
    got = {(m, extra.get("event")): (v, extra.get("action"))
           for m, v, extra in window_metrics(load(fail=(6.5, 7.0)), events, 10.0, RATE)}
    assert got[("outage_s", None)] == (pytest.approx(0.5), None)
    assert got[("outage_s", 0)] == (0, "remove-pod")
    assert got[("outage_s", 1)] == (pytest.approx(0.5), "fail-node")
    assert got[("successes_per_s", 0)][0] == pytest.approx(200.0)
    assert got[("successes_per_s", 1)][0] == pytest.approx(175.0)
    assert {m for m, _ in got} <= set(METRICS)


def test_marks_keep_the_named_steps_merge_close_ones_and_drop_skipped_ones():
    steps = [{"t": 15.0, "action": "node-down"}, {"t": 15.2, "action": "evict"},
             {"t": 15.2, "action": "endpoints"}, {"t": 23.0, "action": "node-not-ready"},
             {"t": 24.0, "action": "lb-deregister"}, {"t": 25.0, "action": "sigkill",
                                                      "skipped": True}]
    assert timeline_marks(steps) == [(15.0, "node down, evicted"), (23.0, "NotReady"),
                                     (24.0, "LB deregistered")]
    again = [{"t": 8.0, "action": "pod-not-ready", "target": "web-1"},
             {"t": 13.0, "action": "pod-not-ready", "target": "web-1"},
             {"t": 14.0, "action": "pod-ready", "target": "web-1"},
             {"t": 16.0, "action": "pod-not-ready", "target": "web-1"}]
    assert timeline_marks(again) == [(8.0, "not ready"), (16.0, "not ready")]


def _timing_meta(modes: dict[str, str]) -> dict:
    topo = load_topology(TIMING)
    k = {"readiness_period_s": 2.0, "readiness_failure_threshold": 3,
         "termination_grace_period_s": 10.0, "pre_stop_s": 3.0, "min_sync_period_s": 1.0,
         "node_monitor_grace_period_s": 8.0, "not_ready_toleration_s": 12.0,
         "lb_registration_delay_s": 2.0, "lb_deregistration_lag_s": 1.0,
         "lb_deregistration_delay_s": 5.0}
    assert topo.kubernetes.node_monitor_grace_period_s == 8.0
    return {"timing": {"variants": {v: {"mode": m, **k} for v, m in modes.items()}},
            "topology": {"load_balancer": {"health_check": {
                "interval_s": 1.0, "timeout_s": 0.5, "healthy_threshold": 2,
                "unhealthy_threshold": 2}}}}


def test_timing_table_says_which_clock_and_its_delays_per_variant():
    meta = _timing_meta({"np": "realistic", "np-instant": "instant"})
    blocks = timing_blocks(meta, ["np", "np-instant"])
    table = next(b for b in blocks if b[0] == "table")
    rows = {r[0]: r[1:] for r in table[2]}
    assert rows["timing"] == ["**realistic**", "**instant**"]
    assert rows["node monitor grace period (NotReady)"] == ["8 s", "– (at once)"]
    assert rows["preStop"][0] == "3 s" and rows["LB draining (deregistration delay)"][0] == "5 s"
    assert rows["readiness probe"][0] == "every 2 s, not ready after 3 failures"
    assert "out after 2 failures" in next(b[1] for b in blocks if b[0] == "p")
    assert timing_blocks({}, ["np"]) == []


def make_failover_run(run_dir: str) -> None:
    """Two variants, realistic and instant, one repetition, with samples and a timeline."""
    exp = load_experiment(os.path.join(REPO, "experiments", "failover.yaml"))
    topo = load_topology(TIMING)
    variants = {v.name: v.apply(topo) for v in (
        Variant("nodeport-cluster", "nodeport"),
        Variant("nodeport-instant", "nodeport", timing="instant"))}
    with RunWriter(run_dir, experiment=exp, topology=topo, variants=variants, git={}) as w:
        for v, fail in (("nodeport-cluster", (5.0, 7.0)), ("nodeport-instant", (5.0, 5.2))):
            rows = load(fail=fail)
            w.samples(v, 0, "failover", rows)
            w.samples(v, 0, "events", [{"t": 5.0, "action": "fail-node", "target": "node2"}])
            w.samples(v, 0, "timeline", [{"t": 5.0, "action": "node-down", "target": "node2"},
                                         {"t": 7.0, "action": "node-not-ready",
                                          "target": "node2"}])
            for metric, value, extra in window_metrics(rows, [{"t": 5.0, "action": "fail-node"}],
                                                       10.0, RATE):
                w.record("failover", v, 0, metric, value, workload="failover", **extra)


def test_failover_run_gets_the_timeline_figure_and_the_clock_in_its_report(tmp_path):
    run_dir = str(tmp_path / "run")
    make_failover_run(run_dir)
    files = written(plot_run(run_dir))
    for ext in ("png", "pdf"):
        path = os.path.join(run_dir, "figures", f"failover-timeline.{ext}")
        assert path in files and os.path.getsize(path) > 1000
    index = json.load(open(os.path.join(run_dir, "figures", "index.json")))
    entry = next(f for f in index["figures"] if f["figure"] == "failover-timeline")
    assert "one panel per variant" in entry["captions"]["figures/failover-timeline.png"]
    report = open(write_report(run_dir)).read()
    assert "The control plane's clock" in report
    assert "| timing | **realistic** | **instant** |" in report
    outage = next(line for line in report.splitlines()
                  if line.startswith("| `outage_s` | s | failover |"))
    assert "| 2.00 | 0.2 |" in outage      # realistic 2 s out, instant 0.2 s
    recs = [r for r in read_records(run_dir) if r["metric"] == "degraded_s"]
    assert {r["variant"] for r in recs} == {"nodeport-cluster", "nodeport-instant"}


# -- the fail-pod event -----------------------------------------------------------------------

def write(tmp_path, text, name="e.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEAD = (f"topology: {TALK}\nkind: failover\nduration: 20s\n"
        "variants: {a: {mode: nodeport}}\nevents:\n")


def test_fail_pod_event_names_a_pod(tmp_path):
    f = write(tmp_path, HEAD + "  - {at: 2s, action: fail-pod, pod: web-1}\n"
                               "  - {at: 4s, action: remove-pod, pod: web-0}\n")
    exp = load_resolved(f).experiment
    assert [(e.at_s, e.action, e.target) for e in exp.events] == [
        (2.0, "fail-pod", "web-1"), (4.0, "remove-pod", "web-0")]


@pytest.mark.parametrize("events,message", [
    ("  - {at: 2s, action: fail-pod, node: node1}\n", "events[0]"),
    ("  - {at: 2s, action: fail-pod, pod: web-9}\n", "the topology has no pod 'web-9'"),
    ("  - {at: 2s, action: fail-pod, pod: web-1}\n  - {at: 3s, action: remove-pod, pod: web-1}\n",
     "pod 'web-1' is already removed or failed by events[0]"),
])
def test_fail_pod_event_errors(tmp_path, events, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_resolved(write(tmp_path, HEAD + events))
