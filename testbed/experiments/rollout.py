"""The rollout experiment: constant open-loop load through the VIP (a new connection per
request, httpprobe as in failover) while every pod of a deployment is replaced by a rolling
update (testbed.emulation.rollout, on the control plane's clock: readiness probes, readiness
gates, terminating endpoints, preStop, the grace period, the LB's lags and draining). A fresh
cluster per repetition.

Every request is a sample (`rollout`: t, ok, latency, the pod that answered and its
generation, old or new, the error's kind); the rollout's steps are `events` samples and the
clock's steps `timeline` samples (t from the load's start). Records (workload rollout):
success_rate and requests from the rollout's start to the end of the load, errors in all and
by kind (`error`), latency_p99_ms over the same window, rollout_duration_s (start to every pod
new and available).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from testbed.analysis import rollout as analysis
from testbed.emulation.cluster import Cluster
from testbed.emulation.rollout import Rollout, rollout
from testbed.experiments.client import CLIENT, PROBE, parse_probe, sample_rows, url, warmup
from testbed.experiments.failover import timeline_rows
from testbed.experiments.kind import RunContext
from testbed.spec.experiment import Variant
from testbed.spec.model import Topology
from testbed.spec.rollout import rolled_deployment


def run_rollout(run: RunContext, variant: Variant, topo: Topology) -> None:
    """Each repetition: build, warm up, steady load with the rollout, record."""
    deployment = rolled_deployment(topo, run.res.service, run.exp.deployment)
    assert deployment is not None   # checked by testbed.spec.rollout.rollout_problems
    for rep in range(run.exp.repetitions):
        run.progress(variant.name, rep, "building")
        with Cluster(topo, iptables=run.iptables, datapath=run.datapath) as cluster:
            rows, events, steps = _load_with_rollout(run, cluster, variant, rep, deployment)
        run.w.samples(variant.name, rep, analysis.SAMPLES, rows)
        run.w.samples(variant.name, rep, "events", events)
        run.w.samples(variant.name, rep, "timeline", steps)
        _record(run, variant, rep, rows, events)
        run.unit_done()


def _load_with_rollout(run: RunContext, cluster: Cluster, variant: Variant, rep: int,
                       deployment: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                 list[dict[str, Any]]]:
    exp = run.exp
    warmup(cluster, run.res.service, exp.warmup_s)
    run.progress(variant.name, rep, f"steady load {exp.rate:g}/s for {exp.duration_s:g}s, "
                 f"rollout of {deployment} at {exp.rollout_at_s:g}s")
    argv = [PROBE, "--url", url(cluster, run.res.service), "--duration", f"{exp.duration_s:g}",
            "--rate", f"{exp.rate:g}", "--timeout-ms", str(int(exp.timeout_s * 1000))]
    proc = cluster.host(CLIENT).popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
    start = time.time()
    output: list[bytes] = []   # read while it runs: a full pipe would stop the probe
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: output.append(stdout.read()), daemon=True)
    reader.start()
    time.sleep(max(exp.rollout_at_s - (time.time() - start), 0))
    rolling: Rollout = rollout(cluster, deployment)
    status = rolling.wait(max(exp.duration_s - (time.time() - start), 0) + 1)
    summary = (f"rolled out in {status.completed - status.started:.1f}s"
               if status.completed is not None else
               f"not complete at the end of the load ({status.error or 'still rolling'})")
    run.progress(variant.name, rep, summary)
    proc.wait(timeout=exp.duration_s + 60)
    reader.join(timeout=30)
    rolling.stop()   # an unfinished rollout makes no more pods while the cluster goes
    state = status.to_dict()
    out = b"".join(output).decode(errors="replace")
    probe_rows = [r for r in parse_probe(out) if not r.get("summary")]
    rows = sample_rows(cluster, variant, probe_rows)
    for row, raw in zip(rows, probe_rows, strict=True):
        row["status"] = raw.get("status")
        row["error_kind"] = analysis.error_kind({**row, "status": raw.get("status")})
        row["generation"] = ("new" if row.get("pod") in state["new_pods"] else
                             "old" if row.get("pod") in state["old_pods"] else None)
    events = analysis.event_rows(state, start)
    return rows, events, timeline_rows(cluster.control.timeline(), start)


def _record(run: RunContext, variant: Variant, rep: int, rows: Sequence[dict[str, Any]],
            events: Sequence[dict[str, Any]]) -> None:
    began = next(e["t"] for e in events if e["action"] == "rollout")
    ended = next((e["t"] for e in events if e["action"] == "complete"), None)
    # to the end of the load, not to `complete`: kubectl calls a rollout done when every pod is
    # new and available, while the old pods still terminate and the LB still deregisters them
    window = analysis.during(rows, began, None)
    run.rec(variant, rep, "errors", sum(1 for r in rows if not r["ok"]), "rollout")
    for kind, count in analysis.errors_by_kind(rows).items():
        run.rec(variant, rep, "errors", count, "rollout", error=kind)
    run.rec(variant, rep, "requests", len(window), "rollout")
    rate = analysis.success_rate(window)
    if rate is not None:
        run.rec(variant, rep, "success_rate", rate, "rollout")
    p99 = analysis.p99_ms(window)
    if p99 is not None:
        run.rec(variant, rep, "latency_p99_ms", p99, "rollout")
    if ended is not None:
        run.rec(variant, rep, "rollout_duration_s", ended - began, "rollout")
