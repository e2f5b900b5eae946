"""The scaling experiment: kube-proxy's sync time and rule count as the number of services
grows (synthetic ClusterIP services added to the real ones on every node), optionally with
request latency through the VIP at each size. One cluster per variant.
"""

from __future__ import annotations

import time

from testbed.analysis.stats import percentile
from testbed.emulation.cluster import Cluster
from testbed.experiments.client import probe, sample_rows
from testbed.experiments.kind import RunContext
from testbed.kubernetes.dataplane.model import Endpoint, ServicePort, service_ports
from testbed.spec.experiment import Variant
from testbed.spec.model import Topology


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


def run_scaling(run: RunContext, variant: Variant, topo: Topology) -> None:
    """For each repetition and each service count: sync every node, record, sync back."""
    with Cluster(topo, iptables=run.iptables) as cluster:
        real = service_ports(cluster.plan, cluster.live_pods())
        for rep in range(run.exp.repetitions):
            for n in run.exp.services:
                run.progress(variant.name, rep, f"{n} services")
                _one_size(run, cluster, variant, rep, n, real)
            run.unit_done()


def _one_size(run: RunContext, cluster: Cluster, variant: Variant, rep: int, n: int,
              real: list[ServicePort]) -> None:
    node = cluster.plan.nodes[0].name
    latency = run.exp.workload("latency")
    services = real + synthetic_services(n, run.exp.endpoints)
    dataplane = cluster.kube_proxy
    assert dataplane is not None   # a built cluster runs kube-proxy
    text = dataplane.render_node(node, services)
    t0 = time.time()
    for nd in cluster.plan.nodes:   # every node's kube-proxy syncs
        dataplane.apply_text(nd.name, text)
    sync_ms = (time.time() - t0) * 1000 / len(cluster.plan.nodes)
    run.rec(variant, rep, "sync_time_ms", sync_ms, "scaling", services=n)
    run.rec(variant, rep, "rules", text.count("\n-A "), "scaling", services=n)
    if latency:
        assert latency.requests is not None   # the experiment reader gives latency a count
        rows = sample_rows(cluster, variant, probe(cluster, run.res.service, latency.requests))
        run.w.samples(variant.name, rep, f"latency-{n}", rows)
        lat = [r["latency_ms"] for r in rows if r["ok"]]
        for q in (50, 99):
            run.rec(variant, rep, f"latency_p{q}_ms", percentile(lat, q) if lat else None,
                    "scaling", services=n)
        run.rec(variant, rep, "errors", len(rows) - len(lat), "scaling", services=n)
    # back to the real services only (a partial sync removes the synthetic chains)
    for nd in cluster.plan.nodes:
        dataplane.apply_text(nd.name, dataplane.render_change(nd.name, services, real))
