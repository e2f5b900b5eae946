"""The control plane's clock without a cluster: the pure timelines (kubernetes.lifecycle), the
endpoint conditions they lead to (kubernetes.pods, dataplane.model.service_ports), the
readiness prober's thresholds (kubernetes.kubelet), and the scheduler driven by a fake clock
(emulation.scheduler). No sleeps: every clock here is injected."""

import json
import os
import threading
from dataclasses import replace

import pytest

from testbed.emulation.scheduler import Agenda, Scheduler
from testbed.kubernetes import lifecycle
from testbed.kubernetes import pods as scheduling
from testbed.kubernetes.dataplane.model import EndpointConditions, service_ports
from testbed.kubernetes.kubelet import ProbeTracker, ReadinessProber, _Probed, http_ok
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.model import Timing
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")   # web-0..2 on node1, web-3 on node2
SHORT = Timing(readiness_period_s=1, readiness_failure_threshold=3,
               termination_grace_period_s=5, pre_stop_s=2, endpoint_updates_batch_period_s=0.5,
               node_monitor_grace_period_s=4, not_ready_toleration_s=6,
               lb_registration_delay_s=1, lb_deregistration_lag_s=0.25)
INSTANT = replace(SHORT, mode="instant")


def plan_of(mode="nodeport"):
    return build_plan(load_topology(TALK, mode=mode))


def actions(steps):
    return [(s.at_s, s.action, s.target) for s in steps]


# -- timelines ---------------------------------------------------------------------------------

def test_a_deleted_pod_terminates_then_goes_after_sigterm_or_the_grace_period():
    steps = lifecycle.delete_pod(SHORT, "web-0", ip_targets=True)
    assert actions(steps) == [
        (0, "pod-terminating", "web-0"),
        (0, "pre-stop", "web-0"),
        (0.5, "endpoints", "web-0"),            # the EndpointSlice controller's batch
        (0.75, "lb-deregister", "web-0"),       # + the LB controller's lag
        (2, "sigterm", "web-0"),                # after preStop
        (5, "sigkill", "web-0"),                # the grace period counts from the deletion
        (5, "pod-deleted", "web-0"),
        (5.5, "endpoints", "web-0")]
    assert {s.by for s in steps} >= {"api-server", "kubelet", "endpointslice-controller",
                                     "cloud-lb-controller"}


def test_a_deleted_pod_in_nodeport_mode_has_no_lb_step_and_no_prestop_without_one():
    steps = lifecycle.delete_pod(replace(SHORT, pre_stop_s=0), "web-0", ip_targets=False)
    names = [s.action for s in steps]
    assert "lb-deregister" not in names and "pre-stop" not in names
    assert steps[names.index("sigterm")].at_s == 0


def test_a_prestop_longer_than_the_grace_period_is_cut_by_it():
    steps = lifecycle.delete_pod(replace(SHORT, pre_stop_s=60), "web-0", ip_targets=False)
    assert next(s.at_s for s in steps if s.action == "sigterm") == 5


def test_instant_deletion_is_todays_order_all_at_once():
    assert actions(lifecycle.delete_pod(INSTANT, "web-0", True)) == [
        (0, "lb-deregister", "web-0"), (0, "pod-deleted", "web-0")]
    assert actions(lifecycle.delete_pod(INSTANT, "web-0", False)) == [(0, "pod-deleted", "web-0")]


def test_a_crash_is_noticed_at_the_next_relist_then_follows_readiness():
    assert actions(lifecycle.crash_pod(SHORT, "web-1", ip_targets=True)) == [
        (0, "container-crashed", "web-1"),
        (1.0, "pod-not-ready", "web-1"),
        (1.5, "endpoints", "web-1"),
        (1.75, "lb-deregister", "web-1")]
    assert actions(lifecycle.crash_pod(INSTANT, "web-1", True)) == [
        (0, "container-crashed", "web-1")]


def test_readiness_back_registers_after_the_registration_delay():
    assert actions(lifecycle.readiness_changed(SHORT, "web-1", True, ip_targets=True)) == [
        (0, "pod-ready", "web-1"), (0.5, "endpoints", "web-1"), (1.5, "lb-register", "web-1")]
    assert [s.action for s in lifecycle.readiness_changed(SHORT, "web-1", False, False)] == [
        "pod-not-ready", "endpoints"]


def test_a_node_failure_waits_for_not_ready_then_for_the_toleration():
    steps = lifecycle.fail_node(SHORT, "node2", ["web-3"], ip_targets=True)
    assert actions(steps) == [
        (0, "node-down", "node2"),
        (4, "node-not-ready", "node2"),
        (4.5, "endpoints", "node2"),
        (4.75, "lb-deregister", "web-3"),
        (10, "evict", "node2")]
    assert actions(lifecycle.fail_node(INSTANT, "node2", ["web-3"], True)) == [
        (0, "node-down", "node2"), (0, "evict", "node2")]


def test_every_action_a_timeline_names_is_described_and_printable():
    steps = (lifecycle.delete_pod(SHORT, "p", True) + lifecycle.crash_pod(SHORT, "p", True)
             + lifecycle.readiness_changed(SHORT, "p", True, True)
             + lifecycle.fail_node(SHORT, "n", ["p"], True))
    assert {s.action for s in steps} <= set(lifecycle.ACTIONS)
    assert len(lifecycle.describe(steps)) == len(steps)
    assert json.dumps([s.to_dict() for s in steps])


# -- endpoint conditions ------------------------------------------------------------------------

def test_endpoint_conditions_follow_terminating_and_readiness():
    plan = plan_of()
    states = scheduling.PodStates(terminating_pods={"web-0"}, not_ready_pods={"web-1"},
                                  failed_pods={"web-2"}, removed_pods={"web-3"})
    got = scheduling.endpoint_conditions(plan, states, instant=False)
    assert got == {
        "web-0": EndpointConditions(ready=False, serving=True, terminating=True),
        "web-1": EndpointConditions(ready=False, serving=False, terminating=False),
        # crashed, but the kubelet has not said so yet: still ready
        "web-2": EndpointConditions(ready=True, serving=True, terminating=False)}
    # instant: a failed, terminating or removed pod has no endpoint at all
    assert scheduling.endpoint_conditions(plan, states, instant=True) == {
        "web-1": EndpointConditions(True, True, False)}


def test_service_ports_carry_the_conditions_to_kube_proxy():
    plan = plan_of()
    conditions = {"web-0": EndpointConditions(False, True, True),
                  "web-1": EndpointConditions(True, True, False)}
    (svc,) = service_ports(plan, None, conditions)
    by_ip = {ep.ip: ep for ep in svc.endpoints}
    web0, web1 = plan.pod("web-0"), plan.pod("web-1")
    assert set(by_ip) == {web0.ip, web1.ip}     # only the pods with an endpoint
    assert (by_ip[web0.ip].ready, by_ip[web0.ip].serving, by_ip[web0.ip].terminating) == (
        False, True, True)
    assert by_ip[web1.ip].ready and not by_ip[web1.ip].terminating
    assert [ep.ip for ep in svc.ready_endpoints] == [web1.ip]
    # without conditions: as before, every live pod ready
    (plain,) = service_ports(plan, {"web-0"})
    assert [(ep.ip, ep.ready) for ep in plain.endpoints] == [(web0.ip, True)]


def test_terminating_and_not_ready_pods_are_not_expected_in_service():
    plan = plan_of("container-native")
    states = scheduling.PodStates(terminating_pods={"web-0"}, not_ready_pods={"web-1"})
    assert scheduling.expected_in_service(plan, states, "web") == {"web-2", "web-3"}
    assert scheduling.live_pods(plan, states) == {"web-1", "web-2", "web-3"}


# -- the readiness prober's thresholds ------------------------------------------------------------

def test_failure_threshold_failures_in_a_row_make_a_pod_not_ready():
    t = replace(SHORT, readiness_failure_threshold=3, readiness_success_threshold=2)
    tracker = ProbeTracker(ready=True)
    got = [tracker.observe(ok, t) for ok in (False, False, True, False, False, False)]
    assert got == [None, None, None, None, None, False]   # a success resets the run
    got = [tracker.observe(ok, t) for ok in (True, False, True, True)]
    assert got == [None, None, None, True]
    assert tracker.ready


def test_a_new_pod_is_ready_after_success_threshold_successes():
    tracker = ProbeTracker(ready=False)
    assert tracker.observe(True, SHORT) is True       # success threshold 1 (upstream's)


@pytest.mark.parametrize("line, ok", [
    (b"HTTP/1.1 200 OK", True), (b"HTTP/1.0 302 Found", True), (b"HTTP/1.1 503 x", False),
    (b"HTTP/1.1 404", False), (b"garbage", False), (b"", False), (b"HTTP/1.1 abc", False)])
def test_http_probe_success_is_200_to_399(line, ok):
    assert http_ok(line) is ok


def test_the_prober_reports_a_change_once_and_schedules_the_next_probe():
    now = [100.0]
    seen = []
    prober = ReadinessProber(SHORT, lambda pod, ready: seen.append((pod, ready)),
                             clock=lambda: now[0])
    prober._pods["web-0"] = _Probed("web-0", "/run/netns/x", "10.0.0.1", 8080,
                                    ProbeTracker(True), now[0])
    for _ in range(4):
        prober.report("web-0", False)
    assert seen == [("web-0", False)] and prober.ready("web-0") is False
    assert prober._pods["web-0"].next_at == 101.0     # a period later
    prober.remove("web-0")
    prober.report("web-0", True)                      # not probed any more: ignored
    assert seen == [("web-0", False)] and prober.ready("web-0") is None


# -- the scheduler, on a fake clock ---------------------------------------------------------------

def test_the_agenda_runs_by_time_and_keeps_the_order_of_ties():
    now = [0.0]
    agenda = Agenda(clock=lambda: now[0])
    for delay, name in [(2, "c"), (0, "a"), (0, "b"), (1, "x")]:
        agenda.add(delay, {"n": name}, lambda: None)
    assert agenda.next_in() == 0
    out = []
    while (due := agenda.pop_due()) is not None:
        out.append(due.label["n"])
    assert out == ["a", "b"] and agenda.next_in() == 1
    now[0] = 5
    while (due := agenda.pop_due()) is not None:
        out.append(due.label["n"])
    assert out == ["a", "b", "x", "c"] and agenda.next_in() is None


def test_the_scheduler_logs_each_step_with_its_time_and_survives_a_failing_one(tmp_path):
    now, wall = [0.0], [1000.0]
    log = tmp_path / "timeline.jsonl"
    sched = Scheduler(str(log), threading.RLock(), clock=lambda: now[0], wall=lambda: wall[0])
    sched.agenda.add(0, {"action": "a"}, lambda: None)
    sched.agenda.add(1, {"action": "boom"}, lambda: 1 / 0)
    sched.agenda.add(2, {"action": "nothing"}, lambda: False)
    sched.agenda.add(2, {"action": "poll", "quiet": True}, lambda: None)
    assert sched.run_due() == 1
    now[0], wall[0] = 3.0, 1003.0
    assert sched.run_due() == 3
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["action"] for r in rows] == ["a", "boom", "nothing"]   # the quiet one is not logged
    assert rows[0]["time"] == 1000.0 and "ZeroDivisionError" in rows[1]["error"]
    assert rows[2]["skipped"] is True and sched.errors and sched.ran == rows


def test_stop_drops_what_was_due_and_nothing_runs_after(tmp_path):
    sched = Scheduler(None, threading.RLock(), clock=lambda: 0.0)
    ran = []
    sched.agenda.add(10, {"action": "later"}, lambda: ran.append(1))
    assert sched.stop() == 1
    sched.at(0, {"action": "after stop"}, lambda: ran.append(2))
    assert sched.run_due() == 0 and ran == [] and sched._thread is None


def test_the_scheduler_thread_runs_a_due_step(tmp_path):
    sched = Scheduler(None, threading.RLock())
    done = threading.Event()
    sched.at(0, {"action": "now"}, done.set)
    assert done.wait(10)
    assert sched.wait_idle(10)
    sched.stop()
    assert not sched._thread.is_alive()


# -- the failover experiment's variants choose the timing -----------------------------------------

def test_failover_variants_run_each_mode_on_the_clock_and_instant():
    from testbed.spec.experiment import load_resolved
    res = load_resolved(os.path.join(REPO, "experiments", "failover.yaml"))
    timing = {name: (topo.mode, topo.kubernetes.mode) for name, topo in res.variants.items()}
    assert timing == {"nodeport-cluster": ("nodeport", "realistic"),
                      "nodeport-instant": ("nodeport", "instant"),
                      "container-native": ("container-native", "realistic"),
                      "container-native-instant": ("container-native", "instant"),
                      "classic-bgp": ("nodeport", "realistic"),
                      "container-native-bgp": ("container-native", "realistic")}
    # the BGP variants: node2's blocks are withdrawn within the run (the hold time)
    bgp = res.variants["classic-bgp"].cni
    assert (bgp.routing, res.variants["nodeport-cluster"].cni.routing) == ("bgp", "default")
    assert events_at(res, "fail-node") + bgp.bgp.hold_time_s < res.experiment.duration_s
    clock = res.variants["container-native"].kubernetes
    # the run must see the node's NotReady and its pods' eviction
    events = {e.action: e.at_s for e in res.experiment.events}
    assert events["fail-node"] + clock.node_monitor_grace_period_s \
        + clock.not_ready_toleration_s < res.experiment.duration_s


def events_at(res, action: str) -> float:
    """When the experiment's first event of an action fires (seconds into the load)."""
    return next(e.at_s for e in res.experiment.events if e.action == action)
