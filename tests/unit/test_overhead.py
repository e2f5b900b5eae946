"""The testbed's own cost: the arithmetic (testbed.analysis.overhead), what it derives from a
compare run's records, and the lines the report prints from them; the pure parts of the plain
veth beside each variant and of a variant sent to the pods directly."""

import json
import os

import pytest

from testbed.analysis.overhead import (
    costs,
    derive,
    extra_hop_cost_us,
    hop_cost_us,
    inputs,
    ratio_to_veth,
    reference,
)
from testbed.analysis.records import RunWriter, read_records
from testbed.analysis.report import write_report
from testbed.emulation.machine import datapath_label
from testbed.experiments.baseline import CLIENT_NS, NAMESPACES, SERVER_NS, rows_of, setup_lines
from testbed.experiments.client import split

VARIANTS = [
    {"name": name, "mode": mode, "external_traffic_policy": policy, "to": to}
    for name, mode, policy, to in (("nodeport-cluster", "nodeport", "Cluster", "vip"),
                                   ("nodeport-local", "nodeport", "Local", "vip"),
                                   ("container-native", "container-native", "Cluster", "vip"),
                                   ("direct", "container-native", "Cluster", "pods"))
]
# variant -> per repetition (latency p50 ms, veth p50 ms, routed hops of the latency requests)
MEASURED = {
    "nodeport-cluster": [(1.0, 0.1, 2.5), (1.2, 0.12, 2.7)],
    "nodeport-local": [(0.62, 0.1, 2.0), (0.58, 0.1, 2.0)],
    "container-native": [(0.5, 0.1, 2.0), (0.7, 0.12, 2.0)],
    "direct": [(0.52, 0.1, 2.0), (0.5, 0.11, 2.0)],
}


def _records():
    out = []
    for variant, reps in MEASURED.items():
        for rep, (p50, veth, hops) in enumerate(reps):
            base = {"experiment": "compare", "variant": variant, "repetition": rep}
            out += [{**base, "metric": "latency_p50_ms", "value": p50, "workload": "latency"},
                    {**base, "metric": "latency_p50_ms", "value": veth, "workload": "veth"},
                    {**base, "metric": "path_hops", "value": hops, "workload": "latency"},
                    {**base, "metric": "path_hops", "value": 0, "workload": "veth"},
                    # what must not count: another workload's p50, a per-pod record
                    {**base, "metric": "latency_p50_ms", "value": 9.0, "workload": "keepalive"},
                    {**base, "metric": "pod_share", "value": 0.5, "workload": "latency",
                     "pod": "web-0"}]
    return out


# -- the arithmetic ---------------------------------------------------------------------------

def test_ratio_and_cost_per_hop():
    assert ratio_to_veth(1.6, 0.1) == pytest.approx(16.0)
    assert hop_cost_us(1.6, 0.1, 2) == pytest.approx(750.0)      # 1.5 ms over two hops
    assert ratio_to_veth(1.0, 0.0) is None and hop_cost_us(1.0, 0.1, 0) is None


def test_extra_cost_is_charged_per_extra_hop_and_only_when_there_is_one():
    assert extra_hop_cost_us(1.0, 2.5, 0.5, 2.0) == pytest.approx(1000.0)   # +0.5 ms / 0.5 hop
    assert extra_hop_cost_us(0.6, 2.0, 0.5, 2.0) is None                     # Local: no extra hop
    assert extra_hop_cost_us(0.6, 2.01, 0.5, 2.0) is None                    # below MIN_EXTRA_HOPS


def test_inputs_take_latency_and_veth_and_the_latency_requests_hops():
    got = inputs(_records())
    assert got[("nodeport-cluster", 1)].p50 == 1.2 and got[("nodeport-cluster", 1)].veth == 0.12
    assert got[("nodeport-cluster", 0)].hops == 2.5
    hops_from_path = [{"variant": "a", "repetition": 0, "metric": "path_hops", "value": 3,
                       "workload": "path"}]
    assert inputs(hops_from_path)[("a", 0)].hops == 3


def test_derive_per_variant_and_repetition():
    derived = {(d.variant, d.repetition, d.metric): d for d in derive(_records(), VARIANTS)}
    assert derived[("nodeport-cluster", 0, "p50_over_veth")].value == pytest.approx(10.0)
    assert derived[("nodeport-cluster", 0, "hop_cost_us")].value == pytest.approx(360.0)
    assert derived[("direct", 1, "hop_cost_us")].value == pytest.approx(195.0)
    extra = derived[("nodeport-cluster", 1, "extra_hop_cost_us")]
    assert extra.value == pytest.approx(500 / 0.7) and extra.extra == {"over": "container-native"}
    assert extra.sources == {"nodeport-cluster", "container-native"}
    assert ("nodeport-local", 0, "extra_hop_cost_us") not in derived
    assert not any(m == "extra_hop_cost_us" and v in ("direct", "container-native")
                   for v, _, m in derived)
    assert reference(VARIANTS) == "container-native"
    assert reference(VARIANTS[:2]) is None
    assert not [d for d in derive(_records(), VARIANTS[:2]) if d.metric == "extra_hop_cost_us"]


def test_l7_variants_get_their_ratio_but_no_cost_per_hop_and_their_own_reference():
    l7 = [{"name": "nodeport-l7", "mode": "nodeport", "lb": "l7"},
          {"name": "container-native-l7", "mode": "container-native", "lb": "l7"}]
    records = _records()
    for name, (p50, veth) in (("nodeport-l7", (2.0, 0.1)), ("container-native-l7", (1.5, 0.1))):
        base = {"experiment": "compare", "variant": name, "repetition": 0}
        records += [{**base, "metric": "latency_p50_ms", "value": p50, "workload": "latency"},
                    {**base, "metric": "latency_p50_ms", "value": veth, "workload": "veth"},
                    {**base, "metric": "path_hops", "value": 1.0, "workload": "latency"}]
    variants = VARIANTS + l7
    assert reference(variants) == "container-native"
    assert reference(variants, "l7") == "container-native-l7"
    derived = {(d.variant, d.metric): d for d in derive(records, variants)}
    assert derived[("nodeport-l7", "p50_over_veth")].value == pytest.approx(20.0)
    assert ("nodeport-l7", "hop_cost_us") not in derived      # the proxy ends the connection
    assert ("nodeport-l7", "extra_hop_cost_us") not in derived
    assert derived[("nodeport-cluster", "extra_hop_cost_us")].extra == {"over": "container-native"}
    _, extras = costs(records, variants)
    assert [e.variant for e in extras] == ["nodeport-cluster", "nodeport-local"]


def test_costs_summarise_over_repetitions():
    rows, extras = costs(_records(), VARIANTS)
    assert [r.variant for r in rows] == [v["name"] for v in VARIANTS]
    cn = rows[2]
    assert cn.p50.mean == pytest.approx(0.6)
    assert cn.ratio.mean == pytest.approx((5 + 0.7 / 0.12) / 2)
    assert cn.hop_cost_us.mean == pytest.approx((200 + 290) / 2)
    cluster, local = extras
    assert cluster.delta_us.mean == pytest.approx(500)
    assert cluster.extra_hops.mean == pytest.approx(0.6)
    assert cluster.per_hop_us.mean == pytest.approx((1000 + 500 / 0.7) / 2)
    assert local.per_hop_us is None and local.extra_hops.mean == 0


# -- the report -------------------------------------------------------------------------------

def _run(tmp_path, datapaths):
    out = str(tmp_path / "run")
    exp = {"name": "compare", "kind": "compare", "repetitions": 2, "variants": VARIANTS,
           "workloads": [{"name": "latency", "requests": 200}, {"name": "path", "requests": 50}]}
    w = RunWriter(out, experiment=exp, environment={"datapath": "userspace (netdev)"}, git={})
    for r in _records():
        extra = {k: v for k, v in r.items()
                 if k not in ("experiment", "variant", "repetition", "metric", "value")}
        w.record(r["experiment"], r["variant"], r["repetition"], r["metric"], r["value"], **extra)
    w.meta["datapaths"] = datapaths
    w.finish()
    os.makedirs(os.path.join(out, "figures"))
    with open(os.path.join(out, "figures", "index.json"), "w") as fh:
        json.dump({"figures": []}, fh)
    return out


def test_report_states_the_overhead_and_the_datapath_that_ran(tmp_path):
    out = _run(tmp_path, {v["name"]: "userspace (netdev)" for v in VARIANTS})
    text = open(write_report(out), encoding="utf-8").read()
    assert "OVS datapath userspace (netdev)" in text.split("\n\n")[1]          # the heading
    assert "## The testbed's own cost" in text
    assert "OVS datapath that ran: **userspace (netdev)**" in text
    assert "the same probe, the same 200 requests" in text
    assert ("| variant | p50 (ms) | veth p50 (ms) | p50 / veth | routed hops | "
            "per routed hop (µs) |") in text
    assert ("| `container-native` | 0.6 ± 1.3 | 0.11 ± 0.13 | 5.42 ± 5.29× | 2.00 ± 0.00 | "
            "245 ± 572 |") in text
    assert ("| `direct` | 0.51 ± 0.13 | 0.105 ± 0.064 | 4.87 ± 4.16× | 2.00 ± 0.00 | "
            "202 ± 95 |") in text
    assert ("- `nodeport-cluster` over `container-native`: p50 +500 ± 0 µs for 0.6 ± 1.3 extra "
            "routed hops: **857 ± 1,815 µs per extra hop**") in text
    assert ("- `nodeport-local` over `container-native`: p50 +0 ± 1,525 µs with no extra routed "
            "hop (0 ± 0)") in text
    # the derived figures are not repeated in the main table; direct is not in its ratio column
    assert "`hop_cost_us`" not in text and "container-native / nodeport-cluster" in text
    assert ("`direct`: mode container-native — no LB: the client sends to each pod's own "
            "address") in text


def test_report_names_each_variants_datapath_and_has_no_cost_section_without_veth(tmp_path):
    out = _run(tmp_path, {"nodeport-cluster": "kernel (system)", "direct": "userspace (netdev)"})
    text = open(write_report(out), encoding="utf-8").read()
    assert "OVS datapath kernel (system) (nodeport-cluster), userspace (netdev) (direct)" in text
    kept = [r for r in read_records(out) if r.get("workload") != "veth"]
    with open(os.path.join(out, "records.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
    assert "The testbed's own cost" not in open(write_report(out), encoding="utf-8").read()


# -- the veth beside each variant, the direct variant, the datapath's name --------------------

def test_veth_pair_is_made_inside_its_two_namespaces():
    lines = setup_lines()
    assert lines[None][:2] == [f"netns add {ns}" for ns in NAMESPACES]
    assert lines[None][2] == (f"link add eth0 netns {CLIENT_NS} type veth peer name eth0 "
                              f"netns {SERVER_NS}")
    assert all(ns.startswith("cnlb-") and "." in ns for ns in NAMESPACES)   # no host is named so
    assert "addr add 192.0.2.1/30 dev eth0" in lines[CLIENT_NS]
    assert "addr add 192.0.2.2/30 dev eth0" in lines[SERVER_NS]


def test_veth_rows_have_no_pod_and_zero_hops():
    rows = rows_of([{"t_start": 0.0, "total_ms": 0.1, "connect_ms": 0.05, "status": 200,
                     "pod": "veth", "node": "veth", "client": "192.0.2.1", "syn_ack_ttl": 64,
                     "error": None}, {"summary": True}])
    assert rows == [{"t": 0.0, "latency_ms": 0.1, "connect_ms": 0.05, "ok": True, "pod": None,
                     "node": None, "entry_node": None, "source_ip": "192.0.2.1", "hops": 0,
                     "error": None}]


def test_requests_are_split_round_robin_over_the_pods():
    assert split(200, 4) == [50, 50, 50, 50]
    assert split(10, 4) == [3, 3, 2, 2]
    assert split(2, 3) == [1, 1, 0]


def test_datapath_names():
    assert datapath_label("netdev") == "userspace (netdev)"
    assert datapath_label("") == datapath_label("system") == "kernel (system)"


def test_the_runner_records_each_figure_once_when_its_last_variant_is_done(tmp_path):
    from testbed.experiments.compare import record_overhead
    from testbed.paths import REPO
    from testbed.spec.experiment import load_experiment

    class Run:   # the part of testbed.experiments.kind.RunContext record_overhead uses
        exp = load_experiment(os.path.join(REPO, "experiments", "compare.yaml"))
        w = RunWriter(str(tmp_path / "run"), experiment=exp, git={})

        def rec(self, variant, rep, metric, value, workload, **extra):
            self.w.record("compare", variant.name, rep, metric, value, workload=workload, **extra)

    run = Run()
    written = []
    for variant in run.exp.variants:            # each variant's records, then its overhead
        for r in _records():
            if r["variant"] == variant.name:
                extra = {k: v for k, v in r.items() if k not in
                         ("experiment", "variant", "repetition", "metric", "value")}
                run.w.record("compare", r["variant"], r["repetition"], r["metric"], r["value"],
                             **extra)
        before = len(read_records(run.w.dir))
        record_overhead(run, variant)
        written.append([(r["variant"], r["metric"]) for r in read_records(run.w.dir)[before:]])
    run.w.finish()
    assert written[0] == [("nodeport-cluster", m) for m in ("p50_over_veth", "hop_cost_us")] * 2
    assert ("nodeport-cluster", "extra_hop_cost_us") in written[2]       # once container-native ran
    derived = [r for r in read_records(run.w.dir) if r["workload"] == "overhead"]
    assert len(derived) == len(derive(_records(), VARIANTS))               # each exactly once
    assert all(r["unit"] in ("ratio", "us") for r in derived)


def test_doctor_says_which_datapath_the_bridges_use_and_a_running_clusters_ran_on(monkeypatch):
    import subprocess

    from testbed.emulation import machine
    ovsdb = {"data": [["s-core", "netdev", ["map", [["cnlb-cluster", "talk"]]]],
                      ["s-az-a", "", ["map", [["cnlb-cluster", "talk"]]]],
                      ["br-mine", "system", ["map", []]]], "headings": []}
    no_afxdp = {"data": [], "headings": ["name"]}
    monkeypatch.setattr(machine, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, 0, json.dumps(no_afxdp if "Interface" in argv else ovsdb), ""))
    monkeypatch.setattr(machine, "afxdp_ports", lambda: True)
    assert machine.bridge_datapaths() == {"s-core": "netdev", "s-az-a": "", "br-mine": "system"}
    assert machine.datapath_of(["s-core", "s-az-a"]) == "kernel (system) + userspace (netdev)"
    assert machine.datapath_of(["gone"]) == "unknown"
    monkeypatch.setattr(machine, "kernel_datapath", lambda: False)
    detail = machine.datapath_detail(ovs=True)
    assert detail.startswith("userspace (netdev): no openvswitch module")
    assert detail.endswith("the running cluster's 2 bridges: kernel (system) + userspace (netdev)")
    monkeypatch.setattr(machine, "kernel_datapath", lambda: True)
    assert machine.datapath_detail(ovs=False) == "kernel (system): the openvswitch module is loaded"


def test_afxdp_runs_where_ovs_offers_it_and_falls_back_saying_so(monkeypatch):
    import pytest

    from testbed.emulation import machine
    monkeypatch.setattr(machine, "kernel_datapath", lambda: False)
    monkeypatch.setattr(machine, "afxdp_ports", lambda: True)
    assert machine.fabric_datapath("afxdp") == ("afxdp", "")
    assert machine.fabric_datapath("auto") == ("userspace", "")
    monkeypatch.setattr(machine, "afxdp_ports", lambda: False)
    ran, why = machine.fabric_datapath("afxdp")
    assert ran == "userspace" and "no AF_XDP ports" in why and "userspace datapath" in why
    monkeypatch.setattr(machine, "kernel_datapath", lambda: True)
    assert machine.fabric_datapath("afxdp")[0] == machine.fabric_datapath("auto")[0] == "kernel"
    with pytest.raises(ValueError, match="not one of auto, afxdp"):
        machine.fabric_datapath("dpdk")


def test_a_bridge_with_af_xdp_ports_is_named_so(monkeypatch):
    import subprocess

    from testbed.emulation import machine
    answers = {"Bridge": {"data": [["vpc0", "netdev", ["map", [["cnlb-cluster", "talk"]]]],
                                   ["vpc1", "netdev", ["map", [["cnlb-cluster", "talk"]]]]]},
               "Interface": {"data": [["vpc1-eth2"], ["other-eth1"]]}}

    def run(argv, **kw):
        table = "Interface" if "Interface" in argv else "Bridge"
        return subprocess.CompletedProcess(argv, 0, json.dumps(answers[table]), "")
    monkeypatch.setattr(machine, "run", run)
    assert machine.afxdp_bridges(["vpc0", "vpc1"]) == {"vpc1"}
    assert machine.datapath_of(["vpc1"]) == machine.AFXDP_LABEL
    assert machine.datapath_of(["vpc0", "vpc1"]) == \
        f"userspace (netdev) + {machine.AFXDP_LABEL}"
