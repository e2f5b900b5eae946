"""The control plane's clock (pure): given the topology's Timing and an event (a pod deleted, a
pod's container crashing, a node dying, a pod's readiness changing), the ordered steps the
cluster's components take and when, as offsets from the event. The emulation's scheduler
(testbed.emulation.scheduler) applies them; nothing here sleeps or touches the cluster.

Who does what, as upstream has it:

- the API server marks a deleted pod terminating (deletionTimestamp) at once;
- the EndpointSlice controller publishes endpoint conditions (ready, serving, terminating)
  `endpoint_updates_batch_period_s` after a pod changes;
- kube-proxy syncs what was published, at most once per `min_sync_period_s` (its own part);
- the kubelet runs the preStop hook, then SIGTERM, and SIGKILL when the grace period ends
  (counted from the deletion, preStop included); once the containers are gone the pod is
  deleted for good (its endpoints, its network: the CNI's DEL, the VPC route);
- the kubelet notices a crashed container at its next relist (PLEG) and the pod turns not ready;
- the node lifecycle controller marks a silent node NotReady after
  `node_monitor_grace_period_s` (its pods turn not ready) and its taint manager evicts the pods
  `not_ready_toleration_s` later, when the ReplicaSet makes replacements elsewhere;
- the cloud's load-balancer controller registers a ready pod's ip target
  `lb_registration_delay_s` after its endpoint is published, and deregisters one that is no
  longer ready `lb_deregistration_lag_s` after (the LB then drains it; container-native only:
  in nodeport mode the LB's targets are nodes, and its health checks follow them).

Mode "instant" makes every step happen at offset 0, in the most favourable order (the
testbed's picture before the clock: endpoints and the LB target first, then the pod).

    Step: one step (at_s, action, target, by)
    delete_pod, crash_pod, fail_node, readiness_changed: the steps of an event
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.spec.model import Timing

# The kubelet's PLEG relists containers every second (pkg/kubelet/pleg/generic.go relistPeriod):
# a crashed container is noticed within one relist.
PLEG_RELIST_PERIOD_S = 1.0

# Actions a Step may name, with what the control plane does for each.
ACTIONS = {
    "pod-terminating": "the API server sets the pod's deletionTimestamp: it is terminating",
    "endpoints": "the EndpointSlice controller publishes the pods' endpoint conditions; "
                 "kube-proxy is asked to sync (at most once per min sync period)",
    "lb-deregister": "the cloud LB controller deregisters the pod's ip target (the LB drains it)",
    "lb-register": "the cloud LB controller registers the pod's ip target",
    "pre-stop": "the kubelet runs the preStop hook (a sleep: the server goes on serving)",
    "sigterm": "the kubelet sends SIGTERM (the server stops listening, finishes what it has)",
    "sigkill": "the grace period is over: SIGKILL if the server still runs",
    "pod-deleted": "the containers are gone: the pod, its network and its VPC route are removed",
    "container-crashed": "the pod's server dies (SIGKILL)",
    "pod-not-ready": "the pod's Ready condition turns false",
    "pod-ready": "the pod's Ready condition turns true",
    "node-down": "the node's link goes down; its pods die with it",
    "node-not-ready": "the node lifecycle controller marks the node NotReady: its pods turn "
                      "not ready",
    "evict": "the taint manager evicts the node's pods; the ReplicaSet makes replacements on "
             "the other nodes",
}


@dataclass(frozen=True)
class Step:
    """One thing one component does after an event.

    at_s: seconds after the event
    action: a key of ACTIONS
    target: the pod or node it acts on
    by: the component (api-server, endpointslice-controller, kubelet, node-lifecycle-controller,
        cloud-lb-controller, ...)
    """

    at_s: float
    action: str
    target: str
    by: str

    def to_dict(self) -> dict[str, object]:
        return {"at_s": round(self.at_s, 6), "action": self.action, "target": self.target,
                "by": self.by}


def _ordered(steps: list[Step]) -> list[Step]:
    """By time; steps at the same time keep the order they were listed in (causal order)."""
    return sorted(steps, key=lambda s: s.at_s)


def delete_pod(t: Timing, pod: str, ip_targets: bool) -> list[Step]:
    """A pod deleted (`kubectl delete pod`, a rollout, a scale-down).

    t: the timing; pod: the pod's name
    ip_targets: the LB's targets are pods (container-native mode): it is deregistered"""
    if t.instant:
        steps = [Step(0, "lb-deregister", pod, "cloud-lb-controller")] if ip_targets else []
        return steps + [Step(0, "pod-deleted", pod, "kubelet")]
    batch = t.endpoint_updates_batch_period_s
    grace = t.termination_grace_period_s
    pre_stop = min(t.pre_stop_s, grace)
    steps = [Step(0, "pod-terminating", pod, "api-server"),
             Step(batch, "endpoints", pod, "endpointslice-controller")]
    if ip_targets:
        steps.append(Step(batch + t.lb_deregistration_lag_s, "lb-deregister", pod,
                          "cloud-lb-controller"))
    if pre_stop > 0:
        steps.append(Step(0, "pre-stop", pod, "kubelet"))
    steps += [Step(pre_stop, "sigterm", pod, "kubelet"),
              Step(grace, "sigkill", pod, "kubelet"),
              # brought forward to the server's exit when it exits sooner after SIGTERM
              Step(grace, "pod-deleted", pod, "kubelet"),
              Step(grace + batch, "endpoints", pod, "endpointslice-controller")]
    return _ordered(steps)


def crash_pod(t: Timing, pod: str, ip_targets: bool) -> list[Step]:
    """A pod's server crashes (`cnlb pod fail`); the testbed does not restart it.

    Instant: the server dies and nothing else changes at once (the endpoint goes when the next
    change syncs, the LB's health checks notice). Realistic: the kubelet notices at its next
    relist, the pod turns not ready, and its endpoint and (ip targets) LB target follow."""
    steps = [Step(0, "container-crashed", pod, "kubelet")]
    if t.instant:
        return steps
    return steps + readiness_changed(t, pod, False, ip_targets, after=PLEG_RELIST_PERIOD_S)


def readiness_changed(t: Timing, pod: str, ready: bool, ip_targets: bool,
                      after: float = 0.0) -> list[Step]:
    """A pod's Ready condition changes (its readiness probe crossed a threshold, its container
    crashed). after: when the kubelet reports it, from the event"""
    batch = after if t.instant else after + t.endpoint_updates_batch_period_s
    steps = [Step(after, "pod-ready" if ready else "pod-not-ready", pod, "kubelet"),
             Step(batch, "endpoints", pod, "endpointslice-controller")]
    if ip_targets:
        lag = t.lb_registration_delay_s if ready else t.lb_deregistration_lag_s
        steps.append(Step(batch + (0 if t.instant else lag),
                          "lb-register" if ready else "lb-deregister", pod,
                          "cloud-lb-controller"))
    return _ordered(steps)


def fail_node(t: Timing, node: str, pods: list[str], ip_targets: bool) -> list[Step]:
    """A node dies (`cnlb node fail`): its link goes down and its pods' servers die.

    Instant: its pods are removed and replaced at once (nobody tells the cloud LB: its health
    checks find out). Realistic: nothing changes until the node lifecycle controller marks the
    node NotReady; then its pods' endpoints turn not ready (and their ip targets are
    deregistered); the pods are evicted and replaced after the not-ready toleration.
    pods: the pods the node runs"""
    down = [Step(0, "node-down", node, "testbed")]
    if t.instant:
        return down + [Step(0, "evict", node, "taint-manager")]
    grace = t.node_monitor_grace_period_s
    steps = down + [Step(grace, "node-not-ready", node, "node-lifecycle-controller")]
    batch = grace + t.endpoint_updates_batch_period_s
    if pods:
        steps.append(Step(batch, "endpoints", node, "endpointslice-controller"))
    if ip_targets:
        steps += [Step(batch + t.lb_deregistration_lag_s, "lb-deregister", pod,
                       "cloud-lb-controller") for pod in pods]
    steps.append(Step(grace + t.not_ready_toleration_s, "evict", node, "taint-manager"))
    return _ordered(steps)


def describe(steps: list[Step]) -> list[str]:
    """One line per step, as `cnlb pod remove` prints the plan."""
    return [f"+{s.at_s:7.2f}s  {s.action:<17} {s.target:<12} ({s.by})" for s in steps]
