"""One picture per variant, like the talk's figures, with the measured path drawn on it.

Top to bottom: the client(s), the cloud load balancer (VIP), the VPC fabric with a switch per
subnet, the nodes with their pods, and the pod network (classic mode's overlay) under them. The
traffic is drawn as arrows in the variant's colour, each as wide as its share of requests:
nodeport goes client → LB → switch → node (kube-proxy) → a local pod or, dashed along the
overlay, a pod on another node; container-native goes client → LB → switch → pod, and a
variant that sends to the pods' own addresses (direct) client → switch → pod. Inputs: the
address plan (a Plan or its to_dict()) and the observed {"pod_share", "entry_nodes"} counts; a
share not observed is assumed (even) and the caption says so. PNG and PDF, matplotlib patches.
With direct server return (the eBPF kube-proxy's DSR) the replies of requests sent on to another
node are drawn dotted, from the pod's node straight back up to the LB, past the node they
entered. The words (kube-proxy's mode on each node, the pods' ranges, the caption) come from
testbed.analysis.diagram_labels; a run's variants from testbed.analysis.run_diagrams.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from matplotlib.path import Path  # noqa: E402

from testbed.analysis.diagram_labels import (  # noqa: E402
    CAPTION_CHARS,
    MIN_SHARE_DRAWN,
    Entry,
    KubeProxyView,
    PlanDict,
    caption,
    heading_text,
    kube_proxy_label,
    lb_text,
    node_pods_label,
    percent,
    pod_network_label,
)

MAX_NODES_DRAWN = 6
MAX_PODS_DRAWN = 6          # per node; more are summarised as "+k"

INK = "#222222"
GREY = "#9a9a9a"
FILL = {"client": "#f2f2f2", "lb": "#fff3d6", "fabric": "#eaf2fb", "switch": "#cfe0f3",
        "node": "#f7f7f7", "pod": "#e3f1e3", "idle": "#f4f4f4", "overlay": "#fbeee6",
        "kube-proxy": "#fde2cf", "kube-proxy-off": "#eeeeee"}
DASHED = (0, (3, 2))

Observed = Mapping[str, Mapping[str, float | None] | None]
Flows = dict[str, Any]
Point = tuple[float, float]
LineStyle = str | tuple[float, tuple[float, float]]
SwitchAt = tuple[float, float, float]                 # x centre, bottom, top
PodAt = tuple[float, float, float]                    # x centre, bottom, top
KubeProxyAt = tuple[float, float, float, float, float]  # x centre, bottom, top, node left, right


def _as_dict(plan: Any) -> dict[str, Any]:
    if isinstance(plan, dict):
        return plan
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    if is_dataclass(plan):
        return asdict(plan)
    raise TypeError(f"expected a Plan or its dict, got {type(plan).__name__}")


def _normalised(counts: Mapping[str, float | None] | None) -> dict[str, float]:
    counts = {k: float(v) for k, v in (counts or {}).items() if v is not None}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total > 0 else {}


def flows(plan: Any, observed: Observed | None = None, service: str | None = None) -> Flows:
    """Where the requests went, as shares of all requests.

    Returns {"service", "entry": {node: share}, "pods": {pod: share},
    "hops": [(node, pod, share)] (nodeport: entry node → pod), "assumed": [what was assumed]}.
    nodeport, Cluster: kube-proxy picks a pod independently of the node the LB chose, so
    entry node n → pod p carries entry[n] * pod[p]; Local: a node only sends to its own pods."""
    p = _as_dict(plan)
    observed = observed or {}
    lbs = p.get("load_balancers") or []
    lb = next((x for x in lbs if x["service"] == service), lbs[0] if lbs else None)
    svc_name = lb["service"] if lb else service
    svc = next((s for s in p.get("services", []) if s["name"] == svc_name), None)
    endpoints = list(svc["endpoints"]) if svc else [x["name"] for x in p.get("pods", [])]
    policy = svc.get("external_traffic_policy", "Cluster") if svc else "Cluster"
    pod_node = {x["name"]: x["node"] for x in p.get("pods", [])}
    assumed = []
    pods = _normalised(observed.get("pod_share"))
    if not pods:
        pods = {e: 1 / len(endpoints) for e in endpoints} if endpoints else {}
        assumed.append("even share per pod")
    out = {"service": svc_name, "policy": policy, "pods": pods, "entry": {}, "hops": [],
           "assumed": assumed}
    if p.get("mode") == "container-native":
        return out
    entry = _normalised(observed.get("entry_nodes"))
    if not entry:
        if policy == "Local":
            for pod, share in pods.items():
                node = pod_node.get(pod)
                if node:
                    entry[node] = entry.get(node, 0.0) + share
        else:
            nodes = [n["name"] for n in p.get("nodes", [])]
            entry = {n: 1 / len(nodes) for n in nodes} if nodes else {}
            assumed.append("the LB spreads evenly over the nodes")
    out["entry"] = entry
    if policy == "Local":
        out["hops"] = [(pod_node[pod], pod, share) for pod, share in pods.items()
                       if pod in pod_node]
    else:
        out["hops"] = [(node, pod, e * share) for node, e in entry.items()
                       for pod, share in pods.items() if pod in pod_node]
    return out


def _width(share: float) -> float:
    return 0.6 + 4.5 * max(0.0, min(1.0, share))


# -- drawing primitives -----------------------------------------------------------------------

def _box(ax: Axes, x: float, y: float, w: float, h: float, fill: str, text: str | None = None,
         size: float = 6.0, weight: str = "normal", edge: str = INK, lw: float = 0.6,
         round_: float = 0.03, text_y: float | None = None, colour: str = INK,
         style: LineStyle = "-") -> FancyBboxPatch:
    patch = FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={round_}",
                           facecolor=fill, edgecolor=edge, linewidth=lw, linestyle=style, zorder=1)
    ax.add_patch(patch)
    if text:
        _label(ax, x + w / 2, text_y if text_y is not None else y + h / 2, text, size=size,
               weight=weight, colour=colour, bg=fill)
    return patch


def _label(ax: Axes, x: float, y: float, text: str, size: float = 6.0, weight: str = "normal",
           colour: str = INK, bg: str | None = None, ha: str = "center",
           va: str = "center") -> None:
    """Text above the arrows, on a patch of its box's colour so a crossing arrow stays readable."""
    box = (dict(boxstyle="round,pad=0.12", facecolor=bg, edgecolor="none", alpha=0.75) if bg
           else None)
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, fontweight=weight, color=colour, zorder=6,
            bbox=box, linespacing=1.1)


def _arrow(ax: Axes, points: Sequence[Point], colour: str, share: float, dashed: bool = False,
           zorder: int = 4, dotted: bool = False) -> None:
    verts = [tuple(pt) for pt in points]
    codes = [Path.MOVETO] + [Path.LINETO] * (len(verts) - 1)
    lw = _width(share)
    arrow = FancyArrowPatch(path=Path(verts, codes),
                            arrowstyle="-|>,head_length=0.6,head_width=0.35",
                            mutation_scale=3 + 0.6 * lw, linewidth=lw, color=colour,
                            linestyle=(0, (0.8, 1.2)) if dotted else
                            (0, (2.5, 1.5)) if dashed else "-", alpha=0.85,
                            capstyle="butt", joinstyle="miter", zorder=zorder, shrinkA=0, shrinkB=0)
    ax.add_patch(arrow)


# -- geometry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The picture's sheet in inches (y up): one column per drawn node, and each band's height."""
    width: float
    node_w: float
    node_x: Mapping[str, float]      # node -> its column's left edge
    height: float = 3.55
    margin: float = 0.08
    gap: float = 0.07
    y_node: float = 0.62
    h_node: float = 1.18
    y_overlay: float = 0.22
    h_overlay: float = 0.3
    y_fabric: float = 1.98
    h_fabric: float = 0.52
    y_lb: float = 2.6
    h_lb: float = 0.32
    y_client: float = 3.15
    h_client: float = 0.3


def _layout(nodes: Sequence[Entry], hidden_nodes: int, width_in: float | None) -> Layout:
    """One paper column up to 3 node columns (one more for '+k nodes'), two above."""
    n = max(1, len(nodes) + (1 if hidden_nodes else 0))
    width = width_in or (3.5 if n <= 3 else 7.0)
    margin, gap = 0.08, 0.07
    node_w = (width - 2 * margin - gap * (n - 1)) / n
    node_x = {nd["name"]: margin + i * (node_w + gap) for i, nd in enumerate(nodes)}
    return Layout(width, node_w, node_x, margin=margin, gap=gap)


def _canvas(lay: Layout) -> tuple[Figure, Axes]:
    fig = plt.figure(figsize=(lay.width, lay.height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, lay.width)
    ax.set_ylim(0, lay.height)
    ax.axis("off")
    return fig, ax


class SubnetColumn(NamedTuple):
    """Where a subnet's switch sits (x0..x1) and the drawn nodes it links down to."""
    subnet: str
    x0: float
    x1: float
    nodes: list[str]


def _subnet_columns(lay: Layout, nodes: Sequence[Entry]) -> list[SubnetColumn]:
    """Switches side by side in subnet order, each above its nodes when the subnets' nodes are
    contiguous (the usual picture), evenly spread otherwise."""
    subnet_nodes: dict[str, list[str]] = {}
    for nd in nodes:
        subnet_nodes.setdefault(nd["subnet"], []).append(nd["name"])
    subnets = list(dict.fromkeys(nd["subnet"] for nd in nodes))
    spans = [(min(lay.node_x[m] for m in subnet_nodes[sub]),
              max(lay.node_x[m] for m in subnet_nodes[sub]) + lay.node_w) for sub in subnets]
    contiguous = all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:], strict=False))
    slot = (lay.width - 2 * lay.margin) / max(1, len(subnets))
    columns = []
    for i, subnet in enumerate(subnets):
        x0, x1 = spans[i] if contiguous else (lay.margin + i * slot, lay.margin + (i + 1) * slot)
        columns.append(SubnetColumn(subnet, x0, x1, subnet_nodes[subnet]))
    return columns


# -- the picture's sections, top to bottom ----------------------------------------------------

def _draw_heading(ax: Axes, lay: Layout, heading: str, mode: str, policy: str,
                  colour: str, direct: bool = False) -> None:
    """The title (left) and what the variant is (right)."""
    ax.text(lay.margin, lay.height - 0.07, heading, ha="left", va="top", fontsize=7.5,
            fontweight="bold", color=colour)
    ax.text(lay.width - lay.margin, lay.height - 0.07, heading_text(mode, policy, direct),
            ha="right", va="top", fontsize=5.2, color="#333333", linespacing=1.15)


def _draw_clients(ax: Axes, lay: Layout, p: PlanDict) -> None:
    clients = p.get("clients", []) or ["client"]
    attach = {a["host"]: a for a in p.get("attachments", [])}
    cw = min(0.9, (lay.width * 0.5) / len(clients))
    cx0 = lay.width / 2 - cw * len(clients) / 2
    for i, c in enumerate(clients):
        ip = attach.get(c, {}).get("ip", "")
        _box(ax, cx0 + i * cw + 0.02, lay.y_client, cw - 0.04, lay.h_client, FILL["client"],
             f"{c}\n{ip}" if ip else c, size=5.5)


def _measured_service(p: PlanDict, service: str | None) -> tuple[Entry | None, Entry | None]:
    """The load balancer and the service flows() measured (the first LB when none matches)."""
    lbs = p.get("load_balancers") or []
    lb = next((x for x in lbs if x["service"] == service), lbs[0] if lbs else None)
    svc = next((s for s in p.get("services", []) if s["name"] == service), None)
    return lb, svc


def _draw_load_balancer(ax: Axes, lay: Layout, text: str, colour: str,
                        direct: bool = False) -> None:
    lb_w = min(lay.width - 2 * lay.margin, 2.3)
    lb_x = lay.width / 2 - lb_w / 2
    if direct:   # the LB stays in the picture, greyed: the requests pass it by
        _box(ax, lb_x, lay.y_lb, lb_w, lay.h_lb, FILL["idle"],
             "cloud load balancer: not used\n(the client sends to the pods' addresses)",
             size=5.5)
        return
    _box(ax, lb_x, lay.y_lb, lb_w, lay.h_lb, FILL["lb"], text, size=5.5)
    _arrow(ax, [(lay.width / 2, lay.y_client), (lay.width / 2, lay.y_lb + lay.h_lb)], colour, 1.0)


def _draw_fabric(ax: Axes, lay: Layout, p: PlanDict, nodes: Sequence[Entry]) -> dict[str, SwitchAt]:
    """The VPC fabric, a switch per subnet linked to its nodes; returns where each switch is."""
    _box(ax, lay.margin * 0.5, lay.y_fabric, lay.width - lay.margin, lay.h_fabric, FILL["fabric"],
         edge="#7aa6d6", round_=0.05)
    ax.text(lay.margin * 0.5 + 0.05, lay.y_fabric + lay.h_fabric - 0.05,
            "VPC fabric (OVS, os-ken controller)", ha="left", va="top", fontsize=5,
            color="#3a6ea5", zorder=5)
    switch_of = {s["subnet"]: s for s in p.get("switches", []) if s.get("role") == "subnet"}
    gw_of = {g["subnet"]: g for g in p.get("gateways", [])}
    switch_at: dict[str, SwitchAt] = {}
    for col in _subnet_columns(lay, nodes):
        centre = (col.x0 + col.x1) / 2
        sw_w = min(col.x1 - col.x0 - 0.06, 1.3)
        sw = switch_of.get(col.subnet, {}).get("name", "")
        cidr = gw_of.get(col.subnet, {}).get("cidr", "")
        _box(ax, centre - sw_w / 2, lay.y_fabric + 0.06, sw_w, 0.24, FILL["switch"],
             f"{sw} {col.subnet}\n{cidr}", size=4.8, edge="#5b8cc4")
        switch_at[col.subnet] = (centre, lay.y_fabric + 0.06, lay.y_fabric + 0.30)
        for m in col.nodes:
            ax.plot([lay.node_x[m] + lay.node_w / 2, centre],
                    [lay.y_node + lay.h_node, lay.y_fabric + 0.06], color=GREY, linewidth=0.6,
                    zorder=0)
    ax.plot([lay.width / 2, lay.width / 2], [lay.y_lb, lay.y_fabric + lay.h_fabric], color=GREY,
            linewidth=0.6, zorder=0)
    return switch_at


def _draw_pod_network(ax: Axes, lay: Layout, p: PlanDict, f: Flows, mode: str) -> None:
    """The band under the nodes: classic mode's overlay, or the note that there is none."""
    pod_node_of = {x["name"]: x["node"] for x in p.get("pods", [])}
    crossing = sum(share for node, pod, share in f["hops"] if pod_node_of.get(pod) != node)
    x, w = lay.margin * 0.5, lay.width - lay.margin
    label = pod_network_label(p, mode, crossing)
    if mode == "nodeport":
        _box(ax, x, lay.y_overlay, w, lay.h_overlay, FILL["overlay"], edge="#d9a27c", style=DASHED,
             round_=0.04)
    else:
        _box(ax, x, lay.y_overlay, w, lay.h_overlay, "white", edge=GREY, style=DASHED, round_=0.04)
    _label(ax, lay.width - lay.margin, lay.y_overlay + 0.04, label, size=4.8,
           colour="#a0522d" if mode == "nodeport" else "#555555", ha="right", va="bottom")


def _draw_node(ax: Axes, lay: Layout, p: PlanDict, nd: Entry, mode: str,
               kube_proxy: KubeProxyView) -> KubeProxyAt:
    """A node's box, name, address, kube-proxy strip and pod range; returns the strip's place."""
    x = lay.node_x[nd["name"]]
    top = lay.y_node + lay.h_node
    _box(ax, x, lay.y_node, lay.node_w, lay.h_node, FILL["node"])
    _label(ax, x + 0.04, top - 0.04, nd["name"], size=6, weight="bold", bg=FILL["node"],
           ha="left", va="top")
    _label(ax, x + 0.04, top - 0.17, nd["ip"], size=4.6, colour="#444444", bg=FILL["node"],
           ha="left", va="top")
    kp_y = top - 0.43
    on_path = mode == "nodeport"
    _box(ax, x + 0.05, kp_y, lay.node_w - 0.1, 0.14,
         FILL["kube-proxy"] if on_path else FILL["kube-proxy-off"],
         kube_proxy_label(kube_proxy, on_path),
         size=4.6, edge="#c07a48" if on_path else GREY, colour=INK if on_path else GREY, lw=0.5)
    _label(ax, x + lay.node_w / 2, lay.y_node + 0.04, node_pods_label(p, nd, mode), size=4.4,
           colour="#555555", bg=FILL["node"], va="bottom")
    return (x + lay.node_w / 2, kp_y, kp_y + 0.14, x, x + lay.node_w)


@dataclass(frozen=True)
class PodGrid:
    """The cells of a node's pod area: up to 3 columns, rows down from under kube-proxy."""
    x: float
    inset: float
    cols: int
    pw: float
    ph: float
    area_top: float

    def cell(self, k: int) -> Point:
        """The lower left corner of cell k."""
        r_, c_ = divmod(k, self.cols)
        return (self.x + self.inset + c_ * (self.pw + 0.05),
                self.area_top - (r_ + 1) * self.ph - r_ * 0.05)


def _pod_grid(lay: Layout, x: float, kp_bottom: float, slots: int, mode: str) -> PodGrid:
    cols = min(max(slots, 1), 3)
    rows = (slots + cols - 1) // cols if slots else 1
    inset = 0.1 if mode == "nodeport" else 0.05     # nodeport: a gutter for VXLAN arrows
    pw = (lay.node_w - 2 * inset - 0.05 * (cols - 1)) / cols
    area_top = kp_bottom - 0.12
    ph = min(0.36, (area_top - (lay.y_node + 0.2) - 0.05 * (rows - 1)) / rows)
    return PodGrid(x, inset, cols, pw, ph, area_top)


def _draw_pod(ax: Axes, grid: PodGrid, k: int, pod: Entry, endpoints: set[str],
              shares: Mapping[str, float]) -> PodAt:
    """A pod in cell k, greyed unless it is an endpoint that got traffic; returns its place."""
    px, py = grid.cell(k)
    pw, ph = grid.pw, grid.ph
    share = shares.get(pod["name"], 0.0)
    active = pod["name"] in endpoints and share >= MIN_SHARE_DRAWN
    label = pod["name"]
    if pw >= 0.5:
        label += f"\n{pod['ip']}"
    if pod["name"] in endpoints:
        label += f"\n{percent(share)}"
    _box(ax, px, py, pw, ph, FILL["pod"] if active else FILL["idle"], label,
         size=4.6 if pw < 0.5 else 5, edge=INK if active else GREY, lw=0.5,
         colour=INK if active else GREY, round_=0.02)
    return (px + pw / 2, py, py + ph)


def _draw_pods(ax: Axes, lay: Layout, kp: KubeProxyAt, pods: Sequence[Entry], mode: str,
               endpoints: set[str], shares: Mapping[str, float]) -> dict[str, PodAt]:
    """A node's pods in a grid (past MAX_PODS_DRAWN the last cell says '+k pods')."""
    shown = pods[:MAX_PODS_DRAWN] if len(pods) <= MAX_PODS_DRAWN else pods[:MAX_PODS_DRAWN - 1]
    extra = len(pods) - len(shown)
    grid = _pod_grid(lay, kp[3], kp[1], len(shown) + (1 if extra else 0), mode)
    pod_at = {pod["name"]: _draw_pod(ax, grid, k, pod, endpoints, shares)
              for k, pod in enumerate(shown)}
    if extra:
        px, py = grid.cell(len(shown))
        ax.text(px + grid.pw / 2, py + grid.ph / 2, f"+{extra} pods", ha="center", va="center",
                fontsize=4.6, color="#555555", zorder=5)
    return pod_at


def _draw_nodes(ax: Axes, lay: Layout, p: PlanDict, nodes: Sequence[Entry], mode: str,
                endpoints: set[str], shares: Mapping[str, float], kube_proxy: KubeProxyView,
                ) -> tuple[dict[str, PodAt], dict[str, KubeProxyAt]]:
    """Each drawn node with its pods; returns where each pod and kube-proxy strip is."""
    pods_on: dict[str, list[Entry]] = {}
    for pod in p.get("pods", []):
        pods_on.setdefault(pod["node"], []).append(pod)
    pod_at: dict[str, PodAt] = {}
    kp_at: dict[str, KubeProxyAt] = {}
    for nd in nodes:
        kp_at[nd["name"]] = _draw_node(ax, lay, p, nd, mode, kube_proxy)
        pod_at.update(_draw_pods(ax, lay, kp_at[nd["name"]], pods_on.get(nd["name"], []), mode,
                                 endpoints, shares))
    return pod_at, kp_at


def _draw_hidden_nodes(ax: Axes, lay: Layout, drawn: int, hidden: int) -> None:
    x = lay.margin + drawn * (lay.node_w + lay.gap)
    _box(ax, x, lay.y_node, lay.node_w, lay.h_node, FILL["idle"], f"+{hidden} nodes", size=6,
         edge=GREY, colour="#555555")


# -- the measured path ------------------------------------------------------------------------

def _node_of(p: PlanDict, pod: str) -> str | None:
    return next((x["node"] for x in p.get("pods", []) if x["name"] == pod), None)


def _draw_direct_path(ax: Axes, lay: Layout, p: PlanDict, f: Flows, colour: str,
                      node_subnet: Mapping[str, str], switch_at: Mapping[str, SwitchAt],
                      pod_at: Mapping[str, PodAt], from_client: bool = False) -> None:
    """container-native: LB (or, sent to the pods directly, the client) → the pod's subnet
    switch → the pod, widest first."""
    lb_bottom = (lay.width / 2, lay.y_client if from_client else lay.y_lb)
    for pod, share in sorted(f["pods"].items(), key=lambda kv: -kv[1]):
        if share < MIN_SHARE_DRAWN or pod not in pod_at:
            continue
        node = _node_of(p, pod)
        sx, _, sy_top = switch_at.get(node_subnet.get(node),
                                      (pod_at[pod][0], 0, lay.y_fabric + 0.3))
        px, _, py_top = pod_at[pod]
        _arrow(ax, [lb_bottom, (sx, sy_top), (px, lay.y_fabric + 0.06), (px, py_top)], colour,
               share)


def _overlay_route(lay: Layout, lane: int, kp: KubeProxyAt, pod: PodAt) -> list[Point]:
    """Down the node's inner edge (the gutter beside its pods), along the overlay, up into the
    pod; lane (0, 1, ...) keeps parallel routes apart."""
    kx, k_bottom, _, left, right = kp
    px, p_bottom, _ = pod
    ly = lay.y_overlay + lay.h_overlay - 0.07 - 0.05 * (lane % 3)
    lane += 1
    gx = right - 0.05 if px > kx else left + 0.05
    gx += (lane % 2) * (0.02 if px < kx else -0.02)
    off = 0.03 * ((lane % 3) - 1)
    return [(gx, k_bottom), (gx, ly), (px + off, ly), (px + off, p_bottom)]


def _draw_nodeport_path(ax: Axes, lay: Layout, p: PlanDict, f: Flows, colour: str,
                        node_subnet: Mapping[str, str], switch_at: Mapping[str, SwitchAt],
                        pod_at: Mapping[str, PodAt], kp_at: Mapping[str, KubeProxyAt]) -> None:
    """nodeport: LB → switch → the entry node's kube-proxy, then on to a local pod, or dashed
    along the overlay to a pod on another node."""
    lb_bottom = (lay.width / 2, lay.y_lb)
    for node, share in f["entry"].items():
        if share < MIN_SHARE_DRAWN or node not in kp_at:
            continue
        sx, _, sy_top = switch_at.get(node_subnet[node], (kp_at[node][0], 0, lay.y_fabric + 0.3))
        kx, _, k_top = kp_at[node][:3]
        _arrow(ax, [lb_bottom, (sx, sy_top), (kx, lay.y_fabric + 0.06), (kx, k_top)], colour,
               share)
    lane = 0
    remote = [h for h in f["hops"] if h[2] >= MIN_SHARE_DRAWN and h[0] in kp_at and h[1] in pod_at]
    for node, pod, share in sorted(remote, key=lambda h: -h[2]):
        if _node_of(p, pod) == node:
            kx, k_bottom = kp_at[node][:2]
            px, _, p_top = pod_at[pod]
            _arrow(ax, [(kx, k_bottom), (px, p_top)], colour, share)
        else:
            _arrow(ax, _overlay_route(lay, lane, kp_at[node], pod_at[pod]), colour, share,
                   dashed=True, zorder=3)
            lane += 1


def _draw_dsr_replies(ax: Axes, lay: Layout, p: PlanDict, f: Flows, colour: str,
                      node_subnet: Mapping[str, str], switch_at: Mapping[str, SwitchAt],
                      kp_at: Mapping[str, KubeProxyAt]) -> None:
    """DSR: the replies to requests another node sent on leave the pod's node for the client
    (up its switch to the LB, which un-DNATs them), never the node they entered: one dotted
    arrow per pod's node, as wide as the requests it got from other nodes."""
    back: dict[str, float] = {}
    for node, pod, share in f["hops"]:
        pod_node = _node_of(p, pod)
        if pod_node and pod_node != node and pod_node in kp_at:
            back[pod_node] = back.get(pod_node, 0.0) + share
    lb_x, lb_y = lay.width / 2 + 0.25, lay.y_lb
    for node, share in back.items():
        if share < MIN_SHARE_DRAWN:
            continue
        kp_top, right = kp_at[node][2], kp_at[node][4]   # from just above its kube-proxy strip
        x = right - 0.1
        sx, _, sy_top = switch_at.get(node_subnet[node], (x, 0, lay.y_fabric + 0.3))
        _arrow(ax, [(x, kp_top + 0.02), (x, lay.y_fabric + 0.06), (sx + 0.12, sy_top),
                    (lb_x, lb_y)], colour, share, dotted=True, zorder=3)
        _label(ax, x - 0.04, kp_top + 0.05, "reply (DSR)", size=4.2, colour=colour,
               bg=FILL["node"], ha="right", va="bottom")


def _save_png_pdf(fig: Figure, out_base: str) -> list[str]:
    os.makedirs(os.path.dirname(os.path.abspath(out_base)), exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = f"{out_base}.{ext}"
        fig.savefig(path, dpi=300 if ext == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def draw_variant_diagram(plan: Any, observed: Observed | None = None,
                         out_base: str | None = None, title: str | None = None,
                         colour: str = "#0072B2", service: str | None = None,
                         width_in: float | None = None, direct: bool = False,
                         dsr: bool = False, kube_proxy: KubeProxyView | None = None,
                         ) -> Figure | list[str]:
    """Draw one variant's cluster and measured path.

    plan: testbed.plan.addresses.Plan (build_plan(topology)) or its to_dict()
    observed: {"pod_share": {pod: n}, "entry_nodes": {node: n}} — counts or shares; either may
        be missing (then assumed, and the caption says so)
    out_base: path without extension: writes out_base.png and out_base.pdf and returns both
        paths; None returns the matplotlib Figure instead
    title: the heading (default: the plan's mode); colour: the variant's colour
    service: the LoadBalancer service measured (default: the first)
    width_in: figure width (default 3.5 in, one paper column; 7 in above 3 nodes)
    direct: the client sent to the pods' own addresses (container-native addressing), not
        through the LB
    dsr: kube-proxy's eBPF mode with direct server return (nodeport, Cluster): the replies of
        requests sent on to another node are drawn from that node back to the LB (also when
        kube_proxy says so)
    kube_proxy: what the variant's kube-proxy ran, named on each node (default: the plan's
        "kube_proxy" if it has one, else iptables)
    """
    p = _as_dict(plan)
    kube_proxy = kube_proxy or KubeProxyView.from_dict(p.get("kube_proxy"))
    dsr = dsr or kube_proxy.dsr
    f = flows(p, observed, service)
    mode = p.get("mode", "nodeport")
    nodes_all = p.get("nodes", [])
    nodes = nodes_all[:MAX_NODES_DRAWN]
    hidden_nodes = len(nodes_all) - len(nodes)
    lay = _layout(nodes, hidden_nodes, width_in)
    fig, ax = _canvas(lay)
    lb, svc = _measured_service(p, f["service"])
    _draw_heading(ax, lay, title or mode, mode, f["policy"], colour, direct)
    _draw_clients(ax, lay, p)
    _draw_load_balancer(ax, lay, lb_text(lb, svc, mode), colour, direct)
    switch_at = _draw_fabric(ax, lay, p, nodes)
    _draw_pod_network(ax, lay, p, f, mode)
    endpoints = set(svc["endpoints"]) if svc else set()
    pod_at, kp_at = _draw_nodes(ax, lay, p, nodes, mode, endpoints, f["pods"], kube_proxy)
    if hidden_nodes:
        _draw_hidden_nodes(ax, lay, len(nodes), hidden_nodes)
    node_subnet = {nd["name"]: nd["subnet"] for nd in nodes}
    if mode == "container-native":
        _draw_direct_path(ax, lay, p, f, colour, node_subnet, switch_at, pod_at, direct)
    else:
        _draw_nodeport_path(ax, lay, p, f, colour, node_subnet, switch_at, pod_at, kp_at)
        if dsr and f["policy"] == "Cluster":
            _draw_dsr_replies(ax, lay, p, f, colour, node_subnet, switch_at, kp_at)
    foot = caption(mode, f["policy"], f["assumed"], p.get("overlay", "vxlan"), dsr,
                   max_chars=int(CAPTION_CHARS * lay.width / 3.5))
    ax.text(lay.margin * 0.5, 0.1, foot, ha="left", va="center", fontsize=4.6, color="#444444",
            linespacing=1.1)
    if out_base is None:
        return fig
    return _save_png_pdf(fig, out_base)
