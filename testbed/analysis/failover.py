"""What a client saw during a failover run, from its samples: how long the service was out
(fewer than half the requests succeeding) or degraded (some failing), the successful requests
per second in each event's window, the clock's steps as labelled marks, the figure's panels
(successful requests/s and errors/s over time, one per variant), and the report's table of the
control plane's clock each variant ran on (meta.json `timing`).

The runner records `window_metrics` per repetition (whole run, and each event's window: from
the event to the next one or the end), so tables and `cnlb agree` see them. Requests are
binned by when they started: with httpprobe's open loop every bin of a dead path still holds
its scheduled requests, each a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.analysis.rundata import RunData

Row = Mapping[str, Any]
Block = tuple[Any, ...]

OUTAGE_BELOW = 0.5          # a bin is "out" when fewer than this share of its requests succeed
REQUESTS_PER_BIN = 20       # outage bins hold this many scheduled requests (at least 0.1 s)
PANEL_BIN_S = 0.5           # the figure's bins
MERGE_S = 0.4               # steps closer than this share one mark
STAGGER_S = 1.5             # marks closer than this put their labels at two heights

# the clock's steps worth a mark (testbed.kubernetes.lifecycle.ACTIONS), as the figure names them
STEP_LABELS = {
    "pod-terminating": "terminating",
    "container-crashed": "crashed",
    "pod-not-ready": "not ready",
    "sigterm": "SIGTERM",
    "sigkill": "SIGKILL",
    "pod-deleted": "deleted",
    "node-down": "node down",
    "node-not-ready": "NotReady",
    "evict": "evicted",
    "lb-deregister": "LB deregistered",
    "lb-register": "LB registered",
}


@dataclass(frozen=True)
class Window:
    """What the client saw between two times of a run.

    requests: requests started in it; errors: those that failed
    successes_per_s: successful requests per second of the window
    outage_s: the longest stretch in which fewer than half the requests succeeded
    degraded_s: the longest stretch in which some request failed
    """
    requests: int
    errors: int
    successes_per_s: float
    outage_s: float
    degraded_s: float


def outage_bin_s(rate: float) -> float:
    """Bins that hold REQUESTS_PER_BIN scheduled requests at the run's rate (0.1 s at least)."""
    return max(0.1, REQUESTS_PER_BIN / rate) if rate > 0 else 1.0


def window(rows: Iterable[Row], start: float, end: float, bin_s: float) -> Window:
    """The requests that started in [start, end), in bins of bin_s from start (the last one
    takes what is left over, so a sliver of a bin at the end is no empty bin). A bin with no
    request started counts as out (nothing got through)."""
    n = max(1, round((end - start) / bin_s))
    ok, failed = [0] * n, [0] * n
    for r in rows:
        t = r.get("t")
        if not isinstance(t, (int, float)) or not start <= t < end:
            continue
        k = min(n - 1, int((t - start) / bin_s))
        if r.get("ok"):
            ok[k] += 1
        else:
            failed[k] += 1
    out = [o < OUTAGE_BELOW * (o + f) or o + f == 0 for o, f in zip(ok, failed, strict=True)]
    degraded = [f > 0 or o == 0 for o, f in zip(ok, failed, strict=True)]
    span = end - start
    return Window(requests=sum(ok) + sum(failed), errors=sum(failed),
                  successes_per_s=sum(ok) / span if span > 0 else 0.0,
                  outage_s=min(span, _longest(out) * bin_s),
                  degraded_s=min(span, _longest(degraded) * bin_s))


def _longest(flags: Sequence[bool]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def window_metrics(rows: Sequence[Row], events: Sequence[Row], duration_s: float,
                   rate: float) -> list[tuple[str, float, dict[str, Any]]]:
    """(metric, value, extra record fields): outage_s, degraded_s and successes_per_s for the
    whole run (no extra field) and for each event's window (event: its position, action)."""
    bin_s = outage_bin_s(rate)
    spans: list[tuple[float, float, dict[str, Any]]] = [(0.0, duration_s, {})]
    for i, ev in enumerate(events):
        end = events[i + 1]["t"] if i + 1 < len(events) else duration_s
        spans.append((ev["t"], end, {"event": i, "action": ev["action"]}))
    out = []
    for start, end, extra in spans:
        w = window(rows, start, end, bin_s)
        out += [("outage_s", w.outage_s, extra), ("degraded_s", w.degraded_s, extra),
                ("successes_per_s", w.successes_per_s, extra)]
    return out


# -- the figure's data ------------------------------------------------------------------------

def timeline_marks(steps: Iterable[Row], merge_s: float = MERGE_S) -> list[tuple[float, str]]:
    """(t, label) of the steps worth a mark, in time order; steps closer than merge_s to the
    mark before share it ("node down, evicted"). Skipped steps are left out, and so is a pod
    turning not ready when it already was."""
    marks: list[tuple[float, list[str]]] = []
    not_ready: set[str] = set()
    for step in sorted((s for s in steps if isinstance(s.get("t"), (int, float))),
                       key=lambda s: s["t"]):
        action, target = str(step.get("action")), str(step.get("target"))
        if action == "pod-ready":
            not_ready.discard(target)
        elif action == "pod-not-ready":
            if target in not_ready:
                continue        # the prober saying again what the kubelet said
            not_ready.add(target)
        label = STEP_LABELS.get(action)
        if not label or step.get("skipped"):
            continue
        if marks and step["t"] - marks[-1][0] < merge_s:
            if label not in marks[-1][1]:
                marks[-1][1].append(label)
            continue
        marks.append((float(step["t"]), [label]))
    return [(t, ", ".join(labels)) for t, labels in marks]


@dataclass(frozen=True)
class Panel:
    """One variant's panel: successful requests/s and errors/s per bin (mean over the
    repetitions), the clock it ran on and its steps (first repetition's)."""
    variant: str
    timing: str
    t: tuple[float, ...]
    ok_per_s: tuple[float, ...]
    errors_per_s: tuple[float, ...]
    marks: tuple[tuple[float, str], ...]
    repetitions: int


def variant_timing(meta: Mapping[str, Any], variant: str) -> str:
    """'realistic' | 'instant' as meta.json's `timing` has it for the variant ('' if not)."""
    timing = (meta.get("timing") or {}).get("variants") or {}
    return str((timing.get(variant) or {}).get("mode") or "")


def timeline_panels(data: RunData, bin_s: float = PANEL_BIN_S) -> list[Panel]:
    """One panel per variant with failover samples, in the experiment's order."""
    panels = []
    for variant in data.variants:
        reps = sorted(rep for (v, rep, w) in data.samples if v == variant and w == "failover")
        if not reps:
            continue
        rows = [data.samples[(variant, rep, "failover")] for rep in reps]
        end = max((r["t"] for rs in rows for r in rs if isinstance(r.get("t"), (int, float))),
                  default=0.0)
        n = max(1, math.ceil(end / bin_s))
        ok = [0.0] * n
        bad = [0.0] * n
        for rs in rows:
            for r in rs:
                t = r.get("t")
                if isinstance(t, (int, float)) and t >= 0:
                    k = min(n - 1, int(t / bin_s))
                    if r.get("ok"):
                        ok[k] += 1 / (bin_s * len(rows))
                    else:
                        bad[k] += 1 / (bin_s * len(rows))
        steps = data.samples.get((variant, reps[0], "timeline")) or []
        panels.append(Panel(variant, variant_timing(data.meta, variant),
                            tuple(k * bin_s for k in range(n)), tuple(ok), tuple(bad),
                            tuple(timeline_marks(steps)), len(reps)))
    return panels


def draw_panels(axes: Sequence[Any], panels: Sequence[Panel], colour: Mapping[str, str],
                bin_s: float = PANEL_BIN_S) -> None:
    """Each panel on its axes: successful requests/s in the variant's colour, errors/s in
    black, dashed lines at the steps with their labels (matplotlib axes, shared x)."""
    top = max((max(p.ok_per_s + p.errors_per_s, default=0.0) for p in panels), default=0.0)
    for ax, p in zip(axes, panels, strict=True):
        xs = list(p.t) + [p.t[-1] + bin_s]
        ax.step(xs, list(p.ok_per_s) + [p.ok_per_s[-1]], where="post", color=colour[p.variant],
                label="successful/s", zorder=3)
        ax.step(xs, list(p.errors_per_s) + [p.errors_per_s[-1]], where="post",
                color="#000000", linewidth=0.9, label="errors/s", zorder=3)
        prev, high = None, False
        for t, label in p.marks:
            # a label close to the one before goes up the other half, so they do not overlap
            high = prev is not None and t - prev < STAGGER_S and not high
            prev = t
            ax.axvline(t, color="#777777", linewidth=0.6, linestyle=(0, (2, 2)), zorder=1)
            ax.annotate(label, (t, 0.5 if high else 0.04), xycoords=("data", "axes fraction"),
                        xytext=(1.5, 0), textcoords="offset points", rotation=90, ha="left",
                        va="bottom", fontsize=5, color="#333333")
        ax.set_ylim(0, max(1.0, top * 1.12))
        ax.set_ylabel("requests/s")
        ax.set_title(f"{p.variant} — {p.timing or 'timing not recorded'}", loc="left",
                     fontsize=7)
    axes[0].figure.subplots_adjust(hspace=0.55)
    axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=6,
                   borderaxespad=0.1, handlelength=1.2, columnspacing=0.8)
    axes[-1].set_xlabel("time since steady load started (s)")


def panels_caption(panels: Sequence[Panel], bin_s: float = PANEL_BIN_S) -> str:
    reps = max((p.repetitions for p in panels), default=0)
    return (f"Successful requests/s and errors/s per {bin_s:g} s under steady load, one panel "
            f"per variant ({'mean of ' + str(reps) + ' repetitions' if reps > 1 else '1 run'});"
            " dashed: the control plane's steps (first repetition), by the time each was "
            "applied.")


# -- the report's section ---------------------------------------------------------------------

# (label, how to show it from a variant's Timing as meta.json has it)
TIMING_ROWS: tuple[tuple[str, Any], ...] = (
    ("readiness probe", lambda t: f"every {_s(t, 'readiness_period_s')}, not ready after "
     f"{t.get('readiness_failure_threshold')} failures"),
    ("termination grace period", lambda t: _s(t, "termination_grace_period_s")),
    ("preStop", lambda t: _s(t, "pre_stop_s")),
    ("kube-proxy minSyncPeriod", lambda t: _s(t, "min_sync_period_s")),
    ("node monitor grace period (NotReady)", lambda t: _s(t, "node_monitor_grace_period_s")),
    ("not-ready toleration (eviction)", lambda t: _s(t, "not_ready_toleration_s")),
    ("LB registration delay", lambda t: _s(t, "lb_registration_delay_s")),
    ("LB deregistration lag", lambda t: _s(t, "lb_deregistration_lag_s")),
    ("LB draining (deregistration delay)", lambda t: _s(t, "lb_deregistration_delay_s")),
)


def _s(timing: Mapping[str, Any], key: str) -> str:
    v = timing.get(key)
    return f"{v:g} s" if isinstance(v, (int, float)) else "?"


def timing_blocks(meta: Mapping[str, Any], variants: Sequence[str]) -> list[Block]:
    """The clock each variant ran on, and the delays that shape a failover (instant: none of
    them applies, every step happens at its event). Nothing for a run without `timing`."""
    per_variant = (meta.get("timing") or {}).get("variants") or {}
    shown = [v for v in variants if isinstance(per_variant.get(v), dict)]
    if not shown:
        return []
    rows: list[list[str]] = [["timing"] + [f"**{per_variant[v].get('mode', '?')}**"
                                           for v in shown]]
    for label, show in TIMING_ROWS:
        rows.append([label] + [show(per_variant[v]) if per_variant[v].get("mode") != "instant"
                               else "– (at once)" for v in shown])
    hc = ((meta.get("topology") or {}).get("load_balancer") or {}).get("health_check") or {}
    checks = (f" (every {hc.get('interval_s'):g} s, timeout {hc.get('timeout_s'):g} s, a "
              f"target out after {hc.get('unhealthy_threshold')} failures, in after "
              f"{hc.get('healthy_threshold')} successes)" if hc else "")
    return [("h3", "The control plane's clock"),
            ("p", "Realistic: each event's steps follow the delays below (the topology's "
             "`kubernetes:` section, or a variant's `timing:`); instant: every step happens "
             "at its event, endpoints first. The cloud LB's health checks run either way"
             + checks + "."),
            ("table", ["", *[f"`{v}`" for v in shown]], rows)]
