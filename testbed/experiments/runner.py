"""The experiment runner: builds each variant's cluster and drives real tools through the VIP
from an external client, writing every measurement as it comes.

Workloads (all from client1, through the cloud LB's VIP):
  latency     build/httpprobe, a new TCP connection per request: per-request latency, which
              pod answered, the source address it saw, routed hops from the SYN-ACK's TTL
  keepalive   wrk --latency over a few kept-alive connections: latency percentiles
  load        wrk with many connections: requests/s
  throughput  iperf 2, one bulk TCP connection (iperf3's control connection could land on
              another pod), to an iperf service over the same pods
  path        httpprobe again, with the nodes' egress counters read before and after: bytes
              that crossed between nodes (the overlay, or any node-to-VPC traffic), who answered
              (share per pod, Jain's index), whether the client's address was kept
Failover and scaling experiments have their own loops below.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections import Counter
from dataclasses import replace
from typing import Callable, Optional

from testbed.emulation import machine
from testbed.emulation.cluster import Cluster
from testbed.plan.addresses import Plan
from testbed.spec.topology import Service, Topology
from testbed.paths import REPO

PROBE = os.path.join(REPO, "build", "httpprobe")
IPERF_SERVICE = "iperf"
IPERF_PORT = 5001
ACCT_CHAIN = "CNLB-ACCT"
CLIENT = "client1"


# -- pure helpers ----------------------------------------------------------------------------

def with_iperf_service(topo: Topology, measured: str) -> Topology:
    """The topology plus a LoadBalancer service for iperf over the measured service's pods,
    health-checked through the measured service's port (iperf does not speak HTTP)."""
    base = next(s for s in topo.services if s.name == measured)
    iperf = replace(base, name=IPERF_SERVICE, port=IPERF_PORT, target_port=IPERF_PORT, node_port=None,
                    health_check_node_port=None, load_balancer_ip=None, session_affinity="None",
                    health_via=base.name)
    return replace(topo, services=topo.services + (iperf,))


def parse_wrk(text: str) -> dict:
    """Requests/s, latency percentiles (ms) and errors from `wrk --latency` output."""
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    out = {"percentiles": {}}
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


def parse_iperf_csv(text: str) -> Optional[float]:
    """Mbit/s from iperf 2's `-y C` report (the last field of the summary line is bits/s)."""
    lines = [l for l in text.strip().splitlines() if l.count(",") >= 8]
    if not lines:
        return None
    return int(lines[-1].split(",")[-1]) / 1e6


def entry_nodes(plan: Plan) -> dict:
    """Address a pod can see as its client -> the node it means (node IP, cni0, flannel.1)."""
    import ipaddress
    out = {}
    for n in plan.nodes:
        for addr in (n.ip, n.cni0_ip, str(ipaddress.IPv4Network(n.pod_cidr).network_address)):
            out[addr] = n.name
    return out


def request_rows(probe_rows: list, plan: Plan, client_ip: str, policy: str) -> list:
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
        rows.append({"t": r.get("t_start"), "latency_ms": r.get("total_ms"), "connect_ms": r.get("connect_ms"),
                     "ok": ok, "pod": r.get("pod"), "node": r.get("node"), "entry_node": entry,
                     "source_ip": source, "hops": 64 - ttl if ttl else None, "error": r.get("error")})
    return rows


def percentile(values, q):
    from testbed.analysis.stats import percentile as p
    return p(values, q)


# -- the runner ------------------------------------------------------------------------------

class Runner:
    """Runs one resolved experiment into one results directory.

    resolved: testbed.spec.experiment.Resolved (experiment + topology per variant)
    writer: testbed.analysis.records.RunWriter
    say: progress lines (None: quiet)
    """

    def __init__(self, resolved, writer, say: Optional[Callable[[str], None]] = None,
                 iptables: str = "auto"):
        self.iptables = iptables
        self.res = resolved
        self.exp = resolved.experiment
        self.w = writer
        self.say = say or (lambda msg: None)
        self.t0 = time.time()
        self.done_units = 0
        self.total_units = max(1, len(self.exp.variants) * self.exp.repetitions)

    def progress(self, variant: str, rep: int, what: str) -> None:
        elapsed = time.time() - self.t0
        left = ""
        if self.done_units:
            remaining = elapsed / self.done_units * (self.total_units - self.done_units)
            left = f", ~{remaining:.0f}s left"
        self.say(f"[{variant} rep {rep + 1}/{self.exp.repetitions}] {what} ({elapsed:.0f}s{left})")

    def run(self) -> None:
        kind = self.exp.kind
        for v in self.exp.variants:
            topo = self.res.variants[v.name]
            if kind == "compare":
                self._compare(v, with_iperf_service(topo, self.res.service)
                              if self.exp.workload("throughput") else topo)
            elif kind == "failover":
                self._failover(v, topo)
            elif kind == "scaling":
                self._scaling(v, topo)

    # -- compare -------------------------------------------------------------------------
    def _compare(self, variant, topo: Topology) -> None:
        self.say(f"[{variant.name}] building the cluster ({topo.mode})")
        with Cluster(topo, iptables=self.iptables) as cluster:
            self.w.meta.setdefault("build_s", {})[variant.name] = cluster.timings.get("total_s")
            self._install_accounting(cluster)
            for rep in range(self.exp.repetitions):
                for wl in self.workload_order(rep):
                    self.progress(variant.name, rep, wl.name)
                    self.mend(cluster, variant.name, rep)
                    self._flush_conntrack()
                    getattr(self, f"_wl_{wl.name}")(cluster, variant, rep, wl)
                self.done_units += 1

    def mend(self, cluster, variant: str, rep: int) -> None:
        """Notice what broke since the last workload, record it as a fault, and recover where
        the testbed can: a dead controller is restarted (its switches are reprogrammed), a
        restarted ovs-vswitchd is waited for (it reconnects and is reprogrammed), a dead pod
        server is started again. What cannot be mended stops the run with a clear message."""
        for _ in range(10):   # it may die while we look
            if not cluster.controller.alive():
                self._fault("controller-died", f"the VPC controller exited ({cluster.controller.proc.returncode}) "
                            f"before a workload of {variant}; restarted", variant, rep)
                self.say(f"[{variant}] the VPC controller died: restarting it")
                cluster.restart_controller(kill=False)
            try:
                status = cluster.controller.api("GET", "/v1/status", timeout=5)
                down = [s["name"] for s in status["switches"] if not (s["connected"] and s["programmed"])]
            except Exception as exc:
                down = [f"(status unreadable: {exc})"]
                time.sleep(0.5)   # dying or busy: look again
                continue
            break
        if down:
            self._fault("switches-disconnected", f"switches {down} not connected/programmed before a "
                        f"workload of {variant}; waited for them", variant, rep)
            self.say(f"[{variant}] switches {down} disconnected: waiting for them")
            cluster.controller.wait_programmed([s.name for s in cluster.plan.switches], timeout=60)
        dead = [name for name, proc in cluster.pod_servers.items()
                if proc.poll() is not None and name not in cluster.failed_pods]
        if dead:
            self._fault("pod-server-died", f"pod servers {dead} had exited; restarted", variant, rep)
            self.say(f"[{variant}] pod servers {dead} died: restarting them")
            for name in dead:
                cluster.pod_servers.pop(name)
            cluster.start_pod_servers([cluster.plan.pod(n) for n in dead])
        if dead or down:
            cluster.wait_lb_ready()

    def _fault(self, kind: str, detail: str, variant: str, rep: int) -> None:
        """A fault goes to meta.json (with its story) and to records.jsonl (countable)."""
        self.w.fault(kind, detail, variant=variant, repetition=rep)
        self.w.record(self.exp.name, variant, rep, "fault", 1, unit="event", kind=kind, detail=detail)

    def workload_order(self, rep: int) -> list:
        """The workloads of one repetition in a seeded random order, the same for every
        variant (so an order effect, e.g. a warm cache, cannot favour one workload's variant)."""
        order = list(self.exp.workloads)
        random.Random(self.exp.seed * 1000 + rep).shuffle(order)
        self.w.meta.setdefault("workload_order", {})[str(rep)] = [w.name for w in order]
        return order

    def _svc(self, cluster, name=None):
        name = name or self.res.service
        return next(s for s in cluster.plan.services if s.name == name)

    def _url(self, cluster, path="/") -> str:
        svc = self._svc(cluster)
        return f"http://{svc.vip}:{svc.port}{path}"

    def _probe(self, cluster, requests: int, extra=()) -> list:
        argv = [PROBE, "--url", self._url(cluster), "--requests", str(requests), *extra]
        out = cluster.exec(CLIENT, argv, timeout=requests * 3 + 30)
        return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]

    def _warmup(self, cluster) -> None:
        if self.exp.warmup_s:
            cluster.exec(CLIENT, [PROBE, "--url", self._url(cluster), "--duration",
                                  f"{self.exp.warmup_s:g}", "--rate", "200"], timeout=self.exp.warmup_s + 30)

    def _rows(self, cluster, variant, probe_rows) -> list:
        client_ip = cluster.plan.attachment(CLIENT).ip
        return request_rows(probe_rows, cluster.plan, client_ip, variant.external_traffic_policy)

    def _rec(self, variant, rep, metric, value, workload, **extra):
        self.w.record(self.exp.name, variant.name, rep, metric, value, workload=workload, **extra)

    def _wl_latency(self, cluster, variant, rep, wl) -> None:
        self._warmup(cluster)
        rows = self._rows(cluster, variant, self._probe(cluster, wl.requests))
        self.w.samples(variant.name, rep, wl.name, rows)
        lat = [r["latency_ms"] for r in rows if r["ok"] and r["latency_ms"] is not None]
        for q in (50, 90, 99):
            self._rec(variant, rep, f"latency_p{q}_ms", percentile(lat, q) if lat else None, wl.name)
        self._rec(variant, rep, "latency_mean_ms", sum(lat) / len(lat) if lat else None, wl.name)
        self._rec(variant, rep, "errors", sum(1 for r in rows if not r["ok"]), wl.name)

    def _wrk(self, cluster, wl) -> dict:
        argv = ["wrk", "--latency", "-t", str(wl.threads), "-c", str(wl.connections),
                "-d", f"{wl.duration_s:g}s", "--timeout", "2s", self._url(cluster)]
        out = cluster.exec(CLIENT, argv, timeout=wl.duration_s + 60)
        return parse_wrk(out.stdout)

    def _wl_keepalive(self, cluster, variant, rep, wl) -> None:
        self._warmup(cluster)
        res = self._wrk(cluster, wl)
        for q in (50, 90, 99):
            self._rec(variant, rep, f"latency_p{q}_ms", res["percentiles"].get(q), wl.name)
        self._rec(variant, rep, "requests_per_s", res["requests_per_s"], wl.name)
        self._rec(variant, rep, "errors", res["errors"], wl.name)

    def _wl_load(self, cluster, variant, rep, wl) -> None:
        res = self._wrk(cluster, wl)
        self._rec(variant, rep, "requests_per_s", res["requests_per_s"], wl.name)
        for q in (50, 99):
            self._rec(variant, rep, f"latency_p{q}_ms", res["percentiles"].get(q), wl.name)
        self._rec(variant, rep, "errors", res["errors"], wl.name)

    def _wl_throughput(self, cluster, variant, rep, wl) -> None:
        svc = self._svc(cluster, IPERF_SERVICE)
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
        for pod, proc in servers.items():
            text = proc.communicate(timeout=10)[0].decode(errors="replace")
            if text.count(",") >= 8:
                served[pod] = text.strip().splitlines()[-1].split(",")[3]   # the source it saw
        mbps = parse_iperf_csv(out.stdout)
        pod = next(iter(served), None)
        where = {}
        if pod:
            node = cluster.plan.pod(pod).node
            entry = entry_nodes(cluster.plan).get(served[pod])
            if entry is None and cluster.plan.mode == "nodeport":
                entry = node        # Local: no SNAT, the LB's pick is the pod's node
            # not "pod"/"node": those group records; one connection's pod is a detail of it
            where = {"served_by": pod, "served_on": node, "entry_node": entry,
                     "crossed_nodes": bool(entry and entry != node)}
        self._rec(variant, rep, "throughput_mbps", mbps, wl.name, **where)
        self._rec(variant, rep, "errors", 0 if mbps else 1, wl.name)

    def _wl_path(self, cluster, variant, rep, wl) -> None:
        before = self._egress(cluster)
        rows = self._rows(cluster, variant, self._probe(cluster, wl.requests))
        after = self._egress(cluster)
        self.w.samples(variant.name, rep, wl.name, rows)
        ok = [r for r in rows if r["ok"]]
        hops = [r["hops"] for r in ok if r["hops"] is not None]
        self._rec(variant, rep, "path_hops", sum(hops) / len(hops) if hops else None, wl.name)
        cross = sum(after[n][0] - before[n][0] for n in after)
        total = sum(after[n][1] - before[n][1] for n in after)
        self._rec(variant, rep, "cross_node_bytes", cross, wl.name)
        self._rec(variant, rep, "cross_node_bytes_fraction", cross / total if total else None, wl.name)
        client_ip = cluster.plan.attachment(CLIENT).ip
        self._rec(variant, rep, "source_ip_preserved",
                  sum(1 for r in ok if r["source_ip"] == client_ip) / len(ok) if ok else None, wl.name)
        self._rec(variant, rep, "errors", len(rows) - len(ok), wl.name)
        svc = self._svc(cluster)
        endpoints = [p for p in svc.endpoints if p in cluster.live_pods()]
        self.w.distribution(self.exp.name, variant.name, rep, Counter(r["pod"] for r in ok),
                            Counter(r["entry_node"] for r in ok if r["entry_node"]),
                            endpoints=endpoints, workload=wl.name)

    # -- node egress accounting ------------------------------------------------------------
    def _install_accounting(self, cluster) -> None:
        """Counters in each node's mangle table (the node's own namespace, not kube-proxy's
        chains): bytes leaving eth0 towards the VPC (another node or its pods: crossing
        between nodes, overlay included) and all bytes leaving eth0."""
        vpc = str(cluster.topo.vpc.cidr)
        text = (f"*mangle\n:{ACCT_CHAIN} - [0:0]\n-A POSTROUTING -o eth0 -j {ACCT_CHAIN}\n"
                f"-A {ACCT_CHAIN} -d {vpc} -m comment --comment cross-node\n"
                f"-A {ACCT_CHAIN} -m comment --comment all\nCOMMIT\n")
        for node in cluster.plan.nodes:
            proc = cluster.host(node.name).popen(["iptables-restore", "--noflush", "--wait"],
                                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.PIPE)
            _, err = proc.communicate(text.encode(), timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"accounting rules on {node.name}: {err.decode().strip()}")

    def _egress(self, cluster) -> dict:
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
            out[node.name] = (counts.get("cross-node", 0), counts.get("all", 0))
        return out

    def _flush_conntrack(self) -> None:
        # one-directional conntrack in the fabric can make a reused client port collide with an
        # old entry; phases start clean (OVS userspace conntrack; the LB's state only)
        subprocess.run(["ovs-appctl", "dpctl/flush-conntrack"], capture_output=True, timeout=30)

    # -- failover ------------------------------------------------------------------------
    def _failover(self, variant, topo: Topology) -> None:
        exp = self.exp
        for rep in range(exp.repetitions):
            self.progress(variant.name, rep, "building")
            with Cluster(topo, iptables=self.iptables) as cluster:
                self._warmup(cluster)
                self.progress(variant.name, rep, f"steady load {exp.rate:g}/s for {exp.duration_s:g}s")
                argv = [PROBE, "--url", self._url(cluster), "--duration", f"{exp.duration_s:g}",
                        "--rate", f"{exp.rate:g}", "--timeout-ms", str(int(exp.timeout_s * 1000))]
                proc = cluster.host(CLIENT).popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                  stderr=subprocess.DEVNULL)
                start = time.time()
                events = []
                for ev in exp.events:
                    delay = ev.at_s - (time.time() - start)
                    if delay > 0:
                        time.sleep(delay)
                    t = time.time() - start
                    self.progress(variant.name, rep, f"{ev.action} {ev.target} at {t:.1f}s")
                    if ev.action == "remove-pod":
                        cluster.remove_pod(ev.target)
                        cluster.add_pod(cluster.plan.pod(ev.target).deployment)
                    elif ev.action == "fail-node":
                        cluster.fail_node(ev.target)
                    events.append({"t": t, "action": ev.action, "target": ev.target,
                                   "done_t": time.time() - start})
                out, _ = proc.communicate(timeout=exp.duration_s + 60)
                rows = self._rows(cluster, variant, [json.loads(l) for l in out.decode().splitlines()
                                                      if l.startswith("{")])
            self.w.samples(variant.name, rep, "failover", rows)
            self.w.samples(variant.name, rep, "events", events)
            self._rec(variant, rep, "errors", sum(1 for r in rows if not r["ok"]), "failover")
            for i, ev in enumerate(events):
                nxt = events[i + 1]["t"] if i + 1 < len(events) else exp.duration_s
                window = [r for r in rows if r["t"] is not None and ev["t"] <= r["t"] < nxt]
                self._rec(variant, rep, "errors", sum(1 for r in window if not r["ok"]), "failover",
                          event=i, action=ev["action"])
                self._rec(variant, rep, "recovery_time_s", recovery_time(window, ev["t"]), "failover",
                          event=i, action=ev["action"])
            self.done_units += 1

    # -- scaling -------------------------------------------------------------------------
    def _scaling(self, variant, topo: Topology) -> None:
        from testbed.kubernetes.dataplane.iptables import rules as kp
        from testbed.kubernetes.dataplane.iptables.proxier import node_context, service_ports
        exp = self.exp
        latency = exp.workload("latency")
        with Cluster(topo, iptables=self.iptables) as cluster:
            node = cluster.plan.nodes[0].name
            real = service_ports(cluster.plan, cluster.live_pods())
            for rep in range(exp.repetitions):
                for n in exp.services:
                    self.progress(variant.name, rep, f"{n} services")
                    synthetic = synthetic_services(n, exp.endpoints)
                    services = real + synthetic
                    ctx = node_context(cluster.plan, node)
                    text = kp.render(services, ctx)
                    t0 = time.time()
                    for nd in cluster.plan.nodes:   # every node's kube-proxy syncs
                        kp.apply(cluster.kube_proxy._runner(nd.name), text, backend=self.iptables, ensure_jumps=False)
                    sync_ms = (time.time() - t0) * 1000 / len(cluster.plan.nodes)
                    self._rec(variant, rep, "sync_time_ms", sync_ms, "scaling", services=n)
                    self._rec(variant, rep, "rules", text.count("\n-A "), "scaling", services=n)
                    if latency:
                        rows = self._rows(cluster, variant, self._probe(cluster, latency.requests))
                        self.w.samples(variant.name, rep, f"latency-{n}", rows)
                        lat = [r["latency_ms"] for r in rows if r["ok"]]
                        for q in (50, 99):
                            self._rec(variant, rep, f"latency_p{q}_ms", percentile(lat, q) if lat else None,
                                      "scaling", services=n)
                        self._rec(variant, rep, "errors", len(rows) - len(lat), "scaling", services=n)
                    # back to the real services only (a partial sync removes the synthetic chains)
                    for nd in cluster.plan.nodes:
                        kp.apply(cluster.kube_proxy._runner(nd.name),
                                 kp.render_partial(services, real, node_context(cluster.plan, nd.name)),
                                 backend=self.iptables, ensure_jumps=False)
                self.done_units += 1


def synthetic_services(n: int, endpoints: int) -> list:
    """n ClusterIP services of `endpoints` endpoints each, in ranges no real packet uses."""
    from testbed.kubernetes.dataplane.iptables import rules as kp
    out = []
    for i in range(n):
        ip = f"10.{100 + i // 65536 % 100}.{i // 256 % 256}.{i % 256}"
        eps = tuple(kp.Endpoint(f"172.{16 + (i * endpoints + e) // 65536 % 16}."
                                f"{(i * endpoints + e) // 256 % 256}.{(i * endpoints + e) % 256}", 8080)
                    for e in range(endpoints))
        out.append(kp.ServicePort(namespace="synthetic", name=f"svc-{i}", port_name="", protocol="TCP",
                                  cluster_ip=ip, port=80, target_port=8080, endpoints=eps))
    return out


def recovery_time(rows: list, since: float) -> Optional[float]:
    """Seconds from an event until the last failed request in its window (0 if none failed)."""
    failed = [r["t"] for r in rows if not r["ok"] and r["t"] is not None]
    return max(failed) - since if failed else 0.0


def environment(iptables: str = "auto") -> dict:
    """The machine a run was measured on (recorded beside every result)."""
    return {"kube_proxy_iptables": machine.iptables_backend() if iptables == "auto" else iptables,"kernel": os.uname().release, "machine": os.uname().machine, "cpus": os.cpu_count(),
            "datapath": "kernel" if machine.kernel_datapath() else "userspace (netdev)",
            "iptables_backend": machine.iptables_backend(), "netem": machine.netem_available(),
            "tools": machine.tool_versions()}
