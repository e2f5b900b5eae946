"""Paper-style figures of a run, made only from what the run directory holds.

`plot_run(run_dir)` reads meta.json, records.jsonl and samples/ and writes PNG and PDF into
`<run_dir>/figures/`, plus `figures/index.json` (what was drawn, what was skipped and why) for
the report. A figure whose data is missing is skipped and said so; it never stops the others.

Figures (file name — what it shows):
  diagram-<variant>        the cluster and the measured path (testbed.analysis.diagram)
  latency-cdf-<workload>   CDF of request latency per variant, from the raw samples
  latency-<workload>       p50/p90/p99 bars, mean over repetitions with 95% CI error bars
  throughput               iperf 2 throughput, Mbit/s
  requests-per-s           requests/s per workload (keep-alive, under load)
  pod-share                share of requests per pod, grouped per variant; Jain's index in the legend
  path                     routed hops per request | bytes crossing between nodes (two panels)
  source-ip                share of requests where the pod saw the client's own address
  scaling                  kube-proxy sync time and new-connection latency vs number of services
  failover                 errors/s over time with the events marked

Style: one column of a paper (3.5 in wide), 7-8 pt type, one fixed colour per variant (its
position in the experiment's variant list picks it from PALETTE, in every figure), units on
every axis, error bars = 95% Student-t CI over repetitions (none with one repetition).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from testbed.analysis.records import (group_of, read_meta, read_records, read_samples,  # noqa: E402
                      summarize, variant_order)
from testbed.analysis.stats import ecdf, mean, mean_ci, shares  # noqa: E402

# Okabe & Ito's colour-blind-safe palette; variant i of the experiment gets PALETTE[i].
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
COLUMN_WIDTH_IN = 3.5
HEIGHT_IN = 2.3
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.linewidth": 0.6, "lines.linewidth": 1.2,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.4,
    "legend.frameon": False, "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02, "errorbar.capsize": 2,
}
WORKLOAD_LABELS = {
    "latency": "new connection per request",
    "keepalive": "keep-alive (wrk)",
    "load": "under load (wrk)",
    "throughput": "one bulk TCP connection (iperf 2)",
    "path": "path probe",
    "failover": "steady load during failover",
}
NON_LATENCY_SAMPLES = {"events"}


class Skip(Exception):
    """A figure that cannot be drawn from this run (the message says why)."""


def colours(variants) -> dict:
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
        self.captions: dict = {}     # figure file stem -> caption (for the report)

    def workload_order(self, names) -> list:
        """Workloads in the experiment's run order; unknown ones after, as given."""
        planned = [w.get("name") for w in self.experiment.get("workloads") or [] if isinstance(w, dict)]
        names = list(dict.fromkeys(names))
        return sorted(names, key=lambda w: (planned.index(w) if w in planned else len(planned),
                                            names.index(w)))

    def metric(self, metric: str, **group) -> dict:
        """variant -> MeanCI for one metric and group (only the given group fields, exactly)."""
        want = tuple((f, group[f]) for f in ("workload", "pod", "node", "services", "event") if f in group)
        out = {}
        for (variant, m, g), ci in self.summary.items():
            if m == metric and g == want:
                out[variant] = ci
        return out

    def groups(self, metric: str) -> list:
        """The distinct groups a metric was recorded with, in first-seen order."""
        seen = []
        for row in self.records:
            if row.get("metric") == metric:
                g = group_of(row)
                if g not in seen:
                    seen.append(g)
        return seen

    def workloads(self, metric: str) -> list:
        return list(dict.fromkeys(dict(g).get("workload") for g in self.groups(metric)))


def _figure(height: float = HEIGHT_IN, ncols: int = 1, nrows: int = 1, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH_IN, height), **kw)
    return fig, axes


def _save(fig, out_dir: str, name: str) -> list:
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fig.savefig(path, dpi=300 if ext == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _bars(ax, data: RunData, groups: list, value: Callable, group_labels: Optional[list] = None,
          scale: float = 1.0, annotate: bool = True, fmt: str = "{:.3g}") -> None:
    """Grouped bars: one group per entry of groups, one bar per variant inside it, 95% CI error
    bars. value(group, variant) -> MeanCI or None. With a single group the variants are the
    x tick labels; otherwise the groups are, and the legend names the variants."""
    variants = [v for v in data.variants if any(value(g, v) is not None for g in groups)]
    if not variants:
        raise Skip("no values")
    n = len(variants)
    width = 0.8 / n
    for i, variant in enumerate(variants):
        xs, ys, errs = [], [], []
        for k, g in enumerate(groups):
            ci = value(g, variant)
            if ci is None:
                continue
            xs.append(k + (i - (n - 1) / 2) * width if len(groups) > 1 else i)
            ys.append(ci.mean * scale)
            errs.append((ci.half or 0.0) * scale)
        bar_w = width * 0.92 if len(groups) > 1 else 0.6
        ax.bar(xs, ys, bar_w, yerr=errs if any(errs) else None, color=data.colour[variant],
               label=variant, edgecolor="none", error_kw={"elinewidth": 0.7, "ecolor": "#333333"},
               zorder=3)
        if annotate and len(groups) == 1:
            for x, y, e in zip(xs, ys, errs):
                ax.annotate(fmt.format(y), (x, y + e), textcoords="offset points", xytext=(0, 1.5),
                            ha="center", va="bottom", fontsize=6)
    if len(groups) > 1:
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(group_labels or [str(g) for g in groups])
        ax.legend(ncol=min(3, n), loc="lower left", bbox_to_anchor=(0, 1.0), handlelength=1,
                  columnspacing=0.8, fontsize=6.5, borderaxespad=0.2)
    else:
        ax.set_xticks(range(n))
        ax.set_xticklabels(variants, rotation=15 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.margins(y=0.12)
    ax.grid(axis="x", visible=False)
    ax.set_axisbelow(True)


def _replications_note(data: RunData) -> str:
    """What the error bars are, from the repetitions actually recorded (a cut run has fewer)."""
    reps = len({r.get("repetition") for r in data.records}) or len({k[1] for k in data.samples})
    if reps <= 1:
        return "1 repetition: no CI"
    return f"mean of {reps} repetitions, 95% CI"


# -- the figures ------------------------------------------------------------------------------

def fig_diagrams(data: RunData, out: str) -> list:
    from testbed.analysis.diagram import draw_variant_diagram
    plans = data.meta.get("plans") or {}
    if not plans:
        raise Skip("meta.json holds no address plans (the runner passes variants= to RunWriter)")
    paths = []
    for variant in data.variants:
        plan = plans.get(variant)
        if not plan or "error" in plan:
            continue
        observed = observed_paths(data, variant)
        data.captions[f"diagram-{variant}"] = (
            f"{variant}: the cluster and the path the measured requests took (arrow width ∝ share "
            "of requests" + ("" if observed["pod_share"] else ", shares assumed") + ").")
        paths += draw_variant_diagram(plan, observed, os.path.join(out, f"diagram-{variant}"),
                                      title=variant,
                                      colour=data.colour[variant], service=data.meta.get("service"))
    if not paths:
        raise Skip("no usable address plan in meta.json")
    return paths


def observed_paths(data: RunData, variant: str) -> dict:
    """{"pod_share": {pod: share}, "entry_nodes": {node: share}} for a variant: from the
    pod_share / entry_share records (mean over repetitions), else counted from the samples'
    pod / entry_node fields."""
    out: dict = {"pod_share": {}, "entry_nodes": {}}
    for (v, metric, group), ci in data.summary.items():
        g = dict(group)
        if v != variant:
            continue
        if metric == "pod_share" and "pod" in g:
            out["pod_share"][g["pod"]] = out["pod_share"].get(g["pod"], 0.0) + ci.mean
        elif metric == "entry_share" and "node" in g:
            out["entry_nodes"][g["node"]] = out["entry_nodes"].get(g["node"], 0.0) + ci.mean
    for key, field in (("pod_share", "pod"), ("entry_nodes", "entry_node")):
        if out[key]:
            continue
        counts: dict = {}
        for (v, _, w), rows in data.samples.items():
            if v != variant or w in NON_LATENCY_SAMPLES:
                continue
            for row in rows:
                if row.get(field) and row.get("ok", True):
                    counts[row[field]] = counts.get(row[field], 0) + 1
        out[key] = counts
    return out


def _latency_values(rows) -> list:
    return [float(r["latency_ms"]) for r in rows
            if isinstance(r.get("latency_ms"), (int, float)) and r.get("ok", True) is not False
            and math.isfinite(r["latency_ms"]) and r["latency_ms"] > 0]


def fig_latency_cdfs(data: RunData, out: str) -> list:
    workloads = data.workload_order(w for (_, _, w) in data.samples if w not in NON_LATENCY_SAMPLES)
    paths = []
    for workload in workloads:
        per_variant = {}
        for variant in data.variants:
            values = []
            for (v, _, w), rows in data.samples.items():
                if v == variant and w == workload:
                    values += _latency_values(rows)
            if values:
                per_variant[variant] = values
        if not per_variant:
            continue
        fig, ax = _figure()
        for variant, values in per_variant.items():
            xs, ps = ecdf(values)
            ax.step(xs, ps, where="post", color=data.colour[variant], label=f"{variant} (n={len(xs)})")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Latency CDF — {WORKLOAD_LABELS.get(workload, workload)}", loc="left")
        ax.legend(loc="lower right")
        data.captions[f"latency-cdf-{workload}"] = (
            f"Latency CDF, {WORKLOAD_LABELS.get(workload, workload)}: every request of every "
            "repetition, failed ones left out.")
        paths += _save(fig, out, f"latency-cdf-{workload}")
    if not paths:
        raise Skip("no samples with latency_ms")
    return paths


def fig_latency_bars(data: RunData, out: str) -> list:
    metrics = ["latency_p50_ms", "latency_p90_ms", "latency_p99_ms"]
    workloads = data.workload_order(w for m in metrics for w in data.workloads(m))
    paths = []
    for workload in workloads:
        group = {"workload": workload} if workload is not None else {}
        values = {m: data.metric(m, **group) for m in metrics}
        present = [m for m in metrics if values[m]]
        if not present:
            continue
        fig, ax = _figure()
        _bars(ax, data, present, lambda m, v: values[m].get(v),
              group_labels=[m.split("_")[1] for m in present])
        ax.set_ylabel(f"latency (ms), {WORKLOAD_LABELS.get(workload, workload or '')}")
        data.captions[f"latency-{workload or 'all'}"] = (
            f"Latency percentiles, {WORKLOAD_LABELS.get(workload, workload or '')}: "
            f"{_replications_note(data)}.")
        paths += _save(fig, out, f"latency-{workload or 'all'}")
    if not paths:
        raise Skip("no latency_p50_ms/p90/p99 records")
    return paths


def _single_metric_bars(data: RunData, out: str, metric: str, name: str, ylabel: str, title: str,
                        scale: float = 1.0, fmt: str = "{:.3g}", ylim=None) -> list:
    workloads = data.workload_order(data.workloads(metric))
    if not workloads:
        raise Skip(f"no {metric} records")
    values = {w: data.metric(metric, **({"workload": w} if w is not None else {})) for w in workloads}
    workloads = [w for w in workloads if values[w]]
    if not workloads:
        raise Skip(f"no {metric} records")
    fig, ax = _figure()
    _bars(ax, data, workloads, lambda w, v: values[w].get(v), scale=scale, fmt=fmt,
          group_labels=[WORKLOAD_LABELS.get(w, w or "") for w in workloads])
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if len(workloads) == 1:
        ax.set_title(f"{title} — {_replications_note(data)}", loc="left")
    data.captions[name] = f"{title}: {_replications_note(data)}."
    return _save(fig, out, name)


def fig_throughput(data: RunData, out: str) -> list:
    return _single_metric_bars(data, out, "throughput_mbps", "throughput", "throughput (Mbit/s)",
                               "Bulk TCP throughput", fmt="{:.0f}")


def fig_requests(data: RunData, out: str) -> list:
    return _single_metric_bars(data, out, "requests_per_s", "requests-per-s", "requests/s",
                               "Requests per second", fmt="{:.0f}")


def fig_source_ip(data: RunData, out: str) -> list:
    return _single_metric_bars(data, out, "source_ip_preserved", "source-ip",
                               "requests with client IP kept (%)", "Client address at the pod",
                               scale=100, fmt="{:.0f}%", ylim=(0, 112))


def pod_shares(data: RunData) -> dict:
    """variant -> {pod: MeanCI of its share}: from pod_share records, else counted per
    repetition from the samples' pod field."""
    out: dict = {}
    for (variant, metric, group), ci in data.summary.items():
        g = dict(group)
        if metric == "pod_share" and "pod" in g:
            out.setdefault(variant, {})[g["pod"]] = ci
    if out:
        return out
    per_rep: dict = {}
    for (variant, rep, workload), rows in data.samples.items():
        if workload in NON_LATENCY_SAMPLES:
            continue
        for row in rows:
            if row.get("pod") and row.get("ok", True) is not False:
                counts = per_rep.setdefault(variant, {}).setdefault((rep, workload), {})
                counts[row["pod"]] = counts.get(row["pod"], 0) + 1
    for variant, reps in per_rep.items():
        pods = sorted({p for counts in reps.values() for p in counts}, key=_natural)
        fractions = [shares({p: counts.get(p, 0) for p in pods}) for counts in reps.values()]
        out[variant] = {p: mean_ci([f[p] for f in fractions]) for p in pods}
    return out


def _natural(name: str):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


def fig_pod_share(data: RunData, out: str) -> list:
    per_variant = pod_shares(data)
    if not per_variant:
        raise Skip("no pod_share records and no samples naming the pod that answered")
    pods = sorted({p for d in per_variant.values() for p in d}, key=_natural)
    jain_of = data.metric("jain_fairness", workload="path") or data.metric("jain_fairness")
    if not jain_of:
        for wl in data.workloads("jain_fairness"):
            jain_of = data.metric("jain_fairness", workload=wl)
            if jain_of:
                break
    fig, ax = _figure(height=2.5)
    if len(pods) > 16:
        ax.set_xlabel(f"pods ({len(pods)}, sorted by name)")
    _bars(ax, data, pods, lambda p, v: per_variant.get(v, {}).get(p), group_labels=pods, scale=100)
    ax.axhline(100 / len(pods), color="#555555", linewidth=0.8, linestyle=(0, (3, 2)), zorder=4)
    ax.annotate("even share", (len(pods) - 0.5, 100 / len(pods)), textcoords="offset points",
                xytext=(0, 2), ha="right", va="bottom", fontsize=6, color="#555555")
    handles, labels = ax.get_legend_handles_labels()
    labels = [f"{lab} (Jain {jain_of[lab].mean:.2f})" if lab in jain_of else lab for lab in labels]
    ax.legend(handles, labels, ncol=1 if len(labels) > 2 else 2, loc="upper left",
              bbox_to_anchor=(0, 1.0 + 0.09 * len(labels)), handlelength=1)
    if len(pods) > 8:
        ax.set_xticklabels(pods, rotation=90, fontsize=5)
    ax.set_ylabel("share of requests (%)")
    data.captions["pod-share"] = ("Share of requests per pod (mean over repetitions, 95% CI); dashed: "
                                  "an even share; Jain's fairness index in the legend.")
    return _save(fig, out, "pod-share")


def fig_path(data: RunData, out: str) -> list:
    hops = _first_workload(data, "path_hops")
    cross = _first_workload(data, "cross_node_bytes_fraction")
    if not hops and not cross:
        raise Skip("no path_hops or cross_node_bytes_fraction records")
    fig, (a, b) = _figure(height=2.1, ncols=2)
    for ax, values, ylabel, title, scale, fmt in (
            (a, hops, "routed hops per request", "Hops", 1.0, "{:.2g}"),
            (b, cross, "bytes between nodes (%)", "Cross-node bytes", 100.0, "{:.0f}%")):
        ax.set_title(title, loc="left")
        if not values:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        _bars(ax, data, ["x"], lambda g, v, values=values: values.get(v), scale=scale, fmt=fmt)
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(len([v for v in data.variants if v in values])))
        ax.set_xticklabels([v for v in data.variants if v in values], rotation=30, ha="right")
    b.set_ylim(0, max(5.0, b.get_ylim()[1]))
    fig.tight_layout(w_pad=1.0)
    data.captions["path"] = ("Left: routed hops per request (from the replies' TTL). Right: bytes "
                             f"that crossed between nodes, % of the bytes delivered. {_replications_note(data)}.")
    return _save(fig, out, "path")


def _first_workload(data: RunData, metric: str) -> dict:
    for w in data.workloads(metric):
        values = data.metric(metric, **({"workload": w} if w is not None else {}))
        if values:
            return values
    return {}


def fig_scaling(data: RunData, out: str) -> list:
    def series(metric):
        per: dict = {}
        for (variant, m, group), ci in data.summary.items():
            g = dict(group)
            if m == metric and "services" in g:
                per.setdefault(variant, []).append((float(g["services"]), ci))
        return {v: sorted(pts, key=lambda p: p[0]) for v, pts in per.items()}
    sync, lat = series("sync_time_ms"), series("latency_p50_ms")
    if not sync and not lat:
        raise Skip("no records with a 'services' field (not a scaling run)")
    panels = [(s, label) for s, label in ((sync, "kube-proxy\nsync time (ms)"),
                                          (lat, "new-connection\nlatency p50 (ms)")) if s]
    fig, axes = _figure(height=1.8 * len(panels) + 0.3, nrows=len(panels), sharex=True)
    axes = axes if len(panels) > 1 else [axes]
    for ax, (per, label) in zip(axes, panels):
        for variant in data.variants:
            pts = per.get(variant)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1].mean for p in pts]
            errs = [p[1].half or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, color=data.colour[variant],
                        marker="o", markersize=3, label=variant, elinewidth=0.7)
        ax.set_xscale("log")
        ax.set_ylabel(label)
        if per is sync:
            ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    axes[-1].set_xlabel("number of services (log scale)")
    axes[-1].xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axes[0].legend(loc="upper left")
    axes[0].set_title(f"Scaling — {_replications_note(data)}", loc="left")
    fig.align_ylabels(axes)
    fig.tight_layout(h_pad=0.5)
    data.captions["scaling"] = ("kube-proxy sync time and new-connection latency against the number "
                                f"of services (both axes log for sync time). {_replications_note(data)}.")
    return _save(fig, out, "scaling")


def fig_failover(data: RunData, out: str) -> list:
    per_variant: dict = {}
    for (variant, rep, workload), rows in data.samples.items():
        if workload != "failover":
            continue
        bins: dict = {}
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
        if bins:
            per_variant.setdefault(variant, []).append(bins)
    if not per_variant:
        raise Skip("no samples of workload 'failover' (not a failover run)")
    fig, ax = _figure()
    top = 0.0
    for variant in data.variants:
        reps = per_variant.get(variant)
        if not reps:
            continue
        seconds = sorted({s for bins in reps for s in bins})
        ys = [mean([bins.get(s, [0, 0])[0] for bins in reps]) for s in seconds]
        top = max(top, max(ys, default=0))
        ax.step([s for s in seconds] + [seconds[-1] + 1], ys + ys[-1:], where="post",
                color=data.colour[variant], label=variant)
    for ev in failover_events(data):
        ax.axvline(ev["t"], color="#555555", linewidth=0.7, linestyle=(0, (2, 2)), zorder=1)
        ax.annotate(ev["label"], (ev["t"], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", rotation=90, ha="left", va="top",
                    fontsize=6, color="#333333")
    ax.set_xlabel("time since steady load started (s)")
    ax.set_ylabel("errors/s")
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.set_title(f"Failover — errors per second ({len(next(iter(per_variant.values())))} "
                 f"repetition(s), mean)", loc="left")
    ax.legend(loc="upper right")
    data.captions["failover"] = ("Failed requests per second under steady load, mean over repetitions; "
                                 "dotted lines: the events.")
    return _save(fig, out, "failover")


def failover_events(data: RunData) -> list:
    """[{"t", "label"}]: as measured (samples of pseudo-workload 'events', first repetition seen)
    or, failing that, as planned in the experiment."""
    for (_, _, workload), rows in sorted(data.samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if workload == "events" and rows:
            return [{"t": float(r["t"]), "label": f"{r.get('action', '')} {r.get('target', '')}".strip()}
                    for r in rows if isinstance(r.get("t"), (int, float))]
    return [{"t": float(e["at_s"]), "label": f"{e.get('action', '')} {e.get('target', '')}".strip()}
            for e in data.experiment.get("events") or [] if isinstance(e, dict) and "at_s" in e]


FIGURES = (
    ("diagrams", "Cluster and measured path per variant", fig_diagrams),
    ("latency-cdf", "Latency distribution (CDF)", fig_latency_cdfs),
    ("latency", "Latency percentiles", fig_latency_bars),
    ("throughput", "Throughput (one TCP connection, iperf 2)", fig_throughput),
    ("requests-per-s", "Requests per second", fig_requests),
    ("pod-share", "Share of requests per pod", fig_pod_share),
    ("path", "Routed hops and cross-node bytes", fig_path),
    ("source-ip", "Client address seen by the pod", fig_source_ip),
    ("scaling", "Scaling with the number of services", fig_scaling),
    ("failover", "Errors during failover", fig_failover),
)


def plot_run(run_dir: str) -> list:
    """Draw every figure the run has data for into <run_dir>/figures/.

    Returns the written files' paths (PNG and PDF of each figure) and, for each figure that could
    not be drawn, one entry "skipped <figure>: <why>". Also writes figures/index.json."""
    out = os.path.join(run_dir, "figures")
    os.makedirs(out, exist_ok=True)
    data = RunData(run_dir)
    result, index = [], []
    with plt.rc_context(STYLE):
        for name, title, draw in FIGURES:
            try:
                paths = draw(data, out)
            except Skip as why:
                result.append(f"skipped {name}: {why}")
                index.append({"figure": name, "title": title, "skipped": str(why)})
                plt.close("all")
                continue
            except Exception as exc:   # a figure's bug must not cost the others
                result.append(f"skipped {name}: failed ({type(exc).__name__}: {exc})")
                index.append({"figure": name, "title": title,
                              "skipped": f"failed ({type(exc).__name__}: {exc})"})
                plt.close("all")
                continue
            result += paths
            index.append({"figure": name, "title": title,
                          "files": [os.path.relpath(p, run_dir) for p in paths],
                          "captions": {os.path.relpath(p, run_dir): data.captions[stem]
                                       for p in paths
                                       for stem in [os.path.splitext(os.path.basename(p))[0]]
                                       if stem in data.captions}})
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as fh:
        json.dump({"variants": data.variants, "colours": data.colour, "figures": index}, fh, indent=1)
        fh.write("\n")
    return result


def written(result: list) -> list:
    """The file paths in plot_run's result (without the 'skipped ...' entries)."""
    return [r for r in result if not r.startswith("skipped ")]

