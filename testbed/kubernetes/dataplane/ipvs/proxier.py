"""kube-proxy's IPVS mode on the emulated nodes: the ServiceDataPlane called "ipvs".

Renders with rules.py and loads each part of the text with its tool in the node's namespace, in
upstream's order: sysctls, the kube-ipvs0 dummy device and its addresses (`ip -batch`), the
ipsets (`ipset restore -exist`), the virtual servers (`ipvsadm -R`), the iptables rules
(`iptables-restore --noflush`). Everything after the load — kube-proxy's servers (health-check
node ports, /healthz, /metrics), the state files, stale UDP conntrack entries, paced syncs — is
the iptables mode's, shared by subclassing it: upstream's two proxiers share it too
(pkg/proxy/healthcheck, conntrack, BoundedFrequencyRunner).

IPVS needs the kernel's ip_vs module; unavailable() says "kernel lacks ip_vs" where neither
/proc/net/ip_vs exists nor `modprobe ip_vs` loads it. A node's network namespace has its own
IPVS table, so nodes do not see each other's virtual servers.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from typing import ClassVar

from testbed.kubernetes.dataplane.base import ApplyError, ClusterView
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.iptables.restore import apply as iptables_restore
from testbed.kubernetes.dataplane.ipvs import rules
from testbed.kubernetes.dataplane.metrics import ProxyMetrics, rule_counts
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort

IP_VS_PROC = "/proc/net/ip_vs"   # exists once the ip_vs module is loaded


class IpvsCommandError(ApplyError):
    """A tool of the IPVS mode (ip, ipset, ipvsadm, sysctl) refused its part."""


def ip_vs_missing(proc_path: str = IP_VS_PROC,
                  modprobe: Sequence[str] = ("modprobe", "-q", "ip_vs")) -> str | None:
    """None when the kernel has IPVS (loaded, or loadable), else "kernel lacks ip_vs"."""
    if os.path.exists(proc_path):
        return None
    try:
        loaded = subprocess.run(list(modprobe), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        loaded = False
    return None if loaded and os.path.exists(proc_path) else "kernel lacks ip_vs"


class IpvsProxy(KubeProxy):
    """kube-proxy in IPVS mode on every node of a running cluster.

    backend: the iptables backend of the mode's few iptables rules (auto, nft or legacy)
    """

    mode: ClassVar[str] = "ipvs"

    def __init__(self, cluster: ClusterView, backend: str = "auto",
                 min_sync_period_s: float | None = None):
        super().__init__(cluster, backend, min_sync_period_s)

    @staticmethod
    def render(services: Sequence[ServicePort], node: NodeContext) -> str:
        return rules.render(services, node)

    @staticmethod
    def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                       node: NodeContext) -> str:
        return rules.render_partial(old, new, node)

    @classmethod
    def render_first(cls, services: Sequence[ServicePort], node: NodeContext) -> str:
        return rules.render(services, node)   # the jumps are in it already

    @classmethod
    def unavailable(cls) -> str | None:
        return ip_vs_missing()

    def apply_text(self, node: str, text: str) -> None:
        """Each part of `text` with its tool on `node`, in order; raises ApplyError naming the
        tool and what it said (the parts before it stay loaded, as upstream's)."""
        run = self._runner(node)
        parts = rules.split(text)
        if rules.PART_SYSCTL in parts:
            settings = parts[rules.PART_SYSCTL].split()
            self._check(run(["sysctl", "-q", "-w", *settings], None), "sysctl")
        if rules.PART_IP in parts:
            self._check(run(["ip", "-batch", "-"], parts[rules.PART_IP].encode()), "ip -batch")
        if rules.PART_IPSET in parts:
            self._check(run(["ipset", "restore", "-exist"], parts[rules.PART_IPSET].encode()),
                        "ipset restore")
        if rules.PART_IPVSADM in parts:
            self._check(run(["ipvsadm", "-R"], parts[rules.PART_IPVSADM].encode()), "ipvsadm -R")
        if rules.PART_IPTABLES in parts:
            iptables_restore(run, parts[rules.PART_IPTABLES], backend=self.backend,
                             ensure_jumps=False)

    @staticmethod
    def _check(result: tuple[int, str], tool: str) -> None:
        code, err = result
        if code != 0:
            raise IpvsCommandError(f"{tool} failed (exit {code}): {err.strip()}")

    def _texts(self, nodes: Sequence[str], services: list[ServicePort]
               ) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
        """Each node's text, rendered for it: the NodePort virtual servers carry its address,
        so no two nodes share one."""
        texts, kinds, seconds = {}, {}, {}
        for node in nodes:
            old, ctx = self.applied.get(node), self.context(node)
            t0 = time.time()
            texts[node] = (self.render_first(services, ctx) if old is None
                           else self.render_partial(old, services, ctx))
            seconds[node] = time.time() - t0
            kinds[node] = "full" if old is None else "partial"
        return texts, kinds, seconds

    @staticmethod
    def _count_rules(metrics: ProxyMetrics, text: str, full: bool) -> None:
        """The iptables part's rules: written whole on every sync, so the total is always
        known (the virtual servers are not iptables rules)."""
        counts = rule_counts(rules.split(text).get(rules.PART_IPTABLES, ""))
        metrics.sync_proxy_rules_iptables_last = counts
        metrics.sync_proxy_rules_iptables_total = dict(counts)
