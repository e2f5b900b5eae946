"""Changing one Service of a running cluster's plan (pure): create or update it, or delete it,
keeping what the API server keeps and allocating only what is new — the part of `cnlb service
apply | set | delete` that needs no cluster.

As upstream's Service REST storage does on an update:
- the ClusterIP stays;
- node ports the new spec leaves unset are the old ones of the same (port, protocol) when both
  the old and the new type have node ports (patchAllocatedValues): ClusterIP → NodePort →
  LoadBalancer keeps each nodePort; to ClusterIP releases them;
- the healthCheckNodePort stays while the service stays LoadBalancer with Local policy;
- the VIP stays while the service stays LoadBalancer (a new loadBalancerIP moves it);
- delete releases the ClusterIP, the node ports and the VIP.
Whatever is new is taken lowest-free (upstream picks at random), so the result is repeatable.
Other services keep every address and port they have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from testbed.errors import InputError, Problem
from testbed.plan.addresses import (
    SERVICE_IP_OFFSET,
    LbPlan,
    Plan,
    PortPlan,
    ServicePlan,
    lb_backends,
    lb_health_port,
    listeners,
)
from testbed.spec.model import (
    NODEPORT_RANGE,
    VIP_RANGE,
    Service,
    ServicePortSpec,
    Topology,
    port_node_ports,
)


def taken_node_ports(plan: Plan, but: str | None = None) -> dict[int, str]:
    """Node ports the plan's services hold (port -> service), but one service's."""
    out: dict[int, str] = {}
    for s in plan.services:
        if s.name == but:
            continue
        for p in [q.node_port for q in s.all_ports] + [s.health_check_node_port]:
            if p:
                out[p] = s.name
    return out


def with_allocated_values(old: ServicePlan | None, svc: Service) -> Service:
    """The new spec with the old service's node ports where it leaves them unset and still needs
    them (upstream's patchAllocatedValues), matched by (port, protocol)."""
    if old is None:
        return svc
    needs = ("NodePort", "LoadBalancer")
    ports = svc.all_ports
    if old.type in needs and svc.type in needs:
        kept = {(p.port, p.protocol): p.node_port for p in old.all_ports}
        ports = tuple(replace(p, node_port=kept.get((p.port, p.protocol)))
                      if p.node_port is None else p for p in ports)
    hc = svc.health_check_node_port
    if hc is None and old.health_check_node_port and svc.type == "LoadBalancer" and \
            svc.external_traffic_policy == "Local":
        hc = old.health_check_node_port
    first = ports[0]
    return replace(svc, node_port=first.node_port, health_check_node_port=hc,
                   ports=ports if svc.ports else ())


def apply_service(plan: Plan, topo: Topology, svc: Service) -> tuple[Topology, Plan]:
    """Create or update a service (checked on its own already: read_one_service with the other
    services' node ports as taken); the new topology and plan. Raises ValueError when a VIP,
    a ClusterIP or a node port is not to be had."""
    old = next((s for s in plan.services if s.name == svc.name), None)
    _check_external_ips(topo, old, svc)
    svc = with_allocated_values(old, svc)
    ports, hc = _node_ports(plan, svc)
    _check_instance_targets(plan, svc, ports)
    svc = replace(svc, node_port=ports[0].node_port, health_check_node_port=hc,
                  ports=tuple(ServicePortSpec(p.name, p.port, p.target_port, p.protocol,
                                              p.node_port) for p in ports) if svc.ports else ())
    vip = _vip(plan, topo, svc, old)
    sp = ServicePlan(
        svc.name, svc.type, old.cluster_ip if old else _free_cluster_ip(plan, topo),
        svc.port, svc.target_port, svc.node_port, hc, svc.external_traffic_policy,
        svc.session_affinity, svc.session_affinity_timeout, vip, svc.selector,
        tuple(p.name for p in plan.pods if p.deployment == svc.selector), svc.protocol,
        svc.health_via, ports=ports, internal_traffic_policy=svc.internal_traffic_policy,
        external_ips=svc.external_ips,
        publish_not_ready_addresses=svc.publish_not_ready_addresses, labels=svc.labels,
        load_balancer_source_ranges=svc.load_balancer_source_ranges)
    services = [sp if s.name == svc.name else s for s in plan.services]
    if old is None:
        services.append(sp)
    new = replace(plan, services=services,
                  load_balancers=[lb for lb in plan.load_balancers if lb.service != svc.name])
    if vip is not None:
        lb = LbPlan(svc.name, vip, svc.port, plan.mode, topo.load_balancer.preserve_client_ip,
                    tuple(lb_backends(new, sp)), listeners(plan.mode, sp),
                    topo.load_balancer.address, lb_health_port(new, topo, sp),
                    svc.load_balancer_source_ranges)
        at = next((i for i, x in enumerate(plan.load_balancers) if x.service == svc.name),
                  len(new.load_balancers))
        new.load_balancers.insert(at, lb)
    specs = [svc if s.name == svc.name else s for s in topo.services]
    if all(s.name != svc.name for s in topo.services):
        specs.append(svc)
    return replace(topo, services=tuple(specs)), new


def _check_external_ips(topo: Topology, old: ServicePlan | None, svc: Service) -> None:
    """A change's externalIPs: the VPC's routes to them are set when the cluster starts, so a
    running cluster keeps each service's as they are (a new service has none); InputError."""
    path = f"{svc.name}.externalIPs"
    had = old.external_ips if old is not None else ()
    if tuple(svc.external_ips) != tuple(had):
        raise InputError([Problem(
            "cnlb service", 0, path, f"externalIPs cannot change on a running cluster "
            f"(they are {list(had)}): the VPC routes them from the start",
            "keep them as they are, or write them in the topology and start the cluster "
            "again")])


def _check_instance_targets(plan: Plan, svc: Service, ports: tuple[PortPlan, ...]) -> None:
    """A LoadBalancer service left without a node port (allocateLoadBalancerNodePorts false)
    cannot have instance targets: InputError in mode nodeport."""
    if plan.mode == "nodeport" and svc.type == "LoadBalancer" and \
            any(p.node_port is None for p in ports):
        raise InputError([Problem(
            "cnlb service", 0, f"{svc.name}.allocateLoadBalancerNodePorts",
            "false leaves ports without a nodePort, and in mode nodeport the load balancer's "
            "instance targets are the nodes' node ports",
            "write a nodePort on each port, or leave allocateLoadBalancerNodePorts true")])


def delete_service(plan: Plan, topo: Topology, name: str) -> tuple[Topology, Plan]:
    """Remove a service: its ClusterIP, node ports and VIP are free again. KeyError if there is
    no such service."""
    if all(s.name != name for s in plan.services):
        raise KeyError(name)
    new = replace(plan, services=[s for s in plan.services if s.name != name],
                  load_balancers=[lb for lb in plan.load_balancers if lb.service != name])
    return replace(topo, services=tuple(s for s in topo.services if s.name != name)), new


def _node_ports(plan: Plan, svc: Service) -> tuple[tuple[PortPlan, ...], int | None]:
    """Every port with its node port, the unset ones lowest-free (one node port for the TCP and
    UDP ports of one number, as upstream's allocator), and the healthCheckNodePort."""
    taken = set(taken_node_ports(plan, but=svc.name))
    written = {p for p in [q.node_port for q in svc.all_ports] + [svc.health_check_node_port]
               if p}
    if written & taken:
        port = min(written & taken)
        raise ValueError(f"node port {port} is already used by service "
                         f"'{taken_node_ports(plan, but=svc.name)[port]}'")
    free = _free(taken | written)
    node_ports = port_node_ports(svc, free)
    if svc.type == "ClusterIP":   # a ClusterIP service releases what it had
        node_ports = [None] * len(node_ports)
    out = [PortPlan(p.name, p.port, p.target_port, p.protocol, np_)
           for p, np_ in zip(svc.all_ports, node_ports, strict=True)]
    hc = None
    if svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local":
        hc = svc.health_check_node_port or next(free)
    return tuple(out), hc


def _free(taken: set[int]) -> Iterator[int]:
    for p in range(NODEPORT_RANGE[0], NODEPORT_RANGE[1] + 1):
        if p not in taken:
            yield p
    raise ValueError("the NodePort range 30000-32767 is exhausted")


def _vip(plan: Plan, topo: Topology, svc: Service, old: ServicePlan | None) -> str | None:
    if svc.type != "LoadBalancer":
        return None
    used = {s.vip: s.name for s in plan.services if s.vip and s.name != svc.name}
    if svc.load_balancer_ip is not None:
        if str(svc.load_balancer_ip) in used:
            raise ValueError(f"VIP {svc.load_balancer_ip} is already used by service "
                             f"'{used[str(svc.load_balancer_ip)]}'")
        return str(svc.load_balancer_ip)
    if old is not None and old.vip:
        return old.vip
    vip = max(topo.load_balancer.vip, VIP_RANGE[0])
    while vip <= VIP_RANGE[1]:
        if str(vip) not in used:
            return str(vip)
        vip += 1
    raise ValueError(f"no VIP left in {VIP_RANGE[0]}-{VIP_RANGE[1]}")


def _free_cluster_ip(plan: Plan, topo: Topology) -> str:
    net = topo.cni.service_cidr
    used = {s.cluster_ip for s in plan.services}
    for i in range(SERVICE_IP_OFFSET, net.num_addresses - 1):
        ip = str(net.network_address + i)
        if ip not in used:
            return ip
    raise ValueError(f"no ClusterIP left in {net}")

