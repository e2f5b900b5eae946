"""Bring-up and teardown time of a topology, both modes (a benchmark, not a test).

    sudo .venv/bin/python bench/bringup.py [TOPOLOGY ...] [--repeat N]

Builds each topology in nodeport and container-native mode, N times each, and writes the
stage timings (hosts, fabric, addresses, controller, switches, workloads, total, stop) to
bench/results/bringup.json, with the machine's description; prints a Markdown table.
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from testbed.analysis.records import git_revision  # noqa: E402
from testbed.emulation.cluster import Cluster  # noqa: E402
from testbed.experiments.runner import environment  # noqa: E402
from testbed.spec.topology import load_topology  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topologies", nargs="*", default=[os.path.join(REPO, "topologies", "large.yaml")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "bringup.json"))
    args = ap.parse_args()
    runs = []
    for path in args.topologies:
        for mode in ("nodeport", "container-native"):
            for i in range(args.repeat):
                topo = load_topology(path, mode=mode)
                cluster = Cluster(topo)
                t0 = time.time()
                with cluster:
                    pass
                wall = time.time() - t0
                row = {"topology": os.path.relpath(path, REPO), "mode": mode, "repeat": i,
                       "nodes": len(cluster.plan.nodes), "pods": len(cluster.plan.pods),
                       "wall_s": round(wall, 3), **cluster.timings}
                runs.append(row)
                print(f"{row['topology']} {mode} #{i}: up {row['total_s']:.2f}s, down {row['stop_s']:.2f}s",
                      file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "bringup", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "environment": environment(), "git": git_revision(REPO), "runs": runs}, fh, indent=1)
    print("| topology | mode | nodes | pods | up (median s) | down (median s) | hosts | fabric | addresses | switches+controller | workloads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["topology"], r["mode"]) for r in runs}, key=lambda k: (k[0], k[1] != "nodeport"))
    for topo, mode in keys:
        rs = [r for r in runs if r["topology"] == topo and r["mode"] == mode]
        med = lambda k: statistics.median(r.get(k, 0) for r in rs)  # noqa: E731
        print(f"| {topo} | {mode} | {rs[0]['nodes']} | {rs[0]['pods']} | {med('total_s'):.2f} | {med('stop_s'):.2f} | "
              f"{med('hosts_s'):.2f} | {med('fabric_s'):.2f} | {med('addresses_s'):.2f} | "
              f"{med('controller_s') + med('switches_s'):.2f} | {med('workloads_s'):.2f} |")
    print(f"(written to {os.path.relpath(args.out, REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
