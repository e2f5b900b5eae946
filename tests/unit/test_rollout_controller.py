"""The rolling update on a (fake) control plane (testbed.emulation.rollout.Rollout.sync): new
pods first, old pods deleted only once new ones are available (Ready for minReadySeconds),
never more than replicas + maxSurge pods, and done when every pod is new."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from testbed.emulation.rollout import Rollout, rollout_request
from testbed.kubernetes.pods import PodStates
from testbed.spec.model import Deployment


@dataclass
class FakePod:
    name: str
    index: int
    deployment: str
    node: str


@dataclass
class FakePlan:
    pods: list[FakePod] = field(default_factory=list)

    def pod(self, name: str) -> FakePod:
        return next(p for p in self.pods if p.name == name)


class FakeControlPlane:
    """What Rollout uses of a ControlPlane: pods come up not ready; deleting one makes it
    terminating (it leaves the ReplicaSet's count at once)."""

    def __init__(self, replicas: int, **strategy):
        self.lock = threading.RLock()
        self.states = PodStates()
        self.plan = FakePlan([FakePod(f"web-{i}", i, "web", f"node{i % 2 + 1}")
                              for i in range(replicas)])
        self.cluster = SimpleNamespace(
            plan=self.plan,
            topo=SimpleNamespace(deployments=(Deployment("web", replicas, (), 8080,
                                                         **strategy),)))
        self.logged: list[dict] = []

    def live_pods(self) -> set[str]:
        s = self.states
        return ({p.name for p in self.plan.pods} - s.removed_pods - s.terminating_pods
                - s.failed_pods)

    def scheduler(self):   # the test calls sync() itself: nothing is scheduled
        return SimpleNamespace(log=self.logged.append, at=lambda *a: None)

    def add_pod(self, deployment: str) -> str:
        pod = FakePod(f"{deployment}-{len(self.plan.pods)}", len(self.plan.pods), deployment,
                      "node1")
        self.plan.pods.append(pod)
        self.states.not_ready_pods.add(pod.name)
        return pod.name

    def remove_pod(self, name: str) -> None:
        self.states.terminating_pods.add(name)

    def counts(self, rollout: Rollout) -> tuple[int, int]:
        live = self.live_pods()
        return (sum(p in live for p in rollout.status.new_pods),
                sum(p in live for p in rollout.status.old_pods))


def test_old_pods_go_only_once_new_ones_are_ready():
    cp = FakeControlPlane(3, max_surge=1, max_unavailable=0)
    r = Rollout(cp, "web")
    assert r.status.resolved == (1, 0)
    r.sync()
    assert cp.counts(r) == (1, 3)          # one surge pod, no old pod deleted
    for _ in range(5):
        r.sync()
    assert cp.counts(r) == (1, 3)          # its probe has not passed: nothing more happens
    for _ in range(20):
        cp.states.not_ready_pods.clear()   # every new pod's probe passes
        if r.sync():
            break
        new, old = cp.counts(r)
        assert new + old <= 4 and old + sum(p not in cp.states.not_ready_pods
                                            for p in r.status.new_pods
                                            if p in cp.live_pods()) >= 3
    assert r.status.completed is not None
    assert cp.counts(r) == (3, 0)
    assert [(e["rs"], e["replicas"]) for e in r.status.events] == [
        ("new", 1), ("old", 2), ("new", 2), ("old", 1), ("new", 3), ("old", 0)]
    assert any(row["action"] == "rollout-complete" for row in cp.logged)


def test_min_ready_seconds_holds_the_old_pods():
    cp = FakeControlPlane(2, max_surge=1, max_unavailable=0, min_ready_s=3600.0)
    r = Rollout(cp, "web")
    r.sync()
    cp.states.not_ready_pods.clear()
    for _ in range(5):
        r.sync()
    assert cp.counts(r) == (1, 2)          # Ready, but not available for an hour
    assert r.status.completed is None


def test_unavailable_allows_deleting_before_new_pods_are_ready():
    cp = FakeControlPlane(4, max_surge=0, max_unavailable=2)
    r = Rollout(cp, "web")
    r.sync()
    assert cp.counts(r) == (0, 2)          # maxSurge 0: old pods go first, two at a time
    r.sync()
    assert cp.counts(r) == (2, 2)


def test_unknown_deployment_and_a_second_request():
    cp = FakeControlPlane(2)
    with pytest.raises(KeyError):
        Rollout(cp, "nope")
    with pytest.raises(KeyError):
        rollout_request(SimpleNamespace(control=cp), "rollout-status", {"deployment": "web"}, {})


def test_cnlb_rollout_prints_the_scaling_events_until_done(monkeypatch, capsys):
    from testbed.cli.main import main
    from testbed.emulation import session
    base = {"deployment": "web", "replicas": 2, "maxSurge": "25%", "maxUnavailable": "25%",
            "resolved": {"maxSurge": 1, "maxUnavailable": 0}, "started": 100.0,
            "completed": None, "duration_s": None, "new_pods": [], "error": None, "events": []}
    answers = iter([
        base,
        {**base, "events": [{"time": 100.5, "action": "scaled-up", "rs": "new", "replicas": 1,
                             "pods": ["web-2"]}]},
        {**base, "completed": 104.0, "duration_s": 4.0, "new_pods": ["web-2", "web-3"],
         "events": [{"time": 100.5, "action": "scaled-up", "rs": "new", "replicas": 1,
                     "pods": ["web-2"]},
                    {"time": 102.0, "action": "scaled-down", "rs": "old", "replicas": 1,
                     "pods": ["web-0"]}]}])
    asked = []

    def request(op, **args):
        asked.append((op, args))
        return next(answers)
    monkeypatch.setattr(session, "request", request)
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert main(["rollout", "web", "--max-surge", "1", "--max-unavailable", "0%"]) == 0
    out = capsys.readouterr().out
    assert asked[0] == ("rollout", {"deployment": "web", "max_surge": 1,
                                    "max_unavailable": "0%"})
    assert "Scaled up replica set new to 1 (web-2)" in out
    assert "Scaled down replica set old to 1 (web-0)" in out
    assert "rolled out in 4.00s: web-2, web-3" in out


def test_status_shows_the_latest_rollout_of_each_deployment_while_in_progress_and_after():
    from testbed.emulation.rollout import progress_line, rollouts_of
    from testbed.emulation.session import format_status
    cp = FakeControlPlane(2, max_surge=1, max_unavailable=0)
    assert rollouts_of(cp) == []
    r = Rollout(cp, "web").start()
    r.sync()
    cp.states.not_ready_pods.clear()
    r.sync()
    r.sync()                               # web-2 Ready (available), web-0 deleted
    (now,) = rollouts_of(cp)
    assert now["state"] == "in progress" and now["available"] == ["web-2"]
    line = progress_line(now, now=now["started"] + 1.5)
    assert line == "rollout web: in progress for 1.5s, 1 of 2 new pods available, 1 old left"
    for _ in range(20):
        cp.states.not_ready_pods.clear()
        if r.sync():
            break
    (done,) = rollouts_of(cp)
    assert done["state"] == "complete"
    assert progress_line(done).startswith("rollout web: complete in ")
    status = {"owner": {"pid": 1, "alive": True},
              "controller": {"pid": 2, "alive": True, "rest": "x"}, "nodes": [], "pods": [],
              "services": [], "load_balancers": [], "rollouts": [now]}
    assert format_status(status)[-1].startswith("rollout web: in progress for ")
