"""The control plane's pure decisions (kubernetes.pods), the L4 load balancer over a fake REST
API, and a cluster's status built from its parts, all without root."""

import dataclasses
import os
import subprocess
import types

import pytest

from testbed.cloud.lb import L4LoadBalancer, Target, load_balancer_kind, target_kind
from testbed.emulation import journal
from testbed.errors import EnvironmentProblem
from testbed.kubernetes import pods as scheduling
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.experiment import Variant
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")   # web-0..2 on node1, web-3 on node2


def plan_of(mode="nodeport", policy="Cluster"):
    return build_plan(Variant("v", mode, policy).apply(load_topology(TALK)))


# -- scheduling ------------------------------------------------------------------------------

def test_new_pod_goes_to_the_healthy_node_with_fewest_live_pods():
    plan = plan_of()
    states = scheduling.PodStates()
    assert scheduling.place_pod(plan, states, None, 17) == "node3"
    states.failed_nodes.add("node3")
    assert scheduling.place_pod(plan, states, None, 17) == "node2"
    states.removed_pods.update({"web-0", "web-1", "web-2"})
    assert scheduling.place_pod(plan, states, None, 17) == "node1"


def test_a_pod_asked_for_on_a_failed_node_or_a_full_one_is_refused():
    plan = plan_of("container-native")
    states = scheduling.PodStates(failed_nodes={"node3"})
    with pytest.raises(KeyError, match="no healthy node named node3"):
        scheduling.place_pod(plan, states, "node3", 17)
    with pytest.raises(ValueError, match="maxPodsPerNode=3"):
        scheduling.place_pod(plan, states, "node1", 3)
    assert scheduling.place_pod(plan, states, "node1", 4) == "node1"


def test_node_failure_checks_and_what_it_takes_along():
    plan = plan_of()
    states = scheduling.PodStates(failed_pods={"web-1"})
    assert [p.name for p in scheduling.pods_on_node(plan, states, "node1")] == ["web-0", "web-2"]
    with pytest.raises(KeyError):
        scheduling.check_node_can_fail(plan, states, "node9")
    scheduling.check_node_can_fail(plan, states, "node1")
    states.failed_nodes.update({"node2", "node3"})
    with pytest.raises(KeyError, match="no healthy node named node2"):
        scheduling.check_node_can_fail(plan, states, "node2")
    with pytest.raises(ValueError, match="last healthy node"):
        scheduling.check_node_can_fail(plan, states, "node1")


@pytest.mark.parametrize("mode, policy, expected", [
    ("container-native", "Cluster", {"web-1", "web-2"}),   # ip targets: live pods
    ("nodeport", "Cluster", {"node1", "node3"}),                    # every healthy node
    ("nodeport", "Local", {"node1"}),                               # nodes with a local pod
])
def test_expected_in_service_per_target_kind_and_policy(mode, policy, expected):
    plan = plan_of(mode, policy)
    states = scheduling.PodStates(failed_pods={"web-0"}, removed_pods={"web-3"},
                                  failed_nodes={"node2"})
    assert scheduling.expected_in_service(plan, states, "web") == expected


def test_lbs_selecting_a_deployment_and_unknown_names():
    plan = plan_of()
    assert scheduling.lbs_selecting(plan, "web") == ["web"]
    assert scheduling.lbs_selecting(plan, "db") == []
    topo = load_topology(TALK)
    assert scheduling.deployment_port(topo, "web") == 8080
    scaled_to_zero = dataclasses.replace(topo, deployments=tuple(
        dataclasses.replace(d, replicas=0, placement=()) for d in topo.deployments))
    assert scheduling.deployment_port(scaled_to_zero, "web") == 8080   # no pod to copy needed
    with pytest.raises(KeyError, match="no deployment named db"):
        scheduling.deployment_port(topo, "db")
    with pytest.raises(KeyError, match="no pod named web-3"):
        scheduling.find_pod(plan, scheduling.PodStates(removed_pods={"web-3"}), "web-3")


# -- the L4 load balancer over a fake REST API -------------------------------------------------

class FakeController:
    """The VPC controller's REST API for load balancers, in memory."""

    def __init__(self, rows=None):
        self.calls = []
        self.rows = rows or {}
        self.proc = types.SimpleNamespace(pid=4242)
        self.rest_port = 18080

    def api(self, method, path, body=None, timeout=5.0):
        self.calls.append((method, path, body))
        if method == "DELETE":
            raise OSError("HTTP Error 404: Not Found")
        if method == "GET" and path.startswith("/v1/lbs/"):
            return self.rows.get(path.split("/")[3], [])
        if method == "GET" and path == "/v1/lbs":
            return [{"name": lb, "in_service": sum(bool(r.get("in_service")) for r in rows)}
                    for lb, rows in self.rows.items()]
        return None

    def alive(self):
        return True

    def log_tail(self):
        return "last words"


def test_l4_registers_deregisters_and_reads_health_through_the_rest_api():
    row = {"name": "web-0", "ip": "192.168.0.100", "port": 8080, "state": "healthy",
           "in_service": True, "ok_streak": 3}
    ctl = FakeController({"web": [row]})
    lb = L4LoadBalancer(ctl, target_kind("container-native"))
    assert lb.target_kind == "ip" and target_kind("nodeport") == "instance"
    lb.register("web", Target("web-4", "192.168.0.104", 8080))
    lb.deregister("web", Target("web-4", "192.168.0.104", 8080))   # a 404 is "not there": fine
    assert ctl.calls == [
        ("POST", "/v1/lbs/web/backends", {"name": "web-4", "ip": "192.168.0.104", "port": 8080}),
        ("DELETE", "/v1/lbs/web/backends/192.168.0.104/8080", None)]
    (health,) = lb.targets("web")
    assert health.target == Target("web-0", "192.168.0.100", 8080)
    assert health.in_service and health.state == "healthy" and dict(health.detail) == row


def test_l4_wait_ready_names_the_missing_backends_and_the_controller_log():
    ctl = FakeController({"web": [{"name": "node1", "ip": "192.168.0.10", "port": 30080,
                                   "in_service": True}]})
    lb = L4LoadBalancer(ctl, "instance")
    lb.wait_ready({"web": {"node1"}}, timeout=0)
    with pytest.raises(EnvironmentProblem, match="backends node2, node3 not healthy") as err:
        lb.wait_ready({"web": {"node1", "node2", "node3"}}, timeout=0)
    assert "last words" in str(err.value)


def test_l4_wait_ready_reads_the_target_list_only_once_enough_targets_serve():
    ctl = FakeController({"web": [{"name": "node1", "ip": "192.168.0.10", "port": 30080,
                                   "in_service": True}]})
    lb = L4LoadBalancer(ctl, "instance")
    with pytest.raises(EnvironmentProblem):
        lb.wait_ready({"web": {"node1", "node2"}}, timeout=0)
    assert [p for _, p, _ in ctl.calls] == ["/v1/lbs", "/v1/lbs/web/backends"]  # + the error's
    ctl.calls.clear()
    with pytest.raises(EnvironmentProblem, match="backends node2 not healthy"):
        lb.wait_ready({"web": {"node2"}}, timeout=0)     # one serves, but not the one wanted
    assert [p for _, p, _ in ctl.calls] == ["/v1/lbs"] + ["/v1/lbs/web/backends"] * 2


def test_an_unknown_load_balancer_kind_names_the_known_ones():
    assert load_balancer_kind("l4") is L4LoadBalancer
    with pytest.raises(ValueError, match="no cloud load balancer kind 'nlb9' — one of .*l4"):
        load_balancer_kind("nlb9")


# -- a cluster's parts, without building it ----------------------------------------------------

class FakeProc:
    def __init__(self, code=None):
        self.code = code

    def poll(self):
        return self.code


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """A Cluster object with fakes where a built one has processes and namespaces."""
    monkeypatch.setattr(journal, "STATE_ROOT", str(tmp_path))
    from testbed.emulation.cluster import Cluster
    c = Cluster(load_topology(TALK, mode="container-native"))
    rows = [{"name": p.name, "ip": p.ip, "port": 8080, "state": "healthy", "in_service": True}
            for p in c.plan.pods]
    c.controller = FakeController({"web": rows})
    c.lb = L4LoadBalancer(c.controller, "ip")
    c.hosts = types.SimpleNamespace(net=types.SimpleNamespace(
        hosts=[types.SimpleNamespace(name="node1", netns="cnlb-node1")]))
    c.control.pod_servers.update({"web-0": FakeProc(), "web-1": FakeProc(1),
                                  "web-2": FakeProc(-9), "web-3": FakeProc()})
    c.control.states.failed_pods.add("web-2")
    c.control.states.removed_pods.add("web-3")
    c.timings["total_s"] = 1.5
    return c


def test_dead_pod_servers_are_the_crashed_not_the_failed_and_restart(parts, monkeypatch):
    assert parts.control.dead_pod_servers() == ["web-1"]
    started = []
    monkeypatch.setattr(parts.control, "start_pod_servers", lambda pods: started.extend(pods))
    parts.control.restart_pod_servers(["web-1"])
    assert [p.name for p in started] == ["web-1"] and "web-1" not in parts.pod_servers


def test_status_from_the_parts(parts):
    from testbed.emulation.status import status_of
    status = status_of(parts)
    assert [(p["name"], p["server_running"], p["healthy"]) for p in status["pods"]] == [
        ("web-0", True, True), ("web-1", False, False), ("web-2", False, False)]
    assert status["load_balancers"][0]["backends"][0]["name"] == "web-0"
    assert status["controller"]["pid"] == 4242 and status["hosts"]["node1"] == "cnlb-node1"
    assert status["timings"] == {"total_s": 1.5} and status["owner"]["alive"]


def test_status_shows_an_unreadable_lb_as_an_error(parts):
    from testbed.emulation.status import status_of

    def broken(*args, **kwargs):
        raise subprocess.TimeoutExpired("GET", 3)
    parts.controller.api = broken
    assert "error" in status_of(parts)["load_balancers"][0]["backends"]


# -- the control plane's clock over a recording fake cluster -------------------------------------

class Recorder:
    """Every effect the control plane has on a cluster, in order."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args))


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A container-native Cluster whose hosts, controller, LB and kube-proxy record calls."""
    from dataclasses import replace

    from testbed.emulation.cluster import Cluster
    from testbed.spec.model import Timing
    monkeypatch.setattr(journal, "STATE_ROOT", str(tmp_path))

    def make(timing):
        topo = replace(load_topology(TALK, mode="container-native"), kubernetes=timing)
        c = Cluster(topo)
        rec = Recorder()
        c.hosts = c.controller = c.lb = c.kube_proxy = rec
        c.state.path = str(tmp_path)
        os.makedirs(c.state.path, exist_ok=True)
        c.control.pod_servers.update({p.name: FakeServer(rec, p.name) for p in c.plan.pods})
        return c, rec
    make.Timing = Timing
    return make


class FakeServer(FakeProc):
    def __init__(self, rec, name):
        super().__init__()
        self.rec, self.name = rec, name

    def kill(self):
        self.rec.calls.append(("kill", self.name))
        self.code = -9

    def terminate(self):
        self.rec.calls.append(("terminate", self.name))
        self.code = 0

    def wait(self, timeout=None):
        return self.code


def test_instant_removal_is_todays_order(recorded):
    from testbed.spec.model import Timing
    c, rec = recorded(Timing(mode="instant"))
    c.remove_pod("web-0")
    names = [call[0] for call in rec.calls]
    assert names == ["deregister", "remove_pod_route", "sync_all", "kill", "run_script",
                     "remove_host"]
    assert "web-0" in c.removed_pods and "web-0" not in c.endpoint_conditions()
    rows = c.control.timeline()
    assert rows[0]["event"] == "remove-pod" and rows[0]["timing"] == "instant"
    assert [r["action"] for r in rows[1:]] == ["lb-deregister", "pod-deleted"]


def test_realistic_removal_waits_for_the_clock_and_instant_overrides_it(recorded):
    from testbed.spec.model import Timing
    c, rec = recorded(Timing(termination_grace_period_s=30, pre_stop_s=10))
    c.control.published = {}   # what start_clock does: the EndpointSlices as published
    steps = c.remove_pod("web-0")
    assert {s.action for s in steps if s.at_s == 0} == {"pod-terminating", "pre-stop",
                                                         "endpoints", "lb-deregister"}
    assert c.control.clock.wait_idle(0) is False    # SIGTERM at 10 s, the rest at 30 s
    assert c.control.clock.stop() >= 4
    assert ("remove_host", "web-0") not in rec.calls and ("kill", "web-0") not in rec.calls
    assert "web-0" in c.control.states.terminating_pods or not rec.calls
    c.remove_pod("web-1", instant=True)           # --instant on a realistic cluster
    assert ("remove_host", "web-1") in rec.calls and "web-1" not in c.endpoint_conditions()
