"""The VPC controller's view of the cluster: `fabric.json`, rendered from the plan (pure).

The format is documented in docs/fabric-config.md. The controller never reads the topology.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from testbed.plan.addresses import (
    LB_HOST,
    PROXY_HEALTHZ_PORT,
    Backend,
    LbPlan,
    Listener,
    Plan,
    ServicePlan,
    external_ip_node,
    lb_backends,
)
from testbed.spec.model import HealthCheck, Timing


def render_fabric(plan: Plan, health: HealthCheck, lb_netns: str | None = None,
                  gone: Collection[str] = frozenset(),
                  timing: Timing | None = None) -> dict[str, object]:
    """The fabric config for the controller.

    lb_netns: the file of the LB host's network namespace, once it exists (the health checks
        run in it; the controller enters it with nsenter --net=FILE)
    gone: pods removed since the build (a restarted controller must not route to them)
    timing: the control plane's clock; the LBs' deregistration delay comes from it (None:
        upstream's defaults, AWS's 300 s)
    """
    switches = [{"name": s.name, "dpid": s.dpid, "role": s.role,
                 **({"subnet": s.subnet} if s.subnet else {})}
                for s in plan.switches]
    links = [{"a": s.name, "a_port": s.uplink, "b": "vpc0", "b_port": s.core_port}
             for s in plan.switches if s.role == "subnet"]
    subnets = [{"name": g.subnet, "cidr": g.cidr, "gateway": g.ip, "gateway_mac": g.mac,
                "switch": g.switch, "kind": g.kind} for g in plan.gateways]
    hosts = [{"name": a.host, "kind": a.kind, "ip": a.ip, "mac": a.mac, "subnet": a.subnet,
              "switch": a.switch, "port": a.port} for a in plan.attachments]
    pod_routes = [{"pod": p.name, "ip": p.ip, "node": p.node}
                  for p in plan.pods if p.name not in gone] \
        if plan.overlay == "vpc-native" else []   # bgp: the VPC learns blocks by BGP
    lbs = [entry for lb in plan.load_balancers
           for entry in _listener_entries(plan, lb, health, gone, timing)]
    out: dict[str, object] = {
        "cluster": plan.cluster, "mode": plan.mode, "switches": switches, "links": links,
        "subnets": subnets, "hosts": hosts, "pod_routes": pod_routes, "load_balancers": lbs,
        "external_ips": external_ip_routes(plan)}
    if lb_netns is not None:
        out["health_checker"] = {"host": LB_HOST, "netns": lb_netns}
    return out


def external_ip_routes(plan: Plan) -> list[dict[str, object]]:
    """The VPC's route for each Services' external IP (spec.externalIPs): one per address, to
    the first node, where kube-proxy serves it (a cluster admin's static route; a Service's
    externalIPs are routed, never put on a node's interface)."""
    node = external_ip_node(plan)
    by_ip: dict[str, list[str]] = {}
    for svc in plan.services:
        for ip in svc.external_ips:
            by_ip.setdefault(ip, []).append(svc.name)
    if node is None:
        return []
    return [{"ip": ip, "node": node, "services": names} for ip, names in by_ip.items()]


def listener_name(lb: LbPlan, listener: Listener, first: bool) -> str:
    """The controller's name of one listener of a service's LB: the service's name for the
    first (what a single-port service always had), "service:port-name" (or ":port") after."""
    if first:
        return lb.service
    return f"{lb.service}:{listener.name or listener.port}"


def _listener_entries(plan: Plan, lb: LbPlan, health: HealthCheck, gone: Collection[str],
                      timing: Timing | None) -> list[dict[str, object]]:
    """One controller LB per listener of the service's LB (an NLB listener and its target
    group), all on the same VIP; a target registered on one is registered on all."""
    svc = next(s for s in plan.services if s.name == lb.service)
    backends = [b for b in lb_backends(plan, svc) if b.name not in gone]
    hc_port, hc_path = _health_check_target(plan, svc, _health_port(lb, backends),
                                            backends[0].health_path if backends else "/healthz")
    listeners = lb.listeners or (Listener("", lb.port, svc.protocol, backends[0].port
                                          if backends else lb.port),)
    entries: list[dict[str, object]] = []
    for i, listener in enumerate(listeners):
        entries.append({
            "name": listener_name(lb, listener, i == 0), "service": lb.service,
            "vip": lb.vip, "port": listener.port, "protocol": listener.protocol.lower(),
            "backend_port": listener.backend_port,
            "target_mode": lb.target_mode, "preserve_client_ip": lb.preserve_client_ip,
            "session_affinity": "client_ip" if svc.session_affinity == "ClientIP" else "none",
            "address": lb.address,
            "deregistration_delay_s": (timing or Timing()).lb_deregistration_delay_s,
            "backends": [{"name": b.name, "ip": b.ip,
                          "port": b.port if i == 0 else listener.backend_port}
                         for b in backends],
            "health_check": {"port": hc_port, "path": hc_path,
                             "interval_s": health.interval_s, "timeout_s": health.timeout_s,
                             "healthy_threshold": health.healthy_threshold,
                             "unhealthy_threshold": health.unhealthy_threshold},
        })
        if svc.load_balancer_source_ranges:   # loadBalancerSourceRanges: the LB's own filter
            entries[-1]["source_ranges"] = list(svc.load_balancer_source_ranges)
    return entries


def _health_port(lb: LbPlan, backends: Sequence[Backend]) -> int:
    """The port the LB's health check goes to on its targets: the service's, as an LB
    controller configures it (LbPlan.health_port, ip targets), whether or not a pod exists
    yet -- not the listener's port, which may be UDP; instance targets: the first node's."""
    if lb.health_port is not None:
        return lb.health_port
    return backends[0].health_port if backends else lb.port


def _health_check_target(plan: Plan, svc: ServicePlan, port: int, path: str) -> tuple[int, str]:
    """Where the LB checks its targets. Instance targets of an externalTrafficPolicy Cluster
    service: kube-proxy's own /healthz on every node (10256), as GCP's LB does -- a node whose
    kube-proxy is down or stale fails, not one that merely has no pod. Local services keep
    their healthCheckNodePort (503 on a node without a ready local pod); ip targets are checked
    on the pod (lb_backends says which port)."""
    if plan.mode != "container-native" and svc.external_traffic_policy == "Cluster" \
            and not svc.health_via:
        return PROXY_HEALTHZ_PORT, "/healthz"
    return port, path
