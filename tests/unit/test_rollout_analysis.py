"""What a rollout run's samples say (testbed.analysis.rollout) and its figure and report."""

from __future__ import annotations

import os

from testbed.analysis import rollout as analysis
from testbed.analysis.plots import plot_run, written
from testbed.analysis.records import RunWriter
from testbed.analysis.report import write_report


def rows_with_a_gap() -> list[dict]:
    """10 s at 10 requests/s; from 4 s to 6 s every request fails (connect timeout)."""
    rows = []
    for i in range(100):
        t = i / 10
        bad = 4 <= t < 6
        rows.append({"t": t, "ok": not bad, "latency_ms": 1.0 + (i == 50), "pod": "web-1",
                     "error": "connect timeout" if bad else None, "status": None if bad else 200})
    rows[30].update(ok=False, status=503)        # one answer that was not 200
    return rows


def test_error_kinds_success_rate_and_p99():
    rows = rows_with_a_gap()
    assert analysis.error_kind(rows[0]) is None
    assert analysis.error_kind(rows[45]) == "connect timeout"
    assert analysis.error_kind(rows[30]) == "http 503"
    assert analysis.errors_by_kind(rows) == {"connect timeout": 20, "http 503": 1}
    window = analysis.during(rows, 3.0, 7.0)
    assert len(window) == 41
    assert analysis.success_rate(window) == (41 - 20 - 1) / 41
    assert analysis.success_rate([]) is None
    assert analysis.p99_ms(window) == 1.0


def test_event_rows_count_from_the_load():
    status = {"deployment": "web", "started": 102.0, "completed": 110.5,
              "events": [{"time": 102.1, "rs": "new", "replicas": 1, "pods": ["web-4"]},
                         {"time": 104.0, "rs": "old", "replicas": 3, "pods": ["web-3"]}]}
    rows = analysis.event_rows(status, 100.0)
    assert [(r["t"], r["action"]) for r in rows] == [
        (2.0, "rollout"), (2.1, "new to 1"), (4.0, "old to 3"), (10.5, "complete")]


def test_a_rollout_run_gets_its_figure_and_report(tmp_path):
    run_dir = str(tmp_path / "run")
    exp = {"name": "rollout", "kind": "rollout", "repetitions": 1,
           "variants": [{"name": "cn"}, {"name": "cn-gates"}]}
    with RunWriter(run_dir, experiment=exp, git={}) as w:
        for variant in ("cn", "cn-gates"):
            rows = rows_with_a_gap()
            w.samples(variant, 0, analysis.SAMPLES, rows)
            w.samples(variant, 0, "events", [{"t": 3.0, "action": "rollout", "target": "web"},
                                             {"t": 3.1, "action": "new to 1", "target": "web-4"},
                                             {"t": 8.0, "action": "complete", "target": "web"}])
            w.record("rollout", variant, 0, "success_rate",
                     analysis.success_rate(analysis.during(rows, 3.0, 8.0)), workload="rollout")
            w.record("rollout", variant, 0, "errors", 20, workload="rollout",
                     error="connect timeout")
            w.record("rollout", variant, 0, "rollout_duration_s", 5.0, workload="rollout")
    files = written(plot_run(run_dir))
    assert os.path.join(run_dir, "figures", "rollout.png") in files
    report = open(write_report(run_dir)).read()
    assert "`success_rate`" in report and "`rollout_duration_s`" in report
    assert "error connect timeout" in report


def test_an_l7_lbs_own_answer_is_told_from_a_pods():
    assert analysis.error_kind({"ok": False, "status": 503, "pod": None}) == "http 503 from the LB"
    assert analysis.error_kind({"ok": False, "status": 502}) == "http 502 from the LB"
    assert analysis.error_kind({"ok": False, "status": 503, "pod": "web-2"}) == "http 503"
    assert analysis.error_kind({"ok": False, "status": None}) == "no answer"


def test_both_loads_get_a_panel_and_a_row_in_the_success_table(tmp_path):
    run_dir = str(tmp_path / "run")
    exp = {"name": "rollout", "kind": "rollout", "repetitions": 1,
           "variants": [{"name": "classic-l7", "mode": "nodeport", "lb": "l7"},
                        {"name": "cn-l7", "mode": "container-native", "lb": "l7",
                         "readiness_gates": False, "deregistration_delay_s": 0.0}]}
    with RunWriter(run_dir, experiment=exp, git={}) as w:
        for variant in ("classic-l7", "cn-l7"):
            for load in analysis.LOADS:
                rows = rows_with_a_gap()
                if variant == "classic-l7":
                    rows = [{**r, "ok": True, "error": None, "status": 200} for r in rows]
                w.samples(variant, 0, load, rows)
                window = analysis.during(rows, 3.0, None)
                w.record("rollout", variant, 0, "success_rate", analysis.success_rate(window),
                         workload=load)
                for kind, n in analysis.errors_by_kind(rows).items():
                    w.record("rollout", variant, 0, "errors", n, workload=load, error=kind)
            w.samples(variant, 0, "events", [{"t": 3.0, "action": "rollout", "target": "web"},
                                             {"t": 8.0, "action": "complete", "target": "web"}])
            w.record("rollout", variant, 0, "rollout_duration_s", 5.0, workload="rollout")
    from testbed.analysis.rundata import RunData
    assert analysis.loads(RunData(run_dir)) == ["rollout", "rollout-keepalive"]
    assert analysis.lb_groups(RunData(run_dir)) == {"L7 LB": ["classic-l7", "cn-l7"]}
    assert os.path.join(run_dir, "figures", "rollout.png") in written(plot_run(run_dir))
    report = open(write_report(run_dir)).read()
    table = report[report.index("## Success rate during the rollout"):]
    classic = next(line for line in table.splitlines() if line.startswith("| `classic-l7`"))
    cn = next(line for line in table.splitlines() if line.startswith("| `cn-l7`"))
    assert "| l7 | instance (nodes) | – | – | 1.000 ✓ | 0 |" in classic
    # 70 of the 100 requests from 3 s on, 21 of them failed (20 connect timeouts, the 503 at
    # 3.0 s), in both loads
    assert "| l7 | ip (pods) | off | off | 0.700 ✗ | connect timeout 20, http 503 1 |" in cn
    assert cn.count("0.700 ✗") == 2 and "| 5.00 |" in cn
