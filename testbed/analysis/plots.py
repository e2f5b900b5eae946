"""Paper-style figures of a run, made only from what the run directory holds.

`plot_run(run_dir)` reads meta.json, records.jsonl and samples/ and writes PNG and PDF into
`<run_dir>/figures/` (one per entry of FIGURES), plus `figures/index.json` (what was drawn, what
was skipped and why) for the report. A figure whose data is missing is skipped and said so; it
never stops the others. Style: one column of a paper (3.5 in wide), 7-8 pt type, one fixed colour
per variant (its position in the experiment's variant list picks it from PALETTE), units on
every axis, error bars = 95% Student-t CI over repetitions (none with one repetition).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from testbed.analysis import dataplanes, failover, rollout  # noqa: E402
from testbed.analysis.rundata import (  # noqa: E402
    NON_LATENCY_SAMPLES,
    PALETTE,
    RunData,
    failover_bins,
    failover_events,
    latency_values,
    natural_key,
    pod_shares,
)
from testbed.analysis.stats import MeanCI, ecdf, mean  # noqa: E402

__all__ = ["PALETTE", "FIGURES", "Skip", "plot_run", "written"]

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
    "veth": "plain veth between two namespaces (baseline)",
    "failover": "steady load during failover",
}


class Skip(Exception):
    """A figure that cannot be drawn from this run (the message says why)."""


def _figure(height: float = HEIGHT_IN, ncols: int = 1, nrows: int = 1,
            **kw: Any) -> tuple[plt.Figure, Any]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH_IN, height), **kw)
    return fig, axes


def _save(fig: plt.Figure, out_dir: str, name: str) -> list[str]:
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fig.savefig(path, dpi=300 if ext == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _bars(ax: plt.Axes, data: RunData, groups: Sequence[Any],
          value: Callable[[Any, str], MeanCI | None], group_labels: Sequence[str] | None = None,
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
        if annotate and len(groups) == 1:   # many bars: upright labels would overlap
            for x, y, e in zip(xs, ys, errs, strict=True):
                ax.annotate(fmt.format(y), (x, y + e), textcoords="offset points", xytext=(0, 1.5),
                            ha="center", va="bottom", fontsize=6, rotation=0 if n <= 6 else 90)
    if len(groups) > 1:
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(group_labels or [str(g) for g in groups])
        ax.legend(ncol=min(3, n), loc="lower left", bbox_to_anchor=(0, 1.0), handlelength=1,
                  columnspacing=0.8, fontsize=6.5, borderaxespad=0.2)
    else:
        ax.set_xticks(range(n))
        ax.set_xticklabels(variants, rotation=0 if n <= 3 else 15 if n <= 6 else 60,
                           ha="right" if n > 3 else "center", rotation_mode="anchor")
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

def fig_diagrams(data: RunData, out: str) -> list[str]:
    """diagram-<variant>: the cluster and the measured path (testbed.analysis.run_diagrams)."""
    from testbed.analysis.run_diagrams import draw_run_diagrams
    if not data.meta.get("plans"):
        raise Skip("meta.json holds no address plans (the runner passes variants= to RunWriter)")
    paths = draw_run_diagrams(data, out)
    if not paths:
        raise Skip("no usable address plan in meta.json")
    return paths


def fig_latency_cdfs(data: RunData, out: str) -> list[str]:
    """latency-cdf-<workload>: CDF of request latency per variant, from the samples."""
    workloads = data.workload_order(w for (_, _, w) in data.samples if w not in NON_LATENCY_SAMPLES)
    paths = []
    for workload in workloads:
        per_variant = {}
        for variant in data.variants:
            values = []
            for (v, _, w), rows in data.samples.items():
                if v == variant and w == workload:
                    values += latency_values(rows)
            if values:
                per_variant[variant] = values
        if not per_variant:
            continue
        fig, ax = _figure()
        for variant, values in per_variant.items():
            xs, ps = ecdf(values)
            ax.step(xs, ps, where="post", color=data.colour[variant],
                    label=f"{variant} (n={len(xs)})")
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


def fig_latency_bars(data: RunData, out: str) -> list[str]:
    """latency-<workload>: p50/p90/p99 bars, mean over repetitions, 95% CI."""
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
        _bars(ax, data, present, lambda m, v, values=values: values[m].get(v),
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
                        scale: float = 1.0, fmt: str = "{:.3g}",
                        ylim: tuple[float, float] | None = None) -> list[str]:
    workloads = data.workload_order(data.workloads(metric))
    if not workloads:
        raise Skip(f"no {metric} records")
    values = {w: data.metric(metric, **({"workload": w} if w is not None else {}))
              for w in workloads}
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


def fig_throughput(data: RunData, out: str) -> list[str]:
    """throughput: iperf 2 throughput, Mbit/s."""
    return _single_metric_bars(data, out, "throughput_mbps", "throughput", "throughput (Mbit/s)",
                               "Bulk TCP throughput", fmt="{:.0f}")


def fig_requests(data: RunData, out: str) -> list[str]:
    """requests-per-s: requests/s per workload (keep-alive, under load)."""
    return _single_metric_bars(data, out, "requests_per_s", "requests-per-s", "requests/s",
                               "Requests per second", fmt="{:.0f}")


def fig_source_ip(data: RunData, out: str) -> list[str]:
    """source-ip: share of requests where the pod saw the client's own address."""
    return _single_metric_bars(data, out, "source_ip_preserved", "source-ip",
                               "requests with client IP kept (%)", "Client address at the pod",
                               scale=100, fmt="{:.0f}%", ylim=(0, 112))


def fig_pod_share(data: RunData, out: str) -> list[str]:
    """pod-share: share of requests per pod per variant; Jain's index in the legend."""
    per_variant = pod_shares(data)
    if not per_variant:
        raise Skip("no pod_share records and no samples naming the pod that answered")
    pods = sorted({p for d in per_variant.values() for p in d}, key=natural_key)
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
    data.captions["pod-share"] = ("Share of requests per pod (mean over repetitions, 95% CI); "
                                  "dashed: an even share; Jain's fairness index in the legend.")
    return _save(fig, out, "pod-share")


def fig_path(data: RunData, out: str) -> list[str]:
    """path: routed hops per request | bytes crossing between nodes (two panels)."""
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
        ax.set_ylabel(ylabel)   # _bars labels the variants that have a value
    b.set_ylim(0, max(5.0, b.get_ylim()[1]))
    fig.tight_layout(w_pad=1.0)
    data.captions["path"] = ("Left: routed hops per request (from the replies' TTL). Right: bytes "
                             "that crossed between nodes, % of the bytes delivered. "
                             f"{_replications_note(data)}.")
    return _save(fig, out, "path")


def _first_workload(data: RunData, metric: str) -> dict[str, MeanCI]:
    """The metric's values of workload path if it has some, else of the first workload that
    has (latency records hops too; the plain veth baseline's, 0, are left out)."""
    workloads = [w for w in data.workloads(metric) if w != "veth"]
    for w in sorted(workloads, key=lambda w: w != "path"):
        values = data.metric(metric, **({"workload": w} if w is not None else {}))
        if values:
            return values
    return {}


Series = dict[str, list[tuple[float, MeanCI]]]   # variant -> (size, mean and CI), by size

# (metric, axis label, log y) of each panel of a sweep's figure, top to bottom
SERVICES_PANELS = (("sync_time_ms", "kube-proxy\nsync time (ms)", True),
                   ("latency_p50_ms", "new-connection\nlatency p50 (ms)", False))
PODS_PANELS = (("bringup_s", "bring-up (s)", True),
               ("teardown_s", "teardown (s)", True),
               ("lb_ready_s", "LB: every target\nin service (s)", False),
               ("sync_time_ms", "kube-proxy full\nsync, 1 node (ms)", True),
               ("rules", "iptables rules", True),
               ("latency_p50_ms", "new-connection\nlatency p50 (ms)", False))


def _sweep(data: RunData, metric: str, size: str, stage: str | None = None) -> Series:
    """A metric's points along a sweep (size: services or pods), per variant; for bring-up,
    one stage's (stage None: the whole)."""
    per: Series = {}
    for (variant, m, group), ci in data.summary.items():
        g = dict(group)
        if m == metric and size in g and g.get("stage") == stage:
            per.setdefault(variant, []).append((float(g[size]), ci))
    return {v: sorted(pts, key=lambda p: p[0]) for v, pts in per.items()}


def _lines(ax: plt.Axes, per: Series, colour: Mapping[str, str], order: Sequence[str]) -> None:
    """One line per series, markers at the sizes, 95% CI error bars where there is one."""
    for name in order:
        pts = per.get(name)
        if not pts:
            continue
        errs = [p[1].half or 0.0 for p in pts]
        ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                    yerr=errs if any(errs) else None, color=colour[name], marker="o",
                    markersize=3, label=name, elinewidth=0.7)


def _plain_labels(ax: plt.Axes) -> None:
    """Tick labels as plain numbers (3, 0.5, 1000), not powers of ten; on a log axis spanning
    less than a decade the minor ticks at 2, 3 and 5 times a power of ten are labelled too
    (otherwise it may have no label at all)."""
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    some = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and round(
        v / 10 ** math.floor(math.log10(v)), 6) in (2, 3, 5) else "")
    for axis, (lo, hi), scale in ((ax.xaxis, ax.get_xlim(), ax.get_xscale()),
                                  (ax.yaxis, ax.get_ylim(), ax.get_yscale())):
        axis.set_major_formatter(plain)
        if scale == "log":
            axis.set_minor_formatter(some if lo > 0 and hi / lo < 10 else NullFormatter())


def _sweep_figure(data: RunData, out: str, name: str, size: str,
                  panels: Sequence[tuple[str, str, bool]], title: str) -> list[str]:
    """The panels of one sweep that have data, stacked, x = the size (log)."""
    drawn = [(series, label, logy) for metric, label, logy in panels
             for series in [_sweep(data, metric, size)] if series]
    if not drawn:
        return []
    fig, axes = _figure(height=1.35 * len(drawn) + 0.4, nrows=len(drawn), sharex=True)
    axes = axes if len(drawn) > 1 else [axes]
    for ax, (series, label, logy) in zip(axes, drawn, strict=True):
        _lines(ax, series, data.colour, data.variants)
        ax.set_xscale("log")
        ax.set_ylabel(label)
        if logy:
            ax.set_yscale("log")
        _plain_labels(ax)
    axes[-1].set_xlabel(f"number of {size} (log scale)")
    axes[0].legend(loc="upper left")
    axes[0].set_title(f"{title} — {_replications_note(data)}", loc="left")
    fig.align_ylabels(axes)
    fig.tight_layout(h_pad=0.5)
    return _save(fig, out, name)


def _stages_figure(data: RunData, out: str) -> list[str]:
    """scaling-pods-stages: each bring-up stage's seconds vs pods, a panel per variant."""
    stages = list(dict.fromkeys(str(dict(g)["stage"]) for (_, m, g) in data.summary
                                if m == "bringup_s" and "stage" in dict(g)))
    per_stage = {st: _sweep(data, "bringup_s", "pods", st) for st in stages}
    variants = [v for v in data.variants if any(v in s for s in per_stage.values())]
    if not variants:
        return []
    cmap = plt.get_cmap("Dark2")   # qualitative, and not the variants' palette
    colour = {st: to_hex(cmap(i % cmap.N)) for i, st in enumerate(stages)}
    fig, axes = _figure(height=1.6 * len(variants) + 0.4, nrows=len(variants), sharex=True)
    axes = axes if len(variants) > 1 else [axes]
    for ax, variant in zip(axes, variants, strict=True):
        _lines(ax, {st: per_stage[st].get(variant, []) for st in stages}, colour, stages)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel(f"{variant}\nstage (s)")
        _plain_labels(ax)
    axes[-1].set_xlabel("number of pods (log scale)")
    axes[-1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.38), ncol=3, fontsize=6)
    axes[0].set_title(f"Bring-up stages — {_replications_note(data)}", loc="left")
    fig.align_ylabels(axes)
    fig.tight_layout(h_pad=0.5)
    data.captions["scaling-pods-stages"] = (
        "Where a cluster's bring-up time goes, stage by stage, against its number of pods (both "
        f"axes log). {_replications_note(data)}.")
    return _save(fig, out, "scaling-pods-stages")


def fig_scaling(data: RunData, out: str) -> list[str]:
    """scaling: kube-proxy sync time and new-connection latency vs services; scaling-pods:
    bring-up, teardown, the LB's readiness, kube-proxy's sync, rules and latency vs pods;
    scaling-pods-stages: the bring-up's stages vs pods."""
    paths = _sweep_figure(data, out, "scaling", "services", SERVICES_PANELS,
                          "Scaling with services")
    if paths:
        data.captions["scaling"] = ("kube-proxy sync time and new-connection latency against "
                                    "the number of services (both axes log for sync time). "
                                    f"{_replications_note(data)}.")
    pods = _sweep_figure(data, out, "scaling-pods", "pods", PODS_PANELS, "Scaling with pods")
    if pods:
        data.captions["scaling-pods"] = (
            "A cluster built per number of pods: its bring-up and teardown, the load balancer's "
            "time to serve from every target registered afresh, one node's kube-proxy full sync "
            "and its rules, and new-connection latency through the VIP (x log; y log where "
            f"marked by its ticks). {_replications_note(data)}.")
        pods += _stages_figure(data, out)
    if not paths + pods:
        raise Skip("no records with a 'services' or 'pods' field (not a scaling run)")
    return paths + pods


def fig_dataplanes(data: RunData, out: str) -> list[str]:
    """dataplanes: new-connection latency p50 and p99 against services, a line per variant
    (testbed.analysis.dataplanes), like upstream's announcement of the nftables mode."""
    if not dataplanes.has_modes(data.records):
        raise Skip("no services sweep in two kube-proxy modes (not a dataplanes run)")
    paths = _sweep_figure(data, out, "dataplanes", "services", dataplanes.LATENCY_PANELS,
                          "kube-proxy modes")
    if not paths:
        raise Skip("no latency records in the services sweep")
    data.captions["dataplanes"] = dataplanes.caption(data.meta, _replications_note(data))
    return paths


def fig_failover(data: RunData, out: str) -> list[str]:
    """failover: errors/s over time with the events marked."""
    per_variant = failover_bins(data)
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
    _mark_events(ax, failover_events(data))
    ax.set_xlabel("time since steady load started (s)")
    ax.set_ylabel("errors/s")
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.set_title(f"Failover — errors per second ({len(next(iter(per_variant.values())))} "
                 f"repetition(s), mean)", loc="left")
    ax.legend(loc="upper right")
    data.captions["failover"] = ("Failed requests per second under steady load, mean over "
                                 "repetitions; dotted lines: the events.")
    return _save(fig, out, "failover")


def fig_failover_timeline(data: RunData, out: str) -> list[str]:
    """failover-timeline: successful requests/s and errors/s, one panel per variant, the
    control plane's steps marked (testbed.analysis.failover)."""
    panels = failover.timeline_panels(data)
    if not panels:
        raise Skip("no samples of workload 'failover' (not a failover run)")
    fig, axes = _figure(height=0.4 + 1.25 * len(panels), nrows=len(panels), sharex=True,
                        squeeze=False)
    failover.draw_panels(axes[:, 0], panels, data.colour)
    data.captions["failover-timeline"] = failover.panels_caption(panels)
    return _save(fig, out, "failover-timeline")


def fig_rollout(data: RunData, out: str) -> list[str]:
    """rollout: errors/s over time with the rollout's steps marked (testbed.analysis.rollout)."""
    if not rollout.has_samples(data):
        raise Skip("no samples of workload 'rollout' (not a rollout run)")
    loads = rollout.loads(data)        # a row of panels per load: new connections, kept-alive
    groups = rollout.lb_groups(data)   # a column per LB: L4, L7
    fig, axes = _figure(height=0.4 + 1.6 * len(loads), nrows=len(loads), ncols=len(groups),
                        sharex=True, sharey=True, squeeze=False)
    fig.set_size_inches(COLUMN_WIDTH_IN * (1 + 0.8 * (len(groups) - 1)),
                        0.4 + 1.6 * len(loads) + 0.5)
    for i, load in enumerate(loads):
        for j, (group, variants) in enumerate(groups.items()):
            rollout.draw(axes[i, j], data, _mark_events, load, last=i == len(loads) - 1,
                         variants=variants, group=group if len(groups) > 1 else "")
    return _save(fig, out, "rollout")


def _mark_events(ax: plt.Axes, events: Iterable[Mapping[str, Any]]) -> None:
    for ev in events:
        ax.axvline(ev["t"], color="#555555", linewidth=0.7, linestyle=(0, (2, 2)), zorder=1)
        ax.annotate(ev["label"], (ev["t"], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", rotation=90, ha="left", va="top",
                    fontsize=6, color="#333333")


FIGURES = (
    ("diagrams", "Cluster and measured path per variant", fig_diagrams),
    ("latency-cdf", "Latency distribution (CDF)", fig_latency_cdfs),
    ("latency", "Latency percentiles", fig_latency_bars),
    ("throughput", "Throughput (one TCP connection, iperf 2)", fig_throughput),
    ("requests-per-s", "Requests per second", fig_requests),
    ("pod-share", "Share of requests per pod", fig_pod_share),
    ("path", "Routed hops and cross-node bytes", fig_path),
    ("source-ip", "Client address seen by the pod", fig_source_ip),
    ("scaling", "Scaling with the number of services and pods", fig_scaling),
    ("dataplanes", "New-connection latency against services per kube-proxy mode",
     fig_dataplanes),
    ("failover", "Errors during failover", fig_failover),
    ("rollout", "Errors during a rolling update", fig_rollout),
    ("failover-timeline", "Failover over time, the control plane's steps marked",
     fig_failover_timeline),
)


def plot_run(run_dir: str) -> list[str]:
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
        json.dump({"variants": data.variants, "colours": data.colour, "figures": index}, fh,
                  indent=1)
        fh.write("\n")
    return result


def written(result: Iterable[str]) -> list[str]:
    """The file paths in plot_run's result (without the 'skipped ...' entries)."""
    return [r for r in result if not r.startswith("skipped ")]

