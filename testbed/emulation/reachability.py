"""Reachability: what should reach what in each mode (pure), and probing it on a live cluster.

classic (nodeport): nodes reach every pod (their own over cni0, others over the VXLAN overlay);
  pods reach pods on other nodes; clients reach nodes but not pod addresses, which the VPC does
  not know.
container-native: the same inside the cluster, and the VPC routes pod addresses, so a client's
  packet to a pod IP arrives (the load balancer's ip targets rely on exactly this).
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from testbed.plan.addresses import Plan, PodPlan

Answers = Mapping[tuple[str, str], bool]   # (source host, address pinged) -> it answered


@dataclass(frozen=True)
class Probe:
    """One ping: from a host to an address, and whether it should answer."""
    source: str
    target: str          # the name of what is pinged
    ip: str
    group: str           # how the table groups it: "pods", "nodes", "pods on other nodes", ...
    expect: bool


class LiveCluster(Protocol):
    """What probing needs of a running cluster (testbed.emulation.cluster.Cluster has it)."""

    plan: Plan

    def sh(self, host: str, command: str,
           timeout: float = ...) -> subprocess.CompletedProcess[str]: ...


FULL_MESH_MAX = 20_000   # node-to-pod pings; past this each pod is pinged by two nodes only
PINGS_AT_ONCE = 100      # concurrent pings per source (and per script: one argument < 128 KiB)


def pods_pinged_by(plan: Plan, node: str, index: int) -> list[PodPlan]:
    """The pods a node pings: all of them in a small cluster; in a large one its own pods and
    those of the node before it in plan order (so each pod is pinged by its own node and by
    one other, and the pings grow with the pods, not with nodes × pods)."""
    n = len(plan.nodes)
    if n * len(plan.pods) <= FULL_MESH_MAX:
        return list(plan.pods)
    previous = plan.nodes[(index - 1) % n].name
    return [p for p in plan.pods if p.node in (node, previous)]


def expected_probes(plan: Plan) -> list[Probe]:
    """Every ping the mode promises an answer to, or promises none (clients to pod addresses
    in classic mode)."""
    probes = []
    # the VPC routes pod addresses: aws-vpc-cni's, or Calico's blocks learned by BGP
    native = plan.mode == "container-native" or (plan.bgp is not None and plan.bgp.fabric_peer)
    for index, node in enumerate(plan.nodes):
        for pod in pods_pinged_by(plan, node.name, index):
            probes.append(Probe(node.name, pod.name, pod.ip, "pods", True))
        for other in plan.nodes:
            if other.name != node.name:
                probes.append(Probe(node.name, other.name, other.ip, "other nodes", True))
    # one pod per node pings one pod on every other node (the overlay / VPC path)
    first_pod: dict[str, PodPlan] = {}
    for pod in plan.pods:
        first_pod.setdefault(pod.node, pod)
    for pod_node, pod in first_pod.items():
        for other_node, other_pod in first_pod.items():
            if other_node != pod_node:
                probes.append(Probe(pod.name, other_pod.name, other_pod.ip, "pods on other nodes",
                                    True))
    for client in plan.clients:
        for node in plan.nodes:
            probes.append(Probe(client, node.name, node.ip, "nodes", True))
        for pod in plan.pods:
            probes.append(Probe(client, pod.name, pod.ip, "pod addresses", native))
    return probes


@dataclass
class Row:
    """One line of the reachability table."""
    source: str
    group: str
    expect: bool
    total: int
    answered: int
    failed_targets: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.answered == (self.total if self.expect else 0)


def summarise(probes: Sequence[Probe], answered: Answers) -> list[Row]:
    """Group probe results (answered: (source, ip) -> bool) into table rows."""
    rows: dict[tuple[str, str], Row] = {}
    for p in probes:
        key = (p.source, p.group)
        row = rows.setdefault(key, Row(p.source, p.group, p.expect, 0, 0, []))
        row.total += 1
        got = answered.get((p.source, p.ip), False)
        row.answered += got
        if got != p.expect:
            row.failed_targets.append(p.target)
    return list(rows.values())


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'from':<12} {'to':<22} {'expected':<13} {'answered':>9}  result"]
    for r in rows:
        expect = "reachable" if r.expect else "unreachable"
        result = "ok" if r.ok else "FAIL " + ", ".join(r.failed_targets[:5])
        lines.append(f"{r.source:<12} {r.group:<22} {expect:<13} "
                     f"{r.answered:>4}/{r.total:<4}  {result}")
    return "\n".join(lines)


def ping_script(ips: Sequence[str]) -> str:
    """A shell script that pings every address at once and prints 'ip rc' per address (a
    lost echo is asked again once: a busy machine drops the odd packet)."""
    ping = "ping -n -c 1 -W 2 {ip} >/dev/null 2>&1"
    body = "\n".join(f"( {ping.format(ip=ip)} || {ping.format(ip=ip)}; echo \"{ip} $?\" ) &"
                     for ip in ips)
    return body + "\nwait\n"


def run_probes(cluster: LiveCluster, probes: Sequence[Probe]) -> dict[tuple[str, str], bool]:
    """Ping from each source concurrently; return (source, ip) -> answered."""
    by_source = defaultdict(list)
    for p in probes:
        by_source[p.source].append(p.ip)
    answered: dict[tuple[str, str], bool] = {}
    for source, ips in by_source.items():
        unique = sorted(set(ips))
        for i in range(0, len(unique), PINGS_AT_ONCE):
            result = cluster.sh(source, ping_script(unique[i:i + PINGS_AT_ONCE]), timeout=60)
            for line in result.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2:
                    answered[(source, parts[0])] = parts[1] == "0"
    return answered


def reachability(cluster: LiveCluster) -> list[Row]:
    """Probe everything the mode promises on a live cluster: the table `cnlb up --check` prints."""
    probes = expected_probes(cluster.plan)
    return summarise(probes, run_probes(cluster, probes))
