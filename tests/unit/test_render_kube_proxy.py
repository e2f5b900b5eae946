"""`cnlb render kube-proxy`: the node's first sync as its kube-proxy really gets it, the eBPF
mode's algorithm (random, Maglev) and SNAT/DSR from the topology's kubeProxy.loadBalancer."""

import os
from types import SimpleNamespace

import pytest

from testbed.cli.main import main
from testbed.cli.render import ebpf_options, kube_proxy_first_sync
from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.ebpf.proxier import _topology_options
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")


def _topology(tmp_path, kube_proxy: str, cni: str = "") -> str:
    """minimal.yaml with a kubeProxy section (and a cni section) added."""
    with open(MINIMAL, encoding="utf-8") as fh:
        text = fh.read()
    path = tmp_path / "t.yaml"
    path.write_text(text + f"kubeProxy: {kube_proxy}\n" + (f"cni: {cni}\n" if cni else ""))
    return str(path)


def _render(capsys, *argv: str) -> str:
    assert main(["render", "kube-proxy", *argv]) == 0
    return capsys.readouterr().out


def _service_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("service ")]


def test_ebpf_maglev_from_the_topology_gives_maglev_tables(tmp_path, capsys):
    topo = _topology(tmp_path, "{mode: ebpf, loadBalancer: {algorithm: maglev}}")
    out = _render(capsys, topo, "--node", "node1")
    services = _service_lines(out)
    assert services and all("algorithm=maglev m=1021" in line for line in services)
    assert sum(line.startswith("maglev ") for line in out.splitlines()) == len(services)
    assert not any("dsr" in line for line in services)


def test_ebpf_default_is_random_without_maglev_tables(capsys):
    out = _render(capsys, MINIMAL, "--node", "node1", "--proxy-mode", "ebpf")
    services = _service_lines(out)
    assert services and all("algorithm=random m=0" in line for line in services)
    assert not any(line.startswith("maglev ") for line in out.splitlines())


def test_ebpf_dsr_from_the_topology_flags_the_external_frontends(tmp_path, capsys):
    topo = _topology(tmp_path, "{mode: ebpf, loadBalancer: {mode: dsr}}", "{routing: bgp}")
    out = _render(capsys, topo, "--node", "node1")
    flags = {line.split("# ")[-1]: line.split("flags=")[1].split()[0]
             for line in _service_lines(out)}
    assert "dsr" in flags["default/web node-port"].split("|")
    assert "dsr" in flags["default/web load-balancer"].split("|")
    assert "dsr" not in flags["default/web cluster-ip"].split("|")   # in-cluster: SNAT kept
    # the pod on node2 is marked remote: the frontend rides there in the IPv4 option
    assert any(line.startswith("backend 198.51.100.10:80/TCP") and line.endswith(" remote")
               for line in out.splitlines())


def test_the_cli_renders_what_the_clusters_ebpf_kube_proxy_applies(tmp_path):
    """Same options as EbpfKubeProxy takes from the running cluster's topology, so the same
    first sync (its _texts renders maps.render(services, context, options))."""
    topo = load_topology(_topology(tmp_path, "{mode: ebpf, loadBalancer: {algorithm: maglev, "
                                              "mode: dsr}}", "{routing: bgp}"))
    assert ebpf_options(topo.kube_proxy) == _topology_options(SimpleNamespace(topo=topo))
    assert ebpf_options(topo.kube_proxy) == maps.Options(algorithm="maglev", mode="dsr")
    plan = build_plan(topo)
    text = kube_proxy_first_sync(topo, plan, "node2")
    assert text.startswith("# kube-proxy ebpf on node2")
    assert "flags=snat|dsr " in text


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_other_modes_ignore_the_ebpf_settings(tmp_path, capsys, mode):
    plain = _render(capsys, MINIMAL, "--node", "node1", "--proxy-mode", mode)
    topo = _topology(tmp_path, "{mode: ebpf, loadBalancer: {algorithm: maglev}}")
    assert _render(capsys, topo, "--node", "node1", "--proxy-mode", mode) == plain
