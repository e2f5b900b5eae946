"""Checks that need the whole topology: names that would clash on the machine, address space,
capacity (ENI slots, pod ranges), VIPs and node ports — what the builders rely on.
"""

from __future__ import annotations

import ipaddress

from testbed.spec.fields import Reader
from testbed.spec.model import (
    DEFAULT_CLIENT,
    LB_CIDR,
    NODE_HOST_OFFSET,
    POD_HOST_OFFSET,
    POD_NAME_RE,
    VIP_RANGE,
    Topology,
    node_ports,
    placement,
    pods_per_node,
    service_vips,
)
from testbed.spec.sections import declared, written_path
from testbed.spec.yamldoc import Path


def cross_checks(r: Reader, topo: Topology) -> None:
    """Checks that need the whole topology: names, address space, capacity."""
    _name_clashes(r, topo)
    _address_space(r, topo)
    _bgp_routing(r, topo)
    if r.problems:
        return   # capacity below assumes ranges that make sense
    _capacity(r, topo)
    _vips(r, topo)
    _instance_targets_have_node_ports(r, topo)
    # auto-assigned node ports must fit the range
    try:
        node_ports(topo)
    except ValueError as exc:
        r.problem(("services",), str(exc),
                  "set some nodePorts by hand or use fewer NodePort services")


def _instance_targets_have_node_ports(r: Reader, topo: Topology) -> None:
    """Instance targets (mode nodeport) are every node's IP:NodePort, so a LoadBalancer service
    with allocateLoadBalancerNodePorts false needs a nodePort written on each port there."""
    if topo.mode != "nodeport":
        return
    for svc in topo.services:
        if svc.type == "LoadBalancer" and not svc.allocate_load_balancer_node_ports and \
                any(p.node_port is None for p in svc.all_ports):
            r.problem(("services", svc.name, "allocateLoadBalancerNodePorts"),
                      "false leaves ports without a nodePort, and in mode nodeport the load "
                      "balancer's instance targets are the nodes' node ports",
                      "run it in mode container-native (ip targets need no node ports), "
                      "write a nodePort on each port, or remove the field")


def _name_clashes(r: Reader, topo: Topology) -> None:
    """Nodes, clients and pods are all Mininet hosts: one name each. A node or client named like
    a pod (web-1 while deployment web exists) would clash now or when a pod is added at run time."""
    deployments = {d.name for d in topo.deployments}
    clients_written = bool(declared(r, "clients"))
    taken: dict[str, str] = {} if clients_written else {DEFAULT_CLIENT: "the default client"}
    for section, kind, items in (("nodes", "node", topo.nodes),
                                 ("clients", "client", topo.clients)):
        if section == "clients" and not clients_written:
            continue
        for item in items:
            path = (section, item.name)
            pod = POD_NAME_RE.fullmatch(item.name)
            if pod and pod.group("deployment") in deployments:
                dep = pod.group("deployment")
                r.problem(path, f"'{item.name}' is a pod name of deployment '{dep}' (its pods are "
                          f"{dep}-0, {dep}-1, ...)", f"rename the {kind}: nodes, clients and pods "
                          "are all hosts and need their own names")
            elif item.name in taken:
                r.problem(path, f"'{item.name}' is also the name of {taken[item.name]}",
                          f"rename the {kind}: nodes and clients are all hosts and need their own "
                          "names"
                          + ("" if clients_written else ", or list clients under 'clients:'"))
            taken.setdefault(item.name, f"a {kind}")


def _address_space(r: Reader, topo: Topology) -> None:
    """The pod, service and VPC ranges must not overlap; host-gw needs one L2 subnet."""
    cni, vpc = topo.cni, topo.vpc
    written = {key: r.has(("cni", key)) for key in ("podCIDR", "serviceCIDR", "nodePrefix")}
    defaults_hit = []
    for key, net, what in (("podCIDR", cni.pod_cidr, "pod CIDR"),
                           ("serviceCIDR", cni.service_cidr, "service CIDR")):
        if not net.overlaps(vpc.cidr):
            continue
        if written[key]:
            default = "" if r.has(("vpc", "cidr")) else ", the default"
            r.problem(("cni", key), f"{what} {net} overlaps the VPC ({vpc.cidr}{default})",
                      "choose a range outside the VPC, or move the VPC (vpc.cidr)")
        else:
            defaults_hit.append((key, what, net))
    if defaults_hit:
        # the file did not write these ranges: the problem is the VPC's, on its line
        clashes = " and ".join(f"the default {what} {net}" for _, what, net in defaults_hit)
        keys = " and ".join(f"cni.{key}" for key, _, _ in defaults_hit)
        r.problem(written_path(r, ("vpc", "cidr")), f"{vpc.cidr} overlaps {clashes}",
                  f"pick a vpc.cidr outside it (e.g. 192.168.0.0/16), or set {keys} to a "
                  "range outside the VPC")
    if cni.pod_cidr.overlaps(cni.service_cidr):
        if written["serviceCIDR"]:
            where, default = ("cni", "serviceCIDR"), "" if written["podCIDR"] else " (the default)"
            what = f"service CIDR {cni.service_cidr} overlaps pod CIDR {cni.pod_cidr}{default}"
        else:
            where = ("cni", "podCIDR")
            what = (f"pod CIDR {cni.pod_cidr} overlaps service CIDR {cni.service_cidr} "
                    "(the default)")
        r.problem(where, what, "use separate ranges (defaults: 10.244.0.0/16, 10.96.0.0/12)")
    if cni.node_prefix < cni.pod_cidr.prefixlen:
        if written["nodePrefix"]:
            r.problem(("cni", "nodePrefix"), f"/{cni.node_prefix} is wider than the pod CIDR "
                      f"{cni.pod_cidr}", "make nodePrefix longer than the pod CIDR's prefix")
        else:
            r.problem(("cni", "podCIDR"), f"{cni.pod_cidr} is smaller than one node's range "
                      f"(cni.nodePrefix, default /{cni.node_prefix})",
                      "widen podCIDR or set a longer cni.nodePrefix")
    if cni.overlay == "host-gw":
        used = [s.name for s in vpc.subnets if any(n.subnet == s.name for n in topo.nodes)]
        if len(used) > 1:
            r.problem(("cni", "overlay"), "host-gw routes each node's pod range via that node's "
                      f"address, which needs every node in one subnet (L2); nodes are in "
                      f"{', '.join(used)}", "use overlay: vxlan, or put every node in one subnet")


def _bgp_routing(r: Reader, topo: Topology) -> None:
    """cni.routing bgp: without fabricPeer the VPC routes no block (nodes must share a subnet,
    and the LB cannot send to pods); the fabric's BGP speaker is a host named bgp0."""
    if topo.cni.routing != "bgp":
        return
    path = ("cni", "bgp", "fabricPeer")
    if not topo.cni.bgp.fabric_peer:
        used = [s.name for s in topo.vpc.subnets if any(n.subnet == s.name for n in topo.nodes)]
        if len(used) > 1:
            r.problem(path, "without the fabric's peering a node reaches another node's blocks "
                      f"only in its own subnet; nodes are in {', '.join(used)}",
                      "set fabricPeer: true, or put every node in one subnet")
        if topo.mode == "container-native":
            r.problem(path, "container-native targets pods at addresses the VPC routes, and "
                      "without the fabric's peering it routes none", "set fabricPeer: true")
    for section, items in (("nodes", topo.nodes), ("clients", topo.clients)):
        for item in items:
            if item.name == "bgp0":
                r.problem((section, item.name), "bgp0 is the fabric's BGP speaker with "
                          "cni.routing bgp", "rename it")


def _capacity(r: Reader, topo: Topology) -> None:
    """Room for every node, pod and service in its range."""
    cni, vpc = topo.cni, topo.vpc
    node_cidrs = 2 ** (cni.node_prefix - cni.pod_cidr.prefixlen)
    if len(topo.nodes) >= node_cidrs:   # range 0 stays unused
        r.problem(next((("cni", k) for k in ("podCIDR", "nodePrefix") if r.has(("cni", k))),
                       ("nodes",)),
                  f"{cni.pod_cidr} split in /{cni.node_prefix} gives {node_cidrs - 1} node ranges "
                  f"for {len(topo.nodes)} nodes", "widen podCIDR or lengthen nodePrefix")
    services_room = cni.service_cidr.num_addresses - 20
    if len(topo.services) > services_room:
        r.problem(written_path(r, ("cni", "serviceCIDR")),
                  f"{len(topo.services)} services do not fit in {cni.service_cidr}",
                  "widen serviceCIDR")
    for subnet in vpc.subnets:
        in_subnet = [n for n in topo.nodes if n.subnet == subnet.name]
        room = max(min(POD_HOST_OFFSET, subnet.cidr.num_addresses - 1) - NODE_HOST_OFFSET, 0)
        if len(in_subnet) > room:
            r.problem(written_path(r, ("nodes", in_subnet[room].name, "subnet")),
                      f"subnet '{subnet.name}' ({subnet.cidr}) has room for {room} nodes, "
                      f"{len(in_subnet)} are in it",
                      "spread nodes over more subnets or use a larger subnet")
    per_node = pods_per_node(topo)
    pod_room = 2 ** (32 - cni.node_prefix) - 3   # network, cni0 gateway, broadcast
    if topo.mode == "container-native":
        limit, what, fix = vpc.max_pods_per_node, (
            f"exceed vpc.maxPodsPerNode={vpc.max_pods_per_node} (ENI address slots)"), \
            "lower the replicas on that node, add nodes, or raise vpc.maxPodsPerNode"
    else:
        limit, what, fix = pod_room, (
            f"do not fit its /{cni.node_prefix} pod range ({pod_room} addresses)"), \
            "lower the replicas on that node, add nodes, or shorten cni.nodePrefix"
    # one line per deployment line, naming the first node
    over: dict[Path, list[tuple[str, int]]] = {}
    pods_in_subnet: dict[str, int] = {}
    for node in topo.nodes:
        count = per_node.get(node.name, 0)
        pods_in_subnet[node.subnet] = pods_in_subnet.get(node.subnet, 0) + count
        if count > limit:
            over.setdefault(_pods_path(r, topo, node.name, limit), []).append((node.name, count))
    for where, nodes in over.items():
        (first, count), more = nodes[0], len(nodes) - 1
        also = f" (and {more} more node{'s' if more > 1 else ''})" if more else ""
        r.problem(where, f"{count} pods on node '{first}'{also} {what}", fix)
    if topo.mode == "container-native":
        for subnet in vpc.subnets:
            room = max(subnet.cidr.num_addresses - 1 - POD_HOST_OFFSET, 0)
            if pods_in_subnet.get(subnet.name, 0) > room:
                where = ("vpc", "subnets", subnet.name)   # or the VPC's, for the default one
                r.problem(where if r.has(where) else written_path(r, ("vpc", "cidr")),
                          f"{pods_in_subnet[subnet.name]} pods need VPC addresses but subnet "
                          f"'{subnet.name}' ({subnet.cidr}) has {room} free",
                          "use a larger subnet or spread nodes over more subnets")


def _pods_path(r: Reader, topo: Topology, node: str, limit: int) -> Path:
    """The deployment whose pods push a node past its limit: its placement entry for the node,
    or its replicas (spread)."""
    count = 0
    for d in topo.deployments:
        count += sum(1 for n in placement(topo, d) if n == node)
        if count > limit:
            placed = any(n == node for n, _ in d.placement)
            where: Path = ("placement", node) if placed else ("replicas",)
            return written_path(r, ("deployments", d.name) + where)
    return ("nodes", node)


def _vips(r: Reader, topo: Topology) -> None:
    """Every LoadBalancer service's VIP: inside the range, and its own."""
    lb_services = [s for s in topo.services if s.type == "LoadBalancer"]
    if len(lb_services) > 200:
        r.problem(("services",), f"{len(lb_services)} LoadBalancer services exceed the 200 VIPs "
                  f"of {LB_CIDR}", "make most services ClusterIP or NodePort")
        return
    vips: dict[ipaddress.IPv4Address, str] = {}
    for svc, vip in zip(lb_services, service_vips(topo), strict=True):   # one VIP per service
        if svc.load_balancer_ip is None and not VIP_RANGE[0] <= vip <= VIP_RANGE[1]:
            r.problem(("services", svc.name), f"no VIP left: the next one after "
                      f"loadBalancer.vip {topo.load_balancer.vip} would be {vip}, past "
                      f"{VIP_RANGE[1]}", "give the service a loadBalancerIP, or lower "
                      "loadBalancer.vip")
            return
        if vip in vips:
            r.problem(("services", svc.name, "loadBalancerIP"), f"VIP {vip} is also used by "
                      f"service '{vips[vip]}'", "give each LoadBalancer service its own "
                      "loadBalancerIP")
        vips[vip] = svc.name
