"""The kernel's floor for a topology's bring-up: the same namespaces, veths, addresses and routes
its plan has, built with plain `ip -batch` and `ovs-vsctl` (no testbed code), then torn down.

    sudo .venv/bin/python bench/floor.py TOPOLOGY [--mode nodeport|container-native]

The plan is read only to COUNT (and to take the pods' and hosts' addresses); every object is
made by `ip` or `ovs-vsctl`. What the floor builds, per the plan:

  namespaces  one per node, client, LB host and pod
  veths       per fabric host (node, client, LB host): eth0 in its namespace, the peer in the
              root namespace as a switch port; per subnet switch: one uplink pair between the
              bridges; per pod: eth0 in the pod's namespace, the peer in its node's namespace
  addresses   one per fabric host and per pod (inside their namespaces)
  routes      fabric hosts: a default route; pods: an on-link route to the gateway and a default
              route; nodes: a /32 per pod towards its veth (the container-native layout; the
              counts are the same in both modes)
  switches    as many OVS bridges as the plan has switches, on the datapath the testbed would
              use (kernel where the openvswitch module exists, else userspace), fail-mode secure
              and no controller, with every switch port added in one ovs-vsctl transaction.
              The fabric is part of the floor because it cannot be emulated without bridges
              and ports; its flows, the controller, offload settings, cni0 bridges, VXLAN,
              servers, kube-proxy and the LB are not: they are the testbed's own work.

It is fast the way a careful hand-written script is: namespaces and veths in one root batch
(veths are created straight into their namespaces, so the root namespace only ever holds the
switch-side ends), then one `ip -n NS -batch` per namespace, run from as many threads as
there are CPUs. Teardown deletes the bridges in one ovs-vsctl call, then the uplink pairs and
the namespaces in one batch (the namespaces' veths go with them), then waits, untimed, until
the kernel has removed the switch-side ends. No address or route is added to the root
namespace (the switch-side ends get `addrgenmode none`, so not even an IPv6 link-local), and
no traffic is sent.

Every name starts with `cnlbfloor`; only names it made are removed, on error and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

PREFIX = "cnlbfloor"
LINK_PREFIX = "cnlbfl"          # root-namespace interface names: at most 15 characters


@dataclass
class FloorSpec:
    """What to build, in counts and addresses: one fabric host or pod per entry."""
    hosts: list[tuple[str, str, int]]         # (address/prefix, gateway, switch index) per host
    pods: list[tuple[str, int]]               # (address/prefix, node index) per pod
    nodes: int                                # the first `nodes` hosts are the nodes
    switches: int                             # bridges; switch 0 is the core

    def counts(self) -> dict[str, int]:
        uplinks = self.switches - 1
        return {"namespaces": len(self.hosts) + len(self.pods),
                "veths": len(self.hosts) + len(self.pods) + uplinks,
                "addresses": len(self.hosts) + len(self.pods),
                "routes": len(self.hosts) + 3 * len(self.pods),
                "bridges": self.switches, "switch_ports": len(self.hosts) + 2 * uplinks}


@dataclass
class Made:
    """Names this run asked the kernel and OVS for (recorded before asking, so a half-built
    floor is still removed; removal checks what exists)."""
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)       # root-namespace interfaces
    uplinks: list[str] = field(default_factory=list)     # one end of each root-to-root pair
    bridges: list[str] = field(default_factory=list)


def spec_from_plan(topology: str, mode: str) -> FloorSpec:
    """Count the plan's objects (testbed code used for counting only, never for building)."""
    from testbed.plan.addresses import build_plan
    from testbed.spec.topology import load_topology

    plan = build_plan(load_topology(topology, mode=mode))
    switch = {s.name: i for i, s in enumerate(plan.switches)}
    hosts = sorted(plan.attachments, key=lambda a: a.kind != "node")   # nodes first
    node_index = {a.host: i for i, a in enumerate(hosts) if a.kind == "node"}
    return FloorSpec([(f"{a.ip}/{a.prefixlen}", a.gateway, switch[a.switch]) for a in hosts],
                     [(f"{p.ip}/{p.prefixlen}", node_index[p.node]) for p in plan.pods],
                     len(node_index), len(plan.switches))


def _ip_batch(lines: Iterable[str], netns: str | None = None, force: bool = False) -> None:
    """One `ip -batch` (in `netns` if given); `force` goes on past a failing line."""
    cmd = ["ip", "-n", netns, "-batch", "-"] if netns else ["ip", "-batch", "-"]
    if force:
        cmd.insert(1, "-force")
    done = subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def _vsctl(args: list[str]) -> None:
    done = subprocess.run(["ovs-vsctl", *args], text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"ovs-vsctl: {done.stderr.strip()}")


def _datapath() -> str:
    return "system" if os.path.isdir("/sys/module/openvswitch") else "netdev"


def build(spec: FloorSpec, made: Made) -> None:
    """Bring the floor up; every name goes into `made` before it is asked for."""
    host_ns = [f"{PREFIX}-h{i}" for i in range(len(spec.hosts))]
    pod_ns = [f"{PREFIX}-p{i}" for i in range(len(spec.pods))]
    made.namespaces += host_ns + pod_ns
    _ip_batch(f"netns add {ns}" for ns in host_ns + pod_ns)

    bridges = [f"{PREFIX}-br{i}" for i in range(spec.switches)]
    ports: dict[int, list[str]] = {i: [] for i in range(spec.switches)}
    root: list[str] = []
    for i, (_, _, sw) in enumerate(spec.hosts):
        root.append(f"{LINK_PREFIX}h{i}")
        ports[sw].append(root[-1])
    for sw in range(1, spec.switches):      # each subnet switch's uplink to the core
        up, core = f"{LINK_PREFIX}u{sw}", f"{LINK_PREFIX}c{sw}"
        root += [up, core]
        ports[sw].append(up)
        ports[0].append(core)
    made.links += root
    made.uplinks += [f"{LINK_PREFIX}u{sw}" for sw in range(1, spec.switches)]
    lines = [f"link add eth0 netns {host_ns[i]} type veth peer name {LINK_PREFIX}h{i}"
             for i in range(len(spec.hosts))]
    lines += [f"link add {LINK_PREFIX}u{sw} type veth peer name {LINK_PREFIX}c{sw}"
              for sw in range(1, spec.switches)]
    lines += [f"link add eth0 netns {pod_ns[i]} type veth peer name v{i} netns {host_ns[node]}"
              for i, (_, node) in enumerate(spec.pods)]
    lines += [f"link set {name} addrgenmode none" for name in root]
    lines += [f"link set {name} up" for name in root]
    _ip_batch(lines)

    made.bridges += bridges
    args: list[str] = []
    for i, br in enumerate(bridges):
        args += ["--", "add-br", br, "--", "set", "bridge", br, f"datapath_type={_datapath()}",
                 "fail_mode=secure"]
        for port in ports[i]:
            args += ["--", "add-port", br, port]
    _vsctl(args[1:])

    scripts: dict[str, list[str]] = {}
    for i, (addr, gateway, _) in enumerate(spec.hosts):
        scripts[host_ns[i]] = ["link set lo up", "link set eth0 up", f"addr add {addr} dev eth0",
                               f"route add default via {gateway}"]
    for i, (addr, node) in enumerate(spec.pods):
        scripts[pod_ns[i]] = ["link set lo up", "link set eth0 up", f"addr add {addr} dev eth0",
                              "route add 169.254.1.1 dev eth0 scope link",
                              "route add default via 169.254.1.1 dev eth0"]
        scripts[host_ns[node]] += [f"link set v{i} up",
                                   f"route add {addr.split('/')[0]}/32 dev v{i}"]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(lambda ns: _ip_batch(scripts[ns], netns=ns), scripts):
            pass


def _existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], text=True, capture_output=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _existing_links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], text=True, capture_output=True).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}


def teardown(made: Made) -> None:
    """Remove what `made` names and still exists; the timed part is the two deleting calls."""
    if made.bridges:
        args: list[str] = []
        for br in made.bridges:
            args += ["--", "--if-exists", "del-br", br]
        _vsctl(args[1:])
    existing = _existing_namespaces()
    namespaces = [ns for ns in made.namespaces if ns in existing]
    links = _existing_links()
    lines = [f"link delete {name}" for name in made.uplinks if name in links]
    lines += [f"netns delete {ns}" for ns in namespaces]
    if lines:
        _ip_batch(lines)


def wait_gone(made: Made, timeout: float = 60.0) -> None:
    """Namespaces die asynchronously; wait for the switch-side veth ends to go with them, and
    delete any of ours still there after the timeout (e.g. a pair whose namespace never came)."""
    mine = set(made.links)
    deadline = time.time() + timeout
    while mine & _existing_links() and time.time() < deadline:
        time.sleep(0.2)
    left = mine & _existing_links()
    if left:
        _ip_batch((f"link delete {name}" for name in sorted(left)), force=True)


def measure(spec: FloorSpec) -> dict[str, float]:
    """Build and tear down the floor once: {"up_s", "down_s"}; always leaves nothing behind."""
    made = Made()
    up = down = 0.0
    try:
        t0 = time.time()
        build(spec, made)
        up = time.time() - t0
    finally:
        t0 = time.time()
        try:
            teardown(made)
        finally:
            down = time.time() - t0
            wait_gone(made)
    return {"up_s": round(up, 3), "down_s": round(down, 3)}


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topology")
    ap.add_argument("--mode", default="container-native",
                    choices=["nodeport", "container-native"])
    args = ap.parse_args()
    spec = spec_from_plan(args.topology, args.mode)
    print(json.dumps({**spec.counts(), **measure(spec)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
