"""A running cluster's status, built from its parts: what `cnlb status` shows and what the
detached session keeps in `status.json` (nodes, pods and their servers, services, the load
balancers' targets with their health, the VPC controller, host namespaces, timings).
"""

from __future__ import annotations

import json
import os
from typing import Any

from mininet.net import Mininet

from testbed.cloud.lb import CloudLoadBalancer
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.emulation.control_plane import ControlPlane
from testbed.emulation.rollout import rollouts_of
from testbed.plan.addresses import Plan, external_ip_node

STATUS_FILE = "status.json"


def status_of(cluster: Any) -> dict[str, Any]:
    """Everything `cnlb status` shows, from the running cluster itself.
    cluster: a started testbed.emulation.cluster.Cluster"""
    plan: Plan = cluster.plan
    controller: ControllerProcess = cluster.controller
    proc = controller.proc
    assert proc is not None   # a started cluster's controller was started
    return {
        "cluster": plan.cluster, "mode": plan.mode, "file": cluster.topo.file,
        "owner": {"pid": os.getpid(), "alive": True},
        "controller": {"pid": proc.pid, "alive": controller.alive(),
                       "rest": f"http://127.0.0.1:{controller.rest_port}/v1/"},
        "nodes": _nodes(plan, cluster.control),
        "pods": _pods(plan, cluster.control),
        "services": _services(plan),
        "load_balancers": _load_balancers(plan, cluster.lb),
        "load_balancer_kind": getattr(cluster, "lb_kind", "l4"),   # l4 (OpenFlow) or l7 (HAProxy)
        "proxy_mode": getattr(cluster, "proxy_mode", "iptables"),   # kube-proxy's mode
        "clients": plan.clients,
        "hosts": _hosts(cluster.net),
        "rest_port": controller.rest_port,
        "timings": cluster.timings,
        "rollouts": rollouts_of(cluster.control),   # the latest of each deployment
        "bgp": _bgp(cluster),   # cni.routing bgp: what the fabric's speaker learned
    }


def write_status(cluster: Any) -> None:
    """Replace the cluster's status.json at once (a reader never sees half a file)."""
    path = cluster.state.file(STATUS_FILE)
    with open(path + ".tmp", "w") as fh:
        json.dump(status_of(cluster), fh, indent=1)
    os.replace(path + ".tmp", path)


def _nodes(plan: Plan, control: ControlPlane) -> list[dict[str, Any]]:
    return [{"name": n.name, "ip": n.ip, "subnet": n.subnet,
             "pod_cidr": n.pod_cidr if plan.overlay in ("vxlan", "host-gw") else None,
             "blocks": [b.cidr for b in plan.blocks if b.node == n.name],   # cni.routing bgp
             "failed": n.name in control.states.failed_nodes} for n in plan.nodes]


def _pods(plan: Plan, control: ControlPlane) -> list[dict[str, Any]]:
    live = control.live_pods()
    pods = []
    for p in plan.pods:
        if p.name in control.states.removed_pods:
            continue
        running = control.server_running(p.name)
        pods.append({"name": p.name, "node": p.node, "ip": p.ip, "port": p.port,
                     "server_running": running, "healthy": p.name in live and running})
    return pods


def _services(plan: Plan) -> list[dict[str, Any]]:
    return [{"name": s.name, "type": s.type, "cluster_ip": s.cluster_ip, "port": s.port,
             "node_port": s.node_port, "external_traffic_policy": s.external_traffic_policy,
             "vip": s.vip, "external_ips": list(s.external_ips),
             # the node the VPC routes them to (testbed.cloud.fabric.external_ip_routes)
             "external_ips_via": external_ip_node(plan) if s.external_ips else None}
            for s in plan.services]


def _load_balancers(plan: Plan, lb: CloudLoadBalancer) -> list[dict[str, Any]]:
    out = []
    for lbp in plan.load_balancers:
        backends: Any
        try:
            backends = [dict(t.detail) for t in lb.targets(lbp.service)]
        except Exception as exc:   # a status is still worth showing without its LB
            backends = {"error": str(exc)}
        out.append({"service": lbp.service, "vip": lbp.vip, "port": lbp.port,
                    "targets": lbp.target_mode, "backends": backends})
    return out


def _bgp(cluster: Any) -> dict[str, Any] | None:
    """The controller's GET /v1/bgp (neighbours and learned routes) under cni.routing bgp;
    None without BGP, or {"error": ...} when the controller does not answer."""
    if getattr(cluster, "bgp", None) is None:
        return None
    try:
        return dict(cluster.controller.api("GET", "/v1/bgp"))
    except Exception as e:   # a dead controller is shown as such, not a failed status
        return {"error": str(e)}


def _hosts(net: Mininet) -> dict[str, str]:
    """Host name -> its named network namespace (`cnlb exec` enters it)."""
    return {h.name: h.netns for h in net.hosts}
