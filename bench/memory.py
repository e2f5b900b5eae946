"""Resident memory the testbed adds per pod and per node, measured on generated clusters, and how
many pods fit on a VM of a given size (a benchmark, not a test).

    sudo .venv/bin/python bench/memory.py [--sizes 10x8,10x40,...] [--mode MODE ...]
                                          [--topology FILE ...] [--lock FILE] [--out FILE]
                                          [--against RESULT]

A size NxP is a topology of N nodes with P pods each, generated the way bench/pods1000.yaml is
written (into a temporary directory, removed after); --topology takes files instead. For each
mode and size, one after the other, the machine is read before the cluster is built, once it
has settled, and after it has stopped: its used memory (MemTotal - MemAvailable), the kernel's
memory it cannot reclaim (SUnreclaim + Percpu + KernelStack + PageTables; Slab, SReclaimable
and Shmem are kept too), and the memory of the testbed's processes by kind (pod servers, their
launcher, shells, the VPC controller, its health checker, kube-proxy's health servers; any
other child of this process), of ovs-vswitchd and ovsdb-server and of this process (it holds
the Cluster). A process's memory is its proportional share of anonymous and shared-memory
pages (smaps_rollup's Pss_Anon + Pss_Shmem; RSS and PSS are recorded too): its program and
libraries are page cache, shared and counted as available. Each reading waits until the
kernel's memory has held still for --settle seconds (a namespace is freed by a kernel worker
after `ip netns delete` returns, so another cluster's teardown goes on after it has let go of
the machine) and is the median of a few, each after the slab caches have given back their
empty slabs (/sys/kernel/slab/*/shrink), so that the kernel's part counts live objects.

Before the clusters, the kernel's cost of the two objects every pod has is measured alone: K
bare named namespaces, then K veth pairs with one end in each of them and the other in a shared
namespace, as a pod's eth0 and its node's end (all up).

Per mode, value = base + per_node * nodes + per_pod * pods is fitted by least squares over the
sizes, for used memory, for the accounted sum (kernel + processes) and for each part, so the
parts add up; the worst residual says how far the sizes lie from a plane. It is fitted again
with a per_node_pod * nodes * pods term: every node holds kube-proxy's rules for every
endpoint, so a cluster's memory is not a plane (the default sizes are a 2x2 design in nodes and
pods with a centre point, to tell that term apart). The pods that fit in a VM (--vm-gib, less
--reserve-gib for its OS, with a node per --pods-per-node pods) follow from the fits. A
measurement that something else disturbed (the kernel's memory did not hold still, did not
come back after stop, or began far above the run's lowest start) is taken again, up to three
times; the discarded ones are kept. Prints
Markdown tables and writes every reading, the fits, the assumptions, the machine and the git
revision to bench/results/memory.json.

--lock FILE: an flock held around each measurement (the kernel's parts, each cluster) and
released between them, for machines where something else builds clusters too.
--against RESULT: also print what an earlier result's fits predict for the sizes measured now
(e.g. one bigger size, --out elsewhere, to check the fits beyond the sizes they came from).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)

MODES = ("nodeport", "container-native")
DEFAULT_SIZES = "10x8,10x40,40x2,40x10,20x12"
# the meminfo fields kept with each reading (KiB)
KERNEL_PARTS = ("Slab", "SReclaimable", "SUnreclaim", "Percpu", "KernelStack", "PageTables",
                "Shmem")
# what the kernel holds and cannot give back (a namespace, a veth, a process's stack and page
# tables); reclaimable slab (dentries, inodes) is mostly counted as available already
KERNEL_SUM = ("SUnreclaim", "Percpu", "KernelStack", "PageTables")
QUIET_KIB, QUIET_WINDOW, QUIET_TIMEOUT_S = 1024, 5, 90.0   # KiB, readings 1 s apart, s
PROCESS_KINDS = ("pod servers", "pod server launcher", "shells", "vpc controller",
                 "health checker", "kube-proxy health servers", "other")
OVS_DAEMONS = ("ovs-vswitchd", "ovsdb-server")
# the fits the table shows: (fits key, quantity, label); the pods that fit are shown for the
# rows summarize() estimates them for
FIT_ROWS = (("fits", "used", "used"),
            ("fits", "accounted", "accounted"),
            ("fits_with_nodes_x_pods", "accounted", "accounted with nodes x pods"),
            ("fits", "kernel", "kernel"),
            ("fits_with_nodes_x_pods", "kernel", "kernel with nodes x pods"),
            ("fits", "user", "processes"),
            ("fits", "own pod servers", "pod servers"))
DEFAULT_PODS_PER_NODE = 17     # vpc.maxPodsPerNode's default (ENI address slots per node)
SAMPLES, SAMPLE_GAP_S = 5, 0.2
ATTEMPTS, DISTURBED_KIB, RETRY_PAUSE_S = 3, 32 * 1024, 20.0   # a disturbed one is taken again
PREFIX = "cnlbmem"             # the kernel-parts measurement's namespaces


# -- pure parts (tests/unit/test_bench_memory.py) -----------------------------------------------

def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: KiB} (HugePages_* counts are kept as they are)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        words = rest.split()
        if sep and words and words[0].isdigit():
            out[name.strip()] = int(words[0])
    return out


def used_kib(meminfo: dict[str, int]) -> int:
    """What the machine uses: all it has less what it could still hand out without swapping."""
    return meminfo["MemTotal"] - meminfo["MemAvailable"]


def kernel_kib(meminfo: dict[str, int]) -> int:
    """The kernel's own memory that it cannot reclaim (not the page cache, not dentries)."""
    return sum(meminfo.get(k, 0) for k in KERNEL_SUM)


def is_quiet(kernel_readings: Sequence[int], window: int = QUIET_WINDOW,
             spread_kib: int = QUIET_KIB) -> bool:
    """Whether the last `window` readings of the kernel's memory lie within spread_kib (the
    kernel frees a deleted namespace in a worker, seconds after `ip netns delete` returns:
    another cluster's teardown goes on after its owner has let go of the machine)."""
    last = list(kernel_readings)[-window:]
    return len(last) == window and max(last) - min(last) <= spread_kib


def parse_rollup(text: str) -> dict[str, int]:
    """/proc/PID/smaps_rollup in KiB: rss, pss, and "own": the proportional share of its
    anonymous and shared-memory pages (Pss_Anon + Pss_Shmem). File pages (the program, its
    libraries) are page cache that MemAvailable counts as available and every copy shares.
    A kernel older than 5.9 does not split Pss: "own" is all of it there."""
    fields = parse_meminfo(text)
    own = fields["Pss_Anon"] + fields.get("Pss_Shmem", 0) if "Pss_Anon" in fields \
        else fields.get("Pss", 0)
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0), "own": own}


def _prog(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else ""


def process_kind(argv: Sequence[str], parent_argv: Sequence[str] = ()) -> str:
    """What a process of the testbed is, from its command line and its parent's (the pod
    servers are forked by `podserver --launch` and keep its command line)."""
    words = list(argv)
    prog = _prog(words)
    if prog == "podserver":
        launcher = "--launch" in words and _prog(parent_argv) != "podserver"
        return "pod server launcher" if launcher else "pod servers"
    if prog == "bash" and "--norc" in words:   # a Mininet host's shell
        return "shells"
    if "controllers.run" in words:
        return "health checker" if "--checker" in words else "vpc controller"
    if "testbed.kubernetes.dataplane.healthserver" in words:
        return "kube-proxy health servers"
    return "other"


def parse_size(text: str) -> tuple[int, int]:
    """'NxP' (N nodes with P pods each) as (N, P)."""
    nodes, sep, pods = text.strip().lower().partition("x")
    if not sep or not nodes.isdigit() or not pods.isdigit() or int(nodes) < 1 or int(pods) < 1:
        raise ValueError(f"size {text!r}: write NODESxPODS_PER_NODE, e.g. 10x50")
    return int(nodes), int(pods)


def topology_yaml(nodes: int, pods_per_node: int) -> str:
    """A topology of `nodes` nodes with `pods_per_node` pods each, in bench/pods1000.yaml's
    shape: nodes round-robin over up to 10 subnets of a 10.0.0.0/16 VPC, each subnet big
    enough for its nodes and their pods (container-native pods take VPC addresses)."""
    subnets = min(nodes, 10)
    per_subnet = math.ceil(nodes / subnets) * (pods_per_node + 1) + 8
    prefix = 32 - max(8, math.ceil(math.log2(per_subnet + 2)))
    if prefix < 20:
        raise ValueError(f"{nodes}x{pods_per_node}: a subnet would need more than a /20")
    step = 2 ** (32 - prefix)
    names = [f"az-{chr(ord('a') + i)}" for i in range(subnets)]
    lines = [f"# {nodes * pods_per_node} pods: {nodes} nodes x {pods_per_node} pods in "
             f"{subnets} subnets (generated by bench/memory.py).",
             f"name: mem{nodes}x{pods_per_node}", "vpc:", "  cidr: 10.0.0.0/16", "  subnets:"]
    for i, name in enumerate(names):
        base = i * step
        lines.append(f"    {name}: 10.0.{base // 256}.{base % 256}/{prefix}")
    lines += [f"  maxPodsPerNode: {min(250, max(pods_per_node, 1))}", "nodes:"]
    lines += [f"  node{i + 1}: {{subnet: {names[i % subnets]}}}" for i in range(nodes)]
    lines += ["deployments:", f"  web: {{replicas: {nodes * pods_per_node}, placement: spread}}",
              "services:",
              "  web: {type: LoadBalancer, port: 80, targetPort: 8080, nodePort: 30080}",
              "loadBalancer: {vip: 198.51.100.10, targets: nodeport,",
              "               healthCheck: {interval: 5s, timeout: 2s}}",
              "clients:", "  client1: {}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Fit:
    """value = base + per_node * nodes + per_pod * pods + per_node_pod * nodes * pods (KiB),
    and the worst distance of a measured point from it. per_node_pod is what grows with both,
    such as kube-proxy's rules (every node holds a rule per endpoint); 0 unless fitted."""
    base: float
    per_node: float
    per_pod: float
    max_residual: float
    per_node_pod: float = 0.0

    def at(self, nodes: float, pods: float) -> float:
        return (self.base + self.per_node * nodes + self.per_pod * pods
                + self.per_node_pod * nodes * pods)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3 if k == "per_node_pod" else 1) for k, v in vars(self).items()}


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """a x = b by Gaussian elimination with partial pivoting; ValueError if a is singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-9:
            raise ValueError("the sizes do not tell the terms apart: vary nodes and pods "
                             "independently (not all sizes with the same pods per node)")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit_linear(points: Sequence[tuple[int, int, float]], cross: bool = False) -> Fit:
    """Least squares of value = base + per_node * nodes + per_pod * pods (and, with cross,
    + per_node_pod * nodes * pods) over (nodes, pods, value) points, by the normal equations
    with every column scaled to at most 1 (so nodes * pods does not swamp the rest)."""
    terms = 4 if cross else 3
    if len(points) < terms:
        raise ValueError(f"at least {terms} sizes are needed to fit "
                         + ("base, per node, per pod and per node and pod" if cross
                            else "base, per node and per pod"))
    rows = [[1.0, float(n), float(p), float(n * p)][:terms] for n, p, _ in points]
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(terms)]
    rows = [[x / scale[j] for j, x in enumerate(r)] for r in rows]
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(terms)] for i in range(terms)]
    atb = [sum(r[i] * v for r, (_, _, v) in zip(rows, points, strict=True))
           for i in range(terms)]
    coef = [c / scale[j] for j, c in enumerate(_solve(ata, atb))] + [0.0]
    fit = Fit(coef[0], coef[1], coef[2], 0.0, coef[3])
    residual = max(abs(fit.at(n, p) - v) for n, p, v in points)
    return Fit(fit.base, fit.per_node, fit.per_pod, residual, fit.per_node_pod)


def pods_that_fit(fit: Fit, budget_kib: float, pods_per_node: int,
                  limit: int = 10**8) -> int | None:
    """The most pods whose cluster (a node per pods_per_node pods, rounded up) the fit says
    needs at most budget_kib; None if the fit does not grow with the pods (a noisy fit)."""
    def need(pods: int) -> float:
        return fit.at(math.ceil(pods / pods_per_node), pods)

    if fit.per_pod + fit.per_node / pods_per_node <= 0 and fit.per_node_pod <= 0:
        return None
    if need(0) > budget_kib:
        return 0
    low, high = 0, 1              # need(low) fits; find a high that does not, then halve
    while need(high) <= budget_kib:
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if need(mid) <= budget_kib else (low, mid)
    return low


# -- reading the machine -------------------------------------------------------------------

def read_meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as fh:
        return parse_meminfo(fh.read())


def sample_meminfo(samples: int = SAMPLES, gap: float = SAMPLE_GAP_S) -> dict[str, int]:
    """Each field's median over a few readings (other work on the machine moves them)."""
    readings = []
    for i in range(samples):
        if i:
            time.sleep(gap)
        readings.append(read_meminfo())
    keys = set.intersection(*(set(r) for r in readings))
    return {k: int(statistics.median(r[k] for r in readings)) for k in keys}


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return None


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                out[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """Every process below `root` (the testbed starts all its processes from its owner)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _argv(pid: int) -> list[str]:
    text = _read(f"/proc/{pid}/cmdline")
    return text.rstrip("\0").split("\0") if text else []


def rollup(pid: int) -> dict[str, int] | None:
    text = _read(f"/proc/{pid}/smaps_rollup")
    return parse_rollup(text) if text else None


MEMORY_FIELDS = ("rss", "pss", "own")


def testbed_processes() -> dict[str, dict[str, int]]:
    """{kind: {"count", "rss_kib", "pss_kib", "own_kib"}} over this process's descendants."""
    out = {k: {"count": 0, **{f"{f}_kib": 0 for f in MEMORY_FIELDS}} for k in PROCESS_KINDS}
    parents = _parents()
    for pid in descendants(os.getpid(), parents):
        cmdline, parent = _argv(pid), _argv(parents[pid])
        mem = rollup(pid)
        if not cmdline or mem is None:   # gone, or a kernel thread
            continue
        kind = out[process_kind(cmdline, parent)]
        kind["count"] += 1
        for f in MEMORY_FIELDS:
            kind[f"{f}_kib"] += mem[f]
    return out


def daemons() -> dict[str, dict[str, int]]:
    """{daemon: {"rss_kib", "pss_kib", "own_kib"}} of Open vSwitch's daemons."""
    out = {d: {f"{f}_kib": 0 for f in MEMORY_FIELDS} for d in OVS_DAEMONS}
    for entry in os.listdir("/proc"):
        comm = _read(f"/proc/{entry}/comm") if entry.isdigit() else None
        name = comm.strip() if comm else ""
        if name in out and (mem := rollup(int(entry))):
            for f in MEMORY_FIELDS:
                out[name][f"{f}_kib"] += mem[f]
    return out


def own_kib() -> dict[str, int]:
    mem = rollup(os.getpid()) or {f: 0 for f in MEMORY_FIELDS}
    return {f"{f}_kib": mem[f] for f in MEMORY_FIELDS}


def snapshot(meminfo: dict[str, int]) -> dict[str, Any]:
    """The machine's memory (as read) and the testbed's processes, now."""
    return {"meminfo": meminfo, "processes": testbed_processes(), "ovs": daemons(),
            "owner": own_kib()}


def meminfo_view(meminfo: dict[str, int]) -> dict[str, int]:
    return {"used_kib": used_kib(meminfo), "kernel_kib": kernel_kib(meminfo),
            **{f"{k}_kib": meminfo.get(k, 0) for k in KERNEL_PARTS}}


def deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """What a cluster added, as the fitted quantities (KiB): used, kernel and its parts, and
    the processes' own memory (parse_rollup's "own") by kind, with the growth of the OVS
    daemons and of the owner (this process, which holds the Cluster), and their sum."""
    b, a = meminfo_view(before["meminfo"]), meminfo_view(after["meminfo"])
    out: dict[str, float] = {k: a[k] - b[k] for k in a}
    grew = {kind: after["processes"][kind]["own_kib"] - before["processes"][kind]["own_kib"]
            for kind in PROCESS_KINDS}
    grew.update({d: after["ovs"][d]["own_kib"] - before["ovs"][d]["own_kib"]
                 for d in OVS_DAEMONS})
    grew["owner"] = after["owner"]["own_kib"] - before["owner"]["own_kib"]
    out.update({f"own {k}_kib": v for k, v in grew.items()})
    out["user_kib"] = sum(grew.values())
    out["accounted_kib"] = out["kernel_kib"] + out["user_kib"]
    out["rest_kib"] = out["used_kib"] - out["accounted_kib"]
    return out


# -- measuring -----------------------------------------------------------------------------

@contextmanager
def held(lock: str | None) -> Iterator[None]:
    """An exclusive flock on `lock` for the block (nothing if None)."""
    if lock is None:
        yield
        return
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ip_batch(lines: Sequence[str]) -> None:
    done = subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                          text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"ip -batch: {done.stderr.strip()[-400:]}")


def shrink_slabs() -> None:
    """Have every slab cache give back its empty slabs, so a reading counts live objects,
    not the free room a torn-down cluster left in them (which the next one would fill
    without a change in SUnreclaim). Cheap, and harmless to whatever else runs."""
    root = "/sys/kernel/slab"
    for name in os.listdir(root) if os.path.isdir(root) else []:
        try:
            with open(os.path.join(root, name, "shrink"), "w") as fh:
                fh.write("1")
        except OSError:
            pass   # an alias, or a cache that is gone


def wait_quiet(settle: float, timeout: float = QUIET_TIMEOUT_S) -> dict[str, Any]:
    """Read the machine once its kernel memory has moved less than QUIET_KIB over the last
    `settle` seconds (see is_quiet), or after the timeout:
    {"meminfo": median readings, "waited_s", "quiet"}."""
    t0 = time.time()
    kernel: list[int] = []
    window = max(2, round(settle) + 1)
    while True:
        shrink_slabs()
        kernel.append(kernel_kib(read_meminfo()))
        quiet = is_quiet(kernel, window)
        if quiet or time.time() - t0 > timeout:
            break
        time.sleep(1.0)
    return {"meminfo": sample_meminfo(), "waited_s": round(time.time() - t0, 1),
            "quiet": quiet}


def kernel_parts(count: int, settle: float) -> dict[str, Any]:
    """The kernel's memory per bare named namespace and per veth pair (both ends up, one in a
    namespace of its own as a pod's eth0, the other in a shared one as its node's end)."""
    names = [f"{PREFIX}-{i}" for i in range(count)]
    shared = f"{PREFIX}-node"
    try:
        base = wait_quiet(settle)
        _ip_batch([f"netns add {n}" for n in [shared, *names]])
        spaces = wait_quiet(settle)
        _ip_batch([f"link add eth0 netns {n} type veth peer name v{i} netns {shared}"
                   for i, n in enumerate(names)])
        for n in names:   # each pod's eth0 and lo come up in its own namespace
            subprocess.run(["ip", "-n", n, "-batch", "-"], input="link set lo up\n"
                           "link set eth0 up\n", text=True, capture_output=True, check=True)
        subprocess.run(["ip", "-n", shared, "-batch", "-"], text=True, capture_output=True,
                       input="".join(f"link set v{i} up\n" for i in range(count)), check=True)
        veths = wait_quiet(settle)
    finally:
        existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        gone = [f"netns delete {n}" for n in [shared, *names] if n in existing]
        if gone:
            _ip_batch(gone)
    after = wait_quiet(settle)

    def per(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, float]:
        old = meminfo_view(b["meminfo"])
        return {k: round((v - old[k]) / n, 1) for k, v in meminfo_view(a["meminfo"]).items()}

    return {"count": count, "start_kernel_kib": kernel_kib(base["meminfo"]),
            "netns": per(spaces, base, count + 1),
            "veth_pair": per(veths, spaces, count),
            "left_after_delete_kib": per(after, base, 1),
            "quiet": [x["quiet"] for x in (base, spaces, veths, after)]}


def measure_cluster(path: str, mode: str, settle: float) -> dict[str, Any]:
    """Build one cluster, read what it added once settled, stop it, read what stayed."""
    from testbed.emulation.cluster import Cluster
    from testbed.spec.topology import load_topology

    t_start = time.time()
    quiet = wait_quiet(settle)
    before = snapshot(quiet["meminfo"])
    cluster = Cluster(load_topology(path, mode=mode))
    t0 = time.time()
    try:
        cluster.start()
        up = time.time() - t0
        settled = wait_quiet(settle)
        after = snapshot(settled["meminfo"])
        size = {"nodes": len(cluster.plan.nodes), "pods": len(cluster.plan.pods),
                "hosts": len(cluster.plan.attachments) + len(cluster.plan.pods)}
    finally:
        cluster.stop()
    stopped = wait_quiet(settle)
    b, s = meminfo_view(before["meminfo"]), meminfo_view(stopped["meminfo"])
    return {**size, "up_s": round(up, 2), "wall_s": round(time.time() - t_start, 1),
            "added": deltas(before, after),
            "processes": after["processes"], "ovs_after": after["ovs"],
            "before": b, "after": meminfo_view(after["meminfo"]),
            "left_after_stop": {k: v - b[k] for k, v in s.items()},
            "waited_s": [quiet["waited_s"], settled["waited_s"], stopped["waited_s"]],
            "quiet": [quiet["quiet"], settled["quiet"], stopped["quiet"]]}


# -- summary -------------------------------------------------------------------------------

def fits(runs: list[dict[str, Any]], cross: bool = False) -> dict[str, dict[str, float]]:
    """Every added quantity of one mode's runs, fitted over their sizes ({} if the sizes
    cannot tell the terms apart)."""
    points = {k: [(r["nodes"], r["pods"], r["added"][k]) for r in runs]
              for k in runs[0]["added"]}
    try:
        return {k.removesuffix("_kib"): fit_linear(v, cross).to_dict() for k, v in points.items()}
    except ValueError:
        return {}


def estimate(fit: dict[str, float], vm_gib: float, reserve_gib: float,
             pods_per_node: int) -> int | None:
    budget = (vm_gib - reserve_gib) * 2**20
    return pods_that_fit(Fit(**fit), budget, pods_per_node)


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """One mode's fits (plane, and with the nodes x pods term) and the pods that fit."""
    plane, cross = fits(runs), fits(runs, cross=True)
    chosen = {"used": plane.get("used"), "accounted": plane.get("accounted"),
              "accounted with nodes x pods": cross.get("accounted")}
    return {"fits": plane, "fits_with_nodes_x_pods": cross, "pods_that_fit": {
        k: estimate(f, args.vm_gib, args.reserve_gib, args.pods_per_node) if f else None
        for k, f in chosen.items()}}


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def print_fits(summary: dict[str, Any], vm: str) -> None:
    print("| mode | fit of | per pod (KiB) | per node (KiB) | per node x pod (KiB) | base (MiB) "
          f"| worst residual (MiB) | pods in {vm} |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, s in summary.items():
        for fits_key, key, label in FIT_ROWS:
            f = s[fits_key].get(key)
            if not f:
                continue
            fit = s["pods_that_fit"].get(label, "")
            print(f"| {mode} | {label} | {f['per_pod']:.0f} | {f['per_node']:.0f} "
                  f"| {f['per_node_pod']:.2f} | {_mib(f['base'])} | {_mib(f['max_residual'])} "
                  f"| {'' if fit is None else fit} |")


def print_tables(runs: list[dict[str, Any]], summary: dict[str, Any], parts: dict[str, Any],
                 assumptions: dict[str, Any]) -> None:
    print("| mode | nodes | pods | up (s) | used + (MiB) | kernel + (MiB) | processes + (MiB) "
          "| used left after stop (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        a = r["added"]
        print(f"| {r['mode']} | {r['nodes']} | {r['pods']} | {r['up_s']:.1f} "
              f"| {_mib(a['used_kib'])} | {_mib(a['kernel_kib'])} | {_mib(a['user_kib'])} "
              f"| {_mib(r['left_after_stop']['used_kib'])} |")
    for r in runs:
        if r.get("disturbed"):
            print(f"\n{r['topology']} {r['mode']}: still disturbed after "
                  f"{r['attempts']} attempts ({r['disturbed']}); fitted all the same")
    print()
    vm = f"{assumptions['vm_gib']:g} GiB"
    if any(s["fits"] for s in summary.values()):
        print_fits(summary, vm)
    else:
        print("(no fits: at least 3 sizes, not all with the same pods per node, are needed)")
    print()
    print(f"used: MemTotal - MemAvailable; accounted: kernel (SUnreclaim, Percpu, stacks, page "
          f"tables) + processes (anonymous and shared PSS of the testbed's processes, growth "
          f"of OVS's and of the owner's). Alone (kernel, {parts['count']} of each): a named "
          f"namespace {parts['netns']['kernel_kib']:.0f} KiB, a veth pair (both ends up) "
          f"{parts['veth_pair']['kernel_kib']:.0f} KiB. Pods in {vm}: "
          f"{assumptions['reserve_gib']:g} GiB kept for the OS, a node per "
          f"{assumptions['pods_per_node']} pods.")


def predictions(runs: list[dict[str, Any]], earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """Each run's accounted memory beside what an earlier result's fits of its mode predict
    for its size (to check a fit beyond the sizes it was made from)."""
    out = []
    for r in runs:
        fits_of = earlier.get("summary", {}).get(r["mode"], {})
        row: dict[str, Any] = {"mode": r["mode"], "nodes": r["nodes"], "pods": r["pods"],
                               "accounted_kib": r["added"]["accounted_kib"]}
        for key, label in (("fits", "plane"), ("fits_with_nodes_x_pods", "with nodes x pods")):
            f = fits_of.get(key, {}).get("accounted")
            row[label] = round(Fit(**f).at(r["nodes"], r["pods"]), 1) if f else None
        out.append(row)
    return out


def print_predictions(rows: list[dict[str, Any]], path: str) -> None:
    print(f"\nAccounted memory beside what {path}'s fits predict:\n")
    print("| mode | nodes | pods | accounted + (MiB) | plane predicts (MiB) "
          "| with nodes x pods predicts (MiB) |")
    print("|---|---|---|---|---|---|")
    for p in rows:
        cells = ["" if p[k] is None else _mib(p[k]) for k in ("plane", "with nodes x pods")]
        print(f"| {p['mode']} | {p['nodes']} | {p['pods']} | {_mib(p['accounted_kib'])} "
              f"| {cells[0]} | {cells[1]} |")


def sizes_to_topologies(sizes: str, tmp: str) -> list[tuple[str, str]]:
    """(name, file) of each generated size."""
    out = []
    for text in sizes.split(","):
        nodes, pods = parse_size(text)
        path = os.path.join(tmp, f"mem{nodes}x{pods}.yaml")
        with open(path, "w") as fh:
            fh.write(topology_yaml(nodes, pods))
        out.append((f"{nodes}x{pods}", path))
    return out


def disturbed(quiet: Sequence[bool], left_kib: float, added_kib: float,
              start_excess_kib: float = 0.0) -> str | None:
    """Why a measurement cannot be used, or None: a reading taken while the kernel's memory
    still moved; a kernel that did not come back to where it was (something else freed or
    took memory meanwhile: another cluster's namespaces, freed late); or a start with far
    more kernel memory than the run's lowest start (another cluster's objects, not yet freed:
    this one fills their slabs' free room and seems to cost less than it does)."""
    if not all(quiet):
        return "the kernel's memory did not hold still"
    if abs(left_kib) > max(DISTURBED_KIB, 0.25 * abs(added_kib)):
        return f"the kernel's memory moved by {left_kib / 1024:.0f} MiB from start to end"
    if start_excess_kib > DISTURBED_KIB:
        return (f"the kernel held {start_excess_kib / 1024:.0f} MiB more at the start than "
                "at the run's lowest start")
    return None


def measured(what: str, measure: Callable[[], dict[str, Any]], why: Callable[[dict[str, Any]],
             str | None], lock: str | None, discarded: list[dict[str, Any]]) -> dict[str, Any]:
    """One measurement under the lock, taken again (up to ATTEMPTS times) while `why` finds it
    disturbed; the discarded ones are kept, with the reason."""
    for attempt in range(1, ATTEMPTS + 1):
        if attempt > 1:
            time.sleep(RETRY_PAUSE_S)   # what disturbed it may need a while to end
        with held(lock):
            r = measure()
        reason = why(r)
        if reason is None or attempt == ATTEMPTS:
            return {**r, "attempts": attempt, "disturbed": reason}
        discarded.append({"what": what, "reason": reason, **r})
        print(f"{what}: measured again: {reason}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def run(args: argparse.Namespace, topologies: list[tuple[str, str]]) -> dict[str, Any]:
    discarded: list[dict[str, Any]] = []
    parts = measured("kernel parts", lambda: kernel_parts(args.parts, args.settle),
                     lambda r: disturbed(r["quiet"], r["left_after_delete_kib"]["kernel_kib"],
                                         r["netns"]["kernel_kib"] * args.parts),
                     args.lock, discarded)
    print(f"kernel parts: {parts['netns']['kernel_kib']:.0f} KiB per namespace, "
          f"{parts['veth_pair']['kernel_kib']:.0f} KiB per veth pair", file=sys.stderr,
          flush=True)
    runs: list[dict[str, Any]] = []
    lowest = [parts["start_kernel_kib"]]   # the lowest kernel memory a measurement began with

    def why(r: dict[str, Any]) -> str | None:
        return disturbed(r["quiet"][:2], r["left_after_stop"]["kernel_kib"],
                         r["added"]["kernel_kib"], r["before"]["kernel_kib"] - lowest[0])

    for mode in args.mode:
        for name, path in topologies:
            r = {"topology": name, "mode": mode, **measured(
                f"{name} {mode}", functools.partial(measure_cluster, path, mode, args.settle),
                why, args.lock, discarded)}
            lowest[0] = min(lowest[0], r["before"]["kernel_kib"])
            runs.append(r)
            added, left = r["added"], r["left_after_stop"]
            print(f"{name} {mode}: {r['pods']} pods up in {r['up_s']:.1f}s; used "
                  f"+{_mib(added['used_kib'])} MiB, accounted +{_mib(added['accounted_kib'])} "
                  f"MiB; left after stop: used {_mib(left['used_kib'])} MiB, kernel "
                  f"{_mib(left['kernel_kib'])} MiB", file=sys.stderr, flush=True)
    assumptions = {"vm_gib": args.vm_gib, "reserve_gib": args.reserve_gib,
                   "pods_per_node": args.pods_per_node,
                   "fit": "value = base + per_node * nodes + per_pod * pods, least squares; "
                          "fits_with_nodes_x_pods adds per_node_pod * nodes * pods",
                   "settle_s": args.settle, "samples": SAMPLES}
    summary: dict[str, Any] = {}
    for mode in args.mode:
        summary[mode] = summarize([r for r in runs if r["mode"] == mode], args)
    return {"assumptions": assumptions, "kernel_parts": parts, "summary": summary, "runs": runs,
            "discarded": discarded}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"NODESxPODS_PER_NODE,... generated topologies ({DEFAULT_SIZES})")
    ap.add_argument("--topology", action="append", default=[],
                    help="a topology file instead of generated sizes (repeatable)")
    ap.add_argument("--mode", action="append", choices=MODES, help="both unless given")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds the kernel's memory must hold still before a reading")
    ap.add_argument("--parts", type=int, default=500,
                    help="namespaces and veth pairs of the kernel-parts measurement")
    ap.add_argument("--vm-gib", type=float, default=24.0)
    ap.add_argument("--reserve-gib", type=float, default=2.0, help="kept for the VM's OS")
    ap.add_argument("--pods-per-node", type=int, default=DEFAULT_PODS_PER_NODE)
    ap.add_argument("--lock", help="a file to flock around each measurement")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "memory.json"))
    ap.add_argument("--against", metavar="RESULT",
                    help="an earlier memory.json: print what its fits predict for these sizes")
    args = ap.parse_args(argv)
    earlier = None
    if args.against:
        with open(args.against) as fh:
            earlier = json.load(fh)
    args.mode = args.mode or list(MODES)
    sys.path.insert(0, REPO)
    sys.path.insert(0, BENCH)
    import bringup

    from testbed.analysis.records import git_revision

    tmp = tempfile.mkdtemp(prefix="cnlb-memory-")
    try:
        topologies = [(os.path.relpath(os.path.abspath(p), REPO), p) for p in args.topology] \
            or sizes_to_topologies(args.sizes, tmp)
        result = run(args, topologies)
        if earlier is not None:
            result["against"] = {"result": os.path.relpath(os.path.abspath(args.against), REPO),
                                 "predictions": predictions(result["runs"], earlier)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "memory", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "environment": bringup.machine(), "git": git_revision(REPO), **result},
                  fh, indent=1)
    print_tables(result["runs"], result["summary"], result["kernel_parts"],
                 result["assumptions"])
    if "against" in result:
        print_predictions(result["against"]["predictions"], result["against"]["result"])
    print(f"(written to {os.path.relpath(args.out, REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
