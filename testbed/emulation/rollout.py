"""A rolling update on the running cluster, as the Deployment controller makes one: every pod
of a deployment is replaced by a new one (`cnlb rollout`, Cluster.rollout, the rollout
experiment).

The decisions are upstream's rolling logic (testbed.kubernetes.deployment.reconcile: new pods
up to replicas + maxSurge, old pods deleted only while replicas - maxUnavailable stay
available); this module looks at the pods again every RESYNC_S and applies what it decides
through the control plane: a new pod is `add_pod` (not ready until its readiness probe passes,
and with readinessGates until the LB has its target healthy: testbed.emulation.gates), an old
one is `remove_pod` (terminating: endpoints, preStop, SIGTERM, the grace period, the LB's
deregistration and draining: testbed.kubernetes.lifecycle). A new pod counts as available once
it has been Ready for the deployment's minReadySeconds.

    Rollout: one rolling update in progress (its thread), and what it did (RolloutStatus)
    rollouts_of: a control plane's latest rollout of each deployment (`cnlb status` shows them)
    progress_line: one line of `cnlb status` for a rollout's status
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from testbed.kubernetes.deployment import (
    PodView,
    ReplicaSet,
    RollingUpdate,
    pods_to_delete,
    reconcile,
    resolve_fenceposts,
)

# How often the controller looks at the pods (upstream's reacts to every pod and ReplicaSet
# update within milliseconds; a tenth of a second is far below the probes' periods). Each look
# is an action of the control plane's clock: it runs with the control plane's lock, between
# the other components' steps.
RESYNC_S = 0.1
# upstream's progressDeadlineSeconds default: a rollout that makes no progress this long fails
PROGRESS_DEADLINE_S = 600.0

# control plane -> deployment -> its latest Rollout, however it was started (CLI, detached
# session, Python, the rollout experiment); weak, so a finished cluster takes its own along
_LATEST: weakref.WeakKeyDictionary[Any, dict[str, Rollout]] = weakref.WeakKeyDictionary()


@dataclass
class RolloutStatus:
    """What a rollout did and where it is.

    deployment: the deployment rolled; replicas: its spec.replicas
    max_surge, max_unavailable: as written, and resolved (surge, unavailable) for replicas
    started, completed: epoch seconds (completed None until every pod is new and available
        and no old pod is left but terminating ones, as `kubectl rollout status` says done)
    old_pods: the pods it replaces; new_pods: the pods it made, in order
    events: its scaling events ({time, action, rs, replicas, pods}) in order
    error: why it stopped without completing (None)
    """

    deployment: str
    replicas: int
    max_surge: int | str
    max_unavailable: int | str
    resolved: tuple[int, int]
    started: float
    old_pods: list[str]
    new_pods: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    completed: float | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.completed is not None or self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "replicas": self.replicas,
                "maxSurge": self.max_surge, "maxUnavailable": self.max_unavailable,
                "resolved": {"maxSurge": self.resolved[0], "maxUnavailable": self.resolved[1]},
                "started": self.started, "completed": self.completed,
                "duration_s": (round(self.completed - self.started, 3)
                               if self.completed is not None else None),
                "old_pods": list(self.old_pods), "new_pods": list(self.new_pods),
                "events": list(self.events), "error": self.error}


class Rollout:
    """One rolling update of a deployment on a running cluster.

    control: the cluster's ControlPlane
    deployment: the deployment's name (KeyError if it has no live pod)
    max_surge, max_unavailable: override the deployment's strategy.rollingUpdate (None: its own)
    """

    def __init__(self, control: Any, deployment: str, max_surge: int | str | None = None,
                 max_unavailable: int | str | None = None):
        topo = control.cluster.topo
        spec = next((d for d in topo.deployments if d.name == deployment), None)
        if spec is None:
            raise KeyError(f"no deployment named {deployment}")
        self.control = control
        self.spec = spec
        with control.lock:
            old = [p.name for p in control.cluster.plan.pods
                   if p.deployment == deployment and p.name in control.live_pods()]
        if not old:
            raise KeyError(f"deployment {deployment} has no running pod to replace")
        self.strategy = RollingUpdate(spec.max_surge if max_surge is None else max_surge,
                                      spec.max_unavailable if max_unavailable is None
                                      else max_unavailable)
        replicas = len(old)   # the pods running now: a failover may have changed the count
        self.status = RolloutStatus(
            deployment, replicas, self.strategy.max_surge, self.strategy.max_unavailable,
            resolve_fenceposts(self.strategy.max_surge, self.strategy.max_unavailable, replicas),
            time.time(), old)
        self._ready_since: dict[str, float] = {}
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._last_progress = time.monotonic()

    # -- on the control plane's clock ---------------------------------------------------------
    def start(self) -> Rollout:
        """Begin (returns at once). Its syncs are actions of the control plane's clock, so
        teardown stops them with the clock, after the one in progress."""
        self._log("rollout-started", replicas=self.status.replicas,
                  maxSurge=self.strategy.max_surge, maxUnavailable=self.strategy.max_unavailable)
        _LATEST.setdefault(self.control, {})[self.spec.name] = self
        self.control.scheduler().at(0, self._label, self._tick)
        return self

    def wait(self, timeout: float | None = None) -> RolloutStatus:
        """Block until the rollout completes or fails (at most timeout seconds); its status."""
        self._finished.wait(timeout)
        return self.status

    def stop(self) -> None:
        """Stop deciding: pods already made or deleted stay so."""
        self._stopping.set()
        self._finished.set()

    @property
    def _label(self) -> dict[str, Any]:
        return {"action": "rollout-sync", "target": self.spec.name, "quiet": True}

    def _tick(self) -> None:
        """One sync, then the next one RESYNC_S later until done (the clock's thread)."""
        if self._stopping.is_set() or self.status.done:
            return
        try:
            self.sync()
        except Exception as exc:   # the cluster went away under it, a pod could not be made
            self._fail(f"{type(exc).__name__}: {exc}")
        if not self.status.done and time.monotonic() - self._last_progress > PROGRESS_DEADLINE_S:
            self._fail(f"no progress for {PROGRESS_DEADLINE_S:g}s (progressDeadlineSeconds)")
        if self.status.done:
            self._finished.set()
        elif not self._stopping.is_set():
            self.control.scheduler().at(RESYNC_S, self._label, self._tick)

    def _fail(self, error: str) -> None:
        self.status.error = error
        self._log("rollout-failed", error=error)

    # -- one sync -----------------------------------------------------------------------------
    def sync(self) -> bool:
        """Look at the pods and scale once, as one sync of rolloutRolling; True when done."""
        cp = self.control
        with cp.lock:
            if self._stopping.is_set():
                return False
            now = time.monotonic()
            old = self._active(self.status.old_pods)
            new = self._active(self.status.new_pods)
            for pod in new:
                if self._ready(pod):
                    self._ready_since.setdefault(pod, now)
                else:
                    self._ready_since.pop(pod, None)
            new_available = sum(1 for p in new if p in self._ready_since
                                and now - self._ready_since[p] >= self.spec.min_ready_s)
            old_available = sum(1 for p in old if self._ready(p))
            replicas = self.status.replicas
            if len(new) == replicas and new_available == replicas and not old:
                self.status.completed = time.time()
                self._log("rollout-complete", new_pods=list(self.status.new_pods),
                          duration_s=round(self.status.completed - self.status.started, 3))
                return True
            d = reconcile(replicas, self.strategy, ReplicaSet(len(new), new_available),
                          [ReplicaSet(len(old), old_available)])
            if d.new_replicas > len(new):
                made = [cp.add_pod(self.spec.name) for _ in range(d.new_replicas - len(new))]
                self.status.new_pods += made
                self._scaled("up", "new", d.new_replicas, made)
            elif d.old_replicas[0] < len(old):
                plan = cp.cluster.plan
                views = [PodView(p, plan.pod(p).node, self._ready(p), plan.pod(p).index)
                         for p in old]
                gone = pods_to_delete(views, len(old) - d.old_replicas[0])
                for pod in gone:
                    cp.remove_pod(pod)
                self._scaled("down", "old", d.old_replicas[0], gone)
            return False

    def _active(self, pods: list[str]) -> list[str]:
        """The pods a ReplicaSet still counts: not deleted (terminating) nor gone."""
        s = self.control.states
        return [p for p in pods if p not in s.removed_pods and p not in s.terminating_pods]

    def _ready(self, pod: str) -> bool:
        s = self.control.states
        return pod not in s.not_ready_pods and pod not in s.failed_pods

    def _scaled(self, direction: str, rs: str, replicas: int, pods: list[str]) -> None:
        self._last_progress = time.monotonic()
        self.status.events.append({"time": round(time.time(), 6), "action": f"scaled-{direction}",
                                   "rs": rs, "replicas": replicas, "pods": pods})
        self._log(f"scaled-{direction}", rs=rs, replicas=replicas, pods=pods)

    def _log(self, action: str, **extra: Any) -> None:
        """The control plane's timeline gets the rollout's own steps too."""
        self.control.scheduler().log({"event": "rollout", "action": action,
                                      "target": self.spec.name, "by": "deployment-controller",
                                      **extra})


# -- ways in: Python, and the detached owner's requests (testbed.emulation.session) ------------

def rollout(cluster: Any, deployment: str, max_surge: int | str | None = None,
            max_unavailable: int | str | None = None) -> Rollout:
    """Start a rolling update of a deployment on a running Cluster; returns at once
    (`.wait(timeout)` blocks until it is done, `.status` says where it is).
    max_surge, max_unavailable: override the deployment's strategy.rollingUpdate"""
    return Rollout(cluster.control, deployment, max_surge, max_unavailable).start()


def rollouts_of(control: Any) -> list[dict[str, Any]]:
    """The latest rollout of each deployment on a control plane (status dicts, with "state":
    in progress, complete or failed, and "available", the new pods that are Ready), in the
    order they started."""
    out = []
    for r in sorted(_LATEST.get(control, {}).values(), key=lambda r: r.status.started):
        st = r.status.to_dict()
        st["state"] = ("failed" if r.status.error is not None else
                       "complete" if r.status.completed is not None else "in progress")
        st["available"] = [p for p in r.status.new_pods if p in r._ready_since]
        out.append(st)
    return out


def progress_line(status: dict[str, Any], now: float | None = None) -> str:
    """`cnlb status`'s line for one of rollouts_of's entries."""
    new, replicas = len(status.get("available") or []), status["replicas"]
    if status["state"] == "in progress":
        since = (time.time() if now is None else now) - status["started"]
        return (f"rollout {status['deployment']}: in progress for {since:.1f}s, {new} of "
                f"{replicas} new pods available, {_old_left(status)} old left")
    if status["state"] == "complete":
        return (f"rollout {status['deployment']}: complete in {status['duration_s']:g}s "
                f"({', '.join(status['new_pods'])})")
    return f"rollout {status['deployment']}: failed ({status['error']})"


def _old_left(status: dict[str, Any]) -> int:
    """The old ReplicaSet's size after its last scaling (its replicas before any)."""
    downs = [e for e in status["events"] if e.get("rs") == "old"]
    return int(downs[-1]["replicas"]) if downs else int(status["replicas"])


ROLLOUT_OPS = ("rollout", "rollout-status")


def rollout_request(cluster: Any, op: str, request: dict[str, Any],
                    rollouts: dict[str, Rollout]) -> dict[str, Any]:
    """`cnlb rollout` on a detached cluster: "rollout" starts one ({deployment, max_surge,
    max_unavailable}) and answers at once; "rollout-status" says where it is.
    rollouts: the owner's rollouts by deployment (the latest of each)"""
    deployment = request["deployment"]
    if op == "rollout":
        running = rollouts.get(deployment)
        if running is not None and not running.status.done:
            raise ValueError(f"deployment {deployment} is being rolled out already")
        rollouts[deployment] = rollout(cluster, deployment, request.get("max_surge"),
                                       request.get("max_unavailable"))
    elif deployment not in rollouts:
        raise KeyError(f"no rollout of {deployment} was started")
    return rollouts[deployment].status.to_dict()
