"""What a run of kube-proxy's modes against the number of services says (pure, but for the
figure's drawing): experiments/dataplanes.yaml, a scaling experiment whose variants differ in
their kube-proxy mode, each record naming the mode that ran (proxy_mode).

    modes: variant -> the kube-proxy mode its services-sweep records name
    has_modes: whether a run compares modes (two or more in its services sweep)
    label: a variant as the tables name it ("nftables", or "fast (nftables)" when the
        variant's name is not its mode)
    LATENCY_PANELS, caption: the latency-against-services figure (drawn by
        testbed.analysis.plots.fig_dataplanes, registered in its FIGURES)
    report_blocks: the report's sync-time table (a full sync and a one-endpoint change, per
        node), the rules' table (count, listed size, kernel memory) and the modes not run
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from testbed.analysis.stats import MeanCI

Record = Mapping[str, Any]
Summary = Mapping[tuple[str, str, Any], MeanCI]   # (variant, metric, group) -> mean and CI

# (metric, axis label, log y) of the figure's panels, top to bottom
LATENCY_PANELS = (("latency_p50_ms", "new-connection\nlatency p50 (ms)", False),
                  ("latency_p99_ms", "new-connection\nlatency p99 (ms)", False))
# (metric, column title, scale) of the report's two tables
SYNC_MEASURES = (("sync_time_ms", "full sync, ms", 1.0),
                 ("endpoint_change_ms", "one-endpoint change, ms", 1.0))
RULES_MEASURES = (("rules", "rules", 1.0),
                  ("ruleset_bytes", "ruleset listed, KiB", 1 / 1024),
                  ("rules_kernel_kib", "kernel memory, KiB", 1.0))


def modes(records: Sequence[Record]) -> dict[str, str]:
    """variant -> the kube-proxy mode its services-sweep records name, in record order."""
    out: dict[str, str] = {}
    for r in records:
        if r.get("services") is not None and r.get("proxy_mode") and r.get("variant"):
            out.setdefault(str(r["variant"]), str(r["proxy_mode"]))
    return out


def has_modes(records: Sequence[Record]) -> bool:
    """Whether the run's services sweep ran in two kube-proxy modes or more."""
    return len(set(modes(records).values())) >= 2


def label(variant: str, mode: str | None) -> str:
    """The variant's name, with its mode after it when the name is not the mode."""
    return variant if not mode or mode == variant else f"{variant} ({mode})"


def not_run(meta: Mapping[str, Any]) -> dict[str, str]:
    """variant -> why it was not run (meta.json's not_run: a mode this machine lacks)."""
    found = meta.get("not_run")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def caption(meta: Mapping[str, Any], replications: str) -> str:
    """The figure's caption: what was measured, how, and the variants not run."""
    text = ("New-connection latency through the VIP (httpprobe, a new connection per request, "
            "so every request's first packet crosses the node's kube-proxy rules) against the "
            "number of services of 5 endpoints on every node, a line per variant (its kube-proxy "
            f"mode; x log). {replications}.")
    skipped = not_run(meta)
    if skipped:
        text += " Not run here: " + "; ".join(f"{v} ({why})" for v, why in skipped.items()) + "."
    return text


def _cell(ci: MeanCI | None, scale: float) -> str:
    """'mean ± half' at 3 significant digits (the mean alone without an interval, or with none
    to show: a count the same in every repetition)."""
    if ci is None:
        return ""

    def num(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
    mean = num(ci.mean * scale)
    return mean if not ci.half else f"{mean} ± {num(ci.half * scale)}"


def _sizes(summary: Summary) -> list[int]:
    return sorted({int(dict(g)["services"]) for (_, _, g) in summary
                   if dict(g).get("services") is not None})


def _table(summary: Summary, variants: Sequence[str], measures: Sequence[tuple[str, str, float]],
           named: Mapping[str, str]) -> tuple[str, list[str], list[list[str]]]:
    """A row per number of services; for each measure, a column per variant that has it."""
    columns = [(metric, title, scale, v) for metric, title, scale in measures for v in variants
               if any(m == metric and vv == v for (vv, m, _) in summary)]
    header = ["services"] + [f"{title}: {named[v]}" for _, title, _, v in columns]
    rows = []
    for n in _sizes(summary):
        cells = [_cell(next((ci for (vv, m, g), ci in summary.items() if vv == v and m == metric
                             and dict(g).get("services") == n and "stage" not in dict(g)),
                            None), scale) for metric, _, scale, v in columns]
        if any(cells):
            rows.append([f"{n:,}"] + cells)
    return ("table", header, rows)


def report_blocks(meta: Mapping[str, Any], records: Sequence[Record], summary: Summary,
                  variants: Sequence[str]) -> list[tuple[Any, ...]]:
    """The kube-proxy modes section: sync times and the rules' size per number of services, a
    column per variant (mean ± 95% CI over repetitions), and the variants not run. Nothing for
    a run that does not compare kube-proxy modes."""
    skipped = not_run(meta)
    if not has_modes(records) and not skipped:
        return []
    named = modes(records)
    ran = [v for v in variants if v in named]
    labels = {v: label(v, named.get(v)) for v in ran}
    blocks: list[tuple[Any, ...]] = [
        ("h2", "kube-proxy modes"),
        ("p", "Per node: the time to load a full sync of all the services (iptables-restore, "
         "nft -f; rendering left out), then a one-endpoint change as a partial sync. The rules "
         "are the sync input's (iptables: -A lines; nftables: add rule lines, its map and set "
         "elements not counted); the listed ruleset is what iptables-save / nft list table "
         "prints on one node; the kernel memory is the growth of /proc/meminfo's Slab + "
         "VmallocUsed + Percpu over the full sync, per node (machine-wide, so other work on the "
         "machine adds noise).")]
    if ran:
        blocks += [("h3", "Sync time per node"), _table(summary, ran, SYNC_MEASURES, labels),
                   ("h3", "Rules and their memory"), _table(summary, ran, RULES_MEASURES, labels)]
    if skipped:
        blocks.append(("p", "Not run here: " + "; ".join(f"`{v}` ({why})"
                                                         for v, why in skipped.items()) + "."))
    return blocks
