"""The external client's side of every experiment: httpprobe from client1 through the cloud
LB's VIP, and its answers turned into sample rows (which pod answered, through which node,
with which source address, over how many routed hops).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from testbed.emulation.cluster import Cluster
from testbed.paths import HTTPPROBE
from testbed.plan.addresses import Plan, ServicePlan
from testbed.spec.experiment import Variant

PROBE = HTTPPROBE
CLIENT = "client1"

Row = dict[str, Any]


def entry_nodes(plan: Plan) -> dict[str, str]:
    """Address a pod can see as its client -> the node it means (node IP, cni0, flannel.1)."""
    out = {}
    for n in plan.nodes:
        for addr in (n.ip, n.cni0_ip, str(ipaddress.IPv4Network(n.pod_cidr).network_address)):
            out[addr] = n.name
    return out


def request_rows(probe_rows: Iterable[Mapping[str, Any]], plan: Plan, client_ip: str,
                 policy: str) -> list[Row]:
    """httpprobe rows as sample rows: latency, pod, node, entry node, source IP, hops."""
    by_addr = entry_nodes(plan)
    rows = []
    for r in probe_rows:
        if r.get("summary"):
            continue
        ok = r.get("status") == 200 and r.get("error") is None
        source = r.get("client")
        if plan.mode == "container-native":
            entry = None
        elif source in by_addr:
            entry = by_addr[source]
        elif ok and policy == "Local":
            entry = r.get("node")       # Local keeps traffic on the node the LB picked
        else:
            entry = None
        ttl = r.get("syn_ack_ttl")
        rows.append({"t": r.get("t_start"), "latency_ms": r.get("total_ms"),
                     "connect_ms": r.get("connect_ms"), "ok": ok, "pod": r.get("pod"),
                     "node": r.get("node"), "entry_node": entry, "source_ip": source,
                     "hops": 64 - ttl if ttl else None, "error": r.get("error")})
    return rows


def service_plan(cluster: Cluster, name: str) -> ServicePlan:
    """The plan of a service of the cluster. name: the service's name"""
    return next(s for s in cluster.plan.services if s.name == name)


def url(cluster: Cluster, service: str, path: str = "/") -> str:
    """The service's URL through its VIP."""
    svc = service_plan(cluster, service)
    return f"http://{svc.vip}:{svc.port}{path}"


def probe(cluster: Cluster, service: str, requests: int) -> list[Row]:
    """httpprobe's rows for `requests` requests, a new connection each, through the VIP."""
    argv = [PROBE, "--url", url(cluster, service), "--requests", str(requests)]
    out = cluster.exec(CLIENT, argv, timeout=requests * 3 + 30)
    return parse_probe(out.stdout)


def parse_probe(text: str) -> list[Row]:
    """httpprobe's JSON lines."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def warmup(cluster: Cluster, service: str, seconds: float) -> None:
    """Discarded requests (200/s) before a measurement; none if seconds is 0."""
    if seconds:
        cluster.exec(CLIENT, [PROBE, "--url", url(cluster, service), "--duration",
                              f"{seconds:g}", "--rate", "200"], timeout=seconds + 30)


def sample_rows(cluster: Cluster, variant: Variant, probe_rows: Iterable[Mapping[str, Any]]
                ) -> list[Row]:
    """httpprobe's rows as the variant's sample rows (see request_rows)."""
    client_ip = cluster.plan.attachment(CLIENT).ip
    return request_rows(probe_rows, cluster.plan, client_ip, variant.external_traffic_policy)
