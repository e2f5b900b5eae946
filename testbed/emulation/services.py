"""Services changing while the cluster runs: `cnlb service apply FILE | set NAME field=value |
delete NAME`, from Python (Cluster.apply_service, set_service, delete_service), the detached
session and the CLI.

What the plan becomes is testbed.plan.changes (ClusterIP, node ports and VIP kept or released as
the API server keeps them) and reading one service is testbed.spec.services; this module is the
glue and the effects:

read_apply, read_set: the new Service from a file's Document or from field=value arguments,
    checked against the running cluster (its deployments, the other services' node ports);
    InputError, one line per problem, and nothing changes.
new_plan: the change on the plan, a VIP or ClusterIP that cannot be had as one InputError line.
lb_changes: what the cloud LB does, from the controller's LBs of the service before and after
    (fabric.json's load_balancers[] entries): create, remove, or register and deregister
    targets of a listener whose settings did not change.
pods_to_restart: pods whose server must listen on a targetPort it did not serve.
document_to_wire, document_from_wire: a Document through the detached session's socket.
ServiceMethods: Cluster.apply_service, set_service, delete_service (the Python API).
ServiceChanges: a change on the running cluster, in the order a cluster converges: the cloud
    LBs that go away first (their VIP released), pod servers on new target ports, kube-proxy's
    partial sync on every live node (its health-check node ports open and close; UDP conntrack
    entries of removed ports flushed), then the LBs that appear or change, and the wait until
    they serve. The change is journaled, fabric.json rewritten (a restarted controller has it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.cloud.fabric import render_fabric
from testbed.emulation.podservers import served_ports
from testbed.errors import InputError, Problem, UsageError
from testbed.plan.addresses import LB_HOST, Plan, ServicePlan
from testbed.plan.changes import apply_service, delete_service, taken_node_ports
from testbed.spec.model import Service, Topology
from testbed.spec.services import read_one_service, service_body, set_fields_document
from testbed.spec.yamldoc import Document

SET_SOURCE = "cnlb service set"
SERVICES_FILE = "services.json"   # in the state directory: the services as they are now


# -- pure: reading a change ------------------------------------------------------------------

def find_service(topo: Topology, name: str, source: str) -> Service:
    """The topology's service `name`; InputError naming the services there are."""
    svc = next((s for s in topo.services if s.name == name), None)
    if svc is None:
        names = ", ".join(s.name for s in topo.services) or "none"
        raise InputError([Problem(source, 0, "", f"no service '{name}' (services: {names})",
                                  "name one of them, or create it with `cnlb service apply "
                                  "FILE`")])
    return svc


def read_apply(doc: Document, topo: Topology, plan: Plan) -> Service:
    """The service a file holds (`web: {type: ..., ...}`), checked as in a topology with the
    other services' node ports taken."""
    name = next(iter(doc.data), None) if isinstance(doc.data, dict) else None
    return read_one_service(doc, topo.deployments, taken_node_ports(plan, but=name))


def read_set(name: str, args: Sequence[str], topo: Topology, plan: Plan) -> Service:
    """The service `name` with `field=value` arguments applied (argument N is line N)."""
    doc = set_fields_document(find_service(topo, name, SET_SOURCE), args, SET_SOURCE)
    return read_one_service(doc, topo.deployments, taken_node_ports(plan, but=name))


def new_plan(topo: Topology, plan: Plan, svc: Service, source: str) -> tuple[Topology, Plan]:
    """apply_service, with what it cannot allocate (a VIP in use, none left) as InputError."""
    try:
        return apply_service(plan, topo, svc)
    except ValueError as exc:
        raise InputError([Problem(source, 0, svc.name, str(exc),
                                  "pick another loadBalancerIP, or delete a LoadBalancer "
                                  "service first")]) from None


# -- pure: what the cloud LB and the pods do ---------------------------------------------------

@dataclass(frozen=True)
class LbChanges:
    """What the VPC controller is asked, for one service's listeners (its LBs by name).

    remove: LBs to delete (first: their VIP:port is released)
    create: load_balancers[] entries to create (with their backends)
    register, deregister: (LB, backend {name, ip, port}) of listeners whose settings stayed
    """

    remove: tuple[str, ...] = ()
    create: tuple[dict[str, Any], ...] = ()
    register: tuple[tuple[str, dict[str, Any]], ...] = ()
    deregister: tuple[tuple[str, dict[str, Any]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.create or self.register or self.deregister)

    def summary(self) -> dict[str, Any]:
        return {"removed": list(self.remove), "created": [e["name"] for e in self.create],
                "registered": len(self.register), "deregistered": len(self.deregister)}


def lb_entries(fabric: Mapping[str, Any], service: str) -> list[dict[str, Any]]:
    """The controller's LBs (fabric.json entries) of one service: one per listener."""
    return [e for e in fabric.get("load_balancers") or [] if e.get("service") == service]


def lb_changes(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> LbChanges:
    """From a service's LBs before to after: a listener whose settings (VIP, port, protocol,
    backend port, health check, affinity, ...) stayed keeps its LB and its targets' health, and
    only gains or loses targets; any other is removed and created again, as a cloud LB
    controller replaces a listener and its target group."""
    before = {e["name"]: e for e in old}
    after = {e["name"]: e for e in new}
    remove, create, register, deregister = [], [], [], []
    for name, e in before.items():
        if name not in after or _settings(after[name]) != _settings(e):
            remove.append(name)
    for name, e in after.items():
        if name not in before or name in remove:
            create.append(dict(e))
            continue
        had = {(b["ip"], b["port"]): b for b in before[name]["backends"]}
        has = {(b["ip"], b["port"]): b for b in e["backends"]}
        register += [(name, has[k]) for k in has if k not in had]
        deregister += [(name, had[k]) for k in had if k not in has]
    return LbChanges(tuple(remove), tuple(create), tuple(register), tuple(deregister))


def _settings(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "backends"}


def pods_to_restart(old: Sequence[ServicePlan], new: Sequence[ServicePlan], plan: Plan,
                    running: set[str]) -> list[str]:
    """Running pods whose server must listen on a (port, protocol) it does not serve: a new
    targetPort of a service that selects them. Ports no longer used stay open (harmless, as a
    container keeps the ports it declares)."""
    out = []
    for pod in plan.pods:
        if pod.name in running and \
                set(served_ports(pod, new)) - set(served_ports(pod, old)):
            out.append(pod.name)
    return out


# -- pure: a Document through the session's socket --------------------------------------------

def document_to_wire(doc: Document) -> dict[str, Any]:
    """A Document as JSON (a file read by the CLI, checked by the owner)."""
    return {"file": doc.file, "data": doc.data,
            "lines": [[list(path), line] for path, line in doc.lines.items()]}


def document_from_wire(wire: Mapping[str, Any]) -> Document:
    try:
        lines = {tuple(path): int(line) for path, line in wire.get("lines") or []}
        return Document(str(wire["file"]), wire["data"], lines)
    except (KeyError, TypeError, ValueError):
        raise ValueError("apply-service: 'document' is not a document "
                         "(file, data, lines)") from None


# -- effects: the running cluster --------------------------------------------------------------

class ServiceMethods:
    """Cluster's service methods (a base class: the cluster's own class stays the lifecycle)."""

    def apply_service(self, service: Service | Document) -> dict[str, Any]:
        """Create or update a service (a Service, or a file's Document holding one): the pod
        servers on new target ports, kube-proxy on every node, the cloud LB; what it is now."""
        if isinstance(service, Document):
            return ServiceChanges(self).apply_document(service)
        return ServiceChanges(self).apply(service)

    def set_service(self, name: str, fields: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
        """Change fields of a service: {"type": "NodePort"} or ["type=NodePort", ...] (values
        are YAML, as `cnlb service set` takes them)."""
        args = [f"{k}={json.dumps(v)}" for k, v in fields.items()] \
            if isinstance(fields, Mapping) else list(fields)
        return ServiceChanges(self).set(name, args)

    def delete_service(self, name: str) -> dict[str, Any]:
        """Delete a service: its ClusterIP, node ports and VIP are released."""
        return ServiceChanges(self).delete(name)


class ServiceChanges:
    """Service changes on one running cluster (a started testbed.emulation.cluster.Cluster).

    cluster: its plan and topology are replaced in place (every part reads them from it)
    """

    def __init__(self, cluster: Any):
        self.cluster = cluster

    def apply_document(self, doc: Document) -> dict[str, Any]:
        """`cnlb service apply FILE`: create or update the one service the file holds."""
        with self.cluster.control.lock:
            c = self.cluster
            svc = read_apply(doc, c.topo, c.plan)
            result = self._change(svc.name, *new_plan(c.topo, c.plan, svc, doc.file),
                                  op="applied")
        return self._settled(result)

    def apply(self, svc: Service) -> dict[str, Any]:
        """Create or update a service given as the model's Service (checked as a file's)."""
        body = {svc.name: service_body(svc)}
        return self.apply_document(Document("apply_service", json.loads(json.dumps(body))))

    def set(self, name: str, args: Sequence[str]) -> dict[str, Any]:
        """`cnlb service set NAME field=value ...`: fields of an existing service."""
        with self.cluster.control.lock:
            c = self.cluster
            svc = read_set(name, args, c.topo, c.plan)
            result = self._change(name, *new_plan(c.topo, c.plan, svc, SET_SOURCE),
                                  op="applied")
        return self._settled(result)

    def delete(self, name: str) -> dict[str, Any]:
        """`cnlb service delete NAME`: its ClusterIP, node ports and VIP are released."""
        with self.cluster.control.lock:
            c = self.cluster
            find_service(c.topo, name, "cnlb service delete")
            result = self._change(name, *delete_service(c.plan, c.topo, name), op="deleted")
        return self._settled(result)

    def _settled(self, result: dict[str, Any]) -> dict[str, Any]:
        """Once the LB has new targets or listeners: wait until it serves from each (not
        holding the control plane's lock: its clock and prober go on meanwhile)."""
        if result["lb"]["created"] or result["lb"]["registered"]:
            self.cluster.wait_lb_ready()
        return result

    # -- the steps ---------------------------------------------------------------------------
    def _change(self, name: str, topo: Topology, plan: Plan, op: str) -> dict[str, Any]:
        c = self.cluster
        old_services = list(c.plan.services)
        lbs = lb_changes(lb_entries(self._fabric(c.plan), name), lb_entries(self._fabric(plan),
                                                                            name))
        if lbs and c.lb_kind == "l7":
            raise UsageError(f"cnlb: service {name}: its cloud LB would change, which the l7 "
                             "load balancer cannot do while it runs — restart the cluster with "
                             "the new topology, or use --lb l4")
        running = {p for p in c.live_pods() if c.control.server_running(p)}
        restart = pods_to_restart(old_services, plan.services, plan, running)
        c.topo = topo
        c.plan.services[:] = plan.services           # in place: the hosts, kube-proxy and the
        c.plan.load_balancers[:] = plan.load_balancers   # control plane hold this plan
        if c.journal is not None:
            c.journal.record("service", op=op, service=name, spec=self._body(name))
        for lb in lbs.remove:
            self._api("DELETE", f"/v1/lbs/{lb}")
        for pod in restart:                          # before kube-proxy sends them traffic
            c.control.kill_server(pod)
        if restart:
            c.control.start_pod_servers([c.plan.pod(p) for p in restart])
        if c.kube_proxy is not None:
            c.kube_proxy.sync_all()                  # a partial sync on every live node
        for entry in lbs.create:
            self._api("POST", "/v1/lbs", entry)
        for lb, b in lbs.register:
            self._api("POST", f"/v1/lbs/{lb}/backends", b)
        for lb, b in lbs.deregister:
            self._api("DELETE", f"/v1/lbs/{lb}/backends/{b['ip']}/{b['port']}")
        if lbs:
            self._write_fabric()
        self._write_services()
        return {op: name, **self._describe(name), "lb": lbs.summary(), "restarted_pods": restart}

    def _fabric(self, plan: Plan) -> dict[str, Any]:
        """fabric.json for a plan, targets as registered now (not the pods that are gone, not
        ready or terminating: the LB controller deregistered those)."""
        c, s = self.cluster, self.cluster.control.states
        gone = s.removed_pods | s.terminating_pods | s.not_ready_pods
        return render_fabric(plan, c.topo.load_balancer.health_check, None, gone=gone,
                             timing=c.topo.kubernetes)

    def _write_fabric(self) -> None:
        """fabric.json as the controller now has it: a restarted controller starts from it."""
        c = self.cluster
        fabric = render_fabric(c.plan, c.topo.load_balancer.health_check,
                               c.hosts.netns_file(LB_HOST) if c.hosts else None,
                               gone=frozenset(c.removed_pods), timing=c.topo.kubernetes)
        path = c.state.file("fabric.json")
        _write_json(path, fabric)
        reload = getattr(c.lb, "reload", None)      # the L4 LB reads its listeners from it
        if reload is not None:
            reload()

    def _write_services(self) -> None:
        """services.json: every service as a file would write it, and as planned."""
        c = self.cluster
        out = {"services": {s.name: service_body(s) for s in c.topo.services},
               "plan": [self._describe(s.name) for s in c.plan.services]}
        path = c.state.file(SERVICES_FILE)
        _write_json(path, out)

    def _body(self, name: str) -> dict[str, Any] | None:
        svc = next((s for s in self.cluster.topo.services if s.name == name), None)
        return service_body(svc) if svc else None

    def _describe(self, name: str) -> dict[str, Any]:
        """The service as planned now: type, addresses, ports ({} once deleted)."""
        sp = next((s for s in self.cluster.plan.services if s.name == name), None)
        if sp is None:
            return {}
        return {"name": sp.name, "type": sp.type, "cluster_ip": sp.cluster_ip,
                "ports": [{"name": p.name, "port": p.port, "target_port": p.target_port,
                           "protocol": p.protocol, "node_port": p.node_port}
                          for p in sp.all_ports],
                "node_port": sp.node_port, "health_check_node_port": sp.health_check_node_port,
                "external_traffic_policy": sp.external_traffic_policy,
                "internal_traffic_policy": sp.internal_traffic_policy,
                "session_affinity": sp.session_affinity, "vip": sp.vip}

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        return self.cluster.controller.api(method, path, body)


def _write_json(path: str, data: Any) -> None:
    """Replace a state file at once (a reader never sees half of it)."""
    with open(path + ".tmp", "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(path + ".tmp", path)
