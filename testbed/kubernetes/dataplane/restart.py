"""kube-proxy restarting and resyncing over rules already in place: what a new kube-proxy
process does on a node whose tables still hold the old one's rules, and what the iptables
proxier does when its canary is gone.

restart_kube_proxy(plane, nodes): upstream's e2e "should work after restarting kube-proxy"
    deletes the kube-proxy pods; each node's new process starts with nothing in memory (no
    applied state, fresh metrics, its servers started again) and its first sync is a full
    sync over the rules the old one left (iptables: the whole restore input, jumps ensured
    with -C/-I; nftables: the whole transaction over the existing table). Traffic keeps
    flowing meanwhile: the kernel's rules outlive the process.
force_full_sync(plane, node): upstream's forceSyncProxyRules, the canary monitor's reload.
start_canary(plane): upstream NewProxier's `go ipt.Monitor(kubeProxyCanaryChain, mangle, nat,
    filter, forceSyncProxyRules, syncPeriod)`, iptables mode only.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from testbed.kubernetes.dataplane.metrics import ProxyMetrics
from testbed.kubernetes.dataplane.monitor import CanaryMonitor, iptables_binary, iptables_monitor

# `plane` below is the iptables mode's KubeProxy (or a subclass); typed Any so that this module,
# which it imports, does not import it back
KubeProxy = Any

KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
# the modes whose full sync may go over rules already in place (the IPVS mode's adds a dummy
# device that exists then, the eBPF mode's would leave stale map entries)
RESYNC_MODES = ("iptables", "nftables")


def forget_node(plane: KubeProxy, node: str) -> None:
    """What a new kube-proxy process on `node` does not know: what it applied (its first sync
    is full, over the rules in place), its metrics, its sync times."""
    plane.applied.pop(node, None)
    plane.existing_rules.add(node)
    plane.metrics[node] = ProxyMetrics()
    plane.last_updated.pop(node, None)
    plane.oldest_pending_queued.pop(node, None)


def stop_server(plane: KubeProxy, node: str) -> None:
    """End the node's kube-proxy servers (/healthz, /metrics, health-check node ports)."""
    server = plane.health_servers.pop(node, None)
    plane.listening.pop(node, None)
    if server is None or server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


def restart_kube_proxy(plane: KubeProxy, nodes: Sequence[str] | None = None) -> list[str]:
    """Restart kube-proxy on `nodes` (default: every live node, as deleting the DaemonSet's
    pods does); returns the nodes restarted once each new process has synced and its servers
    listen. Raises ValueError naming a node that is not live, EnvironmentProblem when a
    node refused its sync."""
    if plane.mode not in RESYNC_MODES:
        raise ValueError(f"restarting kube-proxy is modelled in the {' and '.join(RESYNC_MODES)}"
                         f" modes, not {plane.mode}")
    live = plane.live_nodes()
    chosen = list(live if nodes is None else nodes)
    for node in chosen:
        if node not in live:
            raise ValueError(f"no live node {node!r} (live: {', '.join(live)})")
    with plane.source_lock, plane.sync_lock:   # in a paced sync's order
        for node in chosen:
            stop_server(plane, node)
            forget_node(plane, node)
            plane.restarts[node] = plane.restarts.get(node, 0) + 1
            if plane.canary is not None:   # the new process's monitor makes its canaries
                plane.canary.watched.pop(node, None)
        services = list(plane.services)   # what the cluster's informers hold now
        plane._start_servers(chosen)   # upstream: the servers start before the first sync
        try:
            plane.sync_nodes(chosen, services)
        finally:
            plane._sync_servers(services)
    return chosen


def force_full_sync(plane: KubeProxy, node: str) -> None:
    """upstream forceSyncProxyRules on `node`: the next sync is full (over what is left of
    the rules), and it runs now."""
    with plane.sync_lock:
        if node not in plane.live_nodes():
            return
        plane.applied.pop(node, None)
        plane.existing_rules.add(node)
        plane.sync_nodes([node], list(plane.services))


def start_canary(plane: KubeProxy) -> CanaryMonitor | None:
    """The iptables proxier's canary monitor, started (None in other modes: the nftables
    proxier notices a deleted table when a sync fails, and resyncs whole; None too for a
    cluster view without a topology: a benchmark's or a unit test's, with no nodes to watch)."""
    if plane.mode != "iptables" or getattr(plane.cluster, "topo", None) is None:
        return None
    monitor = iptables_monitor("kube-proxy", KUBE_PROXY_CANARY, plane.sync_period_s,
                               plane.cluster, iptables_binary(plane.backend), plane.live_nodes,
                               lambda node: force_full_sync(plane, node))
    monitor.start()
    return monitor
