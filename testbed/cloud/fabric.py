"""The VPC controller's view of the cluster: `fabric.json`, rendered from the plan (pure).

The format is documented in docs/fabric-config.md. The controller never reads the topology.
"""

from __future__ import annotations

from collections.abc import Collection

from testbed.plan.addresses import LB_HOST, Plan, lb_backends
from testbed.spec.model import HealthCheck


def render_fabric(plan: Plan, health: HealthCheck, lb_netns: str | None = None,
                  gone: Collection[str] = frozenset()) -> dict[str, object]:
    """The fabric config for the controller.

    lb_netns: the file of the LB host's network namespace, once it exists (the health checks
        run in it; the controller enters it with nsenter --net=FILE)
    gone: pods removed since the build (a restarted controller must not route to them)
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
        if plan.mode == "container-native" else []
    lbs: list[dict[str, object]] = []
    for lb in plan.load_balancers:
        svc = next(s for s in plan.services if s.name == lb.service)
        backends = [b for b in lb_backends(plan, svc) if b.name not in gone]
        first = backends[0] if backends else None
        lbs.append({
            "name": lb.service, "vip": lb.vip, "port": lb.port, "protocol": "tcp",
            "target_mode": lb.target_mode, "preserve_client_ip": lb.preserve_client_ip,
            "backends": [{"name": b.name, "ip": b.ip, "port": b.port} for b in backends],
            "health_check": {"port": first.health_port if first else lb.port,
                             "path": first.health_path if first else "/healthz",
                             "interval_s": health.interval_s, "timeout_s": health.timeout_s,
                             "healthy_threshold": health.healthy_threshold,
                             "unhealthy_threshold": health.unhealthy_threshold},
        })
    out: dict[str, object] = {
        "cluster": plan.cluster, "mode": plan.mode, "switches": switches, "links": links,
        "subnets": subnets, "hosts": hosts, "pod_routes": pod_routes, "load_balancers": lbs}
    if lb_netns is not None:
        out["health_checker"] = {"host": LB_HOST, "netns": lb_netns}
    return out
