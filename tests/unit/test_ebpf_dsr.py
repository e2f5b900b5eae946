"""Direct server return in the eBPF kube-proxy (Cilium's loadBalancer.mode=dsr): what the maps
hold for it (testbed.kubernetes.dataplane.ebpf.maps), the bytes bpf/lb.c reads, and the
topology's and experiment's fields with their one-line errors (testbed.spec.kube_proxy). Where
the packets go is tests/integration/test_kube_proxy_ebpf_dsr.py's."""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace

import pytest

from testbed.errors import InputError
from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.ebpf.proxier import EbpfKubeProxy
from testbed.paths import REPO
from testbed.spec.experiment import load_resolved
from testbed.spec.topology import load_topology
from tests.unit.kubeproxy_cases import API, NODE1, NODE2, WEB

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")
TALK = os.path.join(REPO, "topologies", "talk.yaml")
DSR = maps.Options(mode="dsr")


def lines(text: str, kind: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(kind + " ")]


# --- the maps ---------------------------------------------------------------------------------


def test_snat_is_the_default_and_renders_as_before():
    assert maps.Options().mode == "snat"
    assert "dsr" not in maps.render([WEB, API], NODE1)
    assert not any(ln.endswith(" remote") for ln in lines(maps.render([WEB], NODE1), "backend"))


def test_dsr_marks_the_cluster_policys_external_frontends_and_their_remote_pods():
    text = maps.render([WEB], NODE1, DSR)
    services = {ln.split()[1]: ln for ln in lines(text, "service")}
    for fe in ("192.168.0.11:30080/TCP", "198.51.100.10:80/TCP"):   # node port, LB address
        assert "flags=snat|dsr " in services[fe]
    assert "flags=snat-outside " in services["10.96.0.10:80/TCP"]   # the cluster IP: as before
    backends = {(ln.split()[1], ln.split()[3]): ln for ln in lines(text, "backend")}
    # on node1, web's pod on node2 is remote, its own two are not; the cluster IP marks none
    assert backends[("192.168.0.11:30080/TCP", "10.244.2.2:8080")].endswith(" remote")
    assert not backends[("192.168.0.11:30080/TCP", "10.244.1.2:8080")].endswith(" remote")
    assert not backends[("10.96.0.10:80/TCP", "10.244.2.2:8080")].endswith(" remote")
    # node2 sees it the other way round
    on2 = {ln.split()[3]: ln for ln in lines(maps.render([WEB], NODE2, DSR), "backend")
           if ln.split()[1] == "192.168.1.11:30080/TCP"}
    assert on2["10.244.1.2:8080"].endswith(" remote") and not on2["10.244.2.2:8080"].endswith(
        " remote")


def test_dsr_leaves_local_policy_frontends_alone():
    """externalTrafficPolicy Local keeps the client's address and the node already."""
    snat, dsr = maps.render([API], NODE1), maps.render([API], NODE1, maps.Options(mode="dsr"))
    assert snat == dsr


def test_the_remote_flag_is_the_backend_values_last_two_bytes():
    op, name, key, value = maps.encode_line("backend 192.168.0.11:30080/TCP 2 10.244.2.2:8080 "
                                            "remote")
    assert (op, name) == ("update", "cnlb_backends")
    assert len(value) == 8   # struct backend: addr, port, flags
    assert value[:6] == bytes([10, 244, 2, 2]) + struct.pack(">H", 8080)
    assert struct.unpack("<H", value[6:])[0] == maps.BACKEND_REMOTE
    assert maps.encode_line("backend 192.168.0.11:30080/TCP 2 10.244.2.2:8080")[3][6:] == b"\0\0"
    svc = maps.encode_line(lines(maps.render([WEB], NODE1, DSR), "service")[1])[3]
    assert svc[2] == maps.FLAG_SNAT | maps.FLAG_DSR


def test_switching_to_dsr_is_a_partial_sync_of_the_external_frontends():
    text = maps.render_partial([WEB], [WEB], NODE1, DSR, maps.Options())
    changed = {ln.split()[1] for ln in text.splitlines()}
    assert changed == {"192.168.0.11:30080/TCP", "198.51.100.10:80/TCP"}
    assert not any(ln.startswith("delete") for ln in text.splitlines())


def test_an_unknown_lb_mode_is_refused():
    with pytest.raises(ValueError, match="snat, dsr"):
        maps.Options(mode="hybrid")


def test_the_bpf_program_knows_the_flags_maps_writes():
    source = open(os.path.join(REPO, "bpf", "lb.c")).read()
    assert f"#define SVC_DSR {maps.FLAG_DSR} " in source
    assert f"#define BACKEND_REMOTE {maps.BACKEND_REMOTE} " in source


# --- the topology and experiments -------------------------------------------------------------


def topology_with(tmp_path, base: str, extra: str, name: str = "t.yaml") -> str:
    path = tmp_path / name
    path.write_text(open(base).read() + "\n" + extra)
    return str(path)


def test_topology_dsr_with_native_routing_reaches_the_proxier(tmp_path):
    path = topology_with(tmp_path, MINIMAL, "cni: {overlay: host-gw}\n"
                         "kubeProxy: {mode: ebpf, loadBalancer: {mode: dsr}}\n")
    topo = load_topology(path)
    assert topo.kube_proxy.lb_mode == "dsr"
    plane = EbpfKubeProxy(SimpleNamespace(topo=topo, plan=None), min_sync_period_s=1.0)
    assert plane.options == maps.Options(mode="dsr")
    # BGP routing and container-native addressing are native too
    bgp = topology_with(tmp_path, MINIMAL, "cni: {routing: bgp}\n"
                        "kubeProxy: {mode: ebpf, loadBalancer: {mode: dsr}}\n", "bgp.yaml")
    assert load_topology(bgp).kube_proxy.lb_mode == "dsr"
    native = topology_with(tmp_path, MINIMAL, "kubeProxy: {mode: ebpf, loadBalancer: {mode: "
                           "dsr}}\n", "cn.yaml")
    assert load_topology(native, mode="container-native").kube_proxy.lb_mode == "dsr"


def test_dsr_over_the_vxlan_overlay_is_one_line_saying_what_to_use(tmp_path):
    path = topology_with(tmp_path, MINIMAL, "kubeProxy:\n  mode: ebpf\n"
                         "  loadBalancer: {mode: dsr}\n")
    with pytest.raises(InputError) as exc:
        load_topology(path)
    (problem,) = exc.value.problems
    line = str(problem)
    assert line.startswith(f"{path}:") and "kubeProxy.loadBalancer.mode:" in line
    assert "needs native routing" in line and "vxlan overlay" in line
    assert "cni.routing: bgp" in line and "\n" not in line


def test_dsr_outside_the_ebpf_mode_and_a_bad_mode_are_refused(tmp_path):
    path = topology_with(tmp_path, MINIMAL, "cni: {overlay: host-gw}\n"
                         "kubeProxy: {mode: iptables, loadBalancer: {mode: dsr}}\n")
    with pytest.raises(InputError, match=r"loadBalancer\.mode: direct server return is the "
                       r"ebpf mode's, kubeProxy\.mode is iptables .*set kubeProxy\.mode: ebpf"):
        load_topology(path)
    bad = topology_with(tmp_path, MINIMAL, "kubeProxy: {mode: ebpf, loadBalancer: {mode: "
                        "dsrr}}\n", "bad.yaml")
    with pytest.raises(InputError, match=r"loadBalancer\.mode: 'dsrr'.*use snat"):
        load_topology(bad)


def experiment(tmp_path, variants: str, topology: str = TALK) -> str:
    path = tmp_path / "e.yaml"
    path.write_text(f"topology: {topology}\nrepetitions: 1\nvariants:\n{variants}"
                    "workloads: {latency: {requests: 10}}\n")
    return str(path)


def test_a_variant_takes_bpf_lb_mode_dsr_with_bgp():
    res = load_resolved(os.path.join(REPO, "experiments", "compare.yaml"))
    dsr = res.variants["classic-ebpf-dsr"].kube_proxy
    assert (dsr.mode, dsr.lb_mode) == ("ebpf", "dsr")
    assert res.variants["classic-ebpf-dsr"].cni.routing == "bgp"
    assert res.variants["classic-ebpf"].kube_proxy.lb_mode == "snat"


def test_a_dsr_variant_over_vxlan_or_without_ebpf_is_refused(tmp_path):
    path = experiment(tmp_path, "  a: {mode: nodeport, proxyMode: ebpf, bpfLbMode: dsr}\n"
                      "  b: {mode: nodeport, cni: bgp, bpfLbMode: dsr}\n")
    with pytest.raises(InputError) as exc:
        load_resolved(path)
    text = "\n".join(str(p) for p in exc.value.problems)
    assert "variants.a.bpfLbMode: direct server return needs native routing" in text
    assert "add 'cni: bgp' to the variant" in text
    assert "variants.b.bpfLbMode: direct server return is the ebpf mode's" in text
    assert "add 'proxyMode: ebpf'" in text


# --- the path diagram -------------------------------------------------------------------------


def test_the_diagram_draws_dsr_replies_from_the_pods_node_only_for_requests_sent_on():
    from matplotlib.patches import FancyArrowPatch

    from testbed.analysis.diagram import draw_variant_diagram
    from testbed.plan.addresses import build_plan
    res = load_resolved(os.path.join(REPO, "experiments", "compare.yaml"))
    plan = build_plan(res.variants["classic-ebpf-dsr"])
    observed = {"pod_share": {"web-0": 10, "web-1": 10, "web-2": 10, "web-3": 30},
                "entry_nodes": {"node1": 30, "node2": 30}}

    def arrows(fig) -> int:
        return sum(isinstance(a, FancyArrowPatch) for a in fig.axes[0].patches)

    def texts(fig) -> str:
        return " ".join(t.get_text() for t in fig.axes[0].texts)

    with_dsr = draw_variant_diagram(plan, observed, dsr=True)
    without = draw_variant_diagram(plan, observed)
    assert "reply (DSR)" in texts(with_dsr) and "by DSR, no SNAT" in texts(with_dsr)
    assert "reply (DSR)" not in texts(without) and "SNAT to the node" in texts(without)
    # web-3 (node2) gets node1's requests and web-0..2 (node1) node2's: one reply arrow each
    assert texts(with_dsr).count("reply (DSR)") == 2
    assert arrows(with_dsr) == arrows(without) + 2


# --- the path experiment's counters -----------------------------------------------------------


def test_cross_node_bytes_count_natively_routed_pod_traffic_too():
    """DSR over BGP sends the request to another node's pod by its pod address (not the VPC's
    range): the egress counters add the pod-range rule to the VPC-range one."""
    from testbed.experiments.compare import ACCT_CHAIN, egress
    listing = (f"Chain {ACCT_CHAIN} (1 references)\n"
               "    pkts      bytes target prot opt in out source destination\n"
               "      10     1000  all -- * * 0.0.0.0/0 192.168.0.0/16 /* cross-node */\n"
               "       5      700  all -- * * 0.0.0.0/0 10.244.0.0/16 /* cross-node-pods */\n"
               "      40     9000  all -- * * 0.0.0.0/0 0.0.0.0/0 /* all */\n")
    cluster = SimpleNamespace(
        plan=SimpleNamespace(nodes=[SimpleNamespace(name="node1")]), failed_nodes=set(),
        exec=lambda host, argv: SimpleNamespace(stdout=listing))
    assert egress(cluster) == {"node1": (1700, 9000)}
