"""kube-proxy's iptables mode on the emulated nodes: the ServiceDataPlane called "iptables".

Renders with rules.py and loads with restore.py, in each node's namespace: the whole state with
the jumps from the built-in chains at the first sync, upstream's partial sync after; then, per
node, what upstream does after a successful restore: the health state and metrics (written to
the node's state file), and the stale UDP conntrack entries removed (conntrack.py). Runs
kube-proxy's servers on every node (testbed.kubernetes.dataplane.healthserver: health-check node
ports, /healthz and /livez on 10256, /metrics on 127.0.0.1:10249). docs/kube-proxy.md tells the
whole story.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

from testbed.errors import EnvironmentProblem
from testbed.kubernetes.dataplane import conntrack
from testbed.kubernetes.dataplane.base import (
    ApplyError,
    ClusterView,
    CommandRunner,
    ServerProcess,
    ServiceDataPlane,
)
from testbed.kubernetes.dataplane.healthserver import METRICS_PORT, PROXY_HEALTHZ_PORT
from testbed.kubernetes.dataplane.iptables import rules
from testbed.kubernetes.dataplane.iptables.restore import (
    apply,
    nat_chains_in_save,
    save_argv,
    with_jump_rules,
)
from testbed.kubernetes.dataplane.metrics import ProxyMetrics, rule_counts
from testbed.kubernetes.dataplane.model import (
    NodeContext,
    ServicePort,
    categorize_endpoints,
    node_context,
    service_ports,
)
from testbed.kubernetes.dataplane.monitor import CanaryMonitor
from testbed.kubernetes.dataplane.restart import RESYNC_MODES, restart_kube_proxy, start_canary
from testbed.plan.addresses import Plan


def render_node_rules(plan: Plan, node: str) -> str:
    """What `cnlb render kube-proxy` prints: the node's first sync, jumps included."""
    ctx = node_context(plan, node)
    return with_jump_rules(rules.render(service_ports(plan), ctx))


TCP_BE_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"   # per network namespace


class KubeProxy(ServiceDataPlane):
    """kube-proxy in iptables mode on every node of a running cluster.

    cluster: the Cluster (for namespaces, the plan and which pods are alive)
    backend: iptables backend: auto (the machine's default), nft or legacy
    """

    mode: ClassVar[str] = "iptables"

    def __init__(self, cluster: ClusterView, backend: str = "auto",
                 min_sync_period_s: float | None = None):
        super().__init__(cluster, backend, min_sync_period_s)
        self.applied: dict[str, list[ServicePort]] = {}  # node -> the service ports applied there
        self.services: list[ServicePort] = []   # what the last sync brought the nodes to
        self.listening: dict[str, frozenset[int]] = {}   # node -> ports its server opened
        # nodes whose next sync is full over rules already there (a restarted kube-proxy, a
        # deleted canary, a failed sync: upstream's needFullSync): no jumps in the text,
        # ensured with -C/-I instead (restart.py)
        self.existing_rules: set[str] = set()
        self.restarts: dict[str, int] = {}   # node -> times its kube-proxy was restarted
        self.canary: CanaryMonitor | None = None   # iptables mode: KUBE-PROXY-CANARY
        # kubeProxy.conntrack.tcpBeLiberal: set on each node when its kube-proxy starts
        kube_proxy = getattr(getattr(cluster, "topo", None), "kube_proxy", None)
        self.tcp_be_liberal = bool(getattr(kube_proxy, "conntrack_tcp_be_liberal", False))

    def context(self, node: str) -> NodeContext:
        """The node as render sees it; conntrack_tcp_liberal is what this kube-proxy set there
        when it started (upstream reads the sysctl back; nothing else sets it in a node the
        testbed made)."""
        return replace(super().context(node), conntrack_tcp_liberal=self.tcp_be_liberal)

    @staticmethod
    def render(services: Sequence[ServicePort], node: NodeContext) -> str:
        return rules.render(services, node)

    @staticmethod
    def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                       node: NodeContext) -> str:
        return rules.render_partial(old, new, node)

    @classmethod
    def render_first(cls, services: Sequence[ServicePort], node: NodeContext) -> str:
        return with_jump_rules(rules.render(services, node))

    def apply_text(self, node: str, text: str) -> None:
        """iptables-restore --noflush of `text` on `node`; raises RestoreError."""
        apply(self._runner(node), text, backend=self.backend,
              ensure_jumps=node in self.existing_rules)

    def sync_all(self, services: Sequence[ServicePort] | None = None) -> None:
        with self.sync_lock:
            services = list(self.services_source() if services is None else services)
            # servers not yet running start first and come up while the rules load
            self._start_servers([n for n in self.live_nodes() if n not in self.health_servers])
            try:
                self.sync_nodes(self.live_nodes(), services)
            finally:
                self.services = services
                self._sync_servers(services)
            if self.canary is None:
                self.canary = start_canary(self)

    def restart(self, nodes: Sequence[str] | None = None) -> list[str]:
        """Restart kube-proxy on `nodes` (default: every live node): restart.py."""
        return restart_kube_proxy(self, nodes)

    def stop_sync_runner(self) -> None:
        super().stop_sync_runner()
        if self.canary is not None:
            self.canary.stop()
            self.canary = None

    def sync_node(self, node: str, services: list[ServicePort]) -> None:
        """Bring one node to `services` (whole at its first sync, partially after)."""
        self.sync_nodes([node], services)

    def sync_nodes(self, nodes: Sequence[str], services: list[ServicePort]) -> None:
        """Bring these nodes to `services`, all loads at once; a text several nodes share
        (rules.render_key) is rendered once. Then, on each node that took its load: metrics,
        the health state's sync time, stale UDP conntrack entries. Raises EnvironmentProblem
        naming the first node (in `nodes` order) whose load failed; the others are loaded all
        the same."""
        texts, kinds, render_s = self._texts(nodes, services)
        results = self.apply_many(texts)
        failed, cleanups = None, {}
        for node in nodes:
            result, full = results[node], kinds[node] == "full"
            metrics = self.metrics.setdefault(node, ProxyMetrics())
            if isinstance(result, ApplyError):
                failed = failed or f"kube-proxy on {node}: {result}"
                metrics.observe_failure(full)
                if self.mode in RESYNC_MODES:   # upstream: needFullSync after a failed sync
                    self.applied.pop(node, None)
                    self.existing_rules.add(node)
                continue
            self.existing_rules.discard(node)
            now = time.time()
            self.sync_times.append((node, round(result, 4), kinds[node]))
            metrics.observe_sync(result + render_s[node], full, now)
            self._count_rules(metrics, texts[node], full)
            metrics.sync_proxy_rules_no_local_endpoints_total = no_local_endpoints(
                services, node)
            old = self.applied.get(node)
            self.applied[node] = services
            self.last_updated[node] = now            # upstream healthzServer.Updated()
            self.oldest_pending_queued.pop(node, None)
            if old is not None:
                cleanups[node] = conntrack.stale_entries_commands(old, services, node)
        self._clean_conntrack(cleanups)
        if failed:
            raise EnvironmentProblem(failed)

    @staticmethod
    def _count_rules(metrics: ProxyMetrics, text: str, full: bool) -> None:
        """sync_proxy_rules_iptables_last (rules this sync wrote) and _total (rules kube-proxy
        owns). A partial sync leaves unchanged chains out of its text, so it updates the
        total of the filter table (always written whole) and not the nat table's (upstream
        renders the skipped chains to count them; that would cost a partial sync a full one's
        rendering here)."""
        counts = rule_counts(text)
        metrics.sync_proxy_rules_iptables_last = counts
        if full:
            metrics.sync_proxy_rules_iptables_total = dict(counts)
        else:
            metrics.sync_proxy_rules_iptables_total["filter"] = counts.get("filter", 0)

    def _clean_conntrack(self, commands: dict[str, list[list[str]]]) -> None:
        """Run each node's conntrack deletions (one shell per node, all nodes at once)."""
        procs = []
        for node, argvs in commands.items():
            if argvs:   # the script on stdin: `conntrack -D ...` lines (conntrack.script)
                proc = self.cluster.host(node).popen(
                    ["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                procs.append((proc, conntrack.script(argvs).encode()))
        for proc, script in procs:
            proc.communicate(script, timeout=120)

    def _texts(self, nodes: Sequence[str], services: list[ServicePort]
               ) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
        """node -> what it loads now, node -> "full" or "partial", node -> seconds its text
        took to render (shared texts count whole for each node, as each kube-proxy renders)."""
        texts, kinds, seconds = {}, {}, {}
        rendered: dict[tuple[object, ...], tuple[str, float]] = {}   # (old, over, render_key)
        for node in nodes:
            old, ctx = self.applied.get(node), self.context(node)
            # nodes synced together hold the same `old` list (or None): its id() groups them
            over = node in self.existing_rules   # a full sync over rules in place: no jumps
            # over rules in place, upstream's full sync reads iptables-save and deletes the
            # service chains nothing uses any more: that node's text is its own
            existing = self._nat_chains(node) if old is None and over else None
            key = (id(old), over, node if existing else "",
                   rules.render_key([*(old or ()), *services], ctx))
            if key not in rendered:
                t0 = time.time()
                text = (rules.render(services, ctx, existing or ()) if old is None and over
                        else with_jump_rules(self.render(services, ctx)) if old is None
                        else self.render_partial(old, services, ctx))
                rendered[key] = text, time.time() - t0
            texts[node], seconds[node] = rendered[key]
            kinds[node] = "full" if old is None else "partial"
        return texts, kinds, seconds

    def _nat_chains(self, node: str) -> set[str]:
        """The chains the node's nat table has now (iptables-save; none if it fails: the
        sync then deletes nothing stale, and its restore reports what is wrong)."""
        code, out = self._output(node, save_argv(self.backend))
        return nat_chains_in_save(out) if code == 0 else set()

    def _output(self, node: str, argv: Sequence[str]) -> tuple[int, str]:
        proc = self.cluster.host(node).popen(list(argv), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out, _ = proc.communicate(timeout=120)
        return proc.returncode, out.decode(errors="replace")

    def _runner(self, node: str) -> CommandRunner:
        host = self.cluster.host(node)

        def run(argv: Sequence[str], stdin_bytes: bytes | None) -> tuple[int, str]:
            stdin = subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL
            proc = host.popen(list(argv), stdin=stdin, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
            _, err = proc.communicate(stdin_bytes, timeout=120)
            return proc.returncode, err.decode(errors="replace")
        return run

    def state_of(self, node: str) -> dict[str, Any]:
        """What `node`'s servers answer from (healthserver.parse_state reads it)."""
        state: dict[str, Any] = dict(self.health_state(self.services, node))
        state["proxier"] = {
            "lastUpdated": self.last_updated.get(node),
            "oldestPendingQueued": self.oldest_pending_queued.get(node),
            "healthTimeout": self.health_timeout_s,
            "nodeEligible": self.node_eligible.get(node, True),
        }
        state["metrics"] = self.metrics.setdefault(node, ProxyMetrics()).to_json()
        return state

    def write_states(self, nodes: Sequence[str]) -> None:
        for node in nodes:
            path = self.cluster.state.file(f"health-{node}.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self.state_of(node), fh)
            os.replace(tmp, path)   # the server re-reads on change; never sees half a file

    def _sync_servers(self, services: list[ServicePort]) -> None:
        """Every live node runs kube-proxy's servers, whether or not a Service has a health
        check (upstream's /healthz and /metrics are always on): write each state, start the
        servers that are not running, wait until new ports listen."""
        nodes = self.live_nodes()
        self.write_states(nodes)
        hc_ports = {s.health_check_node_port for s in services if s.health_check_node_port}
        wanted = frozenset({*hc_ports, PROXY_HEALTHZ_PORT, METRICS_PORT})
        for node in nodes:
            server = self.health_servers.get(node)
            if server is not None and node in self.listening and self.listening[node] != wanted:
                # a service's health check node port came or went (a Service changed): the
                # server re-reads its state on SIGHUP, else only when a request comes
                server.send_signal(signal.SIGHUP)
        self._start_servers([n for n in nodes if n not in self.health_servers])
        self._wait_listening([n for n in nodes if self.listening.get(n) != wanted], wanted)

    def _start_servers(self, nodes: Sequence[str]) -> None:
        """Start kube-proxy's servers on these nodes (their state written first), each forked
        into its node from one warm interpreter (the cluster's launcher of node servers)."""
        if not nodes:
            return
        if self.tcp_be_liberal:   # upstream's conntrack setup (server_linux.go), every mode
            for node in nodes:
                done = self.cluster.sh(node, f"sysctl -qw {TCP_BE_LIBERAL}=1")
                if done.returncode != 0:
                    raise EnvironmentProblem(f"kube-proxy on {node}: cannot set {TCP_BE_LIBERAL}"
                                             f" (conntrack.tcpBeLiberal): {done.stderr.strip()}")
        self.write_states(nodes)
        self.health_servers.update(self.cluster.launch_node_servers(
            "testbed.kubernetes.dataplane.healthserver",
            {node: ["--state", self.cluster.state.file(f"health-{node}.json"),
                    "--healthz-port", str(PROXY_HEALTHZ_PORT),
                    "--metrics-port", str(METRICS_PORT), "--proxy-mode", self.mode]
             for node in nodes}))

    def _wait_listening(self, nodes: Sequence[str], ports: frozenset[int],
                        timeout: float = 10.0) -> None:
        """Wait until each node's server listens on every port, read from the server's own
        view of its network namespace (/proc/PID/net/tcp: no process started per node)."""
        deadline = time.time() + timeout
        waiting = list(nodes)
        while waiting:
            waiting = [n for n in waiting if not ports <= listening_ports(self.health_servers[n])]
            for node in set(nodes) - set(waiting):
                self.listening[node] = ports
            if waiting and time.time() > deadline:
                raise EnvironmentProblem(
                    f"kube-proxy's servers on {waiting[0]} not listening on {sorted(ports)}")
            if waiting:
                time.sleep(0.05)


TCP_LISTEN = "0A"   # the socket state /proc/net/tcp writes for LISTEN


def listening_ports(proc: ServerProcess) -> set[int]:
    """The TCP ports listening in the network namespace of a running process ({} when it is
    gone, or not yet in a namespace of its own: `ip netns exec` enters it after the fork):
    /proc/PID/net/tcp lists the sockets of the namespace the process is in."""
    try:
        if os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            return set()
        with open(f"/proc/{proc.pid}/net/tcp") as fh:
            rows = fh.read().splitlines()[1:]
    except OSError:
        return set()
    out = set()
    for row in rows:
        fields = row.split()
        if len(fields) > 3 and fields[3] == TCP_LISTEN:
            out.add(int(fields[1].rsplit(":", 1)[1], 16))
    return out


def no_local_endpoints(services: Sequence[ServicePort], node: str) -> dict[str, int]:
    """kubeproxy_sync_proxy_rules_no_local_endpoints_total on `node`: service ports with a
    Local policy whose traffic has endpoints somewhere but none here, by traffic_policy."""
    internal = external = 0
    for svc in services:
        if not (svc.proxied and svc.uses_local_endpoints):
            continue
        on_node = categorize_endpoints(svc, node)
        if on_node.has_any_endpoints:
            internal += not on_node.has_internal_endpoints
            external += not on_node.has_external_endpoints
    return {"internal": internal, "external": external}
