"""Do two runs of the same experiment agree? For every (variant, metric, workload) both runs
measured: the two means, their relative difference, and whether each run's mean lies inside
the other's 95% confidence interval (`cnlb agree RUN_A RUN_B`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from testbed.analysis.records import read_meta, read_records, summarize

Row = dict[str, Any]     # variant, metric, group, a, b, a_half, b_half, relative_difference...


def agreement(run_a: str, run_b: str) -> list[Row]:
    """One row per (variant, metric, group) both runs measured with an interval."""
    a, b = summarize(read_records(run_a)), summarize(read_records(run_b))
    rows = []
    for key in sorted(set(a) & set(b), key=str):
        ma, mb = a[key], b[key]
        if ma.half is None or mb.half is None:
            continue
        overlap = abs(ma.mean - mb.mean) <= ma.half + mb.half
        inside = abs(ma.mean - mb.mean) <= max(ma.half, mb.half)
        scale = max(abs(ma.mean), abs(mb.mean))
        rel = abs(ma.mean - mb.mean) / scale if scale else 0.0
        rows.append({"variant": key[0], "metric": key[1], "group": key[2], "a": ma.mean,
                     "b": mb.mean, "a_half": ma.half, "b_half": mb.half,
                     "relative_difference": rel, "intervals_overlap": overlap,
                     "mean_inside_other_ci": inside})
    return rows


def _group(group: Any) -> str:
    """"path" or "path/web-0" for a group of (field, value) pairs."""
    if not isinstance(group, tuple):
        return str(group or "")
    return "/".join(str(g[1]) if isinstance(g, tuple) else str(g) for g in group if g)


def why_nothing_to_compare(run_a: str, run_b: str) -> str:
    """Why agreement() found no row, as `what — how to fix` (call it when the rows are empty)."""
    a, b = summarize(read_records(run_a)), summarize(read_records(run_b))
    for run, summary in ((run_a, a), (run_b, b)):
        if not summary:
            return (f"{run} holds no measurements (records.jsonl is empty or missing) — "
                    "give a run that measured something")
    common = set(a) & set(b)
    if not common:
        names = [(read_meta(r).get("experiment") or {}).get("name") for r in (run_a, run_b)]
        which = (f" (experiments {names[0]!r} and {names[1]!r})" if names[0] != names[1] else "")
        return (f"{run_a} and {run_b} have no variant, metric and workload in common{which} — "
                "give two runs of one experiment")
    held = "the one measurement" if len(common) == 1 else f"none of the {len(common)} measurements"
    return (f"{held} both runs hold has {'no' if len(common) == 1 else 'a'} confidence interval "
            "(one repetition gives none) — run the experiment with `repetitions:` 2 or more")


def format_agreement(rows: Sequence[Row]) -> str:
    """A table of the rows and one closing line: how many intervals overlap."""
    lines = [f"{'variant':<18} {'metric':<26} {'group':<12} {'run A':>16} {'run B':>16} "
             f"{'diff':>6}  CIs"]
    for r in rows:
        lines.append(f"{r['variant']:<18} {r['metric']:<26} {_group(r['group']):<12} "
                     f"{r['a']:>9.4g} ±{r['a_half']:<6.2g} {r['b']:>9.4g} ±{r['b_half']:<6.2g} "
                     f"{r['relative_difference']:>6.1%}  "
                     f"{'overlap' if r['intervals_overlap'] else 'APART'}")
    n = len(rows)
    overlap = sum(r["intervals_overlap"] for r in rows)
    inside = sum(r["mean_inside_other_ci"] for r in rows)
    diffs = sorted(r["relative_difference"] for r in rows)
    median = diffs[n // 2] if n else 0.0
    lines.append(f"{overlap}/{n} intervals overlap; {inside}/{n} means inside the other run's "
                 f"interval; median relative difference of means {median:.1%}")
    return "\n".join(lines)
