"""One page per run: `report.md` and the same as `report.html`.

What ran (experiment, topology, variants, the OVS datapath), the numbers (mean ± 95% CI over
repetitions per variant and metric, and the ratio of the last variant to the first), the share
of requests per pod, the testbed's own cost (each variant against the plain veth measured
beside it: testbed.analysis.overhead), the figures (drawn first if figures/index.json is
missing), the machine it ran on (from meta.json), and the faults the run noted. Reads only the
run directory.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from testbed.analysis import dataplanes, failover, overhead, rollout
from testbed.analysis.records import METRICS, read_meta, read_records, summarize, variant_order
from testbed.analysis.stats import MeanCI

ORDER = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "requests_per_s",
         "throughput_mbps", "path_hops", "cross_node_bytes_fraction", "cross_node_bytes",
         "source_ip_preserved", "jain_fairness", "requests", "errors", "nodes", "bringup_s",
         "sync_time_ms", "endpoint_change_ms", "rules", "ruleset_bytes", "rules_kernel_kib",
         "lb_ready_s", "teardown_s", "recovery_time_s", "outage_s",
         "degraded_s", "successes_per_s")
# a cluster's bring-up stages in the order they run (testbed.emulation.cluster)
STAGES = ("hosts", "fabric", "addresses", "controller", "switches", "workloads")
PER_POD = ("pod_share", "entry_share")

# ("h1"|"h2"|"h3"|"p", text) | ("ul", items) | ("table", header, rows) | ("img", alt, png, pdf)
Block = tuple[Any, ...]
Meta = Mapping[str, Any]                      # meta.json, or a part of it
Record = Mapping[str, Any]                    # a line of records.jsonl
Group = tuple[tuple[str, Any], ...]           # (field, value) pairs: workload, pod, services...
Summary = Mapping[tuple[str, str, Group], MeanCI]   # (variant, metric, group) -> mean and CI


def fmt(x: float | None) -> str:
    """A number at a precision a table reader wants (3 significant digits, no exponent)."""
    if x is None:
        return "–"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a == 0:
        return "0"
    return f"{x:.3g}"


def cell(ci: MeanCI | None, scale: float = 1.0, suffix: str = "") -> str:
    """'mean ± half' with the half-width at the mean's precision ('mean' alone without one)."""
    if ci is None:
        return ""
    mean = fmt(ci.mean * scale)
    if ci.half is None:
        return mean + suffix
    decimals = len(mean.split(".")[1]) if "." in mean else 0
    half = f"{ci.half * scale:,.{decimals}f}"
    if ci.half > 0 and float(half.replace(",", "")) == 0:
        half = fmt(ci.half * scale)
    return f"{mean} ± {half}{suffix}"


def _group_label(group: Group) -> str:
    return ", ".join(str(v) if k == "workload" else f"{k} {v}" for k, v in group)


def _sort_key(workloads: Sequence[str | None]) -> Callable[[tuple[str, Group]], tuple]:
    """Rows in the experiment's workload order, then the services sweep before the pods sweep,
    the usual metric order, the size, and a bring-up's whole before its stages in build order."""
    def key(item: tuple[str, Group]) -> tuple:
        metric, group = item
        g = dict(group)
        w = g.get("workload")
        size = g.get("services", g.get("pods"))
        stage = g.get("stage")
        return (workloads.index(w) if w in workloads else len(workloads), str(w), "pods" in g,
                ORDER.index(metric) if metric in ORDER else len(ORDER),
                size if isinstance(size, (int, float)) else 0,
                -1 if stage is None else STAGES.index(stage) if stage in STAGES else len(STAGES),
                str(group))
    return key


def _blocks(run_dir: str) -> list[Block]:
    meta = read_meta(run_dir)
    records = read_records(run_dir)
    skipped = dataplanes.not_run(meta)   # a mode the machine lacks: in no table's columns
    variants = [v for v in variant_order(meta, records) if v not in skipped]
    summary = summarize(records)
    exp = meta.get("experiment") or {}
    return (_heading(run_dir, meta, exp) + _variant_list(exp)
            + failover.timing_blocks(meta, variants)
            + rollout.report_blocks(meta, summary, variants)
            + dataplanes.report_blocks(meta, records, summary, variants)
            + _results(exp, records, summary, variants) + _pod_share_table(summary, variants)
            + _overhead(meta, exp, records) + _figures(run_dir) + _environment(meta)
            + _faults(meta))


# -- the report's sections --------------------------------------------------------------------

def _heading(run_dir: str, meta: Meta, exp: Meta) -> list[Block]:
    """The title and one paragraph: status, times, kind, topology, service measured."""
    dir_name = os.path.basename(os.path.abspath(run_dir))
    name = exp.get("name") or meta.get("run_id") or dir_name
    return [("h1", f"{name} — run {meta.get('run_id', dir_name)}"),
            ("p", "; ".join(_facts(meta, exp)) + ".")]


def _facts(meta: Meta, exp: Meta) -> list[str]:
    facts = [f"status **{meta.get('status', 'unknown')}**", f"started {meta.get('started', '?')}"]
    if meta.get("finished"):
        facts.append(f"finished {meta['finished']} ({meta.get('duration_s', '?')} s)")
    if exp:
        facts.append(f"kind {exp.get('kind', 'compare')}, {exp.get('repetitions', '?')} "
                     f"repetition(s), seed {exp.get('seed', '?')}")
    topo = meta.get("topology") or {}
    if topo or exp.get("topology"):
        facts.append(f"topology `{topo.get('name', '')}` "
                     f"({exp.get('topology') or topo.get('file', '')})")
    if meta.get("service"):
        facts.append(f"service measured `{meta['service']}`")
    if datapath_ran(meta):
        facts.append(f"OVS datapath {datapath_ran(meta)}")
    return facts


def datapath_ran(meta: Meta) -> str:
    """The datapath the run's bridges ran on (read from OVSDB while each variant's cluster was
    up; per variant when they differ), else the one the machine offered ('' if unknown)."""
    ran = {v: d for v, d in (meta.get("datapaths") or {}).items() if d}
    if len(set(ran.values())) == 1:
        return next(iter(ran.values()))
    if ran:
        return ", ".join(f"{d} ({v})" for v, d in ran.items())
    return str((meta.get("environment") or {}).get("datapath") or "")


def _variant_list(exp: Meta) -> list[Block]:
    """What each variant is: where its load balancer sends."""
    if not exp.get("variants"):
        return []
    items = []
    for v in exp["variants"]:
        if isinstance(v, dict):
            desc = ("no LB: the client sends to each pod's own address in turn"
                    if v.get("to") == "pods" else
                    "the LB sends to pod IP:targetPort" if v.get("mode") == "container-native"
                    else "the LB sends to node IP:NodePort, externalTrafficPolicy "
                    f"{v.get('external_traffic_policy')}")
            items.append(f"`{v.get('name')}`: mode {v.get('mode')} — {desc}"
                         + rollout.variant_settings(v))
    return [("h2", "Variants"), ("ul", items)]


def _results(exp: Meta, records: Sequence[Record], summary: Summary,
             variants: Sequence[str]) -> list[Block]:
    """The numbers: one row per metric and group, one column per variant."""
    reps = exp.get("repetitions")
    blocks: list[Block] = [
        ("h2", "Results"),
        ("p", "Mean ± half-width of the 95% Student-t confidence interval over repetitions "
         + (f"({reps} per variant)" if reps else "") + "; one repetition gives no interval.")]
    planned = [w.get("name") for w in exp.get("workloads") or [] if isinstance(w, dict)]
    keys = sorted({(m, g) for (_, m, g) in summary
                   if m not in PER_POD and m not in overhead.METRICS}, key=_sort_key(planned))
    if keys and variants:
        references = {v.get("name") for v in exp.get("variants") or []
                      if isinstance(v, dict) and v.get("to") == "pods"}
        blocks.append(_metric_table(keys, records, summary, variants,
                                    [v for v in variants if v not in references]))
    else:
        blocks.append(("p", "No measurements were recorded."))
    return blocks


def _unit(metric: str, records: Sequence[Record]) -> str:
    """The canonical unit, else the one the records give."""
    if metric in METRICS:
        return METRICS[metric].unit
    return next((r.get("unit", "") for r in records if r.get("metric") == metric), "")


def _metric_table(keys: Sequence[tuple[str, Group]], records: Sequence[Record], summary: Summary,
                  variants: Sequence[str], compared: Sequence[str]) -> Block:
    """With two compared variants or more (those sent through the VIP; a `to: pods` reference
    is not one), a last column: the last one's mean over the first one's."""
    ratio = len(compared) >= 2
    header = (["metric", "unit", "workload"] + list(variants)
              + ([f"{compared[-1]} / {compared[0]}"] if ratio else []))
    rows = []
    for metric, group in keys:
        row = [f"`{metric}`", _unit(metric, records), _group_label(group)]
        cis = [summary.get((v, metric, group)) for v in variants]
        row += [cell(ci) for ci in cis]
        if ratio:
            first, last = summary.get((compared[0], metric, group)), \
                summary.get((compared[-1], metric, group))
            row.append(fmt(last.mean / first.mean) if first and last and first.mean else "")
        rows.append(row)
    return ("table", header, rows)


def _pod_share_table(summary: Summary, variants: Sequence[str]) -> list[Block]:
    """The share of requests per pod (in %), one column per variant."""
    pods = sorted({dict(g)["pod"] for (_, m, g) in summary
                   if m == "pod_share" and "pod" in dict(g)})
    if not pods:
        return []
    rows = []
    for pod in pods:
        row = [pod]
        for v in variants:
            ci = next((c for (vv, m, g), c in summary.items()
                       if vv == v and m == "pod_share" and dict(g).get("pod") == pod), None)
            row.append(cell(ci, scale=100, suffix=" %"))
        rows.append(row)
    return [("h3", "Share of requests per pod"), ("table", ["pod"] + list(variants), rows)]


def _overhead(meta: Meta, exp: Meta, records: Sequence[Record]) -> list[Block]:
    """Each variant against the plain veth measured beside it, and the classic path's extra
    cost per extra hop (only for a run with a veth baseline)."""
    variants = [v for v in exp.get("variants") or [] if isinstance(v, dict) and v.get("name")]
    rows, extras = overhead.costs(records, variants)
    if not rows:
        return []
    requests = next((w.get("requests") for w in exp.get("workloads") or []
                     if isinstance(w, dict) and w.get("name") == overhead.LATENCY), None)
    same = f"the same {requests} requests" if requests else "the same request count"
    ran = datapath_ran(meta)
    blocks: list[Block] = [
        ("h2", "The testbed's own cost"),
        ("p", f"Each variant's new-connection p50 (workload `{overhead.LATENCY}`) against a "
         "plain veth between two network namespaces, measured beside it in the same run "
         f"(workload `{overhead.BASELINE}`: the same probe, {same}), and the routed hops of "
         "the same requests: p50 / veth, and (p50 − veth p50) / routed hops, what one routed "
         "hop costs on this machine. "
         + (f"OVS datapath that ran: **{ran}**. " if ran else "")
         + "Mean ± 95% interval over repetitions."),
        ("table", ["variant", "p50 (ms)", "veth p50 (ms)", "p50 / veth", "routed hops",
                   "per routed hop (µs)"],
         [[f"`{r.variant}`", cell(r.p50), cell(r.veth), cell(r.ratio, suffix="×"),
           cell(r.hops), cell(r.hop_cost_us)] for r in rows])]
    lines = [_extra_line(e) for e in extras]
    if lines:
        blocks.append(("ul", lines))
    return blocks


def _extra_line(e: overhead.ExtraCost) -> str:
    """One classic variant's extra cost over container-native, per extra routed hop."""
    delta = f"p50 {'+' if e.delta_us and e.delta_us.mean >= 0 else ''}{cell(e.delta_us)} µs"
    if e.per_hop_us is None:
        return (f"`{e.variant}` over `{e.over}`: {delta} with no extra routed hop "
                f"({cell(e.extra_hops)})")
    return (f"`{e.variant}` over `{e.over}`: {delta} for {cell(e.extra_hops)} extra routed "
            f"hops: **{cell(e.per_hop_us)} µs per extra hop**")


def _figures(run_dir: str) -> list[Block]:
    """Each figure drawn (its PNGs, linking the PDFs), then the ones skipped and why."""
    blocks: list[Block] = [("h2", "Figures")]
    skipped = []
    for entry in _figure_index(run_dir).get("figures", []):
        files = entry.get("files") or []
        if not files:
            skipped.append(f"{entry.get('title', entry.get('figure'))}: {entry.get('skipped', '')}")
            continue
        blocks.append(("h3", entry.get("title", entry.get("figure", ""))))
        captions = entry.get("captions") or {}
        for png in [f for f in files if f.endswith(".png")]:
            pdf = png[:-4] + ".pdf"
            alt = captions.get(png) or os.path.splitext(os.path.basename(png))[0]
            blocks.append(("img", alt, png, pdf if pdf in files else None))
    if skipped:
        blocks += [("p", "Not drawn (skipped):"), ("ul", skipped)]
    return blocks


def _environment(meta: Meta) -> list[Block]:
    """The machine as meta.json describes it, and the git revision that ran."""
    env_rows = [[k, v] for k, v in _flatten(meta.get("environment") or {})]
    git = meta.get("git") or {}
    if git:
        dirty = git.get("dirty")
        state = " (uncommitted changes)" if dirty else " (clean)" if dirty is False else ""
        env_rows.append(["git revision", f"{git.get('revision') or 'unknown'}{state}"])
    return [("h2", "Environment"),
            ("table", ["what", "value"], env_rows) if env_rows else ("p", "Not recorded.")]


def _faults(meta: Meta) -> list[Block]:
    faults = meta.get("faults") or []
    if not faults:
        return [("h2", "Faults"), ("p", "None noted.")]
    return [("h2", "Faults"),
            ("ul", [f"{f.get('time', '')} {f.get('kind', '')}: {f.get('detail', '')}"
                    for f in faults])]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        elif isinstance(value, list):
            yield name, ", ".join(str(v) for v in value)
        else:
            yield name, "" if value is None else str(value)


def _figure_index(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "figures", "index.json")
    if not os.path.isfile(path):
        from testbed.analysis.plots import plot_run
        plot_run(run_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


# -- rendering --------------------------------------------------------------------------------

def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_block(block: Block) -> str | None:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
        return "#" * int(kind[1]) + " " + block[1]
    if kind == "p":
        return block[1]
    if kind == "ul":
        return "\n".join(f"- {item}" for item in block[1])
    if kind == "table":
        return _md_table(block[1], block[2])
    if kind == "img":
        _, alt, src, pdf = block
        return f"![{_md_cell(alt)}]({src})  \n*{_md_cell(alt)}*" + (f" [PDF]({pdf})" if pdf else "")
    return None


def to_markdown(blocks: Sequence[Block]) -> str:
    out = [text for text in map(_md_block, blocks) if text is not None]
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then turn the two Markdown marks used here (`code`, **bold**) into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


HTML_STYLE = (
    "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
    "line-height:1.4}table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
    "padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%;width:32em;display:block}code{background:#f3f3f3}</style>")


def _html_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_inline_html(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline_html(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_figure(alt: str, src: str, pdf: str | None) -> str:
    link = f" <a href='{html.escape(pdf, quote=True)}'>PDF</a>" if pdf else ""
    return (f"<figure><img src='{html.escape(src, quote=True)}' "
            f"alt='{html.escape(alt, quote=True)}'>"
            f"<figcaption>{html.escape(alt)}{link}</figcaption></figure>")


def _html_block(block: Block) -> str | None:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
        return f"<{kind}>{_inline_html(block[1])}</{kind}>"
    if kind == "p":
        return f"<p>{_inline_html(block[1])}</p>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>"
    if kind == "table":
        return _html_table(block[1], block[2])
    if kind == "img":
        return _html_figure(*block[1:])
    return None


def to_html(blocks: Sequence[Block]) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "report")
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(title)}</title>", HTML_STYLE, "</head><body>"]
    out += [text for text in map(_html_block, blocks) if text is not None]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.md and report.html (figures drawn first if they are missing);
    returns report.md's path."""
    blocks = _blocks(run_dir)
    md_path = os.path.join(run_dir, "report.md")
    for path, text in ((md_path, to_markdown(blocks)),
                       (os.path.join(run_dir, "report.html"), to_html(blocks))):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return md_path
