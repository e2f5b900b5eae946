"""One picture per variant, like the talk's figures, with the measured path drawn on it.

From top to bottom: the external client(s), the cloud load balancer (VIP), the VPC fabric with
one switch per subnet, the nodes in their subnets with their pods inside, and in classic mode
the pod network (the VXLAN overlay) under them. The traffic is drawn as thick arrows in the
variant's colour, each as wide as the share of requests it carried:

- nodeport: client → LB → subnet switch → node (kube-proxy) → local pod, or → VXLAN (dashed,
  along the overlay) → a pod on another node;
- container-native: client → LB → subnet switch → pod.

Inputs are the address plan (testbed.plan.addresses.Plan, or its to_dict() as stored in meta.json) and
what was observed: {"pod_share": {pod: count or share}, "entry_nodes": {node: count or share}}.
A share that was not observed is assumed (even over the LB's targets, kube-proxy's even pick)
and the caption says so. Only matplotlib patches; PNG and PDF.
"""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from matplotlib.path import Path  # noqa: E402

MAX_NODES_DRAWN = 6
MAX_PODS_DRAWN = 6          # per node; more are summarised as "+k"
MIN_SHARE_DRAWN = 0.005     # flows below this are not drawn

INK = "#222222"
GREY = "#9a9a9a"
FILL = {"client": "#f2f2f2", "lb": "#fff3d6", "fabric": "#eaf2fb", "switch": "#cfe0f3",
        "node": "#f7f7f7", "pod": "#e3f1e3", "idle": "#f4f4f4", "overlay": "#fbeee6",
        "kube-proxy": "#fde2cf", "kube-proxy-off": "#eeeeee"}


def _as_dict(plan) -> dict:
    if isinstance(plan, dict):
        return plan
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    if is_dataclass(plan):
        return asdict(plan)
    raise TypeError(f"expected a Plan or its dict, got {type(plan).__name__}")


def _normalised(counts: Optional[dict]) -> dict:
    counts = {k: float(v) for k, v in (counts or {}).items() if v is not None}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total > 0 else {}


def flows(plan, observed: Optional[dict] = None, service: Optional[str] = None) -> dict:
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
        out["hops"] = [(pod_node[pod], pod, share) for pod, share in pods.items() if pod in pod_node]
    else:
        out["hops"] = [(node, pod, e * share) for node, e in entry.items()
                       for pod, share in pods.items() if pod in pod_node]
    return out


def _percent(share: float) -> str:
    pct = share * 100
    return f"{pct:.0f}%" if pct >= 9.95 or pct == 0 else f"{pct:.1f}%"


def _width(share: float) -> float:
    return 0.6 + 4.5 * max(0.0, min(1.0, share))


def _box(ax, x, y, w, h, fill, text=None, size=6.0, weight="normal", edge=INK, lw=0.6,
         round_=0.03, text_y=None, colour=INK, style="-"):
    patch = FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0,rounding_size={round_}",
                           facecolor=fill, edgecolor=edge, linewidth=lw, linestyle=style, zorder=1)
    ax.add_patch(patch)
    if text:
        _label(ax, x + w / 2, text_y if text_y is not None else y + h / 2, text, size=size,
               weight=weight, colour=colour, bg=fill)
    return patch


def _label(ax, x, y, text, size=6.0, weight="normal", colour=INK, bg=None, ha="center", va="center"):
    """Text above the arrows, on a patch of its box's colour so a crossing arrow stays readable."""
    box = dict(boxstyle="round,pad=0.12", facecolor=bg, edgecolor="none", alpha=0.75) if bg else None
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, fontweight=weight, color=colour, zorder=6,
            bbox=box, linespacing=1.1)


def _arrow(ax, points, colour, share, dashed=False, zorder=4):
    verts = [tuple(pt) for pt in points]
    codes = [Path.MOVETO] + [Path.LINETO] * (len(verts) - 1)
    lw = _width(share)
    arrow = FancyArrowPatch(path=Path(verts, codes), arrowstyle="-|>,head_length=0.6,head_width=0.35",
                            mutation_scale=3 + 0.6 * lw, linewidth=lw, color=colour,
                            linestyle=(0, (2.5, 1.5)) if dashed else "-", alpha=0.85,
                            capstyle="butt", joinstyle="miter", zorder=zorder, shrinkA=0, shrinkB=0)
    ax.add_patch(arrow)


def draw_variant_diagram(plan, observed: Optional[dict] = None, out_base: Optional[str] = None,
                         title: Optional[str] = None, colour: str = "#0072B2",
                         service: Optional[str] = None, width_in: Optional[float] = None):
    """Draw one variant's cluster and measured path.

    plan: testbed.plan.addresses.Plan (build_plan(topology)) or its to_dict()
    observed: {"pod_share": {pod: n}, "entry_nodes": {node: n}} — counts or shares; either may
        be missing (then assumed, and the caption says so)
    out_base: path without extension: writes out_base.png and out_base.pdf and returns both
        paths; None returns the matplotlib Figure instead
    title: the heading (default: the plan's mode); colour: the variant's colour
    service: the LoadBalancer service measured (default: the first)
    width_in: figure width (default 3.5 in, one paper column; 7 in above 3 nodes)
    """
    p = _as_dict(plan)
    f = flows(p, observed, service)
    mode = p.get("mode", "nodeport")
    nodes_all = p.get("nodes", [])
    nodes = nodes_all[:MAX_NODES_DRAWN]
    hidden_nodes = len(nodes_all) - len(nodes)
    n = max(1, len(nodes) + (1 if hidden_nodes else 0))
    W = width_in or (3.5 if n <= 3 else 7.0)
    H = 3.55
    fig = plt.figure(figsize=(W, H))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")

    margin, gap = 0.08, 0.07
    node_w = (W - 2 * margin - gap * (n - 1)) / n
    node_x = {nd["name"]: margin + i * (node_w + gap) for i, nd in enumerate(nodes)}
    y_node, h_node = 0.62, 1.18
    y_overlay, h_overlay = 0.22, 0.3
    y_fabric, h_fabric = 1.98, 0.52
    y_lb, h_lb = 2.6, 0.32
    y_client, h_client = 3.15, 0.3

    lbs = p.get("load_balancers") or []
    lb = next((x for x in lbs if x["service"] == f["service"]), lbs[0] if lbs else None)
    svc = next((s for s in p.get("services", []) if s["name"] == f["service"]), None)

    # title (left) and what the variant is (right)
    ax.text(margin, H - 0.07, title or mode, ha="left", va="top", fontsize=7.5, fontweight="bold",
            color=colour)
    what = ("LB → pod IP:targetPort\n(container-native)" if mode == "container-native" else
            f"LB → node IP:NodePort\nexternalTrafficPolicy {f['policy']}")
    ax.text(W - margin, H - 0.07, what, ha="right", va="top", fontsize=5.2, color="#333333",
            linespacing=1.15)

    # clients
    clients = p.get("clients", []) or ["client"]
    attach = {a["host"]: a for a in p.get("attachments", [])}
    cw = min(0.9, (W * 0.5) / len(clients))
    cx0 = W / 2 - cw * len(clients) / 2
    for i, c in enumerate(clients):
        ip = attach.get(c, {}).get("ip", "")
        _box(ax, cx0 + i * cw + 0.02, y_client, cw - 0.04, h_client, FILL["client"],
             f"{c}\n{ip}" if ip else c, size=5.5)
    # load balancer
    lb_w = min(W - 2 * margin, 2.3)
    lb_x = W / 2 - lb_w / 2
    if lb:
        target = (f"targets: node IP:{svc['node_port']}" if mode == "nodeport" and svc
                  else f"targets: pod IP:{svc['target_port']}" if svc else "")
        lb_text = f"cloud load balancer   VIP {lb['vip']}:{lb['port']}\n{target}"
    else:
        lb_text = "cloud load balancer (no LoadBalancer service)"
    _box(ax, lb_x, y_lb, lb_w, h_lb, FILL["lb"], lb_text, size=5.5)
    _arrow(ax, [(W / 2, y_client), (W / 2, y_lb + h_lb)], colour, 1.0)

    # fabric and subnet switches
    _box(ax, margin * 0.5, y_fabric, W - margin, h_fabric, FILL["fabric"], edge="#7aa6d6", round_=0.05)
    ax.text(margin * 0.5 + 0.05, y_fabric + h_fabric - 0.05, "VPC fabric (OVS, os-ken controller)",
            ha="left", va="top", fontsize=5, color="#3a6ea5", zorder=5)
    switch_of = {s["subnet"]: s for s in p.get("switches", []) if s.get("role") == "subnet"}
    gw_of = {g["subnet"]: g for g in p.get("gateways", [])}
    subnet_nodes: dict = {}
    for nd in nodes:
        subnet_nodes.setdefault(nd["subnet"], []).append(nd["name"])
    switch_xy = {}
    # switches side by side in subnet order, each above its nodes when the subnets' nodes are
    # contiguous (the usual picture), evenly spread otherwise
    subnets = [sub for sub in [x["subnet"] for x in nodes] if sub in subnet_nodes]
    subnets = list(dict.fromkeys(subnets))
    spans = [(min(node_x[m] for m in subnet_nodes[sub]),
              max(node_x[m] for m in subnet_nodes[sub]) + node_w) for sub in subnets]
    contiguous = all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))
    slot = (W - 2 * margin) / max(1, len(subnets))
    for i, subnet in enumerate(subnets):
        x0, x1 = spans[i] if contiguous else (margin + i * slot, margin + (i + 1) * slot)
        sw_w = min(x1 - x0 - 0.06, 1.3)
        sx = (x0 + x1) / 2 - sw_w / 2
        sw = switch_of.get(subnet, {}).get("name", "")
        cidr = gw_of.get(subnet, {}).get("cidr", "")
        _box(ax, sx, y_fabric + 0.06, sw_w, 0.24, FILL["switch"], f"{sw} {subnet}\n{cidr}", size=4.8,
             edge="#5b8cc4")
        switch_xy[subnet] = ((x0 + x1) / 2, y_fabric + 0.06, y_fabric + 0.30)
        for m in subnet_nodes[subnet]:
            ax.plot([node_x[m] + node_w / 2, (x0 + x1) / 2], [y_node + h_node, y_fabric + 0.06],
                    color=GREY, linewidth=0.6, zorder=0)
    ax.plot([W / 2, W / 2], [y_lb, y_fabric + h_fabric], color=GREY, linewidth=0.6, zorder=0)

    # the pod network band: classic mode's overlay, or the note that there is none
    pod_node_of = {x["name"]: x["node"] for x in p.get("pods", [])}
    crossing = sum(share for node, pod, share in f["hops"] if pod_node_of.get(pod) != node)
    if mode == "nodeport":
        overlay = p.get("overlay", "vxlan")
        label = (f"pod network {p.get('pod_cidr', '')}: VXLAN overlay (flannel.{p.get('vxlan_vni', 1)})"
                 if overlay == "vxlan" else f"pod network {p.get('pod_cidr', '')}: host-gw routes")
        label += f" — {crossing * 100:.0f}% of requests cross it" if crossing >= MIN_SHARE_DRAWN \
            else " — unused by this traffic"
        _box(ax, margin * 0.5, y_overlay, W - margin, h_overlay, FILL["overlay"], edge="#d9a27c",
             style=(0, (3, 2)), round_=0.04)
    else:
        label = "no overlay: pods hold VPC addresses, the fabric routes each pod's /32"
        _box(ax, margin * 0.5, y_overlay, W - margin, h_overlay, "white", edge=GREY,
             style=(0, (3, 2)), round_=0.04)
    _label(ax, W - margin, y_overlay + 0.04, label, size=4.8,
           colour="#a0522d" if mode == "nodeport" else "#555555", ha="right", va="bottom")

    # nodes and pods
    pods_on = {}
    for pod in p.get("pods", []):
        pods_on.setdefault(pod["node"], []).append(pod)
    pod_xy = {}
    kp_xy = {}
    endpoints = set(svc["endpoints"]) if svc else set()
    for nd in nodes:
        x = node_x[nd["name"]]
        _box(ax, x, y_node, node_w, h_node, FILL["node"])
        _label(ax, x + 0.04, y_node + h_node - 0.04, nd["name"], size=6, weight="bold",
               bg=FILL["node"], ha="left", va="top")
        _label(ax, x + 0.04, y_node + h_node - 0.17, nd["ip"], size=4.6, colour="#444444",
               bg=FILL["node"], ha="left", va="top")
        # kube-proxy strip
        kp_y = y_node + h_node - 0.43
        on_path = mode == "nodeport"
        _box(ax, x + 0.05, kp_y, node_w - 0.1, 0.14,
             FILL["kube-proxy"] if on_path else FILL["kube-proxy-off"],
             "kube-proxy (iptables)" if on_path else "kube-proxy (bypassed)",
             size=4.6, edge="#c07a48" if on_path else GREY, colour=INK if on_path else GREY, lw=0.5)
        kp_xy[nd["name"]] = (x + node_w / 2, kp_y, kp_y + 0.14, x, x + node_w)
        where = (f"pods {nd['pod_cidr']} on cni0" if mode == "nodeport"
                 else "pods: VPC addresses (ENI)")
        _label(ax, x + node_w / 2, y_node + 0.04, where, size=4.4, colour="#555555",
               bg=FILL["node"], va="bottom")
        pods = pods_on.get(nd["name"], [])
        shown = pods[:MAX_PODS_DRAWN] if len(pods) <= MAX_PODS_DRAWN else pods[:MAX_PODS_DRAWN - 1]
        extra = len(pods) - len(shown)
        slots = len(shown) + (1 if extra else 0)
        cols = min(max(slots, 1), 3)
        rows = (slots + cols - 1) // cols if slots else 1
        inset = 0.1 if mode == "nodeport" else 0.05     # nodeport: a gutter for VXLAN arrows
        pw = (node_w - 2 * inset - 0.05 * (cols - 1)) / cols
        area_top = kp_y - 0.12
        ph = min(0.36, (area_top - (y_node + 0.2) - 0.05 * (rows - 1)) / rows)
        for k, pod in enumerate(shown):
            r_, c_ = divmod(k, cols)
            px = x + inset + c_ * (pw + 0.05)
            py = area_top - (r_ + 1) * ph - r_ * 0.05
            share = f["pods"].get(pod["name"], 0.0)
            active = pod["name"] in endpoints and share >= MIN_SHARE_DRAWN
            label = pod["name"]
            if pw >= 0.5:
                label += f"\n{pod['ip']}"
            if pod["name"] in endpoints:
                label += f"\n{_percent(share)}"
            _box(ax, px, py, pw, ph, FILL["pod"] if active else FILL["idle"], label,
                 size=4.6 if pw < 0.5 else 5, edge=INK if active else GREY, lw=0.5,
                 colour=INK if active else GREY, round_=0.02)
            pod_xy[pod["name"]] = (px + pw / 2, py, py + ph)
        if extra:
            k = len(shown)
            r_, c_ = divmod(k, cols)
            px = x + inset + c_ * (pw + 0.05)
            py = area_top - (r_ + 1) * ph - r_ * 0.05
            ax.text(px + pw / 2, py + ph / 2, f"+{extra} pods", ha="center", va="center",
                    fontsize=4.6, color="#555555", zorder=5)
    if hidden_nodes:
        x = margin + len(nodes) * (node_w + gap)
        _box(ax, x, y_node, node_w, h_node, FILL["idle"], f"+{hidden_nodes} nodes", size=6,
             edge=GREY, colour="#555555")

    # the measured path
    lb_bottom = (W / 2, y_lb)
    node_subnet = {nd["name"]: nd["subnet"] for nd in nodes}
    if mode == "container-native":
        for pod, share in sorted(f["pods"].items(), key=lambda kv: -kv[1]):
            if share < MIN_SHARE_DRAWN or pod not in pod_xy:
                continue
            node = next((x["node"] for x in p.get("pods", []) if x["name"] == pod), None)
            sx, _, sy_top = switch_xy.get(node_subnet.get(node), (pod_xy[pod][0], 0, y_fabric + 0.3))
            px, _, py_top = pod_xy[pod]
            _arrow(ax, [lb_bottom, (sx, sy_top), (px, y_fabric + 0.06), (px, py_top)], colour, share)
    else:
        for node, share in f["entry"].items():
            if share < MIN_SHARE_DRAWN or node not in kp_xy:
                continue
            sx, _, sy_top = switch_xy.get(node_subnet[node], (kp_xy[node][0], 0, y_fabric + 0.3))
            kx, _, k_top = kp_xy[node][:3]
            _arrow(ax, [lb_bottom, (sx, sy_top), (kx, y_fabric + 0.06), (kx, k_top)], colour, share)
        lane = 0
        remote = [h for h in f["hops"] if h[2] >= MIN_SHARE_DRAWN and h[0] in kp_xy and h[1] in pod_xy]
        for node, pod, share in sorted(remote, key=lambda h: -h[2]):
            kx, k_bottom, _, left, right = kp_xy[node]
            px, p_bottom, p_top = pod_xy[pod]
            pod_node = next(x["node"] for x in p["pods"] if x["name"] == pod)
            if pod_node == node:
                _arrow(ax, [(kx, k_bottom), (px, p_top)], colour, share)
            else:
                # down the node's inner edge (the gutter beside its pods), along the overlay,
                # up into the pod
                ly = y_overlay + h_overlay - 0.07 - 0.05 * (lane % 3)
                lane += 1
                gx = right - 0.05 if px > kx else left + 0.05
                gx += (lane % 2) * (0.02 if px < kx else -0.02)
                off = 0.03 * ((lane % 3) - 1)
                _arrow(ax, [(gx, k_bottom), (gx, ly), (px + off, ly), (px + off, p_bottom)],
                       colour, share, dashed=True, zorder=3)

    # caption
    caption = "arrow width ∝ share of requests"
    if mode == "nodeport":
        caption += "; dashed: VXLAN to another node"
        if f["policy"] == "Cluster":
            caption += "; SNAT to the node"
    if f["assumed"]:
        caption += "; assumed: " + ", ".join(f["assumed"])
    ax.text(margin * 0.5, 0.1, caption, ha="left", va="center", fontsize=4.6, color="#444444")

    if out_base is None:
        return fig
    os.makedirs(os.path.dirname(os.path.abspath(out_base)), exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = f"{out_base}.{ext}"
        fig.savefig(path, dpi=300 if ext == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths
