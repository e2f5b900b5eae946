"""The scaling experiment's sweeps: the sizes it reads (`services` with `endpoints`, `pods` with
`podsPerNode`) and the clusters its pods sweep builds.

read_sweeps: the sweep fields of an experiment file, every problem one line
scale_topology: the experiment's topology grown to n pods (pure): the measured service's
    deployment gets n replicas spread over node1..nodeK, K = max(ceil(n / podsPerNode), the
    topology's own node count), the nodes cycling over the topology's subnets
check_sizes: each size checked, in each variant's mode, as a user's topology would be, before
    anything is built: what the subnets, the node limit and the ENI slots cannot hold points at
    the size in the experiment file and says what to change
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from testbed.spec.checks import cross_checks
from testbed.spec.fields import Reader, integer
from testbed.spec.model import (
    MAX_NODES,
    MAX_PODS,
    NODE_HOST_OFFSET,
    POD_HOST_OFFSET,
    Node,
    Subnet,
    Topology,
)
from testbed.spec.model import pods_per_node as pods_on_nodes
from testbed.spec.yamldoc import Document

DEFAULT_PODS_PER_NODE = 20
MAX_SERVICES = 20_000            # synthetic services: a restore of 20,000 takes minutes on nft
MAX_ENI_SLOTS = 250              # vpc.maxPodsPerNode's range (testbed.spec.sections.read_vpc)


def read_sweeps(r: Reader) -> dict[str, Any]:
    """The sweeps of a scaling experiment as Experiment fields: services, endpoints, pods,
    pods_per_node. At least one of `services` and `pods` is required."""
    data = r.value(())
    if "services" not in data and "pods" not in data:
        r.problem((), "missing required field 'services' or 'pods'",
                  "add e.g. 'pods: [10, 100, 1000]' or 'services: [10, 100, 1000, 10000]'")
    services = _sizes(r, "services", "service", MAX_SERVICES, "[10, 100, 1000, 10000]")
    pods = _sizes(r, "pods", "pod", MAX_PODS, "[10, 100, 1000]")
    endpoints = r.get((), "endpoints", integer(1, 100), default=5,
                      fix="use 1-100 endpoints per service")
    per_node = r.get((), "podsPerNode", integer(1, MAX_ENI_SLOTS),
                     default=DEFAULT_PODS_PER_NODE,
                     fix=f"use 1-{MAX_ENI_SLOTS} pods per node (an m5.large has 29 ENI slots)")
    if "podsPerNode" in data and "pods" not in data:
        r.problem(("podsPerNode",), "podsPerNode sizes the clusters of the pods sweep, and there "
                  "is no 'pods' list", "add e.g. 'pods: [10, 100, 1000]' or remove podsPerNode")
    return {"services": services, "endpoints": endpoints or 5, "pods": pods,
            "pods_per_node": per_node or DEFAULT_PODS_PER_NODE}


def _sizes(r: Reader, key: str, noun: str, high: int, example: str) -> tuple[int, ...]:
    """A strictly increasing list of sizes 1..high (empty if absent or wrong)."""
    if key not in r.value(()):
        return ()
    counts = r.value((key,))
    if not isinstance(counts, list) or not counts:
        r.problem((key,), f"expected a list of {noun} counts", f"write e.g. '{key}: {example}'")
        return ()
    out: list[int] = []
    for i in range(len(counts)):
        n = r.get((key,), i, integer(1, high), fix=f"use 1-{high} {key}")
        if n is None:
            continue
        if out and n <= out[-1]:
            r.problem((key, i), f"{n} does not grow from the {out[-1]} before it",
                      f"list {noun} counts in increasing order, each once")
            continue
        out.append(n)
    return tuple(out)


# -- the scaled topology (pure) ---------------------------------------------------------------

def scaled_deployment(topo: Topology, service: str | None) -> str | None:
    """The deployment a pods sweep grows: the one the measured service selects, else the
    topology's first; None if it has none."""
    names = [d.name for d in topo.deployments]
    svc = next((s for s in topo.services if s.name == service), None)
    if svc is not None and svc.selector in names:
        return svc.selector
    return names[0] if names else None


def node_count(topo: Topology, pods: int, pods_per_node: int) -> int:
    """Nodes of the cluster scaled to `pods` pods: enough for podsPerNode each, and never fewer
    than the topology has (its smallest size keeps the topology's own shape)."""
    return max(len(topo.nodes), math.ceil(pods / pods_per_node))


def node_subnets(topo: Topology) -> tuple[Subnet, ...]:
    """The subnets the scaled cluster's nodes cycle over: all of the VPC's, in file order;
    with host-gw only the first node's (host-gw routes need every node in one subnet)."""
    if topo.cni.overlay == "host-gw" and topo.nodes:
        return (topo.subnet(topo.nodes[0].subnet),)
    return topo.vpc.subnets


def scale_topology(topo: Topology, pods: int, pods_per_node: int = DEFAULT_PODS_PER_NODE,
                   deployment: str | None = None) -> Topology:
    """The topology grown to `pods` pods of `deployment` (None: scaled_deployment's choice for
    no service, the first deployment).

    Nodes node1..nodeK replace the topology's (K = node_count), node k in subnet
    (k-1) mod the number of node_subnets; every deployment is spread over them (the grown one
    with `pods` replicas, the others keep theirs); vpc.maxPodsPerNode is raised to the most
    pods a node gets. Services, clients, the load balancer and the ranges are the topology's.
    The result is not checked: check_sizes does that. ValueError if there is no deployment."""
    name = deployment or scaled_deployment(topo, None)
    if name is None or name not in {d.name for d in topo.deployments}:
        raise ValueError(f"topology {topo.name} has no deployment {name or ''} to scale".strip())
    subnets = node_subnets(topo)
    count = node_count(topo, pods, pods_per_node)
    nodes = tuple(Node(f"node{k + 1}", subnets[k % len(subnets)].name) for k in range(count))
    deployments = tuple(replace(d, replicas=pods if d.name == name else d.replicas,
                                placement=()) for d in topo.deployments)
    grown = replace(topo, nodes=nodes, deployments=deployments, doc=None)
    most = max(pods_on_nodes(grown).values(), default=0)
    return replace(grown, vpc=replace(topo.vpc, max_pods_per_node=max(
        topo.vpc.max_pods_per_node, most)))


def subnet_prefix_for(pods: int) -> int:
    """The longest prefix whose subnet holds `pods` pod addresses (pods take the addresses
    from POD_HOST_OFFSET up to the one before broadcast)."""
    return 32 - math.ceil(math.log2(pods + POD_HOST_OFFSET + 1))


# -- checks against the topology --------------------------------------------------------------

def check_sizes(r: Reader, topo: Topology, pods: Sequence[int], pods_per_node: int,
                modes: Mapping[str, str], service: str | None) -> None:
    """Every size of the pods sweep, in every mode the variants use, checked as a user's topology
    is; problems go to r (the experiment file's reader) at the size's line.

    modes: mode -> the first variant that runs it (named in messages)
    service: the measured service (its deployment is the one grown)"""
    deployment = scaled_deployment(topo, service)
    for i, n in enumerate(pods):
        where = ("pods", i)
        if deployment is None:
            r.problem(where, f"topology {topo.file} has no deployment to grow to {n} pods",
                      "add a deployment behind the measured service to the topology")
            return
        found = _limits(topo, n, pods_per_node, deployment)
        for mode, variant in modes.items():
            if found:
                break
            found = _in_mode(topo, n, pods_per_node, deployment, mode, variant, r.doc.file)
        for what, fix in found:
            r.problem(where, what, fix)


Finding = tuple[str, str]        # (what is wrong, how to fix it)


def _limits(topo: Topology, n: int, per_node: int, deployment: str) -> list[Finding]:
    """The limits every mode shares: pods in all, nodes in all, nodes per subnet."""
    others = sum(d.replicas for d in topo.deployments if d.name != deployment)
    if n + others > MAX_PODS:
        return [(f"{n} pods and the topology's other {others} are more than the {MAX_PODS} "
                 "supported", f"use at most {MAX_PODS - others} pods")]
    count = node_count(topo, n, per_node)
    if count > MAX_NODES:
        return [(f"{n} pods at podsPerNode {per_node} need {count} nodes, more than the "
                 f"{MAX_NODES} supported",
                 f"raise podsPerNode to at least {math.ceil(n / MAX_NODES)}")]
    subnets = node_subnets(topo)
    for k, subnet in enumerate(subnets):
        room = max(min(POD_HOST_OFFSET, subnet.cidr.num_addresses - 1) - NODE_HOST_OFFSET, 0)
        held = len(range(k, count, len(subnets)))
        if held > room:
            need = math.ceil(n / (room * len(subnets))) if room else 0
            raise_it = f"raise podsPerNode to at least {need}" if 0 < need <= MAX_ENI_SLOTS \
                else "use fewer pods"
            more = ("host-gw keeps every node in one subnet: use overlay vxlan" if
                    topo.cni.overlay == "host-gw" else "add subnets to the topology")
            return [(f"{n} pods at podsPerNode {per_node} need {count} nodes, {held} of them in "
                     f"subnet '{subnet.name}' ({subnet.cidr}), which has room for {room}",
                     f"{raise_it}, or {more}")]
    return []


def _in_mode(topo: Topology, n: int, per_node: int, deployment: str, mode: str, variant: str,
             experiment_file: str) -> list[Finding]:
    """The scaled topology in one mode: container-native's pod addresses per subnet, then the
    topology's own whole-topology checks (names, ranges, capacity), as for a file."""
    grown = replace(scale_topology(topo, n, per_node, deployment), mode=mode)
    if mode == "container-native":
        on_node = pods_on_nodes(grown)
        most = max(on_node.values(), default=0)
        if most > MAX_ENI_SLOTS:
            return [(f"{most} pods on a node are more than the {MAX_ENI_SLOTS} ENI slots "
                     f"vpc.maxPodsPerNode allows (container-native mode, variant '{variant}')",
                     "lower podsPerNode or the other deployments' replicas")]
        for subnet in node_subnets(topo):
            held = sum(on_node.get(nd.name, 0) for nd in grown.nodes if nd.subnet == subnet.name)
            room = max(subnet.cidr.num_addresses - 1 - POD_HOST_OFFSET, 0)
            if held > room:
                return [(f"{n} pods put {held} pods in subnet '{subnet.name}' ({subnet.cidr}), "
                         f"which has {room} addresses for pods (container-native mode, variant "
                         f"'{variant}': pods take addresses of their node's subnet)",
                         f"make subnet '{subnet.name}' a /{subnet_prefix_for(held)} or larger, "
                         "add subnets to the topology, or use fewer pods")]
    checker = Reader(topo.doc or Document(topo.file, {}))
    cross_checks(checker, grown)
    return [(f"{p.what} (at {p.file}:{p.line}{' ' + p.path if p.path else ''}, grown to {n} "
             f"pods in mode {mode} for variant '{variant}' of {experiment_file})", p.fix)
            for p in checker.problems]
