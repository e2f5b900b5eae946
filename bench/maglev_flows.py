"""Real flows through a cluster: the share that change pod when one of N pods is removed, with
the eBPF kube-proxy's Maglev against its random selection (root; one cluster; ~1 min).

client1 opens one connection per source port to node1's NodePort (policy Cluster), notes the
pod that answers, a pod is removed (instant: endpoints first), node1's connection-tracking map
is emptied (so each tuple is balanced afresh, not kept by cnlb_ct), and the same source ports
connect again (the client's namespace keeps no TIME_WAIT sockets, tcp_max_tw_buckets=0). A
flow "moved" when another pod answers. bench/maglev_disruption.py computes the same from the
tables alone.

    sudo .venv/bin/python bench/maglev_flows.py [--flows 200]   # one cluster at a time

Writes bench/results/maglev_flows.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from testbed.emulation.cluster import Cluster  # noqa: E402
from testbed.kubernetes.dataplane.ebpf import maps  # noqa: E402
from testbed.paths import REPO  # noqa: E402
from testbed.spec.topology import load_topology  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TOPOLOGY = os.path.join(REPO, "tests", "data", "services.yaml")
FIRST_PORT = 20000


def pods_by_port(c: Cluster, url: str, ports: range) -> dict[int, str]:
    """One connection per source port; the pod that answered each (missing: no answer)."""
    script = "".join(f"echo {p} $(curl -s -m 2 --local-port {p} {url})\n" for p in ports)
    out = c.sh("client1", script, timeout=len(ports) * 3 + 10).stdout
    got = {}
    for line in out.splitlines():
        port, _, body = line.partition(" ")
        if body.startswith("{"):
            got[int(port)] = json.loads(body)["pod"]
    return got


def flush_ct(c: Cluster, node: str) -> None:
    """Empty the node's cnlb_ct, cnlb_revnat and cnlb_affinity (bpftool: dump, delete)."""
    kp = c.kube_proxy
    assert kp is not None
    lines = []
    for name in ("cnlb_ct", "cnlb_revnat", "cnlb_affinity"):
        path = os.path.join(kp.pin_dir(node), "maps", name)  # type: ignore[attr-defined]
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path],
                              capture_output=True, text=True, check=True).stdout
        for e in json.loads(dump):
            key = " ".join(b.replace("0x", "") for b in e["key"])
            lines.append(f"map delete pinned {path} key hex {key}\n")
    if lines:
        subprocess.run(["bpftool", "batch", "file", "-"], input="".join(lines), text=True,
                       capture_output=True, check=True)


def run(algorithm: str, flows: int, m: int) -> dict:
    topo = load_topology(TOPOLOGY, mode="nodeport")
    with Cluster(topo, proxy_mode="ebpf") as c:
        kp = c.kube_proxy
        assert kp is not None
        kp.options = maps.Options(algorithm, m)   # type: ignore[attr-defined]
        kp.sync_all()
        url = f"http://{c.plan.node('node1').ip}:30080/"
        # no TIME_WAIT in the client's namespace: the same source ports connect again
        c.sh("client1", "sysctl -qw net.ipv4.tcp_max_tw_buckets=0")
        ports = range(FIRST_PORT, FIRST_PORT + flows)
        before = pods_by_port(c, url, ports)
        pods = sorted(set(before.values()))
        gone = pods[1]
        c.remove_pod(gone, instant=True)
        kp.wait_synced()
        flush_ct(c, "node1")
        time.sleep(0.5)
        after = pods_by_port(c, url, ports)
    both = [p for p in ports if p in before and p in after]
    moved = [p for p in both if before[p] != after[p]]
    of_gone = [p for p in both if before[p] == gone]
    return {"algorithm": algorithm, "m": m if algorithm == "maglev" else 0, "n": len(pods),
            "flows": len(both), "answered_before": len(before), "answered_after": len(after),
            "removed": gone, "moved": len(moved), "moved_share": len(moved) / max(len(both), 1),
            "removed_share": len(of_gone) / max(len(both), 1),
            "others_moved": len([p for p in moved if before[p] != gone])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=200)
    ap.add_argument("--m", type=int, default=1021)
    ap.add_argument("--out", default=os.path.join(RESULTS, "maglev_flows.json"))
    args = ap.parse_args(argv)
    rows = [run(a, args.flows, args.m) for a in ("maglev", "random")]
    for r in rows:
        print(f"{r['algorithm']:>7}: N={r['n']} flows={r['flows']} removed {r['removed']} "
              f"(held {r['removed_share']:.3f}); moved {r['moved_share']:.3f}, "
              f"of others {r['others_moved']}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"kind": "maglev_flows", "rows": rows, "time": time.time()}, fh, indent=1)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
