"""kube-proxy's mode as a user-facing axis: the topology's `kubeProxy: {mode}`, `--proxy-mode`,
an experiment variant's `proxyMode:`, `cnlb render kube-proxy --proxy-mode`, `cnlb status`, and a
mode's availability (unavailable(), `cnlb doctor`)."""

import os

import pytest

from testbed.cli.main import main
from testbed.emulation import machine
from testbed.emulation.session import format_status
from testbed.errors import InputError
from testbed.experiments.run import with_proxy_mode
from testbed.kubernetes.dataplane.registry import DATAPLANES
from testbed.paths import REPO
from testbed.spec.experiment import load_resolved
from testbed.spec.topology import load_topology

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")


def topology_with(tmp_path, extra: str) -> str:
    path = tmp_path / "t.yaml"
    path.write_text(open(MINIMAL).read() + "\n" + extra)
    return str(path)


def test_default_mode_is_iptables_and_the_file_sets_it(tmp_path):
    assert load_topology(MINIMAL).kube_proxy.mode == "iptables"
    assert load_topology(topology_with(tmp_path, "kubeProxy: {mode: ipvs}\n")) \
        .kube_proxy.mode == "ipvs"
    assert load_topology(MINIMAL, proxy_mode="ipvs").kube_proxy.mode == "ipvs"


def test_an_unknown_mode_is_one_line_naming_the_registry_modes(tmp_path):
    path = topology_with(tmp_path, "kubeProxy:\n  mode: ipvz\n")
    with pytest.raises(InputError) as exc:
        load_topology(path)
    (problem,) = exc.value.problems
    line = str(problem)
    assert line.startswith(f"{path}:") and "kubeProxy.mode: 'ipvz'" in line
    assert "did you mean 'ipvs'?" in line
    assert f"use one of {', '.join(sorted(DATAPLANES))}" in line


def test_a_variant_takes_its_own_proxy_mode_and_run_overrides_the_others(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"topology: {MINIMAL}\nrepetitions: 1\nvariants:\n"
                   "  classic: {mode: nodeport}\n"
                   "  classic-ipvs: {mode: nodeport, proxyMode: ipvs}\n"
                   "workloads: {latency: {requests: 10}}\n")
    res = load_resolved(str(exp))
    assert res.variants["classic"].kube_proxy.mode == "iptables"
    assert res.variants["classic-ipvs"].kube_proxy.mode == "ipvs"
    overridden = with_proxy_mode(res, "nftables")
    assert overridden.variants["classic"].kube_proxy.mode == "nftables"
    assert overridden.variants["classic-ipvs"].kube_proxy.mode == "ipvs"   # its own is kept


def test_a_bad_variant_proxy_mode_is_refused(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"topology: {MINIMAL}\nvariants:\n  a: {{mode: nodeport, proxyMode: ipv}}\n"
                   "workloads: {latency: {requests: 10}}\n")
    with pytest.raises(InputError, match=r"variants\.a\.proxyMode"):
        load_resolved(str(exp))


def test_render_kube_proxy_prints_the_nodes_first_sync_in_the_mode(capsys):
    assert main(["render", "kube-proxy", MINIMAL, "--node", "node1", "--proxy-mode",
                 "ipvs"]) == 0
    out = capsys.readouterr().out
    assert "### ipvsadm -R\n-A -t " in out and "create KUBE-CLUSTER-IP hash:ip,port" in out
    assert main(["render", "kube-proxy", MINIMAL, "--node", "node1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("*filter") and "-j KUBE-SERVICES" in out   # iptables, with jumps


def test_a_bad_proxy_mode_flag_is_a_usage_error(capsys):
    assert main(["render", "kube-proxy", MINIMAL, "--node", "node1", "--proxy-mode",
                 "nft"]) == 2
    err = capsys.readouterr().err
    assert "'nft' is not a kube-proxy mode" in err and "use one of" in err


def test_status_says_which_mode_runs():
    status = {"cluster": "talk", "mode": "nodeport", "proxy_mode": "ipvs", "file": "t.yaml",
              "state": "building", "holder": None}
    assert format_status(status)[0] == "cluster talk (nodeport, kube-proxy ipvs) from t.yaml"


def test_doctor_lists_every_mode_and_why_one_cannot_run(monkeypatch):
    ipvs = DATAPLANES["ipvs"]
    monkeypatch.setattr(ipvs, "unavailable", classmethod(lambda cls: "kernel lacks ip_vs"))
    checks = {c.what: c for c in machine.proxy_mode_checks()}
    assert set(checks) == {f"kube-proxy {m}" for m in DATAPLANES}
    assert checks["kube-proxy iptables"].ok
    bad = checks["kube-proxy ipvs"]
    assert not bad.ok and bad.optional and bad.detail == "kernel lacks ip_vs"
