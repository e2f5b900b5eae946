"""The external client's side of every experiment: httpprobe from client1 through the cloud
LB's VIP (or, for a variant with `to: pods`, to each pod's own address in turn), and its
answers turned into sample rows (which pod answered, through which node, with which source
address, over how many routed hops).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable, Mapping, Sequence
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


def client_address_seen(row: Mapping[str, Any], client_ip: str) -> bool:
    """Whether the pod learned the client's address from a request (a sample row): as its
    connection's peer (no SNAT on the way), or as the last X-Forwarded-For entry behind an L7
    LB (the entry the proxy itself appends; earlier ones are whatever the client claimed)."""
    if row.get("source_ip") == client_ip:
        return True
    forwarded = row.get("forwarded_for")
    return bool(forwarded) and str(forwarded).split(",")[-1].strip() == client_ip


def request_rows(probe_rows: Iterable[Mapping[str, Any]], plan: Plan, client_ip: str,
                 policy: str) -> list[Row]:
    """httpprobe rows as sample rows: latency, pod, node, entry node, source IP (the pod's
    peer), forwarded_for (its X-Forwarded-For behind an L7 LB, else None), hops."""
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
                     "forwarded_for": r.get("forwarded_for"),
                     "hops": 64 - ttl if ttl else None, "error": r.get("error")})
    return rows


def service_plan(cluster: Cluster, name: str) -> ServicePlan:
    """The plan of a service of the cluster. name: the service's name"""
    return next(s for s in cluster.plan.services if s.name == name)


def url(cluster: Cluster, service: str, path: str = "/") -> str:
    """The service's URL through its VIP."""
    svc = service_plan(cluster, service)
    return f"http://{svc.vip}:{svc.port}{path}"


def pod_urls(cluster: Cluster, service: str, path: str = "/") -> list[str]:
    """The URLs of the service's live pods, by their own addresses, in the plan's order."""
    svc = service_plan(cluster, service)
    live = cluster.live_pods()
    return [f"http://{pod.ip}:{svc.target_port}{path}" for pod in cluster.plan.pods
            if pod.name in svc.endpoints and pod.name in live]


def targets(cluster: Cluster, variant: Variant, service: str) -> list[str]:
    """Where the variant's client sends: the VIP, or each of the service's pods."""
    return pod_urls(cluster, service) if variant.to == "pods" else [url(cluster, service)]


def split(requests: int, parts: int) -> list[int]:
    """Requests per target, round-robin: as even as whole requests allow, the first ones
    taking the remainder."""
    return [requests // parts + (1 if i < requests % parts else 0) for i in range(parts)]


def probe_each(cluster: Cluster, urls: Sequence[str], requests: int) -> list[Row]:
    """httpprobe's rows for `requests` requests spread round-robin over the URLs, one probe per
    URL in turn (a block each); `t_start` counts from the first probe's start."""
    rows: list[Row] = []
    t0 = time.monotonic()
    for i, (target, n) in enumerate(zip(urls, split(requests, len(urls)), strict=True)):
        if not n:
            continue
        offset = time.monotonic() - t0 if i else 0.0
        out = cluster.exec(CLIENT, [PROBE, "--url", target, "--requests", str(n)],
                           timeout=n * 3 + 30)
        for r in parse_probe(out.stdout):
            if r.get("summary"):
                continue
            if isinstance(r.get("t_start"), (int, float)):
                r["t_start"] += offset
            rows.append(r)
    return rows


def warmup_each(cluster: Cluster, urls: Sequence[str], seconds: float) -> None:
    """Discarded requests (200/s) for `seconds` in all, shared between the URLs."""
    for target in urls:
        if seconds:
            cluster.exec(CLIENT, [PROBE, "--url", target, "--duration",
                                  f"{seconds / len(urls):g}", "--rate", "200"],
                         timeout=seconds + 30)


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
