"""The iptables data plane as it ships (KubeProxy), on a fake cluster: no root, no Mininet.

What runs on each node is recorded: the first sync is one restore holding the whole state with
the jumps, later syncs are partial; the health-check state file is health_check_state's; the
public methods the runner uses (render_node, render_change, apply_text) load on the right node.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from testbed.errors import EnvironmentProblem
from testbed.kubernetes.dataplane import conntrack
from testbed.kubernetes.dataplane.healthserver import parse_state
from testbed.kubernetes.dataplane.iptables import restore, rules
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy, render_node_rules
from testbed.kubernetes.dataplane.model import (
    health_check_state,
    node_context,
    service_ports,
)
from testbed.plan.addresses import Plan, build_plan
from testbed.spec.topology import load_topology

TOPOLOGY = """\
name: local
vpc:
  cidr: 192.168.0.0/16
  subnets: {az-a: 192.168.0.0/24}
nodes:
  node1: {subnet: az-a}
  node2: {subnet: az-a}
deployments:
  web: {replicas: 3, placement: {node1: 2, node2: 1}}
services:
  web: {type: LoadBalancer, port: 80, targetPort: 8080, nodePort: 30080,
        externalTrafficPolicy: Local, healthCheckNodePort: 31000}
loadBalancer: {vip: 198.51.100.10, targets: nodeport}
clients:
  client1: {}
"""


class FakeProcess:
    """A command that ran: its node, argv and the bytes it was fed."""

    def __init__(self, node: str, argv: list[str], returncode: int = 0, stderr: bytes = b""):
        self.node, self.argv = node, argv
        self.fed: bytes | None = None
        self.returncode, self.stderr = returncode, stderr

    def communicate(self, stdin: bytes | None = None, timeout: float | None = None):
        self.fed = stdin
        return b"", self.stderr


class FakeHost:
    """A node's shell: records every command and what it was fed."""

    def __init__(self, name: str, log: list, fail_restore: bool = False):
        self.name, self.log, self.fail_restore = name, log, fail_restore

    def popen(self, argv: Sequence[str], **kwargs) -> FakeProcess:
        failed = self.fail_restore and "-restore" in argv[0]
        proc = FakeProcess(self.name, list(argv), *((1, b"iptables-restore: line 2 failed\n")
                                                    if failed else ()))
        self.log.append(proc)
        return proc


class FakeState:
    def __init__(self, path: Path):
        self.path = path

    def file(self, name: str) -> str:
        return str(self.path / name)


class FakeCluster:
    """The ClusterView KubeProxy uses, over a real plan."""

    def __init__(self, plan: Plan, tmp: Path, fail_restore: bool = False):
        self.plan, self.state = plan, FakeState(tmp)
        self.failed_nodes: set[str] = set()
        self.dead: set[str] = set()
        self.log: list = []
        self.hosts = {n.name: FakeHost(n.name, self.log, fail_restore) for n in plan.nodes}

    def live_pods(self) -> set[str]:
        return {p.name for p in self.plan.pods} - self.dead

    def host(self, name: str) -> FakeHost:
        return self.hosts[name]

    def launch_node_servers(self, module: str, args_by_node) -> dict[str, FakeProcess]:
        """Python servers forked into the nodes: one logged command per node."""
        started = {node: FakeProcess(node, [module, *args]) for node, args in args_by_node.items()}
        self.log.extend(started.values())
        return started

    def sh(self, host: str, command: str, timeout: float = 60.0):
        ports = sorted({s.health_check_node_port for s in self.plan.services
                        if s.health_check_node_port} | {10249, 10256})
        listening = "".join(f"LISTEN 0 128 0.0.0.0:{p} 0.0.0.0:*\n" for p in ports)
        return subprocess.CompletedProcess(command, 0, listening, "")


@pytest.fixture(autouse=True)
def servers_listen(monkeypatch):
    """Every fake server listens on whatever kube-proxy waits for (no /proc to read)."""
    from testbed.kubernetes.dataplane.iptables import proxier
    monkeypatch.setattr(proxier, "listening_ports", lambda proc: set(range(1, 65536)))


@pytest.fixture
def plan(tmp_path) -> Plan:
    path = tmp_path / "local.yaml"
    path.write_text(TOPOLOGY)
    return build_plan(load_topology(str(path), mode="nodeport"))


def _restores(cluster: FakeCluster) -> list[FakeProcess]:
    return [proc for proc in cluster.log if "-restore" in proc.argv[0]]


def test_first_sync_is_whole_with_jumps_then_partial(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster, backend="legacy")
    kp.sync_all()
    first = sorted(_restores(cluster), key=lambda p: p.node)   # the nodes load at once
    assert [(p.node, p.argv) for p in first] == [
        (n.name, ["iptables-legacy-restore", "--noflush", "--wait"]) for n in plan.nodes]
    for proc in first:   # the whole state, with the jumps from the built-in chains
        assert proc.fed.decode() == render_node_rules(plan, proc.node)
    assert [(node, kind) for node, _, kind in kp.sync_times] == [("node1", "full"),
                                                                  ("node2", "full")]
    assert kp.applied["node1"] == service_ports(plan, cluster.live_pods())
    cluster.dead.add("web-2")   # node2's only pod
    kp.sync_all()
    assert [kind for _, _, kind in kp.sync_times[2:]] == ["partial", "partial"]


@pytest.fixture
def cluster_policy_plan(tmp_path) -> Plan:
    path = tmp_path / "cluster.yaml"
    path.write_text(TOPOLOGY.replace("externalTrafficPolicy: Local, healthCheckNodePort: 31000",
                                     "externalTrafficPolicy: Cluster"))
    return build_plan(load_topology(str(path), mode="nodeport"))


def _count_renders(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name in ("render", "render_partial"):
        real = getattr(rules, name)
        monkeypatch.setattr(rules, name, lambda *a, real=real, name=name:
                            calls.append(name) or real(*a))
    return calls


def test_nodes_that_render_alike_share_one_render(cluster_policy_plan, tmp_path, monkeypatch):
    plan = cluster_policy_plan
    calls = _count_renders(monkeypatch)
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster)
    kp.sync_all()
    cluster.dead.add("web-0")
    kp.sync_all()
    assert calls == ["render", "render_partial"]   # Cluster policy: all nodes' texts are alike
    assert sorted(kind for _, _, kind in kp.sync_times) == ["full"] * 2 + ["partial"] * 2
    for proc in _restores(cluster)[:2]:
        assert proc.fed.decode() == render_node_rules(plan, proc.node)


def test_local_policy_renders_each_node_for_its_own_endpoints(plan, tmp_path, monkeypatch):
    contexts = [node_context(plan, n.name) for n in plan.nodes]
    services = service_ports(plan)
    assert len({rules.render_key(services, ctx) for ctx in contexts}) == 2
    assert rules.render(services, contexts[0]) != rules.render(services, contexts[1])
    calls = _count_renders(monkeypatch)
    KubeProxy(FakeCluster(plan, tmp_path)).sync_all()
    assert calls == ["render", "render"]


def test_render_key_names_all_that_the_text_reads(plan, cluster_policy_plan):
    """Nodes with equal keys get equal texts, whole and partial (the sharing's premise)."""
    for p in (plan, cluster_policy_plan):
        old, new = service_ports(p), service_ports(p, {"web-0", "web-2"})
        by_key: dict = {}
        for n in p.nodes:
            ctx = node_context(p, n.name)
            text = rules.render(new, ctx) + rules.render_partial(old, new, ctx)
            by_key.setdefault(rules.render_key([*old, *new], ctx), set()).add(text)
        assert all(len(texts) == 1 for texts in by_key.values())


def test_one_refused_node_does_not_stop_the_others(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path)
    cluster.hosts["node1"].fail_restore = True
    kp = KubeProxy(cluster)
    with pytest.raises(EnvironmentProblem, match="kube-proxy on node1: "):
        kp.sync_all()
    assert sorted(p.node for p in _restores(cluster)) == ["node1", "node2"]
    assert list(kp.applied) == ["node2"] and [n for n, _, _ in kp.sync_times] == ["node2"]


def test_health_state_file_is_health_check_state(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster)
    cluster.dead.add("web-2")
    kp.sync_all()
    live = service_ports(plan, cluster.live_pods())
    for node in ("node1", "node2"):
        written = json.loads((tmp_path / f"health-{node}.json").read_text())
        assert written["services"] == health_check_state(live, node)["services"]
        assert parse_state(json.dumps(written)).proxier.last_updated == kp.last_updated[node]
    assert json.loads((tmp_path / "health-node2.json").read_text())["services"][0] == {
        "namespace": "default", "name": "web", "port": 31000, "local_endpoints": 0}
    servers = [p.argv for p in cluster.log if "healthserver" in " ".join(p.argv)]
    assert len(servers) == 2 and sorted(kp.health_servers) == ["node1", "node2"]
    assert servers[0][:2] == ["testbed.kubernetes.dataplane.healthserver", "--state"]
    assert servers[0][3:] == ["--healthz-port", "10256", "--metrics-port", "10249",
                              "--proxy-mode", "iptables"]


def test_runner_methods_render_and_apply_on_the_named_node(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster, backend="nft")
    services = service_ports(plan)
    text = kp.render_node("node2", services)
    assert text == rules.render(services, node_context(plan, "node2"))
    fewer = service_ports(plan, {"web-0"})
    change = kp.render_change("node2", services, fewer)
    assert change == rules.render_partial(services, fewer, node_context(plan, "node2"))
    kp.apply_text("node2", change)
    assert [(p.node, p.argv, p.fed) for p in cluster.log] == [
        ("node2", ["iptables-nft-restore", "--noflush", "--wait"], change.encode())]


def test_a_refused_restore_is_an_environment_problem_naming_the_node(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path, fail_restore=True)
    with pytest.raises(EnvironmentProblem, match="kube-proxy on node1: .* at input line 2"):
        KubeProxy(cluster).sync_all()
    with pytest.raises(restore.RestoreError):
        KubeProxy(cluster).apply_text("node2", "*nat\nCOMMIT\n")


def test_cnlb_render_prints_the_first_sync_with_jumps(plan):
    text = render_node_rules(plan, "node1")
    assert text == restore.with_jump_rules(rules.render(service_ports(plan),
                                                        node_context(plan, "node1")))
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' \
        in text


def test_servers_run_on_every_node_without_any_local_service(cluster_policy_plan, tmp_path):
    """Upstream's /healthz (10256) and /metrics (10249) are always on, health checks or not."""
    cluster = FakeCluster(cluster_policy_plan, tmp_path)
    kp = KubeProxy(cluster)
    kp.sync_all()
    assert sorted(kp.health_servers) == ["node1", "node2"]
    state = parse_state((tmp_path / "health-node1.json").read_text())
    assert state.services == {} and state.proxier.last_updated == kp.last_updated["node1"]
    m = state.metrics
    assert m.sync_full_proxy_rules_duration_seconds.count == 1
    assert m.sync_partial_proxy_rules_duration_seconds.count == 0
    assert m.sync_proxy_rules_iptables_last["nat"] > 0
    assert m.sync_proxy_rules_last_timestamp_seconds == kp.last_updated["node1"]
    waits = [p for p in cluster.log if p.argv[:1] == ["ss"]]
    kp.sync_all()   # servers already listen on every port: no new process, no new wait
    assert len(kp.health_servers) == 2 and [p for p in cluster.log if p.argv[:1] == ["ss"]] \
        == waits
    assert parse_state((tmp_path / "health-node1.json").read_text()) \
        .metrics.sync_proxy_rules_duration_seconds.count == 2


def test_a_refused_restore_is_counted_and_the_sync_time_kept(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path, fail_restore=True)
    kp = KubeProxy(cluster)
    with pytest.raises(EnvironmentProblem):
        kp.sync_all()
    assert kp.metrics["node1"].sync_proxy_rules_iptables_restore_failures_total == 1
    assert "node1" not in kp.last_updated
    assert parse_state((tmp_path / "health-node1.json").read_text()).proxier.last_updated is None


def test_request_sync_coalesces_and_marks_the_request_queued(plan, tmp_path):
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster, min_sync_period_s=3600)
    synced = threading.Event()
    real = kp.sync_all

    def sync_all(services=None):
        real(services)
        synced.set()
    kp.sync_all = sync_all   # type: ignore[method-assign]
    try:
        kp.request_sync()
        assert synced.wait(10)
        assert kp.oldest_pending_queued == {} and sorted(kp.last_updated) == ["node1", "node2"]
        synced.clear()
        kp.request_sync()          # the burst's second run
        assert synced.wait(10)
        synced.clear()
        kp.request_sync()          # the third must wait for the period: queued meanwhile
        kp.request_sync()
        assert not synced.wait(0.3)
        queued = parse_state((tmp_path / "health-node1.json").read_text()).proxier
        assert queued.oldest_pending_queued == kp.oldest_pending_queued["node1"]
        assert len(kp.sync_times) == 4   # two syncs x two nodes
    finally:
        kp.stop_sync_runner()


def test_udp_endpoint_gone_clears_its_conntrack_entries_on_every_node(tmp_path):
    path = tmp_path / "udp.yaml"
    path.write_text(TOPOLOGY.replace("port: 80, targetPort: 8080", "port: 53, targetPort: 8080,"
                                     " protocol: UDP"))
    plan = build_plan(load_topology(str(path), mode="nodeport"))
    cluster = FakeCluster(plan, tmp_path)
    kp = KubeProxy(cluster)
    kp.sync_all()
    assert not [p for p in cluster.log if p.argv[:1] == ["sh"]]
    cluster.dead.add("web-2")
    kp.sync_all()
    shells = sorted((p for p in cluster.log if p.argv[:1] == ["sh"]), key=lambda p: p.node)
    gone = plan.pod("web-2").ip
    svc = plan.services[0]
    assert [p.node for p in shells] == ["node1", "node2"]
    assert shells[0].argv == ["sh", "-s"] and shells[0].fed.decode() == conntrack.script([
        conntrack.clear_entries_for_port_nat(gone, svc.node_port),
        conntrack.clear_entries_for_nat(svc.cluster_ip, gone),
        conntrack.clear_entries_for_nat(svc.vip, gone)])
