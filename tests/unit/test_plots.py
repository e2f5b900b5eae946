"""Figures, diagrams and the report from a synthetic run directory (no cluster needed)."""

import json
import os
import random

import pytest

from testbed.analysis.diagram import draw_variant_diagram, flows
from testbed.analysis.plots import PALETTE, plot_run, written
from testbed.analysis.records import RunWriter, read_meta
from testbed.analysis.report import write_report
from testbed.analysis.stats import percentile
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.experiment import Variant, load_experiment, resolve
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")

# What each variant looks like, roughly as the talk predicts (ms, Mbit/s, hops, ...).
PROFILE = {
    "nodeport-cluster": dict(lat=1.00, mbps=560, rps=5200, hops=3.0, cross=0.67, src=0.0,
                             pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                             entry={"node1": 34, "node2": 33, "node3": 33}),
    "nodeport-local": dict(lat=0.80, mbps=880, rps=6100, hops=2.0, cross=0.0, src=1.0,
                           pods={"web-0": 17, "web-1": 16, "web-2": 17, "web-3": 50},
                           entry={"node1": 50, "node2": 50}),
    "container-native": dict(lat=0.64, mbps=900, rps=6400, hops=2.0, cross=0.0, src=1.0,
                             pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25}, entry={}),
    "direct": dict(lat=0.62, mbps=900, rps=6400, hops=2.0, cross=0.0, src=1.0,
                   pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25}, entry={}),
    # behind the L7 LB the client's connection ends at the proxy (1 hop); X-Forwarded-For
    # carries the client's address
    "nodeport-l7": dict(lat=1.30, mbps=800, rps=4000, hops=1.0, cross=0.5, src=1.0,
                        pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                        entry={"node1": 34, "node2": 33, "node3": 33}),
    "container-native-l7": dict(lat=1.10, mbps=850, rps=4500, hops=1.0, cross=0.0, src=1.0,
                                pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                                entry={}),
    # Calico-style BGP routing: the second step crosses the fabric routed, not tunnelled
    "classic-bgp": dict(lat=0.76, mbps=880, rps=5900, hops=3.0, cross=0.66, src=0.0,
                        pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                        entry={"node1": 34, "node2": 33, "node3": 33}),
    "container-native-bgp": dict(lat=0.64, mbps=900, rps=6400, hops=2.0, cross=0.0, src=1.0,
                                 pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                                 entry={}),
    # kube-proxy's nftables mode on the classic path: the same hops, a verdict map for the DNAT
    "classic-nftables": dict(lat=0.98, mbps=560, rps=5250, hops=3.0, cross=0.67, src=0.0,
                             pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                             entry={"node1": 34, "node2": 33, "node3": 33}),
    # the eBPF data plane on the classic path: tc programs instead of the DNAT rules
    "classic-ebpf": dict(lat=0.95, mbps=570, rps=5300, hops=3.0, cross=0.66, src=0.0,
                         pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                         entry={"node1": 34, "node2": 33, "node3": 33}),
    # eBPF with direct server return over BGP: the reply skips the first node
    "classic-ebpf-dsr": dict(lat=0.7, mbps=880, rps=6000, hops=2.0, cross=0.3, src=1.0,
                             pods={"web-0": 25, "web-1": 25, "web-2": 25, "web-3": 25},
                             entry={"node1": 34, "node2": 33, "node3": 33}),
}


def make_compare_run(run_dir, repetitions=2, seed=1, with_plans=True):
    """A run directory as the runner would leave it for experiments/compare.yaml on talk.yaml."""
    rnd = random.Random(seed)
    exp = load_experiment(os.path.join(REPO, "experiments", "compare.yaml"), topology=TALK)
    res = resolve(exp, load_topology(TALK))
    env = {"kernel": "6.1.0-test", "datapath": "netdev (userspace)", "iptables": "nft",
           "tools": {"wrk": "4.1.0", "iperf": "2.1.8"}, "cpus": 2}
    with RunWriter(run_dir, resolved=res if with_plans else None,
                   experiment=exp, environment=env, git={"revision": "abc123", "dirty": True}) as w:
        for rep in range(repetitions):
            for variant, prof in PROFILE.items():
                rec = lambda metric, value, **kw: w.record(exp.name, variant, rep, metric, value, **kw)  # noqa: E731
                for workload, base in (("latency", prof["lat"]), ("keepalive", prof["lat"] * 0.4)):
                    samples = [base * rnd.lognormvariate(0, 0.25) for _ in range(200)]
                    pods = list(prof["pods"])
                    weights = list(prof["pods"].values())
                    rows = [{"t": i * 0.01, "latency_ms": s, "ok": True,
                             "pod": rnd.choices(pods, weights)[0]} for i, s in enumerate(samples)]
                    w.samples(variant, rep, workload, rows)
                    for q in (50, 90, 99):
                        rec(f"latency_p{q}_ms", percentile(samples, q), workload=workload)
                rec("requests_per_s", prof["rps"] * rnd.uniform(0.95, 1.05), workload="load")
                rec("requests_per_s", prof["rps"] * 0.3 * rnd.uniform(0.95, 1.05), workload="keepalive")
                rec("throughput_mbps", prof["mbps"] * rnd.uniform(0.95, 1.05), workload="throughput")
                rec("path_hops", prof["hops"], workload="path")
                rec("cross_node_bytes_fraction", max(0.0, prof["cross"] + rnd.uniform(-0.05, 0.05)) if prof["cross"] else 0.0,
                    workload="path")
                rec("source_ip_preserved", prof["src"], workload="path")
                rec("errors", 0, workload="path")
                counts = {p: n + rnd.randint(-2, 2) for p, n in prof["pods"].items()}
                w.distribution(exp.name, variant, rep, counts, prof["entry"],
                               endpoints=["web-0", "web-1", "web-2", "web-3"])
    return run_dir


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("results") / "20240101-120000-compare")
    make_compare_run(run_dir)
    return run_dir, plot_run(run_dir)


def _nonempty(path):
    return os.path.isfile(path) and os.path.getsize(path) > 1000


def test_plot_run_writes_every_compare_figure_as_png_and_pdf(compare_run):
    run_dir, result = compare_run
    files = written(result)
    names = {os.path.splitext(os.path.basename(f))[0] for f in files}
    for expected in ("latency-cdf-latency", "latency-cdf-keepalive", "latency-latency",
                     "latency-keepalive", "throughput", "requests-per-s", "pod-share", "path",
                     "source-ip", "diagram-nodeport-cluster", "diagram-nodeport-local",
                     "diagram-container-native", "diagram-direct"):
        assert expected in names, (expected, result)
        for ext in ("png", "pdf"):
            assert _nonempty(os.path.join(run_dir, "figures", f"{expected}.{ext}"))
    skipped = [r for r in result if r.startswith("skipped ")]
    # only the figures of other kinds of run are skipped
    kinds = {s.split(":")[0] for s in skipped}
    assert {"skipped scaling", "skipped failover", "skipped failover-timeline"} <= kinds <= {
        "skipped scaling", "skipped failover", "skipped failover-timeline", "skipped rollout",
        "skipped dataplanes"}, skipped


def test_index_keeps_one_colour_per_variant_in_experiment_order(compare_run):
    run_dir, _ = compare_run
    index = json.load(open(os.path.join(run_dir, "figures", "index.json")))
    assert index["variants"] == ["nodeport-cluster", "nodeport-local", "container-native", "direct",
                                 "nodeport-l7", "container-native-l7", "classic-bgp",
                                 "container-native-bgp", "classic-nftables", "classic-ebpf",
                                 "classic-ebpf-dsr"]
    assert [index["colours"][v] for v in index["variants"]] == \
        [PALETTE[i % len(PALETTE)] for i in range(11)]


def test_report_has_every_variant_figures_table_environment(compare_run):
    run_dir, _ = compare_run
    path = write_report(run_dir)
    text = open(path).read()
    html = open(os.path.join(run_dir, "report.html")).read()
    for variant in PROFILE:
        assert variant in text and variant in html
    assert "figures/pod-share.png" in text and "figures/pod-share.png" in html
    assert "throughput_mbps" in text and "±" in text
    assert "6.1.0-test" in text and "abc123" in text
    assert "<table>" in html and "<img" in html


def test_missing_metrics_skip_figures_without_crashing(tmp_path):
    run_dir = str(tmp_path / "run")
    with RunWriter(run_dir, experiment={"name": "x", "variants": [{"name": "a"}, {"name": "b"}]},
                   git={}) as w:
        w.record("x", "a", 0, "throughput_mbps", 900.0, workload="throughput")
        w.record("x", "b", 0, "throughput_mbps", 500.0, workload="throughput")
    result = plot_run(run_dir)
    assert any(r.endswith("throughput.png") for r in result)
    assert any(r.startswith("skipped latency-cdf:") for r in result)
    assert any(r.startswith("skipped diagrams:") for r in result)
    report = open(write_report(run_dir)).read()
    assert "skipped" in report.lower() and "900" in report


def test_empty_run_directory_gives_only_skips(tmp_path):
    result = plot_run(str(tmp_path))
    assert result and all(r.startswith("skipped ") for r in result)
    assert os.path.isfile(write_report(str(tmp_path)))


def test_scaling_and_failover_figures(tmp_path):
    run_dir = str(tmp_path / "run")
    exp = load_experiment(os.path.join(REPO, "experiments", "failover.yaml"))
    with RunWriter(run_dir, experiment=exp, git={}) as w:
        for rep in range(2):
            for i, variant in enumerate(["nodeport-cluster", "container-native"]):
                for n in (10, 100, 1000, 10000):
                    w.record("s", variant, rep, "sync_time_ms", n * 0.05 * (1 + 0.1 * rep) if i == 0 else 1.0,
                             services=n)
                    w.record("s", variant, rep, "latency_p50_ms", 0.6 + (n / 10000 if i == 0 else 0), services=n)
                rows = [{"t": t / 100, "ok": not (500 <= t < 520 + 50 * i or 1500 <= t < 1600)}
                        for t in range(0, 3000)]
                w.samples(variant, rep, "failover", rows)
                w.samples(variant, rep, "events", [{"t": 5.0, "action": "remove-pod", "target": "web-0"},
                                                   {"t": 15.0, "action": "fail-node", "target": "node2"}])
    files = written(plot_run(run_dir))
    assert any(f.endswith("scaling.png") for f in files)
    assert any(f.endswith("failover.pdf") for f in files)


@pytest.mark.parametrize("variant", [Variant("cluster", "nodeport", "Cluster"),
                                     Variant("local", "nodeport", "Local"),
                                     Variant("cn", "container-native")], ids=lambda v: v.name)
def test_diagram_from_talk_topology(tmp_path, variant):
    plan = build_plan(variant.apply(load_topology(TALK)))
    observed = {"pod_share": {"web-0": 10, "web-1": 10, "web-2": 10, "web-3": 30},
                "entry_nodes": {"node1": 30, "node2": 30}}
    paths = draw_variant_diagram(plan, observed, str(tmp_path / variant.name), title=variant.name)
    assert [os.path.splitext(p)[1] for p in paths] == [".png", ".pdf"]
    assert all(_nonempty(p) for p in paths)
    # the same from the plan as stored in meta.json
    again = draw_variant_diagram(json.loads(json.dumps(plan.to_dict())), None, str(tmp_path / "again"))
    assert all(_nonempty(p) for p in again)


def test_flows_follow_the_mode():
    topo = load_topology(TALK)
    shares = {"pod_share": {"web-0": 1, "web-1": 1, "web-2": 1, "web-3": 1}}
    cn = flows(build_plan(Variant("cn", "container-native").apply(topo)), shares)
    assert cn["hops"] == [] and cn["entry"] == {}
    local = flows(build_plan(Variant("l", "nodeport", "Local").apply(topo)), shares)
    assert all(node == {"web-3": "node2"}.get(pod, "node1") for node, pod, _ in local["hops"])
    assert local["entry"] == pytest.approx({"node1": 0.75, "node2": 0.25})
    cluster = flows(build_plan(Variant("c", "nodeport", "Cluster").apply(topo)), shares)
    assert sum(s for _, _, s in cluster["hops"]) == pytest.approx(1.0)
    assert set(cluster["entry"]) == {"node1", "node2", "node3"} and cluster["assumed"]


def test_meta_records_plans_for_the_diagrams(compare_run):
    run_dir, _ = compare_run
    meta = read_meta(run_dir)
    assert set(meta["plans"]) == set(PROFILE)
    assert meta["plans"]["container-native"]["mode"] == "container-native"
    assert meta["service"] == "web" and meta["status"] == "ok"


def test_switches_sit_above_their_nodes_when_subnets_are_contiguous():
    from testbed.analysis.diagram import _layout, _subnet_columns
    nodes = [{"name": "n1", "subnet": "a"}, {"name": "n2", "subnet": "a"},
             {"name": "n3", "subnet": "b"}]
    lay = _layout(nodes, 0, None)
    a, b = _subnet_columns(lay, nodes)
    assert (a.subnet, a.nodes, b.subnet, b.nodes) == ("a", ["n1", "n2"], "b", ["n3"])
    assert a.x0 == lay.node_x["n1"] and a.x1 == lay.node_x["n2"] + lay.node_w
    assert b.x0 == lay.node_x["n3"]
    # interleaved subnets: the switches share the width evenly instead
    mixed = [{"name": "n1", "subnet": "a"}, {"name": "n2", "subnet": "b"},
             {"name": "n3", "subnet": "a"}]
    a, b = _subnet_columns(lay, mixed)
    assert a.x1 == pytest.approx(b.x0) and b.x1 == pytest.approx(lay.width - lay.margin)
