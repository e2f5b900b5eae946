"""What the figures read from a run directory, loaded once, and what they derive from it.

RunData holds meta.json, the records and their summary (mean and CI per variant, metric and
group), the samples, the variants in the experiment's order and each variant's fixed colour. The
functions derive the shares of requests per pod and entry node, the latencies of the samples,
and the failover's errors per second and events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from testbed.analysis.records import (
    GROUP_FIELDS,
    group_of,
    read_meta,
    read_records,
    read_samples,
    summarize,
    variant_order,
)
from testbed.analysis.stats import MeanCI, mean_ci, shares

# Okabe & Ito's colour-blind-safe palette, then four of Paul Tol's muted scheme for experiments
# of up to 12 variants (testbed.spec.experiment.MAX_VARIANTS); variant i gets PALETTE[i].
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
           "#882255", "#117733", "#999933", "#332288")
NON_LATENCY_SAMPLES = {"events"}
# Samples of the scaling experiment's pods sweep (this prefix, then the pod count) come from a
# cluster built for that size, not from the one whose plan meta.json holds: who answered them
# is left out of the pod shares and the diagrams.
PODS_SWEEP_SAMPLES = "latency-pods-"

Group = tuple[tuple[str, Any], ...]          # a record's (field, value) pairs: workload, pod...
Row = Mapping[str, Any]                      # a sample or a record
ErrorBins = dict[int, list[float]]           # second -> [failed requests, requests]


def colours(variants: Iterable[str]) -> dict[str, str]:
    """variant -> colour, by position in the experiment's variant list."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


class RunData:
    """Everything the figures read, loaded once."""

    def __init__(self, run_dir: str):
        self.dir = run_dir
        self.meta = read_meta(run_dir)
        self.records = read_records(run_dir)
        self.samples = read_samples(run_dir)
        self.variants = variant_order(self.meta, self.records, self.samples)
        self.colour = colours(self.variants)
        self.summary = summarize(self.records)
        self.experiment = self.meta.get("experiment") or {}
        self.captions: dict[str, str] = {}     # figure file stem -> caption (for the report)

    def workload_order(self, names: Iterable[str | None]) -> list[str | None]:
        """Workloads in the experiment's run order; unknown ones after, as given."""
        planned = [w.get("name") for w in self.experiment.get("workloads") or []
                   if isinstance(w, dict)]
        names = list(dict.fromkeys(names))
        return sorted(names, key=lambda w: (planned.index(w) if w in planned else len(planned),
                                            names.index(w)))

    def metric(self, metric: str, **group: Any) -> dict[str, MeanCI]:
        """variant -> MeanCI for one metric and group (only the given group fields, exactly)."""
        want = tuple((f, group[f]) for f in GROUP_FIELDS if f in group)
        out = {}
        for (variant, m, g), ci in self.summary.items():
            if m == metric and g == want:
                out[variant] = ci
        return out

    def groups(self, metric: str) -> list[Group]:
        """The distinct groups a metric was recorded with, in first-seen order."""
        seen = []
        for row in self.records:
            if row.get("metric") == metric:
                g = group_of(row)
                if g not in seen:
                    seen.append(g)
        return seen

    def workloads(self, metric: str) -> list[str | None]:
        return list(dict.fromkeys(dict(g).get("workload") for g in self.groups(metric)))


def observed_paths(data: RunData, variant: str) -> dict[str, dict[str, float]]:
    """{"pod_share": {pod: share}, "entry_nodes": {node: share}} for a variant: from the
    pod_share / entry_share records (mean over repetitions), else counted from the samples'
    pod / entry_node fields."""
    out: dict[str, dict[str, float]] = {"pod_share": {}, "entry_nodes": {}}
    for (v, metric, group), ci in data.summary.items():
        g = dict(group)
        if v != variant:
            continue
        if metric == "pod_share" and "pod" in g:
            out["pod_share"][g["pod"]] = out["pod_share"].get(g["pod"], 0.0) + ci.mean
        elif metric == "entry_share" and "node" in g:
            out["entry_nodes"][g["node"]] = out["entry_nodes"].get(g["node"], 0.0) + ci.mean
    for key, field in (("pod_share", "pod"), ("entry_nodes", "entry_node")):
        if not out[key]:
            out[key] = _answered_by(data, variant, field)
    return out


def _answered_by(data: RunData, variant: str, field: str) -> dict[str, float]:
    """How many answered requests of a variant's samples name each value of field."""
    counts: dict[str, float] = {}
    for (v, _, w), rows in data.samples.items():
        if v != variant or w in NON_LATENCY_SAMPLES or w.startswith(PODS_SWEEP_SAMPLES):
            continue
        for row in rows:
            if row.get(field) and row.get("ok", True):
                counts[row[field]] = counts.get(row[field], 0) + 1
    return counts


def latency_values(rows: Iterable[Row]) -> list[float]:
    """The latencies (ms) of the answered requests, leaving out missing and non-positive ones."""
    return [float(r["latency_ms"]) for r in rows
            if isinstance(r.get("latency_ms"), (int, float)) and r.get("ok", True) is not False
            and math.isfinite(r["latency_ms"]) and r["latency_ms"] > 0]


def pod_shares(data: RunData) -> dict[str, dict[str, MeanCI]]:
    """variant -> {pod: MeanCI of its share}: from pod_share records, else counted per
    repetition from the samples' pod field."""
    out: dict[str, dict[str, MeanCI]] = {}
    for (variant, metric, group), ci in data.summary.items():
        g = dict(group)
        if metric == "pod_share" and "pod" in g:
            out.setdefault(variant, {})[g["pod"]] = ci
    if out:
        return out
    per_rep: dict[str, dict[tuple[int, str], dict[str, int]]] = {}
    for (variant, rep, workload), rows in data.samples.items():
        if workload in NON_LATENCY_SAMPLES or workload.startswith(PODS_SWEEP_SAMPLES):
            continue
        for row in rows:
            if row.get("pod") and row.get("ok", True) is not False:
                counts = per_rep.setdefault(variant, {}).setdefault((rep, workload), {})
                counts[row["pod"]] = counts.get(row["pod"], 0) + 1
    for variant, reps in per_rep.items():
        pods = sorted({p for counts in reps.values() for p in counts}, key=natural_key)
        fractions = [shares({p: counts.get(p, 0) for p in pods}) for counts in reps.values()]
        out[variant] = {p: mean_ci([f[p] for f in fractions]) for p in pods}
    return out


def natural_key(name: str) -> list[int | str]:
    """Sorts web-2 before web-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def failover_events(data: RunData) -> list[dict[str, Any]]:
    """[{"t", "label"}]: as measured (samples of pseudo-workload 'events', first repetition seen)
    or, failing that, as planned in the experiment."""
    for (_, _, workload), rows in sorted(data.samples.items(),
                                         key=lambda kv: (kv[0][1], kv[0][0])):
        if workload == "events" and rows:
            return [{"t": float(r["t"]), "label": _event_label(r)}
                    for r in rows if isinstance(r.get("t"), (int, float))]
    return [{"t": float(e["at_s"]), "label": _event_label(e)}
            for e in data.experiment.get("events") or [] if isinstance(e, dict) and "at_s" in e]


def _event_label(event: Row) -> str:
    return f"{event.get('action', '')} {event.get('target', '')}".strip()


def failover_bins(data: RunData) -> dict[str, list[ErrorBins]]:
    """variant -> per repetition, the failover samples' errors per second."""
    per_variant: dict[str, list[ErrorBins]] = {}
    for (variant, _, workload), rows in data.samples.items():
        if workload != "failover":
            continue
        bins = _errors_per_second(rows)
        if bins:
            per_variant.setdefault(variant, []).append(bins)
    return per_variant


def _errors_per_second(rows: Iterable[Row]) -> ErrorBins:
    """Failed and all requests per whole second of t (rows may come binned: {"t", "errors"})."""
    bins: ErrorBins = {}
    for row in rows:
        t = row.get("t")
        if not isinstance(t, (int, float)):
            continue
        b = bins.setdefault(int(math.floor(t)), [0, 0])
        if "errors" in row:                      # pre-binned rows {"t", "errors"}
            b[0] += float(row.get("errors") or 0)
        elif row.get("ok") is False:
            b[0] += 1
        b[1] += 1
    return bins
