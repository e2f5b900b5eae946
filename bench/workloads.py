#!/usr/bin/env python3
"""The workloads stage's two costs on a topology's scale, without a cluster (needs root): pod
servers started and kube-proxy's first sync on every node (a benchmark, not a test).

Every node and pod gets a scratch network namespace, cnlb-wl<pid>-N (made with one `ip -batch`,
deleted at the end, also on Ctrl-C or SIGTERM); nothing else is built: no veths, no addresses.

- pod servers: every pod's server started inside its namespace and listening, two ways: one
  process start per pod (`ip netns exec NS podserver ... --ready-fd`, 8 threads, as the testbed
  did through Mininet's popen) and the launcher (testbed.emulation.podservers: one
  `podserver --launch`, one line per pod, journaled in batches as the cluster does);
- kube-proxy's first sync: KubeProxy.sync_all on every node, each node's restore run with
  `ip netns exec`, serial (one node at a time, a render per node: as before) and as it ships
  (loads at once, APPLY_THREADS of them; a text nodes share rendered once).

    sudo .venv/bin/python bench/workloads.py [TOPOLOGY] [--mode M] [--repeat N] [--out FILE]

Writes the raw seconds, the medians and the machine to bench/results/workloads.json. Other work
on the machine shows in the figures: the record keeps the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from testbed.analysis.records import git_revision  # noqa: E402
from testbed.emulation.journal import Journal, StateDir  # noqa: E402
from testbed.emulation.podservers import Launcher, server_flags  # noqa: E402
from testbed.experiments.runner import environment  # noqa: E402
from testbed.kubernetes.dataplane import base  # noqa: E402
from testbed.kubernetes.dataplane.iptables import rules  # noqa: E402
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy  # noqa: E402
from testbed.paths import PODSERVER  # noqa: E402
from testbed.plan.addresses import Plan, build_plan  # noqa: E402
from testbed.spec.topology import load_topology  # noqa: E402

PREFIX = f"cnlb-wl{os.getpid()}-"
OLD_THREADS = 8   # the pool the testbed spawned pod servers from before the launcher


class Scratch:
    """One scratch namespace per host name; the ClusterView KubeProxy needs, over them."""

    def __init__(self, plan: Plan, state: str):
        self.plan = plan
        self.failed_nodes: set[str] = set()
        self.ns = {name: f"{PREFIX}{i}" for i, name in
                   enumerate([n.name for n in plan.nodes] + [p.name for p in plan.pods])}
        self.state = StateDir(state)

    def ip_batch(self, verb: str) -> None:
        lines = "".join(f"netns {verb} {ns}\n" for ns in self.ns.values())
        subprocess.run(["ip", "-force", "-batch", "-"], input=lines, text=True, check=True)

    def live_pods(self) -> set[str]:
        return {p.name for p in self.plan.pods}

    def host(self, name: str) -> Scratch.Host:
        return Scratch.Host(self.ns[name])

    def sh(self, host: str, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns[host], "sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout)

    class Host:
        def __init__(self, ns: str):
            self.ns = ns

        def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
            return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kwargs)


def servers_one_process_each(scratch: Scratch) -> float:
    """Seconds until every pod's server listens, one process start per pod."""
    procs = []

    def start(pod: Any) -> tuple[subprocess.Popen, int]:
        r, w = os.pipe()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", scratch.ns[pod.name], PODSERVER, "--port", str(pod.port),
             "--pod", pod.name, "--node", pod.node, "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(w,))
        os.close(w)
        return proc, r
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(OLD_THREADS) as pool:
            procs = list(pool.map(start, scratch.plan.pods))
        for _, r in procs:
            assert os.read(r, 16) == b"ready\n"
        return time.monotonic() - t0
    finally:
        for proc, r in procs:
            os.close(r)
            proc.kill()
            proc.wait(5)


def servers_launcher(scratch: Scratch) -> float:
    """Seconds until every pod's server listens, started by one launcher (journaled)."""
    journal = Journal(scratch.state)
    launcher = Launcher(scratch.state.file("podservers.log"),
                        lambda pid: journal.process(pid, "launcher"),
                        lambda servers: journal.record_many("process", [
                            {"pid": s.pid, "start": s.start_time, "what": s.pod}
                            for s in servers]))
    t0 = time.monotonic()
    try:
        servers = launcher.launch([(p.name, server_flags(p, f"/run/netns/{scratch.ns[p.name]}"))
                                   for p in scratch.plan.pods])
        assert all(s.wait_ready(60) for s in servers), launcher.log
        return time.monotonic() - t0
    finally:
        launcher.proc.send_signal(signal.SIGTERM)   # it stops its servers, then itself
        launcher.proc.wait(30)
        journal.close()


def first_sync(scratch: Scratch, serial: bool) -> dict[str, float]:
    """Seconds of KubeProxy.sync_all from empty tables; rendering's share on its own."""
    flush = "*filter\nCOMMIT\n*nat\nCOMMIT\n"
    with ThreadPoolExecutor(base.APPLY_THREADS) as pool:   # not timed: empty every node
        list(pool.map(lambda n: subprocess.run(
            ["ip", "netns", "exec", scratch.ns[n.name], "iptables-restore"], input=flush,
            text=True, check=True), scratch.plan.nodes))
    kp = KubeProxy(scratch)
    threads, texts = base.APPLY_THREADS, kp._texts
    render_s = 0.0
    if serial:   # as before: each node rendered for itself and loaded after the one before
        base.APPLY_THREADS = 1
        kp._texts = lambda nodes, services: _each_rendered(kp, nodes, services)
    real_render = rules.render

    def timed_render(*args: Any) -> str:
        nonlocal render_s
        t = time.monotonic()
        try:
            return real_render(*args)
        finally:
            render_s += time.monotonic() - t
    rules.render = timed_render
    try:
        t0 = time.monotonic()
        kp.sync_all()
        return {"sync_s": time.monotonic() - t0, "render_s": render_s}
    finally:
        base.APPLY_THREADS, kp._texts, rules.render = threads, texts, real_render


def _each_rendered(kp: KubeProxy, nodes: Any, services: Any) -> tuple[dict, dict]:
    texts, kinds = {}, {}
    for node in nodes:
        texts[node], kinds[node] = KubeProxy._texts(kp, [node], services)[0][node], "full"
    return texts, kinds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topology", nargs="?", default=os.path.join(BENCH, "pods1000.yaml"))
    ap.add_argument("--mode", default="container-native")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(BENCH, "results", "workloads.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("workloads: needs root (it makes network namespaces)", file=sys.stderr)
        return 3
    plan = build_plan(load_topology(args.topology, mode=args.mode))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs: dict[str, list[Any]] = {"servers_one_process_each_s": [], "servers_launcher_s": [],
                                  "sync_serial": [], "sync_parallel": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cnlb-wl-") as state:
        scratch = Scratch(plan, state)
        scratch.ip_batch("add")
        try:
            for i in range(args.repeat):
                runs["servers_one_process_each_s"].append(servers_one_process_each(scratch))
                runs["servers_launcher_s"].append(servers_launcher(scratch))
                runs["sync_serial"].append(first_sync(scratch, serial=True))
                runs["sync_parallel"].append(first_sync(scratch, serial=False))
                print(f"#{i}: " + ", ".join(
                    f"{k} {v[-1]['sync_s'] if isinstance(v[-1], dict) else v[-1]:.2f}s"
                    for k, v in runs.items()), file=sys.stderr, flush=True)
        finally:
            scratch.ip_batch("delete")

    def med(key: str, field: str | None = None) -> float:
        return round(statistics.median(r[field] if field else r for r in runs[key]), 3)
    summary = {"pods": len(plan.pods), "nodes": len(plan.nodes), "apply_threads":
               base.APPLY_THREADS,
               "servers_one_process_each_s": med("servers_one_process_each_s"),
               "servers_launcher_s": med("servers_launcher_s"),
               "sync_serial_s": med("sync_serial", "sync_s"),
               "sync_serial_render_s": med("sync_serial", "render_s"),
               "sync_parallel_s": med("sync_parallel", "sync_s"),
               "sync_parallel_render_s": med("sync_parallel", "render_s")}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "workloads", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "topology": os.path.relpath(os.path.abspath(args.topology), REPO),
                   "mode": args.mode, "environment": environment(), "git": git_revision(REPO),
                   "load_before": load_before, "load_after": os.getloadavg(),
                   "summary": summary, "runs": runs}, fh, indent=1)
    s = summary
    print(f"| {s['nodes']} nodes, {s['pods']} pods | before | now |")
    print("|---|---|---|")
    print(f"| pod servers listening | {s['servers_one_process_each_s']:.2f} s "
          f"| {s['servers_launcher_s']:.2f} s |")
    print(f"| kube-proxy first sync (render) | {s['sync_serial_s']:.2f} s "
          f"({s['sync_serial_render_s']:.2f}) | {s['sync_parallel_s']:.2f} s "
          f"({s['sync_parallel_render_s']:.2f}) |")
    print(f"(medians of {args.repeat}; written to {os.path.relpath(args.out, REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
