"""The compare experiment: each variant's cluster is built once, then every repetition runs
the workloads in a seeded random order (the same for every variant), from client1 through the
cloud LB's VIP: latency (httpprobe, a new connection per request), keepalive and load (wrk),
throughput (iperf 2, one TCP connection, to an extra `iperf` LoadBalancer service over the same
pods) and path (httpprobe with the nodes' egress counters read before and after: hops, bytes
between nodes, who answered, whether the client's address was kept). A variant with `to: pods`
(the fabric alone, no LB) sends latency's and path's requests to the pods' own addresses in
turn and skips the other workloads. Beside every latency measurement the same probe runs over a
plain veth (testbed.experiments.baseline, workload `veth`); when a variant is done, the
testbed's own cost derived from both (testbed.analysis.overhead) is recorded too. What each
workload records: docs/experiments.md.
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from testbed.analysis.overhead import BASELINE, WORKLOAD, derive
from testbed.analysis.records import read_records
from testbed.analysis.stats import percentile
from testbed.emulation import machine
from testbed.emulation.cluster import Cluster
from testbed.experiments.baseline import VethPair
from testbed.experiments.client import (
    CLIENT,
    Row,
    client_address_seen,
    entry_nodes,
    probe_each,
    sample_rows,
    service_plan,
    targets,
    url,
    warmup,
    warmup_each,
)
from testbed.experiments.kind import RunContext
from testbed.spec.experiment import Variant, Workload
from testbed.spec.model import Topology

IPERF_SERVICE = "iperf"
IPERF_PORT = 5001
ACCT_CHAIN = "CNLB-ACCT"
DIRECT_WORKLOADS = ("latency", "path")    # what a `to: pods` variant runs: one request at a time


# -- pure helpers ----------------------------------------------------------------------------

def with_iperf_service(topo: Topology, measured: str) -> Topology:
    """The topology plus a LoadBalancer service for iperf over the measured service's pods,
    health-checked through the measured service's port (iperf does not speak HTTP)."""
    base = next(s for s in topo.services if s.name == measured)
    iperf = replace(base, name=IPERF_SERVICE, port=IPERF_PORT, target_port=IPERF_PORT,
                    node_port=None, health_check_node_port=None, load_balancer_ip=None,
                    session_affinity="None", health_via=base.name,
                    protocol="TCP", ports=())   # one TCP port, whatever the measured one has
    return replace(topo, services=topo.services + (iperf,))


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and errors from `wrk --latency` output."""
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    out: dict[str, Any] = {"percentiles": {}}
    for pct, value, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        out["percentiles"][int(pct)] = float(value) * unit[u]
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["requests_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["errors"] = errors + (int(m.group(1)) if m else 0)
    return out


def parse_iperf_csv(text: str) -> float | None:
    """Mbit/s from iperf 2's `-y C` report (the last field of the summary line is bits/s)."""
    lines = [line for line in text.strip().splitlines() if line.count(",") >= 8]
    if not lines:
        return None
    return int(lines[-1].split(",")[-1]) / 1e6


# -- the experiment --------------------------------------------------------------------------

def run_compare(run: RunContext, variant: Variant, topo: Topology) -> None:
    """Build the variant's cluster once (and the plain veth beside it); run every repetition's
    workloads on it; record the testbed's own cost once the variant is done."""
    if run.exp.workload("throughput"):
        topo = with_iperf_service(topo, run.res.service)
    run.say(f"[{variant.name}] building the cluster ({topo.mode})")
    with Cluster(topo, iptables=run.iptables, datapath=run.datapath) as cluster:
        run.w.meta.setdefault("build_s", {})[variant.name] = cluster.timings.get("total_s")
        run.w.meta.setdefault("datapaths", {})[variant.name] = machine.datapath_of(
            [s.name for s in cluster.plan.switches])
        install_accounting(cluster)
        with (VethPair(cluster.journal) if run.exp.workload("latency")
              else contextlib.nullcontext()) as veth:
            _repetitions(run, cluster, variant, veth)
    record_overhead(run, variant)


def _repetitions(run: RunContext, cluster: Cluster, variant: Variant,
                 veth: VethPair | None) -> None:
    skipped = [w.name for w in run.exp.workloads
               if variant.to == "pods" and w.name not in DIRECT_WORKLOADS]
    if skipped:
        run.say(f"[{variant.name}] sends to the pods directly: skips {', '.join(skipped)}")
        run.w.meta.setdefault("skipped", {})[variant.name] = skipped
    for rep in range(run.exp.repetitions):
        for wl in workload_order(run, rep):
            if wl.name in skipped:
                continue
            run.progress(variant.name, rep, wl.name)
            run.mend(cluster, variant.name, rep)
            flush_conntrack()
            WORKLOADS[wl.name](run, cluster, variant, rep, wl)
            if wl.name == "latency" and veth is not None:
                run.progress(variant.name, rep, "plain veth (baseline)")
                veth_baseline(run, veth, variant, rep, wl)
        run.unit_done()


def record_overhead(run: RunContext, variant: Variant) -> None:
    """The testbed's own cost that this variant completes: its p50 over the veth's and cost
    per routed hop, and a classic variant's extra cost over container-native once both ran
    (a figure is complete when the last of the variants it comes from is done)."""
    variants = run.exp.to_dict()["variants"]
    for d in derive(read_records(run.w.dir), variants):
        if variant.name in d.sources:
            run.rec(run.exp.variant(d.variant), d.repetition, d.metric, d.value, WORKLOAD,
                    **d.extra)


def workload_order(run: RunContext, rep: int) -> list[Workload]:
    """The workloads of one repetition in a seeded random order, the same for every
    variant (so an order effect, e.g. a warm cache, cannot favour one workload's variant)."""
    order = list(run.exp.workloads)
    random.Random(run.exp.seed * 1000 + rep).shuffle(order)
    run.w.meta.setdefault("workload_order", {})[str(rep)] = [w.name for w in order]
    return order


def flush_conntrack() -> None:
    # one-directional conntrack in the fabric can make a reused client port collide with an
    # old entry; phases start clean (OVS userspace conntrack; the LB's state only)
    subprocess.run(["ovs-appctl", "dpctl/flush-conntrack"], capture_output=True, timeout=30)


# -- workloads -------------------------------------------------------------------------------

def latency(run: RunContext, cluster: Cluster, variant: Variant, rep: int, wl: Workload) -> None:
    urls = targets(cluster, variant, run.res.service)
    warmup_each(cluster, urls, run.exp.warmup_s)
    assert wl.requests is not None   # the experiment reader gives latency a count
    rows = sample_rows(cluster, variant, probe_each(cluster, urls, wl.requests))
    run.w.samples(variant.name, rep, wl.name, rows)
    record_latency(run, variant, rep, wl.name, rows)


def veth_baseline(run: RunContext, veth: VethPair, variant: Variant, rep: int,
                  wl: Workload) -> None:
    """The latency workload's requests over the plain veth, recorded as workload `veth`."""
    assert wl.requests is not None
    veth.warmup(run.exp.warmup_s)
    rows = veth.probe(wl.requests)
    run.w.samples(variant.name, rep, BASELINE, rows)
    record_latency(run, variant, rep, BASELINE, rows)


def record_latency(run: RunContext, variant: Variant, rep: int, workload: str,
                   rows: list[Row]) -> None:
    """Percentiles, mean and errors of one-request-per-connection rows, and the routed hops
    the same requests took (what testbed.analysis.overhead divides by)."""
    ok = [r for r in rows if r["ok"]]
    lat = [r["latency_ms"] for r in ok if r["latency_ms"] is not None]
    for q in (50, 90, 99):
        run.rec(variant, rep, f"latency_p{q}_ms", percentile(lat, q) if lat else None, workload)
    run.rec(variant, rep, "latency_mean_ms", sum(lat) / len(lat) if lat else None, workload)
    hops = [r["hops"] for r in ok if r["hops"] is not None]
    run.rec(variant, rep, "path_hops", sum(hops) / len(hops) if hops else None, workload)
    run.rec(variant, rep, "errors", len(rows) - len(ok), workload)


def _wrk(cluster: Cluster, service: str, wl: Workload) -> dict[str, Any]:
    argv = ["wrk", "--latency", "-t", str(wl.threads), "-c", str(wl.connections),
            "-d", f"{wl.duration_s:g}s", "--timeout", "2s", url(cluster, service)]
    out = cluster.exec(CLIENT, argv, timeout=wl.duration_s + 60)
    return parse_wrk(out.stdout)


def keepalive(run: RunContext, cluster: Cluster, variant: Variant, rep: int,
              wl: Workload) -> None:
    warmup(cluster, run.res.service, run.exp.warmup_s)
    res = _wrk(cluster, run.res.service, wl)
    for q in (50, 90, 99):
        run.rec(variant, rep, f"latency_p{q}_ms", res["percentiles"].get(q), wl.name)
    run.rec(variant, rep, "requests_per_s", res["requests_per_s"], wl.name)
    run.rec(variant, rep, "errors", res["errors"], wl.name)


def load(run: RunContext, cluster: Cluster, variant: Variant, rep: int, wl: Workload) -> None:
    res = _wrk(cluster, run.res.service, wl)
    run.rec(variant, rep, "requests_per_s", res["requests_per_s"], wl.name)
    for q in (50, 99):
        run.rec(variant, rep, f"latency_p{q}_ms", res["percentiles"].get(q), wl.name)
    run.rec(variant, rep, "errors", res["errors"], wl.name)


def throughput(run: RunContext, cluster: Cluster, variant: Variant, rep: int,
               wl: Workload) -> None:
    svc = service_plan(cluster, IPERF_SERVICE)
    servers = {}
    try:
        for pod in cluster.plan.pods:
            if pod.name in cluster.live_pods() and pod.name in svc.endpoints:
                servers[pod.name] = cluster.host(pod.name).popen(
                    ["iperf", "-s", "-p", str(IPERF_PORT), "-y", "C"], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        cluster.wait_lb_ready()
        time.sleep(0.3)
        out = cluster.exec(CLIENT, ["iperf", "-c", svc.vip, "-p", str(IPERF_PORT), "-t",
                                    f"{wl.duration_s:g}", "-y", "C"], timeout=wl.duration_s + 60)
        time.sleep(0.2)   # the server prints its report as the connection closes
    finally:
        for proc in servers.values():
            proc.kill()
    served = {}
    for pod_name, proc in servers.items():
        text = proc.communicate(timeout=10)[0].decode(errors="replace")
        if text.count(",") >= 8:
            served[pod_name] = text.strip().splitlines()[-1].split(",")[3]   # the source it saw
    mbps = parse_iperf_csv(out.stdout)
    run.rec(variant, rep, "throughput_mbps", mbps, wl.name, **_served_where(cluster, served))
    run.rec(variant, rep, "errors", 0 if mbps else 1, wl.name)


def _served_where(cluster: Cluster, served: dict[str, str]) -> dict[str, Any]:
    """Which pod served the one iperf connection, on which node, entered through which."""
    pod = next(iter(served), None)
    if not pod:
        return {}
    node = cluster.plan.pod(pod).node
    entry = entry_nodes(cluster.plan).get(served[pod])
    if entry is None and cluster.plan.mode == "nodeport":
        entry = node        # Local: no SNAT, the LB's pick is the pod's node
    # not "pod"/"node": those group records; one connection's pod is a detail of it
    return {"served_by": pod, "served_on": node, "entry_node": entry,
            "crossed_nodes": bool(entry and entry != node)}


def path(run: RunContext, cluster: Cluster, variant: Variant, rep: int, wl: Workload) -> None:
    urls = targets(cluster, variant, run.res.service)
    assert wl.requests is not None   # the experiment reader gives path a count
    before = egress(cluster)
    rows = sample_rows(cluster, variant, probe_each(cluster, urls, wl.requests))
    after = egress(cluster)
    run.w.samples(variant.name, rep, wl.name, rows)
    ok = [r for r in rows if r["ok"]]
    hops = [r["hops"] for r in ok if r["hops"] is not None]
    run.rec(variant, rep, "path_hops", sum(hops) / len(hops) if hops else None, wl.name)
    cross = sum(after[n][0] - before[n][0] for n in after)
    total = sum(after[n][1] - before[n][1] for n in after)
    run.rec(variant, rep, "cross_node_bytes", cross, wl.name)
    run.rec(variant, rep, "cross_node_bytes_fraction", cross / total if total else None, wl.name)
    client_ip = cluster.plan.attachment(CLIENT).ip
    run.rec(variant, rep, "source_ip_preserved",
            sum(1 for r in ok if client_address_seen(r, client_ip)) / len(ok) if ok else None,
            wl.name)
    run.rec(variant, rep, "errors", len(rows) - len(ok), wl.name)
    svc = service_plan(cluster, run.res.service)
    endpoints = [p for p in svc.endpoints if p in cluster.live_pods()]
    run.w.distribution(run.exp.name, variant.name, rep, Counter(r["pod"] for r in ok),
                       Counter(r["entry_node"] for r in ok if r["entry_node"]),
                       endpoints=endpoints, workload=wl.name)


WorkloadFn = Callable[[RunContext, Cluster, Variant, int, Workload], None]
WORKLOADS: dict[str, WorkloadFn] = {"latency": latency, "keepalive": keepalive, "load": load,
                                   "throughput": throughput, "path": path}


# -- node egress accounting ------------------------------------------------------------------

def install_accounting(cluster: Cluster) -> None:
    """Counters in each node's mangle table (the node's own namespace, not kube-proxy's
    chains): bytes leaving eth0 towards the VPC (another node or its pods: crossing
    between nodes, overlay included), towards the pod range (routed natively to another
    node's pods: BGP, host-gw; VXLAN's inner packets leave by flannel.1, not eth0) and all
    bytes leaving eth0."""
    vpc, pods = str(cluster.topo.vpc.cidr), str(cluster.topo.cni.pod_cidr)
    text = (f"*mangle\n:{ACCT_CHAIN} - [0:0]\n-A POSTROUTING -o eth0 -j {ACCT_CHAIN}\n"
            f"-A {ACCT_CHAIN} -d {vpc} -m comment --comment cross-node\n"
            f"-A {ACCT_CHAIN} -d {pods} -m comment --comment cross-node-pods\n"
            f"-A {ACCT_CHAIN} -m comment --comment all\nCOMMIT\n")
    for node in cluster.plan.nodes:
        proc = cluster.host(node.name).popen(["iptables-restore", "--noflush", "--wait"],
                                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE)
        _, err = proc.communicate(text.encode(), timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"accounting rules on {node.name}: {err.decode().strip()}")


def egress(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Per live node: (bytes that left eth0 towards the VPC, all bytes that left eth0)."""
    out = {}
    for node in cluster.plan.nodes:
        if node.name in cluster.failed_nodes:
            continue
        text = cluster.exec(node.name, ["iptables", "-w", "-t", "mangle", "-L", ACCT_CHAIN,
                                        "-v", "-x", "-n"]).stdout
        counts = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0].isdigit() and "/*" in line:
                counts[line.split("/*")[1].split("*/")[0].strip()] = int(parts[1])
        out[node.name] = (counts.get("cross-node", 0) + counts.get("cross-node-pods", 0),
                          counts.get("all", 0))
    return out
