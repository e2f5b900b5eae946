"""The failover experiment: a steady request rate through the VIP while pods are removed or
fail, or nodes fail, at set times; every request is a sample, and each event gets its errors,
its recovery time (until the last failed request in its window), its outage and degraded
times and its successful requests per second (testbed.analysis.failover), as does the whole
run. A fresh cluster per repetition. The probe's output is read while the events fire: a
probe blocked on a full pipe would stop sending and hide the outage it is there to measure.

Events follow the control plane's clock (the topology's `kubernetes:` timing, or a variant's
`timing:`): with realistic timing a removed pod terminates through its grace period and a dead
node's pods stay endpoints until it is NotReady; with instant timing every change is at once.
Each step the clock applied is kept as samples of the pseudo-workload "timeline" (t from the
start of the load), so the plots can mark when each happened.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from testbed.analysis.failover import window_metrics
from testbed.emulation.cluster import Cluster
from testbed.experiments.client import CLIENT, PROBE, parse_probe, sample_rows, url, warmup
from testbed.experiments.kind import RunContext
from testbed.spec.experiment import Variant
from testbed.spec.model import Topology


def recovery_time(rows: Sequence[dict[str, Any]], since: float) -> float | None:
    """Seconds from an event until the last failed request in its window (0 if none failed)."""
    failed = [r["t"] for r in rows if not r["ok"] and r["t"] is not None]
    return max(failed) - since if failed else 0.0


def run_failover(run: RunContext, variant: Variant, topo: Topology) -> None:
    """Each repetition: build, warm up, steady load with the events, record."""
    for rep in range(run.exp.repetitions):
        run.progress(variant.name, rep, "building")
        with Cluster(topo, iptables=run.iptables, datapath=run.datapath) as cluster:
            rows, events, steps = _steady_load_with_events(run, cluster, variant, rep)
        run.w.samples(variant.name, rep, "failover", rows)
        run.w.samples(variant.name, rep, "events", events)
        run.w.samples(variant.name, rep, "timeline", steps)
        _record(run, variant, rep, rows, events)
        run.unit_done()


def _steady_load_with_events(run: RunContext, cluster: Cluster, variant: Variant, rep: int
                             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                        list[dict[str, Any]]]:
    exp = run.exp
    warmup(cluster, run.res.service, exp.warmup_s)
    run.progress(variant.name, rep, f"steady load {exp.rate:g}/s for {exp.duration_s:g}s")
    argv = [PROBE, "--url", url(cluster, run.res.service), "--duration", f"{exp.duration_s:g}",
            "--rate", f"{exp.rate:g}", "--timeout-ms", str(int(exp.timeout_s * 1000))]
    proc = cluster.host(CLIENT).popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
    start = time.time()
    output: list[bytes] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: output.append(stdout.read()), daemon=True)
    reader.start()
    timing = cluster.topo.kubernetes.mode
    events = []
    for ev in exp.events:
        delay = ev.at_s - (time.time() - start)
        if delay > 0:
            time.sleep(delay)
        t = time.time() - start
        run.progress(variant.name, rep, f"{ev.action} {ev.target} at {t:.1f}s")
        if ev.action == "remove-pod":
            cluster.control.remove_pod(ev.target)
            # the ReplicaSet replaces a deleted pod at once, while the old one terminates
            cluster.control.add_pod(cluster.plan.pod(ev.target).deployment)
        elif ev.action == "fail-pod":
            cluster.control.fail_pod(ev.target)     # as `cnlb pod fail`: not restarted
        elif ev.action == "fail-node":
            cluster.control.fail_node(ev.target)
        events.append({"t": t, "action": ev.action, "target": ev.target,
                       "done_t": time.time() - start, "timing": timing})
    proc.wait(timeout=exp.duration_s + 60)
    reader.join(timeout=30)
    for row in events:   # cni.routing bgp: when the VPC had forgotten a failed node's blocks
        if cluster.bgp is not None and row["action"] == "fail-node":
            row["bgp_withdrawn_t"] = cluster.bgp.withdrawn_since(str(row["target"]), start)
    steps = timeline_rows(cluster.control.timeline(), start)
    out = b"".join(output).decode(errors="replace")
    return sample_rows(cluster, variant, parse_probe(out)), events, steps


def timeline_rows(timeline: Sequence[dict[str, Any]], start: float) -> list[dict[str, Any]]:
    """The clock's steps as samples: t in seconds from `start` (epoch seconds), the event's
    plan left out (its steps are rows of their own). Steps before the load (none) are kept
    with a negative t."""
    rows = []
    for row in timeline:
        if "plan" in row:
            continue
        rows.append({"t": round(row["time"] - start, 4),
                     **{k: v for k, v in row.items() if k not in ("time", "traceback")}})
    return rows


def _record(run: RunContext, variant: Variant, rep: int, rows: Sequence[dict[str, Any]],
            events: Sequence[dict[str, Any]]) -> None:
    run.rec(variant, rep, "errors", sum(1 for r in rows if not r["ok"]), "failover")
    for i, ev in enumerate(events):
        nxt = events[i + 1]["t"] if i + 1 < len(events) else run.exp.duration_s
        window = [r for r in rows if r["t"] is not None and ev["t"] <= r["t"] < nxt]
        run.rec(variant, rep, "errors", sum(1 for r in window if not r["ok"]), "failover",
                event=i, action=ev["action"])
        run.rec(variant, rep, "recovery_time_s", recovery_time(window, ev["t"]), "failover",
                event=i, action=ev["action"])
        if ev.get("bgp_withdrawn_t") is not None:   # the hold time plus the relay's period
            run.rec(variant, rep, "bgp_withdraw_s", ev["bgp_withdrawn_t"] - ev["t"], "failover",
                    event=i, action=ev["action"])
    for metric, value, extra in window_metrics(rows, events, run.exp.duration_s, run.exp.rate):
        run.rec(variant, rep, metric, value, "failover", **extra)
