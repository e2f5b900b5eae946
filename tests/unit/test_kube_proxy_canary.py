"""kube-proxy's and the kubelet's canaries (upstream utiliptables Monitor, testbed.kubernetes.
dataplane.monitor), the sync period's field, and kube-proxy's full sync over rules already in
place: after a restart (restart.py) and after a failed sync (upstream's needFullSync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.kubernetes.dataplane.iptables import rules
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.iptables.restore import with_jump_rules
from testbed.kubernetes.dataplane.model import node_context, service_ports
from testbed.kubernetes.dataplane.monitor import (
    CANARY_TABLES,
    FLUSH_TIMEOUT_S,
    CanaryMonitor,
    chain_exists_argv,
    ensure_chains_script,
    iptables_binary,
)
from testbed.kubernetes.dataplane.restart import KUBE_PROXY_CANARY, RESYNC_MODES
from tests.unit import test_proxier
from tests.unit.test_proxier import FakeCluster, FakeProcess
from tests.unit.test_service_spec import one_problem, topo

# test_proxier's fixtures: its plan, and fake servers that listen on any port
plan = test_proxier.plan
servers_listen = test_proxier.servers_listen




class FakeTables:
    """The canary chains of a few nodes, and a clock the monitor's sleeps advance."""

    def __init__(self, nodes: list[str]):
        self.nodes = nodes
        self.chains: set[tuple[str, str]] = set()
        self.now = 100.0
        self.ensured: list[str] = []
        self.reloaded: list[str] = []
        self.unknown: set[str] = set()   # nodes whose check fails (a resource error)

    def exists(self, node: str, table: str) -> bool | None:
        return None if node in self.unknown else (node, table) in self.chains

    def ensure(self, node: str) -> bool:
        self.ensured.append(node)
        self.chains |= {(node, t) for t in CANARY_TABLES}
        return True

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def monitor(self, interval: float = 2.0) -> CanaryMonitor:
        return CanaryMonitor("kube-proxy", KUBE_PROXY_CANARY, CANARY_TABLES, interval,
                             lambda: self.nodes, self.exists, self.ensure, self.reloaded.append,
                             clock=lambda: self.now, sleep=self.sleep)


def test_the_canaries_are_made_at_once_then_checked_every_interval():
    tables = FakeTables(["node1", "node2"])
    mon = tables.monitor()
    assert mon.step() == [] and tables.ensured == ["node1", "node2"]
    assert mon.next_due() == 102.0
    tables.now = 101.0
    assert mon.step() == [] and tables.ensured == ["node1", "node2"]   # nothing due yet
    tables.now = 102.0
    assert mon.step() == [] and tables.reloaded == []   # checked: still there


def test_a_flushed_node_is_reloaded_and_its_canaries_made_again():
    tables = FakeTables(["node1", "node2"])
    mon = tables.monitor()
    mon.step()
    tables.chains -= {("node1", t) for t in CANARY_TABLES}   # `iptables -F` and -X on node1
    tables.now = 102.0
    assert mon.step() == ["node1"]
    assert tables.reloaded == ["node1"] and tables.ensured[-1] == "node1"
    assert all(("node1", t) in tables.chains for t in CANARY_TABLES)
    assert tables.now == 102.0   # every table's canary was already gone: no waiting
    tables.now = 104.0
    assert mon.step() == [] and tables.reloaded == ["node1"]


def test_a_flush_in_progress_is_waited_for_then_reloaded_all_the_same():
    tables = FakeTables(["node1"])
    mon = tables.monitor()
    mon.step()
    tables.chains.discard(("node1", "mangle"))   # nat's and filter's are never deleted
    tables.now = 102.0
    assert mon.step() == ["node1"]
    assert tables.now >= 102.0 + FLUSH_TIMEOUT_S   # upstream: "inconsistent iptables state"


def test_a_check_that_cannot_tell_is_not_a_deleted_canary():
    tables = FakeTables(["node1"])
    mon = tables.monitor()
    mon.step()
    tables.chains.clear()
    tables.unknown.add("node1")
    tables.now = 102.0
    assert mon.step() == [] and tables.reloaded == []


def test_a_node_that_goes_is_forgotten_and_starts_again_when_back():
    tables = FakeTables(["node1", "node2"])
    mon = tables.monitor()
    mon.step()
    tables.nodes = ["node1"]
    tables.now = 102.0
    mon.step()
    assert set(mon.watched) == {"node1"}
    tables.nodes = ["node1", "node2"]
    mon.step()
    assert tables.ensured.count("node2") == 2


def test_the_commands_are_upstreams():
    assert chain_exists_argv("iptables-nft", "mangle", KUBE_PROXY_CANARY) == [
        "iptables-nft", "-w", "-t", "mangle", "-n", "-L", "KUBE-PROXY-CANARY"]
    script = ensure_chains_script("iptables", [("mangle", "KUBE-IPTABLES-HINT")])
    assert script.splitlines() == [
        "set -e", "iptables -w -t mangle -N KUBE-IPTABLES-HINT 2>/dev/null || "
        "iptables -w -t mangle -n -L KUBE-IPTABLES-HINT >/dev/null"]
    assert [iptables_binary(b) for b in ("auto", "legacy", "nft")] == [
        "iptables", "iptables-legacy", "iptables-nft"]


# -- kubeProxy.syncPeriod ----------------------------------------------------------------------

def test_sync_period_defaults_to_upstreams_and_is_read():
    assert topo("services:\n  web: {}\n").kubernetes.sync_period_s == 30.0
    t = topo("services:\n  web: {}\nkubernetes:\n  kubeProxy: {syncPeriod: 2s}\n").kubernetes
    assert t.sync_period_s == 2.0 and t.min_sync_period_s == 1.0


@pytest.mark.parametrize("value, text", [("0s", "too short"), ("2", "has no unit"),
                                         ("2h", "longer than 1h")])
def test_a_bad_sync_period_is_refused_in_one_line(value, text):
    line = one_problem("services:\n  web: {}\nkubernetes:\n"
                       f"  kubeProxy: {{syncPeriod: {value}}}\n")
    assert "kubernetes.kubeProxy.syncPeriod" in line and text in line


# -- full syncs over rules in place ------------------------------------------------------------

class FakeServer(FakeProcess):
    """A kube-proxy server process that can be ended."""

    pid = 4242

    def __init__(self, node: str, argv: list[str]):
        super().__init__(node, argv)
        self.ended = False

    def poll(self) -> int | None:
        return 0 if self.ended else None

    def terminate(self) -> None:
        self.ended = True

    def wait(self, timeout: float | None = None) -> int:
        return 0


def _restores(cluster: FakeCluster, node: str) -> list[str]:
    return [p.fed.decode() for p in cluster.log if p.node == node and "-restore" in p.argv[0]]


def _checks(cluster: FakeCluster, node: str) -> list[list[str]]:
    return [p.argv for p in cluster.log if p.node == node and "-C" in p.argv]


def test_a_restarted_kube_proxy_syncs_whole_over_the_old_rules(plan, tmp_path: Path):
    cluster = FakeCluster(plan, tmp_path)
    cluster.launch_node_servers = lambda module, by_node: {   # type: ignore[method-assign]
        n: FakeServer(n, [module, *args]) for n, args in by_node.items()}
    kp = KubeProxy(cluster, backend="nft")
    kp.sync_all()
    old = kp.health_servers["node1"]
    kp.metrics["node1"].observe_sync(0.1, False, 1.0)
    assert kp.restart(["node1"]) == ["node1"]
    assert old.ended and kp.health_servers["node1"] is not old and kp.restarts == {"node1": 1}
    ctx = node_context(plan, "node1")
    services = service_ports(plan, cluster.live_pods())
    # the new process's first sync: the whole state, without the jumps (ensured with -C)
    assert _restores(cluster, "node1")[-1] == rules.render(services, ctx)
    assert _restores(cluster, "node1")[0] == with_jump_rules(rules.render(services, ctx))
    assert _checks(cluster, "node1") and not _checks(cluster, "node2")
    assert [k for n, _, k in kp.sync_times if n == "node1"] == ["full", "full"]
    assert kp.metrics["node1"].sync_proxy_rules_last_timestamp_seconds is not None
    assert "node1" not in kp.existing_rules and kp.applied["node1"] == services
    cluster.dead.add("web-0")
    kp.sync_all()   # and partial after, as any kube-proxy's
    assert [k for n, _, k in kp.sync_times if n == "node1"][-1] == "partial"


def test_restart_names_a_node_that_is_not_live(plan, tmp_path: Path):
    kp = KubeProxy(FakeCluster(plan, tmp_path))
    kp.sync_all()
    with pytest.raises(ValueError, match="no live node 'node9'"):
        kp.restart(["node9"])
    assert RESYNC_MODES == ("iptables", "nftables")


def test_after_a_failed_sync_the_next_is_whole_over_the_rules_in_place(plan, tmp_path: Path):
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster)
    kp.sync_all()
    cluster.hosts["node1"].fail_restore = True
    cluster.dead.add("web-0")
    with pytest.raises(Exception, match="kube-proxy on node1"):
        kp.sync_all()
    assert "node1" in kp.existing_rules and "node1" not in kp.applied
    cluster.hosts["node1"].fail_restore = False
    kp.sync_all()
    services = service_ports(plan, cluster.live_pods())
    assert _restores(cluster, "node1")[-1] == rules.render(services, node_context(plan, "node1"))
    assert [k for n, _, k in kp.sync_times if n == "node1"] == ["full", "full"]
    assert [k for n, _, k in kp.sync_times if n == "node2"] == ["full", "partial", "partial"]


# -- the command line ----------------------------------------------------------------------------

def test_cnlb_node_restart_kube_proxy_asks_the_detached_cluster(monkeypatch, capsys):
    from testbed.cli import commands
    from testbed.cli.parser import build_parser
    from testbed.emulation import session
    from testbed.errors import UsageError
    asked: list[tuple[str, dict]] = []
    monkeypatch.setattr(session, "request", lambda op, **kw: asked.append((op, kw)) or
                        {"restarted": [kw["node"]]})
    args = build_parser().parse_args(["node", "restart-kube-proxy", "node1"])
    assert args.func(args) == 0
    assert asked == [("restart-kube-proxy", {"node": "node1"})]
    assert capsys.readouterr().out.strip() == '{"restarted": ["node1"]}'
    with pytest.raises(UsageError, match="--instant only goes with fail"):
        commands.cmd_node(build_parser().parse_args(
            ["node", "restart-kube-proxy", "node1", "--instant"]))
