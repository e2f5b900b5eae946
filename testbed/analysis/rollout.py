"""What a rollout run's samples say (pure, but for the figure's drawing): the share of requests
answered from the rolling update's start to the end of the load (upstream's e2e "should not
have connectivity disruption during rolling update" asks for 95%), the errors by kind, the p99
latency over the same window, and the errors per second with the rollout's events marked.

    error_kind: what a failed request's row says went wrong
    during: the rows of requests started in a window (from the rollout's start to the load's
        end: the old pods' termination and the LB's lags come after the rollout is "complete")
    success_rate, errors_by_kind, p99_ms: the records' numbers
    event_rows: the rollout's status as `events` samples (t from the load's start)
    has_samples, draw: the figure (registered in testbed.analysis.plots.FIGURES)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from testbed.analysis.rundata import RunData, failover_events
from testbed.analysis.stats import mean, percentile

Row = Mapping[str, Any]
SAMPLES = "rollout"              # the workload name of the per-request samples
MIN_SUCCESS_RATE = 0.95          # upstream's e2e threshold for a rolling update behind an LB


def error_kind(row: Row) -> str | None:
    """None for a good answer; else httpprobe's error (connect timeout, refused, reset, ...) or
    "http <status>" for an answer that was not 200."""
    if row.get("ok"):
        return None
    if row.get("error"):
        return str(row["error"])
    return f"http {row.get('status')}" if row.get("status") is not None else "no answer"


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
    """What a variant (as meta.json has it) sets of readiness gates and draining, for the
    report's list of variants ("" if nothing)."""
    said = []
    if variant.get("readiness_gates") is not None:
        said.append("readiness gates " + ("on" if variant["readiness_gates"] else "off"))
    if variant.get("deregistration_delay_s") is not None:
        said.append(f"LB draining {variant['deregistration_delay_s']:g} s")
    return f"; {', '.join(said)}" if said else ""


# -- the figure -------------------------------------------------------------------------------

def has_samples(data: RunData) -> bool:
    return any(w == SAMPLES for (_, _, w) in data.samples)


def draw(ax: Any, data: RunData,
         mark_events: Callable[[Any, Iterable[Mapping[str, Any]]], None]) -> None:
    """Errors per second over time, a line per variant (mean over repetitions), the first
    repetition's rollout events marked; a caption in data.captions["rollout"]."""
    top = 0.0
    reps_seen = 0
    for variant in data.variants:
        reps = [_errors_per_second(rows) for (v, _, w), rows in data.samples.items()
                if v == variant and w == SAMPLES]
        reps = [bins for bins in reps if bins]
        if not reps:
            continue
        reps_seen = max(reps_seen, len(reps))
        seconds = sorted({s for bins in reps for s in bins})
        ys = [mean([bins.get(s, 0) for bins in reps]) for s in seconds]
        top = max(top, max(ys, default=0))
        ax.step(seconds + [seconds[-1] + 1], ys + ys[-1:], where="post",
                color=data.colour[variant], label=variant)
    starts = [e["t"] for e in failover_events(data) if e["label"].startswith("rollout")]
    mark_events(ax, [{"t": starts[0], "label": "rollout starts"}] if starts else [])
    for variant, t in completions(data).items():   # each variant's own end, in its colour
        ax.axvline(t, color=data.colour[variant], linewidth=0.8, linestyle=(0, (1, 2)))
    ax.set_xlabel("time since the load started (s)")
    ax.set_ylabel("errors/s")
    ax.set_ylim(0, max(1.0, top * 1.2))
    ax.set_title(f"Rolling update — errors per second ({reps_seen} repetition(s), mean)",
                 loc="left")
    ax.legend(loc="upper right")
    data.captions["rollout"] = (
        "Failed requests per second under steady open-loop load (a new connection each) "
        "while every pod is replaced; grey: the rollout's start; dotted in a variant's colour: "
        "its rollout complete (every pod new and available, mean over repetitions).")


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
