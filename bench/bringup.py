"""Bring-up and teardown time of a topology, both modes, as ratios to the kernel's floor measured
in the same run (a benchmark, not a test).

    sudo .venv/bin/python bench/bringup.py [TOPOLOGY ...] [--repeat N] [--out FILE]

For each topology and mode, N times each, back to back: the floor (bench/floor.py: the plan's
namespaces, veths, addresses, routes and bridges with plain `ip -batch` and `ovs-vsctl`), then
the testbed (`Cluster`, with its stage timings: hosts, fabric, addresses, controller, switches,
workloads, total, stop). Prints two Markdown tables (medians: up and down beside the floor and
their ratios; each stage's seconds and share of the testbed's up time) and writes every run,
the summary, the machine's description and the git revision to bench/results/bringup.json.
Absolute seconds alone do not compare between machines; the ratios are the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

import floor  # noqa: E402

from testbed.analysis.records import git_revision  # noqa: E402
from testbed.emulation.cluster import Cluster  # noqa: E402
from testbed.experiments.runner import environment  # noqa: E402
from testbed.spec.topology import load_topology  # noqa: E402

MODES = ("nodeport", "container-native")
STAGES = ("hosts", "fabric", "addresses", "pods", "controller", "switches", "workloads")
WORKLOADS = ("kube-proxy", "lb targets")   # inside workloads: first sync, LB serving from all


def machine() -> dict[str, Any]:
    """environment() plus what it leaves out: the CPU model and the memory."""
    env = environment()
    with open("/proc/cpuinfo") as fh:
        models = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    with open("/proc/meminfo") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    return {"cpu_model": models[0] if models else os.uname().machine,
            "memory_gib": round(kib / 2**20, 1), **env}


def run_testbed(path: str, mode: str) -> tuple[dict[str, Any], dict[str, float]]:
    topo = load_topology(path, mode=mode)
    cluster = Cluster(topo)
    t0 = time.time()
    with cluster:
        pass
    size = {"nodes": len(cluster.plan.nodes), "pods": len(cluster.plan.pods)}
    return size, {"wall_s": round(time.time() - t0, 3), **cluster.timings}


def summarize(runs: list[dict[str, Any]], topo: str, mode: str) -> dict[str, Any]:
    """Medians of one topology and mode, the testbed/floor ratios and each stage's share."""
    mine = [r for r in runs if r["topology"] == topo and r["mode"] == mode]
    fl = [r for r in mine if r["kind"] == "floor"]
    tb = [r for r in mine if r["kind"] == "testbed"]

    def med(rs: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(r.get(key, 0.0) for r in rs), 3)

    up, down = med(tb, "total_s"), med(tb, "stop_s")
    floor_up, floor_down = med(fl, "up_s"), med(fl, "down_s")
    stages = {s: med(tb, f"{s}_s") for s in STAGES + WORKLOADS}
    return {"topology": topo, "mode": mode, "nodes": tb[0]["nodes"], "pods": tb[0]["pods"],
            "repeats": len(tb), "floor_counts": fl[0]["counts"],
            "floor_up_s": floor_up, "floor_down_s": floor_down, "up_s": up, "down_s": down,
            "up_ratio": round(up / floor_up, 2), "down_ratio": round(down / floor_down, 2),
            "stages_s": stages,
            "stage_share": {s: round(v / up, 3) if up else 0.0 for s, v in stages.items()}}


def print_tables(summary: list[dict[str, Any]]) -> None:
    print("| topology | mode | nodes | pods | floor up (s) | up (s) | up / floor "
          "| floor down (s) | down (s) | down / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['topology']} | {s['mode']} | {s['nodes']} | {s['pods']} "
              f"| {s['floor_up_s']:.2f} | {s['up_s']:.2f} | **{s['up_ratio']:.1f}×** "
              f"| {s['floor_down_s']:.2f} | {s['down_s']:.2f} | **{s['down_ratio']:.1f}×** |")
    print()
    print("| topology | mode | " + " | ".join(STAGES) + " |")
    print("|---|---|" + "---|" * len(STAGES))
    for s in summary:
        cells = [f"{s['stages_s'][k]:.2f} ({s['stage_share'][k]:.0%})" for k in STAGES]
        print(f"| {s['topology']} | {s['mode']} | " + " | ".join(cells) + " |")
    print()
    for s in summary:
        inside = ", ".join(f"{k} {s['stages_s'][k]:.2f} s" for k in WORKLOADS)
        print(f"{s['topology']} {s['mode']}: workloads = {inside}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topologies", nargs="*",
                    default=[os.path.join(REPO, "topologies", "large.yaml")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "bringup.json"))
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    keys: list[tuple[str, str]] = []
    for path in args.topologies:
        name = os.path.relpath(os.path.abspath(path), REPO)
        for mode in MODES:
            keys.append((name, mode))
            spec = floor.spec_from_plan(path, mode)
            for i in range(args.repeat):
                base = {"topology": name, "mode": mode, "repeat": i}
                fl = floor.measure(spec)
                runs.append({**base, "kind": "floor", "counts": spec.counts(), **fl})
                size, timings = run_testbed(path, mode)
                runs.append({**base, "kind": "testbed", **size, **timings})
                print(f"{name} {mode} #{i}: floor up {fl['up_s']:.2f}s down {fl['down_s']:.2f}s; "
                      f"testbed up {timings['total_s']:.2f}s down {timings['stop_s']:.2f}s",
                      file=sys.stderr, flush=True)
    summary = [summarize(runs, topo, mode) for topo, mode in keys]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "bringup", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "environment": machine(), "git": git_revision(REPO),
                   "floor": "bench/floor.py (see its docstring for what it builds)",
                   "summary": summary, "runs": runs}, fh, indent=1)
    print_tables(summary)
    print(f"(written to {os.path.relpath(args.out, REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
