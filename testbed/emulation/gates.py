"""Pod readiness gates on the running cluster: a new pod of a deployment with `readinessGates`
is Ready only once its containers are ready *and* the cloud LB reports its target healthy, as
the AWS Load Balancer Controller's `target-health.elbv2.k8s.aws/...` and GKE's
`cloud.google.com/load-balancer-neg-ready` conditions make it (container-native mode: the
targets are the pods). Without a gate, a rollout goes on as soon as the kubelet's probe passes,
while the LB may not send the new pod anything yet; the old pods are gone meanwhile.

What happens when a gated pod's readiness probe first passes (the readiness prober reports to
ReadinessGates.reported, which hands every other verdict to ControlPlane._readiness_reported):

- the kubelet reports ContainersReady; Ready stays false (its endpoint stays not ready);
- the LB controller registers the pod's ip target anyway (it registers not-ready endpoints
  whose pods have the gate and ready containers), after the EndpointSlice batch and its
  registration delay;
- it then reads the target's health every GATE_CHECK_PERIOD_S; once every LB of the services
  selecting the pod has it in service, it sets the gate's condition true: the pod is Ready
  (pod-ready, endpoints: the clock's usual readiness steps).

Pods the cluster was built with, and pods in nodeport mode (the LB's targets are nodes, which
know nothing of the pod), have their gates true from the start. A gate stays true once set;
later readiness changes follow the probe alone.

    ReadinessGates: the gates of one control plane's pods
"""

from __future__ import annotations

from typing import Any

from testbed.kubernetes import lifecycle
from testbed.kubernetes import pods as scheduling
from testbed.spec.model import placement

# How often the LB controller reads a pending target's health. The AWS controller requeues a
# pod whose target is not healthy yet and reads the target group's health again; the testbed
# reads it twice a second, like its other scaled-down delays.
GATE_CHECK_PERIOD_S = 0.5


class ReadinessGates:
    """The readiness gates of a control plane's pods.

    cp: the ControlPlane (its cluster, states, clock, lock)
    """

    def __init__(self, cp: Any):
        self.cp = cp
        self.passed: set[str] = set()     # pods whose gates are true
        self.pending: set[str] = set()    # containers ready, gates not yet true

    def gates_of(self, pod: str) -> tuple[str, ...]:
        """The condition types of the pod's readinessGates (its deployment's)."""
        c = self.cp.cluster
        deployment = c.plan.pod(pod).deployment
        d = next((d for d in c.topo.deployments if d.name == deployment), None)
        return d.readiness_gates if d is not None else ()

    def gated(self, pod: str) -> bool:
        """Whether the pod's Ready waits for its gates now: a pod made after the cluster was
        built, of a deployment with readinessGates, in container-native mode, whose gates are
        not true yet."""
        c = self.cp.cluster
        if c.plan.mode != "container-native" or pod in self.passed:
            return False
        if not self.gates_of(pod):
            return False
        return pod not in _built_pods(c.topo)

    def reported(self, pod: str, ready: bool) -> None:
        """The readiness prober's verdict on a pod changed (its thread): a gated pod's first
        pass is its containers' readiness only; everything else goes to the control plane."""
        cp = self.cp
        with cp.lock:
            if ready and cp.clock is not None and pod not in cp.states.removed_pods \
                    and self.gated(pod):
                self.containers_ready(pod)   # Ready once the LB has its target healthy
                return
        cp._readiness_reported(pod, ready)

    def containers_ready(self, pod: str) -> None:
        """The prober says the pod's containers are ready (called with the lock held): Ready
        waits for the LB; the LB controller registers the target after its lag."""
        cp = self.cp
        t = cp.timing
        clock = cp.scheduler()
        self.pending.add(pod)
        clock.log({"event": "readiness", "action": "containers-ready", "target": pod,
                   "by": "kubelet", "gates": list(self.gates_of(pod))})
        delay = 0.0 if t.instant else (t.endpoint_updates_batch_period_s
                                       + t.lb_registration_delay_s)
        clock.at(delay, {"event": "readiness-gate", "action": "lb-register", "target": pod,
                         "by": "cloud-lb-controller"}, lambda: self._register(pod))

    def _gone(self, pod: str) -> bool:
        s = self.cp.states
        return pod in s.removed_pods | s.terminating_pods | s.failed_pods

    def _register(self, pod: str) -> bool:
        if self._gone(pod) or pod not in self.pending:
            return False
        self.cp.register(pod)
        self._check_later(pod)
        return True

    def _check_later(self, pod: str) -> None:
        self.cp.scheduler().at(GATE_CHECK_PERIOD_S, {"action": "gate-check", "target": pod,
                                                     "quiet": True}, lambda: self._check(pod))

    def _check(self, pod: str) -> None:
        """Read the target's health; set the gate when every LB has it in service."""
        cp = self.cp
        if self._gone(pod) or pod not in self.pending:
            return
        if cp.prober is not None and cp.prober.ready(pod) is False:
            self.pending.discard(pod)   # containers not ready again: the next pass starts over
            return
        if not self.target_healthy(pod):
            self._check_later(pod)
            return
        self.pending.discard(pod)
        self.passed.add(pod)
        t = cp.timing
        cp.scheduler().log({"event": "readiness-gate", "action": "gate-true", "target": pod,
                            "by": "cloud-lb-controller", "gates": list(self.gates_of(pod))})
        steps = lifecycle.readiness_changed(t, pod, True, ip_targets=False)
        cp._run_steps("readiness", pod, steps, t)

    def target_healthy(self, pod: str) -> bool:
        """Whether every LB of the services selecting the pod has its target in service."""
        c = self.cp.cluster
        services = scheduling.lbs_selecting(c.plan, c.plan.pod(pod).deployment)
        for service in services:
            try:
                rows = c.lb.targets(service)
            except Exception:   # the controller busy or restarting: ask again later
                return False
            if not any(r.target.name == pod and r.in_service for r in rows):
                return False
        return True


def _built_pods(topo: Any) -> set[str]:
    """The pods the cluster was built with (pod k of deployment d is d-k)."""
    return {f"{d.name}-{k}" for d in topo.deployments for k in range(len(placement(topo, d)))}
