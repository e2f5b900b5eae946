"""The testbed's own cost, from a compare run's records (pure: records in, figures out).

Every routed hop of the emulated fabric is real work on this machine (a veth crossed, the
switch's datapath run again), so what a variant measures is mostly the emulator's per-hop
cost. To say how much, a compare run measures beside each variant a plain veth between two
namespaces (workload `veth`, testbed.experiments.baseline: the same probe and request count as
workload `latency`). Per variant and repetition, from its records:

  p50        latency_p50_ms of workload latency (a new connection per request)
  veth       latency_p50_ms of workload veth, measured in the same cluster session
  hops       path_hops of workload latency (the same requests' SYN-ACK TTLs), else of path

the derived figures are

  p50_over_veth      p50 / veth: the whole path in units of one plain veth
  hop_cost_us        (p50 - veth) / hops, in µs: the cost of one routed hop on this machine
  extra_hop_cost_us  nodeport variants: (p50 - p50 of the container-native reference, the
                     first container-native variant sent through the VIP) / (hops - its
                     hops), in µs: the classic path's extra cost per extra routed hop; none
                     when it has no extra hop (externalTrafficPolicy Local)

p50 follows the path most requests take: for a variant whose requests take different numbers
of hops (nodeport, Cluster) the per-hop figures are an approximation.
The runner writes them as records (workload `overhead`); the report prints them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.analysis.stats import MeanCI, mean, mean_ci

BASELINE = "veth"            # the workload name of the plain-veth baseline
LATENCY = "latency"          # the workload it is set beside
WORKLOAD = "overhead"        # the workload field of the derived records
METRICS = ("p50_over_veth", "hop_cost_us", "extra_hop_cost_us")
MIN_EXTRA_HOPS = 0.05        # fewer extra hops than this (mean per request) count as none

# (metric, workload) of a record -> which input it is
INPUTS = {("latency_p50_ms", LATENCY): "p50", ("latency_p50_ms", BASELINE): "veth",
          ("path_hops", LATENCY): "hops", ("path_hops", "path"): "path_hops"}

Record = Mapping[str, Any]
VariantInfo = Mapping[str, Any]      # meta.json's experiment.variants entry: name, mode, to


# -- the arithmetic ---------------------------------------------------------------------------

def ratio_to_veth(p50_ms: float, veth_ms: float) -> float | None:
    """A variant's p50 in units of the plain veth's (None without a positive baseline)."""
    return p50_ms / veth_ms if veth_ms > 0 else None


def hop_cost_us(p50_ms: float, veth_ms: float, hops: float) -> float | None:
    """What one routed hop adds, in µs: the latency above the veth's, over the hops."""
    return (p50_ms - veth_ms) * 1000 / hops if hops > 0 else None


def extra_hop_cost_us(p50_ms: float, hops: float, ref_p50_ms: float,
                      ref_hops: float) -> float | None:
    """The extra latency over the reference's per extra routed hop, in µs (None when the
    variant has no extra hop to charge it to)."""
    extra = hops - ref_hops
    return (p50_ms - ref_p50_ms) * 1000 / extra if extra >= MIN_EXTRA_HOPS else None


# -- from records -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """One variant's repetition, as the derived figures need it (None: not measured)."""
    p50: float | None = None
    veth: float | None = None
    hops: float | None = None


@dataclass(frozen=True)
class Derived:
    """A derived figure of one variant and repetition, as a record's fields.

    extra: detail fields (`over`: the reference variant of extra_hop_cost_us)
    """
    variant: str
    repetition: int
    metric: str
    value: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> frozenset[str]:
        """The variants whose records it comes from."""
        return frozenset({self.variant, *([self.extra["over"]] if "over" in self.extra else [])})


def inputs(records: Iterable[Record]) -> dict[tuple[str, int], Inputs]:
    """(variant, repetition) -> its p50, veth p50 and routed hops, from the records."""
    found: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in records:
        value, workload, metric = r.get("value"), r.get("workload"), r.get("metric")
        variant = r.get("variant")
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not isinstance(variant, str):
            continue
        if any(r.get(f) is not None for f in ("pod", "node", "services", "event")):
            continue
        key = INPUTS.get((str(metric), str(workload)))
        if key:
            slot = found.setdefault((variant, int(r.get("repetition", 0))), {})
            slot.setdefault(key, []).append(float(value))
    out = {}
    for k, got in found.items():
        avg = {name: mean(values) for name, values in got.items()}
        out[k] = Inputs(avg.get("p50"), avg.get("veth"), avg.get("hops", avg.get("path_hops")))
    return out


def reference(variants: Sequence[VariantInfo], lb: str | None = None) -> str | None:
    """The container-native variant the classic ones are set against: the first sent
    through the VIP by the same kind of LB (a variant's `lb`; None: the topology's)."""
    return next((v["name"] for v in variants if v.get("mode") == "container-native"
                 and v.get("to", "vip") == "vip" and v.get("lb") == lb), None)


def derive(records: Iterable[Record], variants: Sequence[VariantInfo]) -> list[Derived]:
    """Every derived figure the records allow, in variant and repetition order."""
    got = inputs(records)
    out = []
    for v in variants:
        name = v["name"]
        ref = reference(variants, v.get("lb"))
        # behind an L7 LB the client's connection ends at the proxy (its SYN-ACK's hops are 1)
        # and the proxy opens its own to the target: no cost per routed hop to derive
        per_hop = v.get("lb") != "l7"
        for rep in sorted(r for (n, r) in got if n == name):
            x = got[(name, rep)]
            if x.p50 is not None and x.veth is not None:
                ratio = ratio_to_veth(x.p50, x.veth)
                if ratio is not None:
                    out.append(Derived(name, rep, "p50_over_veth", ratio))
                if x.hops is not None and per_hop:
                    cost = hop_cost_us(x.p50, x.veth, x.hops)
                    if cost is not None:
                        out.append(Derived(name, rep, "hop_cost_us", cost))
            pair = _pair(x, got.get((ref, rep))) if ref else None
            if v.get("mode") != "nodeport" or pair is None or not per_hop:
                continue
            extra = extra_hop_cost_us(*pair)
            if extra is not None:
                out.append(Derived(name, rep, "extra_hop_cost_us", extra, {"over": ref}))
    return out


def _pair(x: Inputs, r: Inputs | None) -> tuple[float, float, float, float] | None:
    """(p50, hops, reference p50, reference hops) when all four were measured."""
    if r is None or x.p50 is None or x.hops is None or r.p50 is None or r.hops is None:
        return None
    return x.p50, x.hops, r.p50, r.hops


# -- summaries for the report -----------------------------------------------------------------

@dataclass(frozen=True)
class VariantCost:
    """One variant's row: means and 95% intervals over repetitions (None: not measured)."""
    variant: str
    p50: MeanCI | None
    veth: MeanCI | None
    ratio: MeanCI | None
    hops: MeanCI | None
    hop_cost_us: MeanCI | None


@dataclass(frozen=True)
class ExtraCost:
    """A classic variant against the container-native reference (means over repetitions).

    delta_us: its p50 minus the reference's, µs; extra_hops: its hops minus the reference's
    per_hop_us: extra_hop_cost_us (None: no extra hop)
    """
    variant: str
    over: str
    delta_us: MeanCI | None
    extra_hops: MeanCI | None
    per_hop_us: MeanCI | None


def _ci(values: Sequence[float]) -> MeanCI | None:
    return mean_ci(values) if values else None


def costs(records: Sequence[Record], variants: Sequence[VariantInfo]
          ) -> tuple[list[VariantCost], list[ExtraCost]]:
    """The report's overhead table (variants with a veth baseline) and its classic-over-
    container-native lines."""
    got = inputs(records)
    derived = derive(records, variants)

    def series(name: str, pick: str) -> list[float]:
        return [getattr(x, pick) for (n, _), x in sorted(got.items())
                if n == name and getattr(x, pick) is not None]

    def of(name: str, metric: str) -> list[float]:
        return [d.value for d in derived if d.variant == name and d.metric == metric]

    rows = [VariantCost(v["name"], _ci(series(v["name"], "p50")), _ci(series(v["name"], "veth")),
                        _ci(of(v["name"], "p50_over_veth")), _ci(series(v["name"], "hops")),
                        _ci(of(v["name"], "hop_cost_us")))
            for v in variants if series(v["name"], "veth")]
    extras = []
    for v in variants:
        ref = reference(variants, v.get("lb"))
        if v.get("mode") != "nodeport" or ref is None or v.get("lb") == "l7":
            continue
        pairs = [p for (n, rep) in sorted(got) if n == v["name"]
                 for p in [_pair(got[(n, rep)], got.get((ref, rep)))] if p is not None]
        if not pairs:
            continue
        extras.append(ExtraCost(v["name"], ref, _ci([(p - rp) * 1000 for p, _, rp, _ in pairs]),
                                _ci([h - rh for _, h, _, rh in pairs]),
                                _ci(of(v["name"], "extra_hop_cost_us"))))
    return rows, extras
