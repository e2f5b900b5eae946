"""What a rollout run's samples say (pure, but for the figure's drawing): the share of requests
answered from the rolling update's start to the end of the load (upstream's e2e "should not
have connectivity disruption during rolling update" asks for 95%), the errors by kind, the p99
latency over the same window, and the errors per second with the rollout's events marked; for
each of the two loads (LOADS: a new connection per request, and kept-alive connections).

    error_kind: what a failed request's row says went wrong (an L7 LB's own 502/503 apart)
    during: the rows of requests started in a window (from the rollout's start to the load's
        end: the old pods' termination and the LB's lags come after the rollout is "complete")
    success_rate, errors_by_kind, p99_ms: the records' numbers
    event_rows: the rollout's status as `events` samples (t from the load's start)
    has_samples, loads, lb_groups, draw: the figure (registered in
        testbed.analysis.plots.FIGURES)
    report_blocks: the report's success-rate table, a row per variant
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from testbed.analysis.rundata import RunData, failover_events
from testbed.analysis.stats import mean, percentile

Row = Mapping[str, Any]
SAMPLES = "rollout"              # the workload name of the per-request samples (new connections)
KEEPALIVE = "rollout-keepalive"  # ... of the kept-alive load's requests
# the loads a rollout run keeps on the VIP: samples' and records' workload -> what it is
LOADS = {SAMPLES: "new connection per request", KEEPALIVE: "kept-alive connections"}
MIN_SUCCESS_RATE = 0.95          # upstream's e2e threshold for a rolling update behind an LB


def error_kind(row: Row) -> str | None:
    """None for a good answer; else httpprobe's error (connect timeout, refused, reset, ...) or
    "http <status>" for an answer that was not 200, "http <status> from the LB" when no pod
    answered it (an L7 LB's own 502 or 503: no target in service, or the target's connection
    failed; a pod's answers name the pod, in the body or its X-Pod header)."""
    if row.get("ok"):
        return None
    if row.get("error"):
        return str(row["error"])
    if row.get("status") is None:
        return "no answer"
    return f"http {row['status']}" + ("" if row.get("pod") else " from the LB")


def during(rows: Iterable[Row], start: float, end: float | None) -> list[Row]:
    """Rows of requests that started in [start, end] (end None: to the last)."""
    return [r for r in rows if isinstance(r.get("t"), (int, float)) and r["t"] >= start
            and (end is None or r["t"] <= end)]


def success_rate(rows: Sequence[Row]) -> float | None:
    """Share of requests answered 200 (None without requests)."""
    return sum(1 for r in rows if r.get("ok")) / len(rows) if rows else None


def errors_by_kind(rows: Iterable[Row]) -> dict[str, int]:
    """Failed requests per kind, most frequent first."""
    counts: dict[str, int] = {}
    for r in rows:
        kind = error_kind(r)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def p99_ms(rows: Iterable[Row]) -> float | None:
    """p99 latency of the successful requests (None without any)."""
    values = [float(r["latency_ms"]) for r in rows
              if r.get("ok") and isinstance(r.get("latency_ms"), (int, float))]
    return percentile(values, 99) if values else None


def event_rows(status: Mapping[str, Any], load_start: float) -> list[dict[str, Any]]:
    """The rollout's start, scaling events and completion as `events` samples: t (seconds from
    the load's start), action, target (the pods), done_t."""
    rows = [{"t": round(status["started"] - load_start, 4), "action": "rollout",
             "target": status["deployment"]}]
    for ev in status["events"]:
        rows.append({"t": round(ev["time"] - load_start, 4),
                     "action": f"{ev['rs']} to {ev['replicas']}", "target": ",".join(ev["pods"])})
    if status.get("completed") is not None:
        rows.append({"t": round(status["completed"] - load_start, 4), "action": "complete",
                     "target": status["deployment"]})
    return rows


def variant_settings(variant: Mapping[str, Any]) -> str:
    """What a variant (as meta.json has it) sets of the LB's kind, readiness gates and
    draining, for the report's list of variants ("" if nothing)."""
    said = []
    if variant.get("lb"):
        said.append({"l4": "L4 LB (the VPC's)", "l7": "L7 LB (HAProxy)"}.get(
            variant["lb"], f"LB {variant['lb']}"))
    if variant.get("readiness_gates") is not None:
        said.append("readiness gates " + ("on" if variant["readiness_gates"] else "off"))
    if variant.get("deregistration_delay_s") is not None:
        said.append(f"LB draining {variant['deregistration_delay_s']:g} s")
    return f"; {', '.join(said)}" if said else ""


# -- the figure -------------------------------------------------------------------------------

def has_samples(data: RunData) -> bool:
    return bool(loads(data))


def loads(data: RunData) -> list[str]:
    """The loads (LOADS' keys) the run has samples of, in LOADS' order: a panel each."""
    seen = {w for (_, _, w) in data.samples}
    return [w for w in LOADS if w in seen]


def lb_groups(data: RunData) -> dict[str, list[str]]:
    """The variants by the LB they ran through ("L4 LB", "L7 LB"; a variant's `lb`, else the
    topology's), in experiment order: a column of panels each."""
    kind = str(((data.meta.get("topology") or {}).get("load_balancer") or {}).get("kind")
               or "l4")
    lbs = {v.get("name"): v.get("lb") or kind for v in data.experiment.get("variants") or []
           if isinstance(v, dict)}
    groups: dict[str, list[str]] = {}
    for variant in data.variants:
        groups.setdefault(f"{lbs.get(variant, kind).upper()} LB", []).append(variant)
    return groups


def draw(ax: Any, data: RunData,
         mark_events: Callable[[Any, Iterable[Mapping[str, Any]]], None],
         load: str = SAMPLES, last: bool = True, variants: Sequence[str] | None = None,
         group: str = "") -> None:
    """Errors per second of one load over time, a line per variant (mean over repetitions),
    the first repetition's rollout events marked; a caption in data.captions["rollout"].
    last: the bottom panel (it gets the x label and the legend); variants: those drawn (all);
    group: what the panel's variants share, for its title (e.g. "L7 LB")"""
    top = 0.0
    reps_seen = 0
    busy = 0.0   # the last second with an error, or a completion: the x axis ends after it
    shown = list(data.variants if variants is None else variants)
    for variant in shown:
        reps = [_errors_per_second(rows) for (v, _, w), rows in data.samples.items()
                if v == variant and w == load]
        reps = [bins for bins in reps if bins]
        if not reps:
            continue
        reps_seen = max(reps_seen, len(reps))
        seconds = sorted({s for bins in reps for s in bins})
        ys = [mean([bins.get(s, 0) for bins in reps]) for s in seconds]
        top = max(top, max(ys, default=0))
        busy = max([busy] + [s + 1.0 for s, y in zip(seconds, ys, strict=True) if y])
        ax.step(seconds + [seconds[-1] + 1], ys + ys[-1:], where="post",
                color=data.colour[variant], label=variant)
    starts = [e["t"] for e in failover_events(data) if e["label"].startswith("rollout")]
    mark_events(ax, [{"t": starts[0], "label": "rollout starts"}] if starts else [])
    for variant, t in completions(data).items():   # each variant's own end, in its colour
        if variant in shown:
            ax.axvline(t, color=data.colour[variant], linewidth=0.8, linestyle=(0, (1, 2)))
            busy = max(busy, t)
    if busy:   # the quiet end of the load is left out (it runs on for the old pods' grace)
        ax.set_xlim(0, busy + 3.0)
    if last:
        ax.set_xlabel("time since the load started (s)")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.35), fontsize=5.5, ncol=2)
    ax.set_ylabel("errors/s")
    ax.set_ylim(0, max(1.0, top * 1.2))
    title = ", ".join(x for x in (group, LOADS.get(load, load)) if x)
    ax.set_title(f"{title} ({reps_seen} rep., mean)", loc="left", fontsize=6.5)
    data.captions["rollout"] = (
        "Failed requests per second under steady open-loop load through the VIP while every "
        "pod is replaced: a row of panels per load (a new connection per request; requests "
        "over kept-alive connections), a column per load balancer; grey: the rollout's start; "
        "dotted in a variant's colour: its rollout complete (every pod new and available, "
        "mean over repetitions). The load runs on after the last error (not drawn).")


def completions(data: RunData) -> dict[str, float]:
    """variant -> mean time its rollouts completed (from its `events` samples)."""
    times: dict[str, list[float]] = {}
    for (variant, _, workload), rows in data.samples.items():
        if workload == "events":
            times.setdefault(variant, []).extend(
                float(r["t"]) for r in rows if r.get("action") == "complete"
                and isinstance(r.get("t"), (int, float)))
    return {v: mean(ts) for v, ts in times.items() if ts and v in data.variants}


def _errors_per_second(rows: Iterable[Row]) -> dict[int, int]:
    bins: dict[int, int] = {}
    for r in rows:
        t = r.get("t")
        if isinstance(t, (int, float)):
            bins.setdefault(int(t), 0)
            if not r.get("ok"):
                bins[int(t)] += 1
    return bins


# -- the report's table -----------------------------------------------------------------------

def report_blocks(meta: Mapping[str, Any], summary: Mapping[tuple[str, str, Any], Any],
                  variants: Sequence[str]) -> list[tuple[Any, ...]]:
    """A row per variant: its LB, mode, gates and draining (a variant's own, else what its
    topology had), then per load the success rate from the rollout's start (mean over
    repetitions, against MIN_SUCCESS_RATE), its errors by kind (per repetition: a repetition
    without a kind counts 0 of it) and p99, and the rollout's duration. Nothing for a run that
    is not a rollout.
    meta: meta.json; summary: testbed.analysis.records.summarize's (variant, metric, group) ->
        MeanCI"""
    exp = meta.get("experiment") or {}
    if exp.get("kind") != "rollout":
        return []
    reps = int(exp.get("repetitions") or 1)
    topo = meta.get("topology") or {}
    timing = (meta.get("timing") or {}).get("variants") or {}
    gated = any(d.get("readiness_gates") for d in topo.get("deployments") or []
                if isinstance(d, dict))
    settings = {v.get("name"): v for v in exp.get("variants") or [] if isinstance(v, dict)}
    present = [w for w in LOADS if any(dict(g).get("workload") == w for (_, _, g) in summary)]
    header = ["variant", "LB", "targets", "gates", "draining"]
    for w in present:
        header += [f"success rate, {LOADS[w]}", f"errors by kind, {LOADS[w]}",
                   f"p99 ms, {LOADS[w]}"]
    header.append("rollout duration s")
    rows = []
    for v in variants:
        s = settings.get(v, {})
        gates = s.get("readiness_gates")
        delay = s.get("deregistration_delay_s")
        lb = s.get("lb") or (topo.get("load_balancer") or {}).get("kind") or "l4"
        row = [f"`{v}`", str(lb),
               "ip (pods)" if s.get("mode") == "container-native" else "instance (nodes)",
               _setting(gated if gates is None else gates, s.get("mode")),
               _draining((timing.get(v) or {}).get("lb_deregistration_delay_s")
                         if delay is None else delay, s.get("mode"))]
        for w in present:
            rate = summary.get((v, "success_rate", (("workload", w),)))
            row.append("–" if rate is None else
                       f"{rate.mean:.3f}" + (" ✗" if rate.mean < MIN_SUCCESS_RATE else " ✓"))
            kinds = sorted(((dict(g)["error"], ci.mean * ci.n / reps)
                            for (vv, m, g), ci in summary.items()
                            if vv == v and m == "errors" and dict(g).get("workload") == w
                            and "error" in dict(g) and ci.mean), key=lambda kv: -kv[1])
            row.append(", ".join(f"{k} {n:.3g}" for k, n in kinds) or "0")
            p99 = summary.get((v, "latency_p99_ms", (("workload", w),)))
            row.append("–" if p99 is None else f"{p99.mean:.3g}")
        duration = summary.get((v, "rollout_duration_s", (("workload", SAMPLES),)))
        row.append("–" if duration is None else f"{duration.mean:.2f}")
        rows.append(row)
    return [("h2", "Success rate during the rollout"),
            ("p", f"Requests answered 200 from the rollout's start to the end of the load, mean "
             f"over repetitions (✓: at least upstream's {MIN_SUCCESS_RATE:g}); errors by kind: "
             "mean per repetition over the whole load; p99 of the answered requests from the "
             "rollout's start; gates and draining as the variant ran (its own setting, else "
             "its topology's; –: does not apply: with instance targets the LB's targets are "
             "the nodes, which a rollout neither adds nor removes)."),
            ("table", header, rows)]


def _setting(gates: Any, mode: Any) -> str:
    if mode != "container-native":
        return "–"
    return "on" if gates else "off"


def _draining(delay: Any, mode: Any) -> str:
    if mode != "container-native":
        return "–"
    return "?" if delay is None else ("off" if not delay else f"{delay:g} s")
