"""The scaling experiment: how kube-proxy, the load balancer and the request path cope as the
cluster grows. Two sweeps, each optional (at least one is given):

services: synthetic ClusterIP services added to the real ones on every node of the variant's
    cluster (built once), in the variant's kube-proxy mode: the full sync's time, a
    one-endpoint change's time, the rules, the ruleset's size as the kernel lists it back and
    the kernel memory it took, and request latency through the VIP, at each service count
    (experiments/dataplanes.yaml runs it per kube-proxy mode)
pods: a cluster built per pod count and repetition from the experiment's topology scaled to
    that size (testbed.spec.scaling.scale_topology): its bring-up time by stage, one node's
    kube-proxy full sync with the real endpoints, the rule count, request latency through the
    VIP, the load balancer's time to have every target in service again after registering them
    all afresh, and the teardown time

Every record carries the kube-proxy mode that ran (proxy_mode). A variant whose mode this
machine cannot run (the kernel lacks ip_vs) is not run: meta.json's not_run names it and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from testbed.analysis.rundata import PODS_SWEEP_SAMPLES
from testbed.analysis.stats import percentile
from testbed.emulation import machine
from testbed.emulation.cluster import Cluster
from testbed.experiments.client import probe, sample_rows
from testbed.experiments.kind import RunContext
from testbed.kubernetes.dataplane.model import Endpoint, ServicePort, service_ports
from testbed.kubernetes.dataplane.registry import dataplane_for
from testbed.spec.experiment import Variant
from testbed.spec.model import Topology
from testbed.spec.scaling import scale_topology, scaled_deployment

# (metric, value, extra fields) -> None: one record of the size being measured
Record = Callable[..., None]


def synthetic_services(n: int, endpoints: int) -> list[ServicePort]:
    """n ClusterIP services of `endpoints` endpoints each, in ranges no real packet uses."""
    out = []
    for i in range(n):
        ip = f"10.{100 + i // 65536 % 100}.{i // 256 % 256}.{i % 256}"
        eps = tuple(Endpoint(f"172.{16 + (i * endpoints + e) // 65536 % 16}."
                                f"{(i * endpoints + e) // 256 % 256}.{(i * endpoints + e) % 256}",
                                8080)
                    for e in range(endpoints))
        out.append(ServicePort(namespace="synthetic", name=f"svc-{i}", port_name="",
                                  protocol="TCP", cluster_ip=ip, port=80, target_port=8080,
                                  endpoints=eps))
    return out


# A new endpoint address no synthetic service has (they take 172.16.0.0 upwards).
CHANGED_ENDPOINT = Endpoint("172.31.255.254", 8080)
# /proc/meminfo's fields that hold what the kernel allocates for rules: nf_tables objects and
# small tables in slab caches, x_tables' blobs in vmalloc, its rule counters per CPU.
KERNEL_MEMORY_FIELDS = ("Slab", "VmallocUsed", "Percpu")


def one_endpoint_changed(services: list[ServicePort], index: int) -> list[ServicePort]:
    """services with the last endpoint of services[index] replaced by CHANGED_ENDPOINT: the
    change a pod replaced behind one service makes (one endpoint out, one in)."""
    svc = services[index]
    changed = replace(svc, endpoints=svc.endpoints[:-1] + (CHANGED_ENDPOINT,))
    return services[:index] + [changed] + services[index + 1:]


def rule_count(text: str) -> int:
    """The rules in a sync's input: iptables-restore's '-A' lines, nft's 'add rule' lines
    (nftables keeps most per-service state in map and set elements, which are not rules)."""
    return sum(1 for line in text.splitlines() if line.startswith(("-A ", "add rule ")))


def ruleset_listing(mode: str, backend: str) -> str | None:
    """The shell command that lists a node's kube-proxy ruleset back from the kernel, in the
    mode's own tool (None for a mode without one here)."""
    if mode == "iptables":
        save = "iptables-save" if backend == "auto" else f"iptables-{backend}-save"
        return f"{save} -t nat; {save} -t filter"
    if mode == "nftables":
        return "nft list table ip kube-proxy"
    return None


def kernel_memory_kib(meminfo: str) -> int:
    """The sum of KERNEL_MEMORY_FIELDS in a /proc/meminfo text, in KiB."""
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    return sum(int(fields[f].split()[0]) for f in KERNEL_MEMORY_FIELDS if f in fields)


def _kernel_memory_now() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        return kernel_memory_kib(fh.read())


def run_scaling(run: RunContext, variant: Variant, topo: Topology) -> None:
    """The services sweep on the variant's cluster, then the pods sweep (its own clusters);
    neither when the machine cannot run the variant's kube-proxy mode (noted, not an error)."""
    missing = dataplane_for(topo.kube_proxy.mode).unavailable()
    if missing:
        run.say(f"[{variant.name}] not run: kube-proxy mode {topo.kube_proxy.mode}: {missing}")
        run.w.meta.setdefault("not_run", {})[variant.name] = \
            f"kube-proxy mode {topo.kube_proxy.mode}: {missing}"
        for _ in range(run.exp.repetitions):
            run.unit_done()
        return
    if run.exp.services:
        _services_sweep(run, variant, topo, repetitions_done=not run.exp.pods)
    if run.exp.pods:
        _pods_sweep(run, variant)


# -- services: synthetic services on one cluster ---------------------------------------------

def _services_sweep(run: RunContext, variant: Variant, topo: Topology,
                    repetitions_done: bool) -> None:
    """For each repetition and each service count: sync every node, record, sync back.
    repetitions_done: each repetition ends a unit of the time-left estimate (no pods sweep)"""
    with Cluster(topo, iptables=run.iptables, datapath=run.datapath) as cluster:
        _note_datapath(run, variant, cluster)
        real = service_ports(cluster.plan, cluster.live_pods())
        for rep in range(run.exp.repetitions):
            for n in run.exp.services:
                run.progress(variant.name, rep, f"{n} services")
                _one_size(run, cluster, variant, rep, n, real)
            if repetitions_done:
                run.unit_done()


def _one_size(run: RunContext, cluster: Cluster, variant: Variant, rep: int, n: int,
              real: list[ServicePort]) -> None:
    """n synthetic services on every node (a full sync each), measured; one endpoint of one of
    them changed (a partial sync each); then back to the real services only. The times are the
    loads' (iptables-restore, nft -f) per node, not the rendering (the testbed's Python)."""
    mode = cluster.topo.kube_proxy.mode
    dataplane = cluster.kube_proxy
    assert dataplane is not None   # a built cluster runs kube-proxy
    nodes = [nd.name for nd in cluster.plan.nodes]
    services = real + synthetic_services(n, run.exp.endpoints)
    changed = one_endpoint_changed(services, len(real) + n // 2)

    def rec(metric: str, value: object, **extra: object) -> None:
        run.rec(variant, rep, metric, value, "scaling", services=n, proxy_mode=mode, **extra)
    # each node's own text: nftables' full sync names the node's address (nodeport-ips)
    texts = {node: dataplane.render_node(node, services) for node in nodes}
    memory0, t0 = _kernel_memory_now(), time.perf_counter()
    for node in nodes:   # every node's kube-proxy syncs
        dataplane.apply_text(node, texts[node])
    rec("sync_time_ms", (time.perf_counter() - t0) * 1000 / len(nodes))
    rec("rules_kernel_kib", (_kernel_memory_now() - memory0) / len(nodes))
    rec("rules", rule_count(texts[nodes[0]]))
    listing = ruleset_listing(mode, run.iptables)
    if listing:
        out = cluster.sh(nodes[0], listing, timeout=300)
        if out.returncode == 0:
            listed = out.stdout
            rec("ruleset_bytes", len(listed.encode() if isinstance(listed, str) else listed))
    _latency(run, cluster, variant, rep, f"latency-{n}", rec)
    changes = {node: dataplane.render_change(node, services, changed) for node in nodes}
    t0 = time.perf_counter()
    for node in nodes:
        dataplane.apply_text(node, changes[node])
    rec("endpoint_change_ms", (time.perf_counter() - t0) * 1000 / len(nodes))
    # back to the real services only (a partial sync removes the synthetic chains)
    for node in nodes:
        dataplane.apply_text(node, dataplane.render_change(node, changed, real))


def _latency(run: RunContext, cluster: Cluster, variant: Variant, rep: int, samples: str,
             rec: Record) -> None:
    """The experiment's latency requests through the VIP (if it has them): samples under the
    name `samples`, p50, p99 and errors recorded with rec."""
    latency = run.exp.workload("latency")
    if not latency:
        return
    assert latency.requests is not None   # the experiment reader gives latency a count
    rows = sample_rows(cluster, variant, probe(cluster, run.res.service, latency.requests))
    run.w.samples(variant.name, rep, samples, rows)
    lat = [r["latency_ms"] for r in rows if r["ok"]]
    for q in (50, 99):
        rec(f"latency_p{q}_ms", percentile(lat, q) if lat else None)
    rec("errors", len(rows) - len(lat))


def _note_datapath(run: RunContext, variant: Variant, cluster: Cluster) -> None:
    """The OVS datapath the variant's bridges run on, for meta.json and the report."""
    run.w.meta.setdefault("datapaths", {}).setdefault(
        variant.name, machine.datapath_of([s.name for s in cluster.plan.switches]))


# -- pods: a cluster per size ----------------------------------------------------------------

def _pods_sweep(run: RunContext, variant: Variant) -> None:
    """For each repetition and each pod count: build the scaled cluster, measure, tear down.
    Sizes run in increasing order within a repetition, so a drift of the machine over the run
    spreads over every size rather than landing on one."""
    base = run.res.topology
    deployment = scaled_deployment(base, run.res.service)
    for rep in range(run.exp.repetitions):
        for n in run.exp.pods:
            run.progress(variant.name, rep, f"{n} pods")
            topo = variant.apply(scale_topology(base, n, run.exp.pods_per_node, deployment))
            _one_cluster(run, variant, rep, n, topo)
        run.unit_done()


def _one_cluster(run: RunContext, variant: Variant, rep: int, n: int, topo: Topology) -> None:
    """Build the cluster of n pods, record its bring-up stages, measure it, tear it down."""
    def rec(metric: str, value: object, **extra: object) -> None:
        run.rec(variant, rep, metric, value, "scaling", pods=n,
                proxy_mode=topo.kube_proxy.mode, **extra)

    with Cluster(topo, iptables=run.iptables, datapath=run.datapath) as cluster:
        _note_datapath(run, variant, cluster)
        for key, seconds in cluster.timings.items():
            if key.endswith("_s") and key not in ("total_s", "stop_s"):
                rec("bringup_s", seconds, stage=key[:-2])
        rec("bringup_s", cluster.timings.get("total_s"))
        rec("nodes", len(cluster.plan.nodes))
        _kube_proxy_sync(cluster, rec)
        run.mend(cluster, variant.name, rep)
        _latency(run, cluster, variant, rep, f"{PODS_SWEEP_SAMPLES}{n}", rec)
        rec("lb_ready_s", lb_ready_s(cluster, run.res.service))
    rec("teardown_s", cluster.timings.get("stop_s"))


def _kube_proxy_sync(cluster: Cluster, rec: Record) -> None:
    """One node's full sync with the cluster's real services and endpoints: the restore's
    wall time (as the services sweep measures it) and the rules it loads."""
    dataplane = cluster.kube_proxy
    assert dataplane is not None   # a built cluster runs kube-proxy
    node = cluster.plan.nodes[0].name
    text = dataplane.render_node(node, service_ports(cluster.plan, cluster.live_pods()))
    t0 = time.perf_counter()
    dataplane.apply_text(node, text)
    rec("sync_time_ms", (time.perf_counter() - t0) * 1000)
    rec("rules", rule_count(text))


def lb_ready_s(cluster: Cluster, service: str) -> float:
    """Seconds the load balancer takes to have a service's targets in service: every target
    (pods in container-native mode, nodes in nodeport mode) is deregistered, then all are
    registered again, one API call each as a cloud controller does, and the clock runs from the
    first registration until every target that should serve passes its health checks. Leaves
    the LB as it found it."""
    lb = cluster.lb
    assert lb is not None   # a built cluster has its load balancer
    targets = [t.target for t in lb.targets(service)]
    for target in targets:
        lb.deregister(service, target)
    t0 = time.monotonic()
    for target in targets:
        lb.register(service, target)
    cluster.wait_lb_ready()
    return time.monotonic() - t0
