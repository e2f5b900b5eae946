"""A run's path diagrams, one per variant: what each variant ran, read back from meta.json, and
its diagram drawn from its address plan and the requests' measured shares.

A variant's settings reach its cluster through Variant.apply (the experiment's proxyMode,
bpfLbMode and cni over the topology's kubeProxy and cni sections) and `cnlb run --proxy-mode`
(for the variants that name no mode); the run keeps the plan each variant's topology built
(meta.json's plans: the CNI's pod ranges, BGP blocks included), the mode each variant's
kube-proxy ran (environment.kube_proxy_modes), the variants' own settings (experiment.variants)
and the topology's kube_proxy. The diagram is told the same, in that order of precedence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from testbed.analysis.diagram import draw_variant_diagram
from testbed.analysis.diagram_labels import KubeProxyView
from testbed.analysis.rundata import RunData, observed_paths


def _variant_spec(meta: Mapping[str, Any], variant: str) -> Mapping[str, Any]:
    """The experiment's settings of a variant as meta.json holds them ({} when not there)."""
    variants = (meta.get("experiment") or {}).get("variants") or []
    return next((v for v in variants if isinstance(v, dict) and v.get("name") == variant), {})


def variant_kube_proxy(meta: Mapping[str, Any], variant: str) -> KubeProxyView:
    """What the variant's kube-proxy ran: the mode the run recorded for it (which includes
    `cnlb run --proxy-mode`), else the variant's proxyMode, else the topology's; the eBPF
    mode's algorithm from the topology (a variant cannot change it) and SNAT or DSR from the
    variant's bpfLbMode, else the topology's."""
    plan = (meta.get("plans") or {}).get(variant) or {}
    if isinstance(plan.get("kube_proxy"), dict):    # a plan that says it itself wins
        return KubeProxyView.from_dict(plan["kube_proxy"])
    topology = KubeProxyView.from_dict((meta.get("topology") or {}).get("kube_proxy"))
    spec = _variant_spec(meta, variant)
    ran = ((meta.get("environment") or {}).get("kube_proxy_modes") or {}).get(variant)
    return KubeProxyView(mode=str(ran or spec.get("proxy_mode") or topology.mode),
                         algorithm=topology.algorithm,
                         lb_mode=str(spec.get("bpf_lb_mode") or topology.lb_mode))


def draw_run_diagrams(data: RunData, out: str) -> list[str]:
    """diagram-<variant>.png/.pdf in out for every variant with a usable address plan; returns
    the written paths (none: no variant had one) and sets each diagram's caption in data."""
    plans = data.meta.get("plans") or {}
    paths: list[str] = []
    for variant in data.variants:
        plan = plans.get(variant)
        if not plan or "error" in plan:
            continue
        spec = _variant_spec(data.meta, variant)
        observed = observed_paths(data, variant)
        data.captions[f"diagram-{variant}"] = (
            f"{variant}: the cluster and the path the measured requests took (arrow width ∝ share "
            "of requests" + ("" if observed["pod_share"] else ", shares assumed") + ").")
        drawn = draw_variant_diagram(plan, observed, os.path.join(out, f"diagram-{variant}"),
                                     title=variant, colour=data.colour[variant],
                                     service=data.meta.get("service"),
                                     direct=spec.get("to") == "pods",
                                     kube_proxy=variant_kube_proxy(data.meta, variant))
        assert isinstance(drawn, list)   # out_base given: the written files
        paths += drawn
    return paths
