"""The glue of `cnlb service apply | set | delete` on a running cluster, without root: what the
cloud LB is asked (lb_changes), which pod servers restart, a Document through the session's
socket, the one-line errors, the CLI's flags, and ServiceChanges' order of effects on a fake
cluster (LBs that go first, pods, kube-proxy's sync, LBs that come, the wait)."""

import json
import threading
import types

import pytest

from testbed.cli.parser import build_parser
from testbed.cloud.fabric import render_fabric
from testbed.emulation import services as sc
from testbed.errors import InputError, UsageError
from testbed.kubernetes import pods as scheduling
from testbed.plan.addresses import build_plan
from testbed.spec.model import HealthCheck
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document
from tests.unit.test_service_changes import BASE  # the same two services, changed while running


def cluster_of(mode="nodeport"):
    topo = parse_topology(parse_document("t.yaml", BASE), mode=mode)
    return topo, build_plan(topo)


def entries(topo, plan, name):
    return sc.lb_entries(render_fabric(plan, HealthCheck()), name)


def set_(topo, plan, name, *args):
    svc = sc.read_set(name, args, topo, plan)
    return sc.new_plan(topo, plan, svc, sc.SET_SOURCE)


# -- what the cloud LB is asked ------------------------------------------------------------

def test_a_service_turning_loadbalancer_creates_its_lb_and_back_removes_it():
    topo, plan = cluster_of()
    t2, p2 = set_(topo, plan, "web", "type=LoadBalancer")
    change = sc.lb_changes(entries(topo, plan, "web"), entries(t2, p2, "web"))
    assert change.summary() == {"removed": [], "created": ["web"], "registered": 0,
                                "deregistered": 0}
    (created,) = change.create
    assert created["vip"] == "198.51.100.11" and \
        {b["port"] for b in created["backends"]} == {30001}
    t3, p3 = set_(t2, p2, "web", "type=NodePort")
    assert sc.lb_changes(entries(t2, p2, "web"), entries(t3, p3, "web")).remove == ("web",)
    assert not sc.lb_changes(entries(t3, p3, "web"), entries(t3, p3, "web"))


def test_settings_that_change_replace_the_listener_and_targets_alone_do_not():
    topo, plan = cluster_of()
    before = entries(topo, plan, "api")
    _, p2 = set_(topo, plan, "api", "sessionAffinity=ClientIP")
    change = sc.lb_changes(before, sc.lb_entries(render_fabric(p2, HealthCheck()), "api"))
    assert (change.remove, [e["name"] for e in change.create]) == (("api",), ["api"])
    # ETP Local: the health check moves to the healthCheckNodePort, a new target group
    _, p3 = set_(topo, plan, "api", "externalTrafficPolicy=Local")
    local = sc.lb_entries(render_fabric(p3, HealthCheck()), "api")
    assert local[0]["health_check"]["port"] == 30001
    assert sc.lb_changes(before, local).remove == ("api",)
    fewer = [dict(before[0], backends=before[0]["backends"][:1])]
    change = sc.lb_changes(before, fewer)
    assert (change.remove, change.create, len(change.deregister)) == ((), (), 1)
    assert sc.lb_changes(fewer, before).register == (("api", before[0]["backends"][1]),)


def test_a_port_added_to_a_loadbalancer_adds_a_listener_and_keeps_the_first():
    topo, plan = cluster_of()
    _, p2 = set_(topo, plan, "api", "ports=[{name: http, port: 8000}, "
                                    "{name: dns, port: 53, protocol: UDP}]")
    change = sc.lb_changes(entries(topo, plan, "api"), entries(topo, p2, "api"))
    # the first listener's settings are the same: it keeps its LB (and its targets' health)
    assert change.remove == () and [e["name"] for e in change.create] == ["api:dns"]
    assert change.create[0]["protocol"] == "udp" and change.create[0]["backend_port"] == 30001


def test_delete_removes_every_listener():
    topo, plan = cluster_of()
    t2, p2 = sc.delete_service(plan, topo, "api")
    assert sc.lb_changes(entries(topo, plan, "api"), entries(t2, p2, "api")).remove == ("api",)


# -- pods and their ports ------------------------------------------------------------------

def test_pods_restart_only_for_a_target_port_they_do_not_serve():
    topo, plan = cluster_of()
    running = {p.name for p in plan.pods}
    _, p2 = set_(topo, plan, "api", "type=NodePort")
    assert sc.pods_to_restart(plan.services, p2.services, plan, running) == []
    _, p3 = set_(topo, plan, "api", "ports=[{name: http, port: 8000, targetPort: 9000}]")
    assert sc.pods_to_restart(plan.services, p3.services, plan, running - {"web-1"}) == \
        ["web-0"]
    # dropping the port again restarts nobody: a port no longer used stays open
    assert sc.pods_to_restart(p3.services, plan.services, plan, running) == []


# -- reading: one line per problem, nothing changed -----------------------------------------

def test_an_unknown_service_names_the_ones_there_are():
    topo, plan = cluster_of()
    with pytest.raises(InputError) as err:
        sc.read_set("nope", ["type=NodePort"], topo, plan)
    assert str(err.value) == ("cnlb service set: no service 'nope' (services: web, api) — "
                              "name one of them, or create it with `cnlb service apply FILE`")


def test_a_node_port_out_of_range_is_refused_at_its_argument():
    """After test/e2e/network/service.go "should check NodePort out-of-range" (the pure part:
    the cluster test sends it through the CLI)."""
    topo, plan = cluster_of()
    with pytest.raises(InputError) as err:
        sc.read_set("api", ["nodePort=80"], topo, plan)
    (line,) = [str(p) for p in err.value.problems]
    assert line.startswith("cnlb service set:1: api.nodePort: ") and "30000-32767" in line


def test_a_vip_in_use_is_one_line_naming_the_service():
    topo, plan = cluster_of()
    svc = sc.read_apply(parse_document("web.yaml", "web: {type: LoadBalancer, port: 80, "
                                                   "loadBalancerIP: 198.51.100.10}\n"),
                        topo, plan)
    with pytest.raises(InputError) as err:
        sc.new_plan(topo, plan, svc, "web.yaml")
    assert str(err.value).startswith("web.yaml: web: VIP 198.51.100.10 is already used by "
                                     "service 'api' — ")


def test_a_document_crosses_the_socket_with_its_lines():
    doc = parse_document("svc.yaml", "dns:\n  type: LoadBalancer\n  protocol: UDP\n"
                                     "  port: 53\n")
    back = sc.document_from_wire(json.loads(json.dumps(sc.document_to_wire(doc))))
    assert back == doc and back.line(("dns", "port")) == 4
    with pytest.raises(ValueError, match="not a document"):
        sc.document_from_wire({"data": {}})


def test_the_cli_takes_apply_set_and_delete():
    p = build_parser()
    a = p.parse_args(["service", "set", "web", "type=NodePort", "sessionAffinity=ClientIP"])
    assert (a.action, a.name, a.fields) == ("set", "web", ["type=NodePort",
                                                           "sessionAffinity=ClientIP"])
    assert p.parse_args(["service", "apply", "f.yaml"]).file == "f.yaml"
    assert p.parse_args(["service", "delete", "web"]).name == "web"
    with pytest.raises(UsageError):
        p.parse_args(["service", "set", "web"])
    with pytest.raises(UsageError):
        p.parse_args(["service", "replace", "web"])


# -- the order of effects, on a fake cluster ------------------------------------------------

class FakeCluster:
    """What ServiceChanges uses of a Cluster, recording each effect in `log`."""

    def __init__(self, tmp_path, lb_kind="l4"):
        self.topo, self.plan = cluster_of()
        self.log = []
        self.lb_kind = lb_kind
        self.hosts = None
        self.removed_pods = set()
        states = scheduling.PodStates()
        log = self.log
        self.control = types.SimpleNamespace(
            lock=threading.RLock(), states=states,
            server_running=lambda pod: True,
            kill_server=lambda pod: log.append(("kill", pod)),
            start_pod_servers=lambda pods: log.append(("start", [p.name for p in pods])))
        self.kube_proxy = types.SimpleNamespace(
            sync_all=lambda: log.append(("sync", [s.name for s in self.plan.services])))
        self.controller = types.SimpleNamespace(
            api=lambda method, path, body=None: log.append((method, path)))
        self.lb = types.SimpleNamespace(reload=lambda: log.append(("reload",)))
        self.journal = types.SimpleNamespace(
            record=lambda kind, **data: log.append((kind, data["op"], data["service"])))
        self.state = types.SimpleNamespace(file=lambda name: str(tmp_path / name))

    def live_pods(self):
        return {p.name for p in self.plan.pods}

    def wait_lb_ready(self):
        self.log.append(("wait",))


def test_turning_loadbalancer_syncs_kube_proxy_before_the_lb_is_created(tmp_path):
    c = FakeCluster(tmp_path)
    plan = c.plan
    result = sc.ServiceChanges(c).set("web", ["type=LoadBalancer"])
    assert c.plan is plan                     # changed in place: every part holds this one
    assert result["type"] == "LoadBalancer" and result["vip"] == "198.51.100.11"
    assert c.log == [("service", "applied", "web"), ("sync", ["web", "api"]),
                     ("POST", "/v1/lbs"), ("reload",), ("wait",)]
    saved = json.loads((tmp_path / "fabric.json").read_text())
    assert [e["name"] for e in saved["load_balancers"]] == ["api", "web"]
    state = json.loads((tmp_path / sc.SERVICES_FILE).read_text())
    assert state["services"]["web"]["type"] == "LoadBalancer"


def test_delete_releases_the_vip_before_kube_proxy_forgets_the_service(tmp_path):
    c = FakeCluster(tmp_path)
    result = sc.ServiceChanges(c).delete("api")
    assert result == {"deleted": "api", "lb": {"removed": ["api"], "created": [],
                                               "registered": 0, "deregistered": 0},
                      "restarted_pods": []}
    assert c.log == [("service", "deleted", "api"), ("DELETE", "/v1/lbs/api"),
                     ("sync", ["web"]), ("reload",)]
    assert [s.name for s in c.topo.services] == ["web"]


def test_a_new_target_port_restarts_the_pods_before_kube_proxy_sends_there(tmp_path):
    c = FakeCluster(tmp_path)
    sc.ServiceChanges(c).set("web", ["ports=[{port: 80, targetPort: 9000}]"])
    assert c.log[1:4] == [("kill", "web-0"), ("kill", "web-1"), ("start", ["web-0", "web-1"])]
    assert c.log[4][0] == "sync"


def test_bad_input_changes_nothing(tmp_path):
    c = FakeCluster(tmp_path)
    before = (c.topo, list(c.plan.services), list(c.plan.load_balancers))
    for args in (["type=NodPort"], ["nodePort=30000", "type=NodePort"], ["selector=nope"]):
        with pytest.raises(InputError):
            sc.ServiceChanges(c).set("web", args)
    with pytest.raises(InputError):
        sc.ServiceChanges(c).delete("nope")
    assert (c.topo, c.plan.services, c.plan.load_balancers) == before and c.log == []


def test_the_l7_lb_refuses_a_change_of_its_listeners_and_nothing_changes(tmp_path):
    c = FakeCluster(tmp_path, lb_kind="l7")
    with pytest.raises(UsageError, match="l7 load balancer"):
        sc.ServiceChanges(c).set("web", ["type=LoadBalancer"])
    assert c.log == [] and next(s for s in c.plan.services if s.name == "web").type == \
        "ClusterIP"
    sc.ServiceChanges(c).set("web", ["sessionAffinity=ClientIP"])   # no LB: fine
    assert c.log[-1][0] == "sync"
