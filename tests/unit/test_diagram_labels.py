"""The path diagram's words: kube-proxy's real mode on each node (iptables, nftables, IPVS,
eBPF, with Maglev and DSR) and each node's real pod ranges (Calico blocks under BGP), from the
plan and from what a run's variants ran (meta.json)."""

import os

import pytest

from testbed.analysis.diagram import draw_variant_diagram
from testbed.analysis.diagram_labels import (
    KubeProxyView,
    caption,
    kube_proxy_label,
    node_pod_ranges,
    node_pods_label,
    pod_network_label,
)
from testbed.analysis.records import read_meta
from testbed.analysis.run_diagrams import variant_kube_proxy
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.model import with_cni_routing
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")


@pytest.mark.parametrize(("view", "label"), [
    (KubeProxyView(), "kube-proxy (iptables)"),
    (KubeProxyView("nftables"), "kube-proxy (nftables)"),
    (KubeProxyView("ipvs"), "kube-proxy (IPVS)"),
    (KubeProxyView("ebpf"), "kube-proxy (eBPF)"),
    (KubeProxyView("ebpf", lb_mode="dsr"), "kube-proxy (eBPF, DSR)"),
    (KubeProxyView("ebpf", algorithm="maglev", lb_mode="dsr"), "kube-proxy (eBPF, Maglev, DSR)"),
    # Maglev and DSR are the eBPF mode's; another mode ignores them, as its proxier does
    (KubeProxyView("nftables", algorithm="maglev", lb_mode="dsr"), "kube-proxy (nftables)"),
])
def test_kube_proxy_label_names_the_mode_that_ran(view, label):
    assert kube_proxy_label(view) == label
    assert kube_proxy_label(view, on_path=False) == "kube-proxy (bypassed)"


def _meta(**env_modes):
    return {"topology": {"kube_proxy": {"mode": "iptables", "algorithm": "maglev",
                                        "lb_mode": "snat"}},
            "experiment": {"variants": [
                {"name": "plain", "proxy_mode": None, "bpf_lb_mode": None},
                {"name": "nft", "proxy_mode": "nftables", "bpf_lb_mode": None},
                {"name": "dsr", "proxy_mode": "ebpf", "bpf_lb_mode": "dsr"}]},
            "environment": {"kube_proxy_modes": env_modes}}


def test_variant_kube_proxy_follows_the_variant_over_the_topology():
    meta = _meta()
    assert variant_kube_proxy(meta, "plain") == KubeProxyView("iptables", "maglev", "snat")
    assert variant_kube_proxy(meta, "nft").mode == "nftables"
    assert variant_kube_proxy(meta, "dsr") == KubeProxyView("ebpf", "maglev", "dsr")
    assert kube_proxy_label(variant_kube_proxy(meta, "dsr")) == "kube-proxy (eBPF, Maglev, DSR)"


def test_variant_kube_proxy_prefers_the_mode_the_run_recorded():
    """`cnlb run --proxy-mode ipvs` changes the variants without their own proxyMode; the run
    records what each ran."""
    meta = _meta(plain="ipvs", nft="nftables", dsr="ebpf")
    assert variant_kube_proxy(meta, "plain").mode == "ipvs"
    assert variant_kube_proxy(meta, "nft").mode == "nftables"
    assert variant_kube_proxy({}, "unknown") == KubeProxyView()


def test_compare_runs_variants_get_their_modes(tmp_path):
    """From a run directory the compare experiment's RunWriter wrote (test_plots' synthetic run)."""
    from tests.unit.test_plots import make_compare_run
    meta = read_meta(make_compare_run(str(tmp_path / "run"), repetitions=1))
    labels = {v: kube_proxy_label(variant_kube_proxy(meta, v))
              for v in ("nodeport-cluster", "classic-nftables", "classic-ebpf",
                        "classic-ebpf-dsr", "classic-bgp")}
    assert labels == {"nodeport-cluster": "kube-proxy (iptables)",
                      "classic-nftables": "kube-proxy (nftables)",
                      "classic-ebpf": "kube-proxy (eBPF)",
                      "classic-ebpf-dsr": "kube-proxy (eBPF, DSR)",
                      "classic-bgp": "kube-proxy (iptables)"}


def _plan(routing: str | None = None, mode: str | None = None):
    topo = load_topology(TALK, mode=mode)
    return build_plan(with_cni_routing(topo, routing)).to_dict()


def test_bgp_nodes_show_their_calico_blocks_not_a_24():
    p = _plan("bgp")
    nodes = {n["name"]: n for n in p["nodes"]}
    # talk.yaml: 3 pods on node1, 1 on node2, none on node3; a node claims a block for its first
    assert node_pod_ranges(p, nodes["node1"]) == ["10.244.0.0/26"]
    assert node_pod_ranges(p, nodes["node2"]) == ["10.244.0.64/26"]
    assert node_pods_label(p, nodes["node1"], "nodeport") == "pods 10.244.0.0/26 (BGP block)"
    assert node_pods_label(p, nodes["node3"], "nodeport") == "pods: no BGP block yet"
    assert node_pods_label(p, nodes["node1"], "container-native") == \
        "pods 10.244.0.0/26 (BGP block)"
    assert "/24" not in pod_network_label(p, "nodeport", 0.5)
    assert pod_network_label(p, "nodeport", 0.5) == \
        "pod network 10.244.0.0/16: BGP routes to /26 blocks — 50% of requests cross it"
    assert pod_network_label(p, "container-native", 0.0) == \
        "no overlay: pod network 10.244.0.0/16, the fabric learns each node's /26 blocks by BGP"


def test_a_node_with_several_blocks_names_them():
    p = {"overlay": "bgp", "blocks": [{"cidr": f"10.244.0.{64 * i}/26", "node": "n1"}
                                      for i in range(3)] + [{"cidr": "10.244.1.0/26",
                                                            "node": "n2"}]}
    assert node_pods_label(p, {"name": "n1"}, "nodeport") == \
        "pods 10.244.0.0/26, 10.244.0.64/26 +1 blocks (BGP)"


def test_flannel_and_vpc_native_ranges_are_as_before():
    p = _plan()
    node1 = p["nodes"][0]
    assert node_pods_label(p, node1, "nodeport") == "pods 10.244.1.0/24 on cni0"
    assert "VXLAN overlay" in pod_network_label(p, "nodeport", 0.66)
    cn = _plan(mode="container-native")
    assert node_pods_label(cn, cn["nodes"][0], "container-native") == "pods: VPC addresses (ENI)"


def test_caption_says_how_the_second_step_crosses():
    assert "dashed: VXLAN to another node; SNAT to the node" in caption("nodeport", "Cluster", [])
    bgp = caption("nodeport", "Cluster", [], overlay="bgp")
    assert "dashed: routed to another node" in bgp and "VXLAN" not in bgp
    dsr = caption("nodeport", "Cluster", [], overlay="bgp", dsr=True)
    assert "dotted: replies by DSR, no SNAT" in dsr and "SNAT to the node" not in dsr


def test_a_long_caption_breaks_between_its_parts():
    text = caption("nodeport", "Cluster", ["the LB spreads evenly over the nodes"], "bgp", True,
                   max_chars=92)
    lines = text.split("\n")
    assert len(lines) == 2 and all(len(line) <= 92 for line in lines)
    assert text.replace(";\n", "; ") == (
        "arrow width ∝ share of requests; dashed: routed to another node; dotted: replies by "
        "DSR, no SNAT; assumed: the LB spreads evenly over the nodes")
    assert "\n" not in caption("nodeport", "Cluster", [], max_chars=92)


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_the_drawn_diagram_carries_the_labels():
    fig = draw_variant_diagram(_plan("bgp"), None, title="classic-ebpf-dsr",
                               kube_proxy=KubeProxyView("ebpf", lb_mode="dsr"))
    texts = _texts(fig)
    assert texts.count("kube-proxy (eBPF, DSR)") == 3 and "kube-proxy (iptables)" not in texts
    assert "pods 10.244.0.0/26 (BGP block)" in texts and "reply (DSR)" in texts
    assert not any("/24 on cni0" in t for t in texts)
    default = _texts(draw_variant_diagram(_plan(), None))
    assert default.count("kube-proxy (iptables)") == 3
