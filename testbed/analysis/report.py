"""One page per run: `report.md` and the same as `report.html`.

What ran (experiment, topology, variants), the numbers (mean ± 95% CI over repetitions per
variant and metric, and the ratio of the last variant to the first), the share of requests per
pod, the figures (drawn first if figures/index.json is missing), the machine it ran on (from
meta.json), and the faults the run noted. Reads only the run directory.
"""

from __future__ import annotations

import html
import json
import os
from typing import Optional

from testbed.analysis.records import METRICS, read_meta, read_records, summarize, variant_order
from testbed.analysis.stats import MeanCI

ORDER = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "requests_per_s",
         "throughput_mbps", "path_hops", "cross_node_bytes_fraction", "cross_node_bytes",
         "source_ip_preserved", "jain_fairness", "requests", "errors", "sync_time_ms", "rules",
         "recovery_time_s")
PER_POD = ("pod_share", "entry_share")


def fmt(x: Optional[float]) -> str:
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


def cell(ci: Optional[MeanCI], scale: float = 1.0, suffix: str = "") -> str:
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


def _group_label(group: tuple) -> str:
    return ", ".join(str(v) if k == "workload" else f"{k} {v}" for k, v in group)


def _sort_key(workloads: list):
    def key(item):
        metric, group = item
        g = dict(group)
        w = g.get("workload")
        services = g.get("services")
        return (workloads.index(w) if w in workloads else len(workloads), str(w),
                ORDER.index(metric) if metric in ORDER else len(ORDER),
                services if isinstance(services, (int, float)) else 0, str(group))
    return key


def _blocks(run_dir: str) -> list:
    meta = read_meta(run_dir)
    records = read_records(run_dir)
    variants = variant_order(meta, records)
    summary = summarize(records)
    exp = meta.get("experiment") or {}
    name = exp.get("name") or meta.get("run_id") or os.path.basename(os.path.abspath(run_dir))
    blocks: list = [("h1", f"{name} — run {meta.get('run_id', os.path.basename(os.path.abspath(run_dir)))}")]

    status = meta.get("status", "unknown")
    facts = [f"status **{status}**", f"started {meta.get('started', '?')}"]
    if meta.get("finished"):
        facts.append(f"finished {meta['finished']} ({meta.get('duration_s', '?')} s)")
    if exp:
        facts.append(f"kind {exp.get('kind', 'compare')}, {exp.get('repetitions', '?')} repetition(s), "
                     f"seed {exp.get('seed', '?')}")
    topo = meta.get("topology") or {}
    if topo or exp.get("topology"):
        facts.append(f"topology `{topo.get('name', '')}` ({exp.get('topology') or topo.get('file', '')})")
    if meta.get("service"):
        facts.append(f"service measured `{meta['service']}`")
    blocks.append(("p", "; ".join(facts) + "."))
    if exp.get("variants"):
        items = []
        for v in exp["variants"]:
            if isinstance(v, dict):
                desc = ("the LB sends to pod IP:targetPort" if v.get("mode") == "container-native" else
                        f"the LB sends to node IP:NodePort, externalTrafficPolicy {v.get('external_traffic_policy')}")
                items.append(f"`{v.get('name')}`: mode {v.get('mode')} — {desc}")
        blocks += [("h2", "Variants"), ("ul", items)]

    # the numbers
    blocks.append(("h2", "Results"))
    reps = exp.get("repetitions")
    blocks.append(("p", "Mean ± half-width of the 95% Student-t confidence interval over repetitions "
                   + (f"({reps} per variant)" if reps else "") + "; one repetition gives no interval."))
    planned = [w.get("name") for w in exp.get("workloads") or [] if isinstance(w, dict)]
    keys = sorted({(m, g) for (_, m, g) in summary if m not in PER_POD}, key=_sort_key(planned))
    if keys and variants:
        ratio = len(variants) >= 2
        header = ["metric", "unit", "workload"] + variants + ([f"{variants[-1]} / {variants[0]}"] if ratio else [])
        rows = []
        for metric, group in keys:
            unit = METRICS[metric].unit if metric in METRICS else next(
                (r.get("unit", "") for r in records if r.get("metric") == metric), "")
            row = [f"`{metric}`", unit, _group_label(group)]
            cis = [summary.get((v, metric, group)) for v in variants]
            row += [cell(ci) for ci in cis]
            if ratio:
                first, last = cis[0], cis[-1]
                row.append(fmt(last.mean / first.mean) if first and last and first.mean else "")
            rows.append(row)
        blocks.append(("table", header, rows))
    else:
        blocks.append(("p", "No measurements were recorded."))
    pods = sorted({dict(g)["pod"] for (_, m, g) in summary if m == "pod_share" and "pod" in dict(g)})
    if pods:
        rows = []
        for pod in pods:
            row = [pod]
            for v in variants:
                ci = next((c for (vv, m, g), c in summary.items()
                           if vv == v and m == "pod_share" and dict(g).get("pod") == pod), None)
                row.append(cell(ci, scale=100, suffix=" %"))
            rows.append(row)
        blocks += [("h3", "Share of requests per pod"), ("table", ["pod"] + variants, rows)]

    # figures
    blocks.append(("h2", "Figures"))
    index = _figure_index(run_dir)
    skipped = []
    for entry in index.get("figures", []):
        files = entry.get("files") or []
        if not files:
            skipped.append(f"{entry.get('title', entry.get('figure'))}: {entry.get('skipped', '')}")
            continue
        blocks.append(("h3", entry.get("title", entry.get("figure", ""))))
        pngs = [f for f in files if f.endswith(".png")]
        captions = entry.get("captions") or {}
        for png in pngs:
            pdf = png[:-4] + ".pdf"
            blocks.append(("img", captions.get(png) or os.path.splitext(os.path.basename(png))[0], png,
                           pdf if pdf in files else None))
    if skipped:
        blocks += [("p", "Not drawn (skipped):"), ("ul", skipped)]

    # environment
    blocks.append(("h2", "Environment"))
    env_rows = [[k, v] for k, v in _flatten(meta.get("environment") or {})]
    git = meta.get("git") or {}
    if git:
        rev = git.get("revision") or "unknown"
        dirty = git.get("dirty")
        env_rows.append(["git revision", f"{rev}" + (" (uncommitted changes)" if dirty else
                                                    " (clean)" if dirty is False else "")])
    blocks.append(("table", ["what", "value"], env_rows) if env_rows else ("p", "Not recorded."))

    # faults
    blocks.append(("h2", "Faults"))
    faults = meta.get("faults") or []
    if faults:
        blocks.append(("ul", [f"{f.get('time', '')} {f.get('kind', '')}: {f.get('detail', '')}" for f in faults]))
    else:
        blocks.append(("p", "None noted."))
    return blocks


def _flatten(data, prefix=""):
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        elif isinstance(value, list):
            yield name, ", ".join(str(v) for v in value)
        else:
            yield name, "" if value is None else str(value)


def _figure_index(run_dir: str) -> dict:
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

def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            _, alt, src, pdf = block
            out.append(f"![{_md_cell(alt)}]({src})  \n*{_md_cell(alt)}*" + (f" [PDF]({pdf})" if pdf else ""))
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then turn the two Markdown marks used here (`code`, **bold**) into tags."""
    import re
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


def to_html(blocks: list) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "report")
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
           "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
           "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%;"
           "width:32em;display:block}code{background:#f3f3f3}</style>", "</head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("<table><tr>" + "".join(f"<th>{_inline_html(str(h))}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline_html(str(c))}</td>" for c in row) + "</tr>"
                                 for row in rows) + "</table>")
        elif kind == "img":
            _, alt, src, pdf = block
            out.append(f"<figure><img src='{html.escape(src, quote=True)}' alt='{html.escape(alt, quote=True)}'>"
                       + f"<figcaption>{html.escape(alt)}"
                       + (f" <a href='{html.escape(pdf, quote=True)}'>PDF</a>" if pdf else "") + "</figcaption>"
                       + "</figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str) -> str:
    """Write <run_dir>/report.md and report.html (figures drawn first if they are missing);
    returns report.md's path."""
    blocks = _blocks(run_dir)
    md_path = os.path.join(run_dir, "report.md")
    for path, text in ((md_path, to_markdown(blocks)), (os.path.join(run_dir, "report.html"), to_html(blocks))):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return md_path
