"""The rollout experiment: constant open-loop load through the VIP, two probes side by side
(httpprobe as in failover: a new connection per request, and the same rate over kept-alive
connections) while every pod of a deployment is replaced by a rolling update
(testbed.emulation.rollout, on the control plane's clock: readiness probes, readiness gates,
terminating endpoints, preStop, the grace period, the LB's lags and draining). A fresh cluster
per repetition.

Every request is a sample (workload `rollout`, or `rollout-keepalive` for the kept-alive
load: t, ok, latency, status, the pod that answered and its generation, old or new, the
error's kind, X-Forwarded-For behind an L7 LB); the rollout's steps are `events` samples and
the clock's steps `timeline` samples (t from the load's start). Records, per load (the same
workloads): success_rate and requests from the rollout's start to the end of the load, errors
in all and by kind (`error`), latency_p99_ms over the same window; rollout_duration_s (start
to every pod new and available) under `rollout`.
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

# each load's probe flags beside the common ones (analysis.LOADS names them)
PROBE_FLAGS = {analysis.SAMPLES: [], analysis.KEEPALIVE: ["--keepalive"]}

Rows = list[dict[str, Any]]


def run_rollout(run: RunContext, variant: Variant, topo: Topology) -> None:
    """Each repetition: build, warm up, steady load with the rollout, record."""
    deployment = rolled_deployment(topo, run.res.service, run.exp.deployment)
    assert deployment is not None   # checked by testbed.spec.rollout.rollout_problems
    for rep in range(run.exp.repetitions):
        run.progress(variant.name, rep, "building")
        with Cluster(topo, iptables=run.iptables, datapath=run.datapath) as cluster:
            per_load, events, steps = _load_with_rollout(run, cluster, variant, rep, deployment)
        for load, rows in per_load.items():
            run.w.samples(variant.name, rep, load, rows)
        run.w.samples(variant.name, rep, "events", events)
        run.w.samples(variant.name, rep, "timeline", steps)
        for load, rows in per_load.items():
            _record(run, variant, rep, rows, events, load)
        run.unit_done()


class _Probe:
    """One httpprobe on the client, its output read while it runs (a full pipe would stop
    it)."""

    def __init__(self, cluster: Cluster, argv: list[str]):
        self.proc = cluster.host(CLIENT).popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.output: list[bytes] = []
        stdout = self.proc.stdout
        assert stdout is not None
        self.reader = threading.Thread(target=lambda: self.output.append(stdout.read()),
                                       daemon=True)
        self.reader.start()

    def rows(self, timeout: float) -> list[dict[str, Any]]:
        """Its request lines once it has ended (the summary left out)."""
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        out = b"".join(self.output).decode(errors="replace")
        return [r for r in parse_probe(out) if not r.get("summary")]


def _load_with_rollout(run: RunContext, cluster: Cluster, variant: Variant, rep: int,
                       deployment: str) -> tuple[dict[str, Rows], Rows, Rows]:
    exp = run.exp
    warmup(cluster, run.res.service, exp.warmup_s)
    run.progress(variant.name, rep, f"steady load {exp.rate:g}/s for {exp.duration_s:g}s on new "
                 f"and on kept-alive connections, rollout of {deployment} at "
                 f"{exp.rollout_at_s:g}s")
    argv = [PROBE, "--url", url(cluster, run.res.service), "--duration", f"{exp.duration_s:g}",
            "--rate", f"{exp.rate:g}", "--timeout-ms", str(int(exp.timeout_s * 1000))]
    # both start together: their t counts from their own start, within milliseconds of `start`
    probes = {load: _Probe(cluster, argv + flags) for load, flags in PROBE_FLAGS.items()}
    start = time.time()
    time.sleep(max(exp.rollout_at_s - (time.time() - start), 0))
    rolling: Rollout = rollout(cluster, deployment)
    status = rolling.wait(max(exp.duration_s - (time.time() - start), 0) + 1)
    summary = (f"rolled out in {status.completed - status.started:.1f}s"
               if status.completed is not None else
               f"not complete at the end of the load ({status.error or 'still rolling'})")
    run.progress(variant.name, rep, summary)
    raw = {load: p.rows(timeout=exp.duration_s + 60) for load, p in probes.items()}
    rolling.stop()   # an unfinished rollout makes no more pods while the cluster goes
    state = status.to_dict()
    per_load = {load: _sample_rows(cluster, variant, probe_rows, state)
                for load, probe_rows in raw.items()}
    events = analysis.event_rows(state, start)
    return per_load, events, timeline_rows(cluster.control.timeline(), start)


def _sample_rows(cluster: Cluster, variant: Variant, probe_rows: Rows,
                 state: dict[str, Any]) -> Rows:
    """httpprobe's lines as samples, with their status, error kind and the answering pod's
    generation (old, new, or None when no pod answered)."""
    rows = sample_rows(cluster, variant, probe_rows)
    for row, raw in zip(rows, probe_rows, strict=True):
        row["status"] = raw.get("status")
        row["error_kind"] = analysis.error_kind(row)
        row["generation"] = ("new" if row.get("pod") in state["new_pods"] else
                             "old" if row.get("pod") in state["old_pods"] else None)
    return rows


def _record(run: RunContext, variant: Variant, rep: int, rows: Sequence[dict[str, Any]],
            events: Sequence[dict[str, Any]], load: str) -> None:
    began = next(e["t"] for e in events if e["action"] == "rollout")
    ended = next((e["t"] for e in events if e["action"] == "complete"), None)
    # to the end of the load, not to `complete`: kubectl calls a rollout done when every pod is
    # new and available, while the old pods still terminate and the LB still deregisters them
    window = analysis.during(rows, began, None)
    run.rec(variant, rep, "errors", sum(1 for r in rows if not r["ok"]), load)
    for kind, count in analysis.errors_by_kind(rows).items():
        run.rec(variant, rep, "errors", count, load, error=kind)
    run.rec(variant, rep, "requests", len(window), load)
    rate = analysis.success_rate(window)
    if rate is not None:
        run.rec(variant, rep, "success_rate", rate, load)
    p99 = analysis.p99_ms(window)
    if p99 is not None:
        run.rec(variant, rep, "latency_p99_ms", p99, load)
    if ended is not None and load == analysis.SAMPLES:
        run.rec(variant, rep, "rollout_duration_s", ended - began, load)
