"""The kube-proxy modes experiment (experiments/dataplanes.yaml): the services sweep's pure
helpers, a mode the machine lacks reported as not run, and its analysis (figure, tables)."""

import os
from types import SimpleNamespace

from testbed.analysis import dataplanes
from testbed.analysis.plots import plot_run, written
from testbed.analysis.records import RunWriter, read_meta, read_records, summarize
from testbed.analysis.report import write_report
from testbed.experiments import scaling
from testbed.experiments.scaling import (
    CHANGED_ENDPOINT,
    kernel_memory_kib,
    one_endpoint_changed,
    rule_count,
    ruleset_listing,
    synthetic_services,
)
from testbed.kubernetes.dataplane.ipvs.proxier import IpvsProxy
from testbed.paths import REPO
from testbed.spec.experiment import load_experiment, load_resolved

DATAPLANES = os.path.join(REPO, "experiments", "dataplanes.yaml")


def test_the_shipped_file_sweeps_services_in_each_mode_through_node_ports():
    exp = load_experiment(DATAPLANES)
    assert exp.kind == "scaling" and exp.endpoints == 5 and not exp.pods
    assert exp.services[0] == 100 and list(exp.services) == sorted(exp.services)
    assert [(v.name, v.proxy_mode, v.mode) for v in exp.variants] == [
        ("iptables", "iptables", "nodeport"), ("nftables", "nftables", "nodeport"),
        ("ebpf", "ebpf", "nodeport"), ("ipvs", "ipvs", "nodeport")]
    res = load_resolved(DATAPLANES)
    assert {n: t.kube_proxy.mode for n, t in res.variants.items()} == {
        "iptables": "iptables", "nftables": "nftables", "ebpf": "ebpf", "ipvs": "ipvs"}


def test_one_endpoint_change_replaces_only_the_last_endpoint_of_one_service():
    services = synthetic_services(4, 5)
    changed = one_endpoint_changed(services, 2)
    assert len(changed) == 4 and changed[:2] == services[:2] and changed[3:] == services[3:]
    assert changed[2].endpoints[:4] == services[2].endpoints[:4]
    assert changed[2].endpoints[4] == CHANGED_ENDPOINT != services[2].endpoints[4]
    assert all(CHANGED_ENDPOINT not in s.endpoints for s in services)


def test_rule_count_counts_iptables_and_nft_rules_not_declarations():
    ipt = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j X\n-A X -j DNAT\nCOMMIT\n"
    nft = ("add chain ip kube-proxy services\nadd rule ip kube-proxy services jump x\n"
           "add element ip kube-proxy service-ips { 10.0.0.1 . tcp . 80 : goto s }\n")
    assert (rule_count(ipt), rule_count(nft), rule_count("")) == (2, 1, 0)


def test_ruleset_listing_uses_the_modes_own_tool_and_backend():
    assert ruleset_listing("iptables", "legacy") == \
        "iptables-legacy-save -t nat; iptables-legacy-save -t filter"
    assert ruleset_listing("iptables", "auto").startswith("iptables-save -t nat")
    assert ruleset_listing("nftables", "legacy") == "nft list table ip kube-proxy"
    assert ruleset_listing("ipvs", "auto") is None


def test_kernel_memory_sums_slab_vmalloc_and_percpu():
    meminfo = ("MemTotal:  100 kB\nSlab:   2000 kB\nSReclaimable: 5 kB\nVmallocUsed: 300 kB\n"
               "Percpu: 40 kB\n")
    assert kernel_memory_kib(meminfo) == 2340
    assert kernel_memory_kib("MemTotal: 1 kB\n") == 0


class FakeRun:
    """The part of RunContext run_scaling touches before it builds anything."""

    def __init__(self, exp):
        self.exp = exp
        self.w = SimpleNamespace(meta={})
        self.said: list[str] = []
        self.units = 0

    def say(self, msg):
        self.said.append(msg)

    def unit_done(self):
        self.units += 1


def test_a_mode_the_machine_lacks_is_noted_as_not_run_and_nothing_is_built(monkeypatch):
    monkeypatch.setattr(IpvsProxy, "unavailable", classmethod(lambda cls: "kernel lacks ip_vs"))
    built = []
    monkeypatch.setattr(scaling, "Cluster", lambda *a, **k: built.append(a))
    res = load_resolved(DATAPLANES)
    run = FakeRun(res.experiment)
    variant = next(v for v in res.experiment.variants if v.name == "ipvs")
    scaling.run_scaling(run, variant, res.variants["ipvs"])
    assert built == []
    assert run.w.meta["not_run"] == {"ipvs": "kube-proxy mode ipvs: kernel lacks ip_vs"}
    assert run.units == res.experiment.repetitions
    assert run.said == ["[ipvs] not run: kube-proxy mode ipvs: kernel lacks ip_vs"]


# -- analysis -----------------------------------------------------------------------------

def make_run(run_dir, not_run=True, modes=("iptables", "nftables")):
    """A dataplanes run as the runner leaves it: iptables' latency growing with services,
    the other modes' flat, two repetitions; ipvs not run."""
    exp = load_experiment(DATAPLANES)
    with RunWriter(run_dir, experiment=exp, git={}) as w:
        if not_run:
            w.meta["not_run"] = {"ipvs": "kube-proxy mode ipvs: kernel lacks ip_vs"}
        for rep in range(2):
            for variant in modes:
                for n in (100, 1000, 10000):
                    def rec(metric, value, variant=variant, n=n, rep=rep):
                        w.record("dataplanes", variant, rep, metric, value, workload="scaling",
                                 services=n, proxy_mode=variant)
                    grows = variant == "iptables"
                    rec("latency_p50_ms", 0.7 + (n / 10000 if grows else 0) + rep * 0.01)
                    rec("latency_p99_ms", 2.0 + (n / 5000 if grows else 0))
                    rec("sync_time_ms", n * (0.3 if grows else 0.5) + rep)
                    rec("endpoint_change_ms", n * 0.08 if grows else 20 + rep)
                    rec("rules", n * 17 if grows else n * 12)
                    rec("ruleset_bytes", n * 1800)
                    rec("rules_kernel_kib", n * 7.0)
    return run_dir


def test_modes_come_from_the_records_and_two_make_a_comparison(tmp_path):
    records = read_records(make_run(str(tmp_path / "run")))
    assert dataplanes.modes(records) == {"iptables": "iptables", "nftables": "nftables"}
    assert dataplanes.has_modes(records)
    one = [r for r in records if r["variant"] == "iptables"]
    assert not dataplanes.has_modes(one)
    assert dataplanes.label("fast", "nftables") == "fast (nftables)"
    assert dataplanes.label("nftables", "nftables") == "nftables"


def test_report_blocks_hold_sync_times_rules_and_the_modes_not_run(tmp_path):
    run_dir = make_run(str(tmp_path / "run"))
    meta, records = read_meta(run_dir), read_records(run_dir)
    blocks = dataplanes.report_blocks(meta, records, summarize(records),
                                      ["iptables", "nftables", "ipvs"])
    tables = [b for b in blocks if b[0] == "table"]
    sync, rules = tables
    assert sync[1] == ["services", "full sync, ms: iptables", "full sync, ms: nftables",
                       "one-endpoint change, ms: iptables", "one-endpoint change, ms: nftables"]
    assert [row[0] for row in sync[2]] == ["100", "1,000", "10,000"]
    assert sync[2][2][1] == "3,000 ± 6.35" and sync[2][2][4] == "20.5 ± 6.35"
    assert rules[1][1:3] == ["rules: iptables", "rules: nftables"]
    assert rules[2][1][1:3] == ["17,000", "12,000"]
    assert any(b[0] == "p" and "`ipvs` (kube-proxy mode ipvs: kernel lacks ip_vs)" in b[1]
               for b in blocks)
    # a run of one mode and nothing skipped has no such section
    one = [r for r in records if r["variant"] == "iptables"]
    assert dataplanes.report_blocks({}, one, summarize(one), ["iptables"]) == []


def test_the_figure_and_the_report_of_a_dataplanes_run(tmp_path):
    run_dir = make_run(str(tmp_path / "run"), modes=("iptables", "nftables", "ebpf"))
    files = written(plot_run(run_dir))
    assert {os.path.basename(f) for f in files} >= {"dataplanes.png", "dataplanes.pdf"}
    report = open(write_report(run_dir), encoding="utf-8").read()
    assert "## kube-proxy modes" in report and "Not run here: `ipvs`" in report
    assert "dataplanes.png" in report
    # the mode not run has no column in the results table: the ratio is the last mode's that
    # ran (ebpf) to iptables'
    assert "| ebpf / iptables |" in report and "ipvs / iptables" not in report


def test_no_dataplanes_figure_for_a_run_of_one_mode(tmp_path):
    run_dir = str(tmp_path / "run")
    with RunWriter(run_dir, experiment=load_experiment(DATAPLANES), git={}) as w:
        for n in (100, 1000):
            w.record("s", "iptables", 0, "latency_p50_ms", 1.0, services=n, proxy_mode="iptables")
    result = plot_run(run_dir)
    assert any(r.startswith("skipped dataplanes: no services sweep in two") for r in result)
