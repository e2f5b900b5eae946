"""kube-proxy replaced by eBPF on the emulated nodes: the ServiceDataPlane called "ebpf".

Per node: bpf/lb.c's object (build/bpf/lb.o) loaded once with bpftool, its maps pinned in the
cluster's own bpffs (one directory per node), its program attached by tc at ingress on every
interface traffic enters the node by (uplink, flannel.1, each pod's veth); then every sync
writes the map entries maps.py renders through `bpftool batch` — the whole state at the first
sync, only the entries that changed after (no program reload). kube-proxy's servers (health
check node ports, /healthz, /metrics) are the iptables mode's, started the same way.

The bpffs mount, the programs' and maps' ids and every tc filter are journaled before they
exist: teardown (and the next start after a crash) unmounts the bpffs, the namespaces take
the filters with them, and the leftover checks look for each. docs/ebpf.md tells the story.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from testbed.kubernetes.dataplane.base import ApplyError, ClusterView
from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.metrics import ProxyMetrics
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort
from testbed.paths import BUILD

BPF_OBJECT = os.path.join(BUILD, "bpf", "lb.o")
PROGRAM = "cnlb_ingress"       # at ingress on every interface: requests and replies
HOST_PROGRAM = "cnlb_host"     # at egress on the uplink: what the node itself sends
# interfaces traffic does not enter a node by for the first time: cni0 sees again what a pod's
# veth (one of its ports) already passed up
NOT_ATTACHED = ("lo", "cni0")
# What the node's kernel must allow for packets the program rewrites before it routes them:
# an SNATed request or a translated reply carries one of the node's own addresses as source
# (accept_local), arriving on an interface its route does not leave by (rp_filter off).
NODE_SYSCTLS = ("net/ipv4/conf/all/accept_local=1", "net/ipv4/conf/all/rp_filter=0",
                "net/ipv4/conf/default/rp_filter=0")


class EbpfKubeProxy(KubeProxy):
    """kube-proxy's eBPF replacement on every node of a running cluster (Cilium's shape).

    cluster: the Cluster
    backend: unused (the iptables mode's backend)
    options: backend selection and SNAT or DSR (maps.Options); default: the topology's
        kubeProxy loadBalancer.algorithm and .mode
    """

    mode: ClassVar[str] = "ebpf"

    def __init__(self, cluster: ClusterView, backend: str = "auto",
                 min_sync_period_s: float | None = None, options: maps.Options | None = None):
        super().__init__(cluster, backend, min_sync_period_s)
        self.options = options or _topology_options(cluster)
        self.applied_options: dict[str, maps.Options] = {}   # node -> options of its maps
        self.attached: dict[str, set[str]] = {}   # node -> interfaces with the filter
        self.bpffs: str | None = None
        self._load_lock = threading.Lock()

    # --- pure ----------------------------------------------------------------------------------

    @staticmethod
    def render(services: Sequence[ServicePort], node: NodeContext) -> str:
        return maps.render(services, node)

    @staticmethod
    def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                       node: NodeContext) -> str:
        return maps.render_partial(old, new, node)

    @classmethod
    def render_first(cls, services: Sequence[ServicePort], node: NodeContext) -> str:
        """A fresh node's first sync is its whole state (no jumps to install, unlike iptables):
        what `cnlb render kube-proxy --proxy-mode ebpf` prints."""
        return maps.render(services, node)

    def render_node(self, node: str, services: Sequence[ServicePort]) -> str:
        return maps.render(services, self.context(node), self.options)

    def _texts(self, nodes: Sequence[str], services: list[ServicePort]
               ) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
        texts, kinds, seconds = {}, {}, {}
        for node in nodes:
            old, ctx = self.applied.get(node), self.context(node)
            t0 = time.time()
            if old is None:
                texts[node], kinds[node] = maps.render(services, ctx, self.options), "full"
            else:
                texts[node] = maps.render_partial(old, services, ctx, self.options,
                                                  self.applied_options.get(node))
                kinds[node] = "partial"
            seconds[node] = time.time() - t0
        return texts, kinds, seconds

    @staticmethod
    def _count_rules(metrics: ProxyMetrics, text: str, full: bool) -> None:
        """No iptables rules here: the map entries a sync wrote stand in the metrics' place."""
        metrics.sync_proxy_rules_iptables_last = maps.summary(text)

    def _clean_conntrack(self, commands: dict[str, list[list[str]]]) -> None:
        """Nothing in the kernel's conntrack is kube-proxy's: the programs keep their own
        (cnlb_ct), which re-checks a connection's backend on a new SYN."""

    @classmethod
    def unavailable(cls) -> str | None:
        """What this machine lacks for the mode: BTF, bpftool, or the built programs."""
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            return "kernel lacks BTF (/sys/kernel/btf/vmlinux)"
        with open("/proc/filesystems") as fh:
            if "\tbpf\n" not in fh.read():
                return "kernel lacks the bpf filesystem"
        if not shutil.which("bpftool"):
            return "bpftool is missing (make setup installs it)"
        if not os.path.exists(BPF_OBJECT):
            return f"{BPF_OBJECT} is missing (make setup builds it with clang)"
        return None

    # --- effects -------------------------------------------------------------------------------

    def pin_dir(self, node: str) -> str:
        assert self.bpffs is not None
        return os.path.join(self.bpffs, node)

    def apply_text(self, node: str, text: str) -> None:
        """Write `text`'s map entries on `node` (loading its programs first, once)."""
        self._load(node)
        batch = maps.encode(text, os.path.join(self.pin_dir(node), "maps"))
        if batch:
            proc = subprocess.run(["bpftool", "batch", "file", "-"], input=batch, text=True,
                                  capture_output=True)
            if proc.returncode != 0:
                raise ApplyError(f"bpftool batch on {node}: {_last_line(proc)}")
        self.applied_options[node] = self.options

    def sync_all(self, services: Sequence[ServicePort] | None = None) -> None:
        """The iptables mode's sync_all, except that kube-proxy's servers start after the
        nodes' first load, from a state file that already names every health-check node port:
        a server started before reads a state without them and is only told of a change once
        it has listened (a full eBPF load is quicker than a server's start, so the race the
        iptables mode never loses is lost here)."""
        with self.sync_lock:
            services = list(self.services_source() if services is None else services)
            try:
                self.sync_nodes(self.live_nodes(), services)
            finally:
                self.services = services
                self._sync_servers(services)

    def sync_nodes(self, nodes: Sequence[str], services: list[ServicePort]) -> None:
        """The iptables mode's sync (maps instead of rules), then the filter on every
        interface of the nodes that has none yet (a new pod's veth)."""
        try:
            super().sync_nodes(nodes, services)
        finally:
            self._attach([n for n in nodes if n in self.applied])

    def _journal(self, kind: str, **data: Any) -> None:
        journal = getattr(self.cluster, "journal", None)
        if journal is not None:
            journal.record(kind, **data)

    def _mount(self) -> str:
        """The cluster's own bpffs (a new instance: unmounting it takes every pin with it)."""
        if self.bpffs is None:
            path = self.cluster.state.file("bpf")
            self._journal("bpffs", path=path)
            os.makedirs(path, exist_ok=True)
            _run(["mount", "-t", "bpf", "bpf", path], "mount the cluster's bpffs")
            self.bpffs = path
        return self.bpffs

    def _load(self, node: str) -> None:
        """Load and pin the node's programs and maps (once); the node allows what they do."""
        with self._load_lock:
            self._mount()
            pins = self.pin_dir(node)
            if os.path.exists(os.path.join(pins, PROGRAM)):
                return
            if not os.path.exists(BPF_OBJECT):
                raise ApplyError(f"{BPF_OBJECT} is missing — run `make setup` (clang, bpftool)")
            os.makedirs(os.path.join(pins, "maps"), exist_ok=True)
            _run(["bpftool", "prog", "loadall", BPF_OBJECT, pins, "pinmaps",
                  os.path.join(pins, "maps")], f"load the eBPF programs for {node}")
            progs = [json.loads(_run(["bpftool", "-j", "prog", "show", "pinned",
                                      os.path.join(pins, name)], "read the programs' ids"))
                     for name in (PROGRAM, HOST_PROGRAM)]
            self._journal("bpf", node=node, prog_ids=[p["id"] for p in progs],
                          map_ids=sorted({m for p in progs for m in p.get("map_ids", [])}))
        script = "".join(f"sysctl -qw {s}\n" for s in NODE_SYSCTLS)
        out = self.cluster.sh(node, script)
        if out.returncode != 0:
            raise ApplyError(f"sysctl on {node}: {out.stderr.strip()}")

    def _attach(self, nodes: Sequence[str]) -> None:
        """tc's clsact and cnlb_ingress at ingress on each node interface that lacks it;
        cnlb_host at egress on the uplink (the interface with the node's address)."""
        for node in nodes:
            # `ip`, not /sys/class/net: a node shares the machine's sysfs, not its netns
            rows = [line.split() for line in
                    self.cluster.sh(node, "ip -br addr").stdout.splitlines() if line.strip()]
            done = self.attached.setdefault(node, set())
            node_ip = self.context(node).node_ip
            new = [(r[0].split("@")[0], any(a.split("/")[0] == node_ip for a in r[2:]))
                   for r in rows if r[0].split("@")[0] not in (*NOT_ATTACHED, *done)]
            if not new:
                continue
            netns = _netns_of(self.cluster, node)
            for dev, _ in new:
                self._journal("tc-filter", node=node, dev=dev, netns=netns)
            pins = self.pin_dir(node)
            lines = "".join(f"qdisc replace dev {d} clsact\n"
                            f"filter replace dev {d} ingress pref 1 handle 1 bpf da "
                            f"object-pinned {pins}/{PROGRAM}\n" for d, _ in new)
            lines += "".join(f"filter replace dev {d} egress pref 1 handle 1 bpf da "
                             f"object-pinned {pins}/{HOST_PROGRAM}\n" for d, up in new if up)
            # rp_filter is the larger of all's and the device's: each device's goes to 0 too
            script = (f"tc -batch - <<'TC'\n{lines}TC\n"
                      + "".join(f"echo 0 > /proc/sys/net/ipv4/conf/{d}/rp_filter\n"
                                for d, _ in new))
            out = self.cluster.sh(node, script)
            if out.returncode != 0:
                raise ApplyError(f"tc on {node}: {out.stderr.strip()[-300:]}")
            done.update(d for d, _ in new)

    def dump(self, node: str, map_name: str) -> list[dict[str, Any]]:
        """A node's pinned map, one {"key", "value"} per entry with the BTF's field names (as
        bpftool formats them: a __be32 address is printed as a host-order integer)."""
        out = _run(["bpftool", "-j", "map", "dump", "pinned",
                    os.path.join(self.pin_dir(node), "maps", map_name)], f"dump {map_name}")
        return [e.get("formatted", e) for e in json.loads(out)]


def _topology_options(cluster: ClusterView) -> maps.Options:
    """The topology's kubeProxy.loadBalancer algorithm and mode (the cloud LB's loadBalancer
    section is another thing)."""
    kube_proxy = getattr(getattr(cluster, "topo", None), "kube_proxy", None)
    algorithm = getattr(kube_proxy, "algorithm", None)
    mode = getattr(kube_proxy, "lb_mode", None)
    return maps.Options(algorithm=str(algorithm) if algorithm in maps.ALGORITHMS else "random",
                        mode=str(mode) if mode in maps.LB_MODES else "snat")


def _netns_of(cluster: ClusterView, node: str) -> str:
    """The node's named network namespace ("" when the host has none)."""
    return str(getattr(cluster.host(node), "netns", "") or "")


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ApplyError(f"{what}: {_last_line(proc)}")
    return proc.stdout


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout).splitlines()
             if ln.strip() and "libbpf strict mode" not in ln and "--legacy" not in ln]
    return lines[-1] if lines else f"exit status {proc.returncode}"
