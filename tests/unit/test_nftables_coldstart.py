"""The nftables mode's cold start in steps (testbed.kubernetes.dataplane.nftables.coldstart):
the steps loaded in order leave the ruleset the one-transaction full sync leaves, no step but
the last makes anything reachable, the steps are bounded, and the option reaches the proxier.
On the model of nft (tests/unit/nftables_model.py); bench/kubeproxy_sync.py checks the same on
the real nft."""

from __future__ import annotations

import pytest

from testbed.errors import InputError
from testbed.kubernetes.dataplane.model import Endpoint, ServicePort
from testbed.kubernetes.dataplane.nftables import coldstart, rules
from testbed.kubernetes.dataplane.nftables.proxier import NFTablesProxy
from tests.unit.kubeproxy_cases import API, NODE1, NODE2, WEB
from tests.unit.nftables_model import Ruleset
from tests.unit.test_nftables_rules import _Cluster, _nft_runs
from tests.unit.test_proxier import FakeProcess, servers_listen  # noqa: F401 (a fixture)

EMPTY = ServicePort("default", "empty", "dns", "UDP", "10.96.0.30", 53, 53, node_port=30053)


def _many(n: int) -> list[ServicePort]:
    """n services of 3 endpoints, every third a NodePort with the Local policy."""
    return [ServicePort("bench", f"svc-{i:03d}", "http", "TCP", f"10.96.1.{i + 1}", 80, 8080,
                        node_port=30100 + i if i % 3 == 0 else None,
                        external_traffic_policy="Local" if i % 3 == 0 else "Cluster",
                        endpoints=tuple(Endpoint(f"10.244.{1 + j % 2}.{10 + 3 * i + j}", 8080,
                                                 f"node{1 + j % 2}") for j in range(3)))
            for i in range(n)]


CASES = {
    "web, api (affinity, Local), no endpoints": ([WEB, API, EMPTY], NODE1),
    "the same on node2": ([WEB, API, EMPTY], NODE2),
    "40 services": (_many(40), NODE1),
}


def _one_transaction(services: list[ServicePort], node) -> dict:
    rs = Ruleset()
    rs.load(rules.render(services, node))
    return rs.snapshot()


@pytest.mark.parametrize("limits", [(20_000, 1_000), (30, 4), (1, 1)])
@pytest.mark.parametrize("case", CASES)
def test_steps_in_order_leave_the_one_transaction_ruleset(case, limits):
    services, node = CASES[case]
    steps = coldstart.render(services, node, *limits)
    rs = Ruleset()
    for step in steps:
        rs.load(step)
    assert rs.snapshot() == _one_transaction(services, node)


def test_small_bounds_give_several_steps_within_them():
    services = _many(40)
    steps = coldstart.render(services, NODE1, max_lines=30, max_vmaps=4)
    assert len(steps) > 10
    for step in steps[:-1]:
        lines = step.splitlines()
        vmaps = sum(" vmap { " in line for line in lines)
        assert vmaps <= 4
        # a service port's lines are never split: only a unit larger than the bound exceeds it
        assert len(lines) <= 30 or vmaps <= 1, step


def test_no_step_but_the_last_reaches_anything():
    """Before the last transaction: no base chain (nothing hooked), no set or map (no element
    names a chain), nothing jumps to a service chain from outside the per-service chains."""
    services = [WEB, API, EMPTY, *_many(12)]
    steps = coldstart.render(services, NODE1, max_lines=25, max_vmaps=3)
    rs = Ruleset()
    for step in steps[:-1]:
        rs.load(step)
        snap = rs.snapshot()
        assert not [n for n, (spec, _) in snap["chains"].items() if "hook" in spec]
        assert not [n for n, (kind, _, _) in snap["containers"].items() if kind == "map"]
        assert set(snap["chains"]) <= {"mark-for-masquerade"} | rules.service_chain_names(
            services, NODE1)
    rs.load(steps[-1])
    assert [n for n, (spec, _) in rs.snapshot()["chains"].items() if "hook" in spec]


def test_endpoint_chains_come_before_service_chains():
    """Upstream's proposal (kubernetes#139328): endpoint chains and affinity sets first."""
    steps = coldstart.render([WEB, API], NODE1, max_lines=1, max_vmaps=1)
    firsts = [s.splitlines()[0].split(" ")[4] for s in steps[1:-1]]
    kinds = [name.split("-")[0] for name in firsts]
    assert kinds == sorted(kinds, key=lambda k: k != "endpoint"), kinds
    assert kinds[0] == "endpoint" and kinds[-1] in ("service", "local", "external")


def test_elements_go_several_to_a_command_and_are_the_full_syncs():
    services = _many(40)
    text = coldstart.render_elements(services, NODE1, per_command=7)
    assert all(line.startswith("add element ip kube-proxy ") for line in text.splitlines())
    assert len(text.splitlines()) < len([x for x in rules.render(services, NODE1).splitlines()
                                         if x.startswith("add element")]) / 3


def test_join_and_split_carry_the_steps_and_the_joined_text_is_one_transaction_too():
    steps = coldstart.render([WEB, API, EMPTY], NODE1, max_lines=10, max_vmaps=1)
    text = coldstart.join(steps)
    assert [s.rstrip("\n") for s in coldstart.split(text)] == [s.rstrip("\n") for s in steps]
    assert coldstart.split("add table ip kube-proxy\n") == ["add table ip kube-proxy\n"]
    rs = Ruleset()
    rs.load(text)
    assert rs.snapshot() == _one_transaction([WEB, API, EMPTY], NODE1)


def test_bounds_below_one_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        coldstart.render([WEB], NODE1, max_lines=0)


# --- the option, in the proxier and in the topology -----------------------------------------------


def _plan_and_cluster(tmp_path, extra: str = ""):
    from testbed.plan.addresses import build_plan
    from testbed.spec.topology import load_topology
    from tests.unit.test_proxier import TOPOLOGY
    path = tmp_path / "local.yaml"
    path.write_text(TOPOLOGY + extra)
    topo = load_topology(str(path), mode="nodeport")
    cluster = _Cluster(build_plan(topo), tmp_path)
    cluster.topo = topo
    return topo, cluster


def _without_tables(cluster) -> None:
    """The nodes' `nft -c` probe fails as nft does in a namespace without the table."""
    for host in cluster.hosts.values():
        def popen(argv, _host=host, _popen=host.popen, **kwargs):
            if list(argv)[:2] == ["nft", "-c"]:
                proc = FakeProcess(_host.name, list(argv), 1, b"/dev/stdin:1:14-23: Error: "
                                   b"No such file or directory\n")
                cluster.log.append(proc)
                return proc
            return _popen(argv, **kwargs)
        host.popen = popen


def test_proxier_cold_starts_in_steps_when_asked_and_the_table_is_absent(tmp_path):
    topo, cluster = _plan_and_cluster(
        tmp_path, "kubeProxy: {mode: nftables, nftables: {coldStartInSteps: true}}\n")
    assert topo.kube_proxy.nftables_cold_start_in_steps is True
    kp = NFTablesProxy(cluster)
    assert kp.cold_start_in_steps
    _without_tables(cluster)
    kp.sync_all()
    asked = [p for p in cluster.log if p.argv[:2] == ["nft", "-c"]]
    assert sorted(p.node for p in asked) == ["node1", "node2"]
    assert all(p.fed == b"add chain ip kube-proxy mark-for-masquerade\n" for p in asked)
    for node in ("node1", "node2"):
        loads = [p.fed.decode() for p in _nft_runs(cluster)
                 if p.node == node and p.argv == ["nft", "-f", "-"]]
        services, ctx = kp.applied[node], kp.context(node)
        assert [x.rstrip("\n") for x in loads] == [
            x.rstrip("\n") for x in coldstart.render(services, ctx)]
        rs = Ruleset()
        for text in loads:
            rs.load(text)
        assert rs.snapshot() == _one_transaction(services, ctx)
        assert kp.cold_starts[node] == len(loads) >= 2
    before = len(_nft_runs(cluster))
    cluster.dead.add("web-2")
    kp.sync_all()   # partial syncs: one transaction each, as without the option
    later = [p for p in _nft_runs(cluster)[before:] if p.argv == ["nft", "-f", "-"]]
    assert len(later) == 2 and all(b"add table" not in p.fed for p in later)
    assert [k for _, _, k in kp.sync_times] == ["full", "full", "partial", "partial"]


def test_proxier_default_is_upstreams_one_transaction(tmp_path):
    topo, cluster = _plan_and_cluster(tmp_path, "kubeProxy: {mode: nftables}\n")
    assert topo.kube_proxy.nftables_cold_start_in_steps is False
    kp = NFTablesProxy(cluster)
    _without_tables(cluster)
    kp.sync_all()
    assert not [p for p in cluster.log if p.argv[:2] == ["nft", "-c"]]
    assert [p.fed.decode() for p in _nft_runs(cluster) if p.node == "node1"] == [
        kp.render_node("node1", kp.applied["node1"])]


def test_proxier_with_the_table_present_loads_one_transaction(tmp_path):
    """The probe succeeds (the fake's nft exits 0): e.g. a restarted kube-proxy's node."""
    _, cluster = _plan_and_cluster(tmp_path)
    kp = NFTablesProxy(cluster, cold_start_in_steps=True)
    kp.sync_all()
    assert [p.fed.decode() for p in _nft_runs(cluster)
            if p.node == "node1" and p.argv == ["nft", "-f", "-"]] == [
        kp.render_node("node1", kp.applied["node1"])]


def test_a_bad_cold_start_value_is_one_line_with_the_path(tmp_path):
    from testbed.spec.topology import load_topology
    from tests.unit.test_proxier import TOPOLOGY
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY + "kubeProxy: {nftables: {coldStartInSteps: maybe, chunk: 3}}\n")
    with pytest.raises(InputError) as err:
        load_topology(str(path))
    found = [str(p) for p in err.value.problems]
    assert len(found) == 2, found
    assert any("kubeProxy.nftables.coldStartInSteps" in p for p in found)
    assert any("kubeProxy.nftables.chunk: unknown key 'chunk'" in p for p in found)
