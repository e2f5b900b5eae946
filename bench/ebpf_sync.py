#!/usr/bin/env python3
"""How long the eBPF kube-proxy's syncs take (root): the full first sync and a one-endpoint
change, at 1,000 and 10,000 services × 5 endpoints, beside bench/kubeproxy_sync.py's iptables
and nftables figures (the same synthetic services, the same change).

The proxier's own code does the work: testbed.kubernetes.dataplane.ebpf.proxier.EbpfKubeProxy
on a stand-in cluster that gives it a state directory and no nodes. Its _load() mounts a bpffs
of its own, loads build/bpf/lb.o with `bpftool prog loadall ... pinmaps` and pins programs and
maps there; apply_text() encodes the map entries (maps.encode) and writes them through one
`bpftool batch file -`. BPF maps belong to no network namespace and the programs are loaded,
not attached, so nothing here sends or filters a packet; the node's sysctls (the stand-in's
`sh`) are not run.

Nothing outlives the benchmark: it re-executes itself in a private mount namespace
(`unshare --mount`), so the bpffs is visible to this process only and goes with it even if
it is killed (its pins are the maps' and programs' last references); on a normal end or
SIGTERM it is also unmounted and its directory (cnlb-bench-ebpf-<pid> under the temporary
directory) removed.

For each algorithm (random: Cilium's default and the testbed's; maglev: a table of M = 1021
slots per frontend) and size:

- full first sync: a fresh node's programs and maps loaded (timed apart: `load`), then every
  entry rendered (maps.render) and written (apply_text: encode + bpftool batch); median of 3,
  each into freshly loaded (empty) maps;
- one-endpoint change: one endpoint of one service replaced (a different service each rep),
  rendered with maps.render_partial and written the same way; median of 5;
- checks: after a full sync the maps hold as many entries as the text has lines per map;
  after the changes, every entry of the three maps userspace writes (cnlb_services,
  cnlb_backends, cnlb_maglev; raw bytes from `bpftool -j map dump`) equals a full sync of the
  final services into fresh maps. Before that, the small example's partial transitions
  (bench/kubeproxy_sync.py's) are checked the same way, for both algorithms.

A size whose frontends do not fit a map (cnlb_maglev's max_entries, read from the loaded map) is
reported as not loadable instead of failing half way.

Writes bench/results/kubeproxy_sync_ebpf.json and prints a Markdown table.

    sudo .venv/bin/python bench/ebpf_sync.py [--sizes 1000 10000] [--reps 3] [--change-reps 5]
        [--algorithms random maglev]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import kubeproxy_sync as ks  # noqa: E402  (the synthetic services, the change, the example)

from testbed.kubernetes.dataplane.ebpf import maps  # noqa: E402
from testbed.kubernetes.dataplane.ebpf.proxier import BPF_OBJECT, EbpfKubeProxy  # noqa: E402
from testbed.kubernetes.dataplane.model import ServicePort  # noqa: E402

OUT = ROOT / "bench" / "results" / "kubeproxy_sync_ebpf.json"
USERSPACE_MAPS = ("cnlb_services", "cnlb_backends", "cnlb_maglev")
IN_NAMESPACE = "CNLB_BENCH_EBPF_MNTNS"   # set once re-executed under unshare --mount
NODE = ks.NODE


# --- the proxier on a stand-in cluster ------------------------------------------------------------


class _State:
    def __init__(self, root: str):
        self.root = root

    def file(self, name: str) -> str:
        return os.path.join(self.root, name)


class BenchCluster:
    """What EbpfKubeProxy's loading and writing read of a cluster: a state directory (where it
    mounts its bpffs) and a shell on the node (its sysctls: not run, no node exists)."""

    journal = None
    topo = None

    def __init__(self, root: str):
        self.state = _State(root)

    def sh(self, node: str, script: str, **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(["sh"], 0, "", "")


def map_dump(proxier: EbpfKubeProxy, node: str, name: str) -> set[tuple[str, ...]]:
    """A pinned map's entries as raw key + value bytes (hex), comparable across loads."""
    path = os.path.join(proxier.pin_dir(node), "maps", name)
    proc = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path], capture_output=True,
                          text=True, check=True)
    return {(" ".join(e["key"]), " ".join(e["value"])) for e in json.loads(proc.stdout)}


def map_state(proxier: EbpfKubeProxy, node: str) -> dict[str, set[tuple[str, ...]]]:
    return {name: map_dump(proxier, node, name) for name in USERSPACE_MAPS}


def map_show(proxier: EbpfKubeProxy, node: str, name: str) -> dict[str, Any]:
    """`bpftool map show` of a pinned map: its max_entries, bytes_memlock, flags."""
    path = os.path.join(proxier.pin_dir(node), "maps", name)
    proc = subprocess.run(["bpftool", "-j", "map", "show", "pinned", path], capture_output=True,
                          text=True, check=True)
    shown: dict[str, Any] = json.loads(proc.stdout)
    return shown


def unload(proxier: EbpfKubeProxy, node: str) -> None:
    """Unpin the node's programs and maps (their last references: the kernel frees them)."""
    shutil.rmtree(proxier.pin_dir(node), ignore_errors=True)


def load_whole(proxier: EbpfKubeProxy, node: str, services: list[ServicePort]) -> None:
    proxier.apply_text(node, maps.render(services, NODE, proxier.options))


# --- measurements ---------------------------------------------------------------------------------


def timed_sync(proxier: EbpfKubeProxy, node: str, render, label: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    text = render()
    t1 = time.perf_counter()
    proxier.apply_text(node, text)
    t2 = time.perf_counter()
    counts = maps.summary(text)
    print(f"  {label}: render {t1 - t0:.3f} s + apply {t2 - t1:.3f} s "
          f"({sum(counts.values())} entries)", flush=True)
    return {"render_s": t1 - t0, "apply_s": t2 - t1, "total_s": t2 - t0,
            "entries": sum(counts.values()), "entries_per_map": counts,
            "text_bytes": len(text.encode())}


def collect(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [s[k] for s in samples] for k in samples[0]}


def bench_size(proxier: EbpfKubeProxy, n: int, reps: int, change_reps: int) -> dict[str, Any]:
    algorithm = proxier.options.algorithm
    services = ks.synthetic(n)
    frontends = len(maps.frontends(services, NODE))
    record: dict[str, Any] = {"backend": f"ebpf-{algorithm}", "algorithm": algorithm,
                              "maglev_m": proxier.options.maglev_m if algorithm == "maglev"
                              else None,
                              "services": n, "endpoints_per_service": 5,
                              "frontends": frontends, "repetitions": reps,
                              "change_repetitions": change_reps}
    probe = f"{algorithm}-{n}-probe"
    proxier._load(probe)
    shown = {m: map_show(proxier, probe, m) for m in os.listdir(
        os.path.join(proxier.pin_dir(probe), "maps"))}
    unload(proxier, probe)
    room = {m: int(shown[m]["max_entries"]) for m in USERSPACE_MAPS}
    record["max_entries"] = room
    # bpftool's estimate for the freshly loaded, empty maps: the programs' LRU maps are
    # preallocated; the three userspace writes are not (BPF_F_NO_PREALLOC), they grow per entry
    record["bytes_memlock"] = {m: shown[m].get("bytes_memlock") for m in sorted(shown)}
    needed = {"cnlb_services": frontends, "cnlb_backends": frontends * 5,
              "cnlb_maglev": frontends if algorithm == "maglev" else 0}
    too_big = [m for m in USERSPACE_MAPS if needed[m] > room[m]]
    if too_big:
        record["not_loadable"] = "; ".join(
            f"{m} holds {room[m]:,} entries, {needed[m]:,} needed" for m in too_big)
        print(f"  not loadable: {record['not_loadable']}", flush=True)
        return record

    full, loads, checks = [], [], []
    node = ""
    for rep in range(reps):
        if node:
            unload(proxier, node)
        node = f"{algorithm}-{n}-{rep}"
        t0 = time.perf_counter()
        proxier._load(node)
        loads.append(time.perf_counter() - t0)
        sample = timed_sync(proxier, node,
                            functools.partial(maps.render, services, NODE, proxier.options),
                            f"full sync {rep + 1}/{reps}")
        full.append(sample)
        state = map_state(proxier, node)
        checks.append(all(len(state[m]) == sample["entries_per_map"].get(m, 0)
                          for m in USERSPACE_MAPS))

    partial, current = [], services
    for rep in range(change_reps):
        new = ks.change_one_endpoint(current, rep)
        partial.append(timed_sync(
            proxier, node, functools.partial(maps.render_partial, current, new, NODE,
                                             proxier.options),
            f"one-endpoint change {rep + 1}/{change_reps}"))
        current = new
    after_partial = map_state(proxier, node)
    unload(proxier, node)
    fresh = f"{algorithm}-{n}-fresh"
    load_whole(proxier, fresh, current)
    equal = after_partial == map_state(proxier, fresh)
    unload(proxier, fresh)
    record.update({
        "load_s": loads,
        "full_sync_empty_maps": collect(full),
        "one_endpoint_change": collect(partial),
        "entry_counts_verified": all(checks),
        "partial_state_equals_full": equal,
    })
    return record


def check_transitions(proxier: EbpfKubeProxy) -> dict[str, bool]:
    """The small example's partial syncs on the real maps, each compared with a full sync."""
    web, api, empty = ks.small_example()
    first = [web, api, empty]
    steps = {
        "one endpoint moved": [ks.replace(web, endpoints=web.endpoints[:2] + (
            ks.Endpoint("10.244.1.9", 8080, "node1"),)), api, empty],
        "local endpoint gone": [web, ks.replace(api, endpoints=api.endpoints[::2]), empty],
        "policy flipped": [ks.replace(web, external_traffic_policy="Local"),
                           ks.replace(api, external_traffic_policy="Cluster"), empty],
        "service removed": [api, empty],
        "endpoints for the empty one": [web, api, ks.replace(empty, endpoints=(
            ks.Endpoint("10.244.1.5", 53, "node1"),))],
    }
    results = {}
    for i, (name, new) in enumerate(steps.items()):
        node, fresh = f"example-{i}", f"example-{i}-fresh"
        load_whole(proxier, node, first)
        text = maps.render_partial(first, new, NODE, proxier.options)
        if text:
            proxier.apply_text(node, text)
        load_whole(proxier, fresh, new)
        results[name] = map_state(proxier, node) == map_state(proxier, fresh)
        unload(proxier, node)
        unload(proxier, fresh)
    return results


# --- report ---------------------------------------------------------------------------------------


def metadata() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "testbed", "bpf", "bench"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "bpftool": subprocess.run(["bpftool", "version"], capture_output=True,
                                  text=True).stdout.splitlines()[0],
        "git_commit": commit,
        "uncommitted_changes": dirty.splitlines(),
        "bpf_object": os.path.relpath(BPF_OBJECT, ROOT),
        "load_average_at_start": os.getloadavg(),   # a shared machine: how busy it was
    }


def _cell(d: dict[str, list[Any]]) -> str:
    med = statistics.median
    return f"{med(d['total_s']):.3f} s ({med(d['render_s']):.3f} + {med(d['apply_s']):.3f})"


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| data plane | services × endpoints | map entries (frontends) | load programs + maps "
        "| full first sync (render + write) | one-endpoint change (render + write) "
        "| entries written by a change | checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = f"{r['services']:,} × {r['endpoints_per_service']}"
        if "not_loadable" in r:
            rows.append(f"| {r['backend']} | {size} | ({r['frontends']:,}) | | not loadable: "
                        f"{r['not_loadable']} | | | |")
            continue
        ok = r["entry_counts_verified"] and r["partial_state_equals_full"]
        full, change = r["full_sync_empty_maps"], r["one_endpoint_change"]
        rows.append(
            f"| {r['backend']} | {size} | {full['entries'][0]:,} ({r['frontends']:,}) "
            f"| {statistics.median(r['load_s']):.3f} s | {_cell(full)} | {_cell(change)} "
            f"| {min(change['entries'])}-{max(change['entries'])} | {'ok' if ok else 'FAILED'} |")
    return "\n".join(rows)


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def in_private_mounts() -> None:
    """Re-execute under `unshare --mount` (private propagation): the bpffs this process mounts
    is seen by nobody else and cannot outlive it."""
    if os.environ.get(IN_NAMESPACE) == str(os.getpid()):   # unshare execs: the pid stays
        return
    env = {**os.environ, IN_NAMESPACE: str(os.getpid())}
    # util-linux's unshare makes the new namespace's mounts private by default
    argv = ["unshare", "--mount", "--", sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    os.execvpe("unshare", argv, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--reps", type=int, default=3, help="full syncs per size")
    parser.add_argument("--change-reps", type=int, default=5,
                        help="one-endpoint changes per size (cheap: more of them)")
    parser.add_argument("--algorithms", nargs="+", default=list(maps.ALGORITHMS),
                        choices=maps.ALGORITHMS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("ebpf_sync: needs root (it loads BPF programs and maps)", file=sys.stderr)
        return 3
    missing = EbpfKubeProxy.unavailable()
    if missing:
        print(f"ebpf_sync: {missing}", file=sys.stderr)
        return 3
    in_private_mounts()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = tempfile.mkdtemp(prefix=f"cnlb-bench-ebpf-{os.getpid()}-")
    proxiers: list[EbpfKubeProxy] = []
    try:
        record: dict[str, Any] = {"benchmark": "kubeproxy_sync_ebpf", "schema": 1, **metadata(),
                                  "repetitions": args.reps,
                                  "change_repetitions": args.change_reps, "node": {
                                      "name": NODE.node_name, "ip": NODE.node_ip,
                                      "cluster_cidr": NODE.cluster_cidr},
                                  "complete": False}
        correctness, results = {}, []
        record["transitions_equal_full"], record["results"] = correctness, results
        for algorithm in args.algorithms:
            proxier = EbpfKubeProxy(BenchCluster(root), min_sync_period_s=1.0,
                                    options=maps.Options(algorithm))
            proxier.bpffs = proxiers[0].bpffs if proxiers else None   # one bpffs for all
            proxiers.append(proxier)
            correctness[algorithm] = check_transitions(proxier)
            print(f"{algorithm}: partial-sync transitions equal to full syncs: "
                  f"{json.dumps(correctness[algorithm])}", flush=True)
            for n in args.sizes:
                print(f"ebpf-{algorithm} {n}x5 ...", flush=True)
                results.append(bench_size(proxier, n, args.reps, args.change_reps))
                write_record(args.out, record)   # kept even if a later size is interrupted
        record["complete"] = True
        record["load_average_at_end"] = os.getloadavg()
        write_record(args.out, record)
    finally:
        bpffs = next((p.bpffs for p in proxiers if p.bpffs), None)
        if bpffs:
            subprocess.run(["umount", bpffs], check=False)
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"kernel {record['kernel']}, {record['bpftool']}, {record['cpus']} CPUs, "
          f"{record['date']}; medians of {args.reps} full syncs, {args.change_reps} changes")
    print()
    print(table(results))
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    ok = all(r.get("entry_counts_verified", True) and r.get("partial_state_equals_full", True)
             for r in results)
    ok = ok and all(all(v.values()) for v in correctness.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
