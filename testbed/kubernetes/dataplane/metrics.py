"""kube-proxy's Prometheus metrics (upstream pkg/proxy/metrics), kept per node, rendered as text.

ProxyMetrics: what one node's kube-proxy has counted (sync latencies, last sync and last queued
    times, restore failures, rules written, services without local endpoints); the data plane
    updates it at each sync and writes it into the node's state file as JSON
Histogram: a Prometheus histogram with fixed buckets (upstream's ExponentialBuckets(0.001, 2, 15)
    for the sync latencies)
render_metrics: the text the node's metrics server (port 10249, /metrics) answers, in the
    Prometheus text format client_golang writes: families sorted by name, "[ALPHA] " help, Go's
    shortest float formatting
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Upstream's metrics.ExponentialBuckets: start, start*factor, ... (count upper bounds)."""
    out, value = [], start
    for _ in range(count):
        out.append(value)
        value *= factor
    return tuple(out)


SYNC_BUCKETS = exponential_buckets(0.001, 2, 15)   # 1 ms .. 16.384 s


def go_float(value: float) -> str:
    """A float as Go's strconv.FormatFloat(v, 'g', -1, 64) writes it (what Prometheus' text
    format uses): shortest digits, exponent form from 1e+06 and below 1e-04."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exp = Decimal(repr(float(value))).as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    exp += len("".join(map(str, digits))) - len(ds)
    point = len(ds) + exp              # digits before the decimal point
    x = point - 1                      # the decimal exponent
    neg = "-" if sign else ""
    if x < -4 or x >= 6:     # shortest 'g': exponent form from 1e+06 on
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'+' if x >= 0 else '-'}{abs(x):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{ds}"
    if point >= len(ds):
        return f"{neg}{ds}{'0' * (point - len(ds))}"
    return f"{neg}{ds[:point]}.{ds[point:]}"


@dataclass
class Histogram:
    """Observations counted into cumulative buckets (upper bounds), with their sum and count."""

    buckets: tuple[float, ...] = SYNC_BUCKETS
    counts: list[int] = field(default_factory=list)   # per bucket, not cumulative
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        counts = [int(c) for c in data.get("counts", [])]
        if counts and len(counts) != len(SYNC_BUCKETS):
            raise ValueError(f"histogram has {len(counts)} buckets, expected {len(SYNC_BUCKETS)}")
        return cls(SYNC_BUCKETS, counts, float(data.get("sum", 0.0)), int(data.get("count", 0)))


@dataclass
class ProxyMetrics:
    """One node's kube-proxy metrics, by upstream's names (without the kubeproxy_ prefix)."""

    sync_proxy_rules_duration_seconds: Histogram = field(default_factory=Histogram)
    sync_full_proxy_rules_duration_seconds: Histogram = field(default_factory=Histogram)
    sync_partial_proxy_rules_duration_seconds: Histogram = field(default_factory=Histogram)
    sync_proxy_rules_last_timestamp_seconds: float = 0.0
    sync_proxy_rules_last_queued_timestamp_seconds: float = 0.0
    sync_proxy_rules_iptables_restore_failures_total: int = 0
    sync_proxy_rules_iptables_partial_restore_failures_total: int = 0
    sync_proxy_rules_iptables_total: dict[str, int] = field(default_factory=dict)  # by table
    sync_proxy_rules_iptables_last: dict[str, int] = field(default_factory=dict)   # by table
    sync_proxy_rules_no_local_endpoints_total: dict[str, int] = field(
        default_factory=lambda: {"internal": 0, "external": 0})   # by traffic_policy

    def observe_sync(self, seconds: float, full: bool, at: float) -> None:
        """A successful sync that took `seconds` and ended at `at` (epoch seconds)."""
        self.sync_proxy_rules_duration_seconds.observe(seconds)
        (self.sync_full_proxy_rules_duration_seconds if full
         else self.sync_partial_proxy_rules_duration_seconds).observe(seconds)
        self.sync_proxy_rules_last_timestamp_seconds = at

    def observe_failure(self, full: bool) -> None:
        """A restore the node refused (a partial one also counts as a partial failure)."""
        self.sync_proxy_rules_iptables_restore_failures_total += 1
        if not full:
            self.sync_proxy_rules_iptables_partial_restore_failures_total += 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            out[name] = value.to_json() if isinstance(value, Histogram) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProxyMetrics:
        """Raise ValueError/TypeError on a malformed record."""
        m = cls()
        for name, default in vars(cls()).items():
            if name not in data:
                continue
            value = data[name]
            if isinstance(default, Histogram):
                setattr(m, name, Histogram.from_json(value))
            elif isinstance(default, dict):
                setattr(m, name, {str(k): int(v) for k, v in dict(value).items()})
            else:
                setattr(m, name, type(default)(value))
        return m


# name -> (type, help) as upstream registers them (component-base prefixes "[ALPHA] ")
_HELP = {
    "sync_proxy_rules_duration_seconds": ("histogram", "SyncProxyRules latency in seconds"),
    "sync_full_proxy_rules_duration_seconds": (
        "histogram", "SyncProxyRules latency in seconds for full resyncs"),
    "sync_partial_proxy_rules_duration_seconds": (
        "histogram", "SyncProxyRules latency in seconds for partial resyncs"),
    "sync_proxy_rules_last_timestamp_seconds": (
        "gauge", "The last time proxy rules were successfully synced"),
    "sync_proxy_rules_last_queued_timestamp_seconds": (
        "gauge", "The last time a sync of proxy rules was queued"),
    "sync_proxy_rules_iptables_restore_failures_total": (
        "counter", "Cumulative proxy iptables restore failures"),
    "sync_proxy_rules_iptables_partial_restore_failures_total": (
        "counter", "Cumulative proxy iptables partial restore failures"),
    "sync_proxy_rules_iptables_total": (
        "gauge", "Total number of iptables rules owned by kube-proxy"),
    "sync_proxy_rules_iptables_last": (
        "gauge", "Number of iptables rules written by kube-proxy in last sync"),
    "sync_proxy_rules_no_local_endpoints_total": (
        "gauge", "Number of services with a Local traffic policy and no endpoints"),
    "proxy_healthz_total": ("counter", "Cumulative proxy healthz HTTP status"),
    "proxy_livez_total": ("counter", "Cumulative proxy livez HTTP status"),
}
_LABEL = {"sync_proxy_rules_iptables_total": "table", "sync_proxy_rules_iptables_last": "table",
          "sync_proxy_rules_no_local_endpoints_total": "traffic_policy",
          "proxy_healthz_total": "code", "proxy_livez_total": "code"}


def _histogram_lines(name: str, h: Histogram) -> list[str]:
    lines, total = [], 0
    for bound, n in zip(h.buckets, h.counts, strict=True):
        total += n
        lines.append(f'{name}_bucket{{le="{go_float(bound)}"}} {total}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
    lines += [f"{name}_sum {go_float(h.sum)}", f"{name}_count {h.count}"]
    return lines


def render_metrics(m: ProxyMetrics, healthz: Mapping[str, int] | None = None,
                   livez: Mapping[str, int] | None = None) -> str:
    """The /metrics text: m's metrics and the health server's own /healthz and /livez counts
    (by HTTP code), every family "kubeproxy_"-prefixed and sorted by name as client_golang does.
    A labelled family with no sample yet is left out, as Prometheus leaves out an empty vector."""
    values: dict[str, Any] = {**m.to_json(), "proxy_healthz_total": dict(healthz or {}),
                              "proxy_livez_total": dict(livez or {})}
    lines: list[str] = []
    for short in sorted(_HELP):
        kind, help_text = _HELP[short]
        name = f"kubeproxy_{short}"
        value: Any = getattr(m, short) if kind == "histogram" else values[short]
        if isinstance(value, dict) and not value:
            continue
        lines += [f"# HELP {name} [ALPHA] {help_text}", f"# TYPE {name} {kind}"]
        if isinstance(value, Histogram):
            lines += _histogram_lines(name, value)
        elif isinstance(value, dict):
            label = _LABEL[short]
            lines += [f'{name}{{{label}="{k}"}} {go_float(v)}' for k, v in sorted(value.items())]
        else:
            lines.append(f"{name} {go_float(value)}")
    return "\n".join(lines) + "\n"


def rule_counts(text: str) -> dict[str, int]:
    """Rules per table in an iptables-restore input ("-A" lines; upstream counts its line
    buffers' rules the same way, without the chain declarations)."""
    counts: dict[str, int] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            counts.setdefault(table, 0)
        elif table and line.startswith("-A "):
            counts[table] += 1
    return counts

