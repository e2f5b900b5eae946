"""The Deployment controller's rolling update (pure), as upstream's
pkg/controller/deployment/rolling.go and util/deployment_util.go decide it: how far the new
ReplicaSet may be scaled up (maxSurge), how far the old ones may be scaled down (maxUnavailable,
counting only available pods: Ready for minReadySeconds), and which old pods go first.

Nothing here waits or touches a cluster: testbed.emulation.rollout applies the decisions as
the pods' readiness changes.

    RollingUpdate: maxSurge and maxUnavailable as written (a count or a percentage)
    scaled_value, resolve_fenceposts, max_unavailable: upstream's resolution of them
    ReplicaSet: a ReplicaSet's spec.replicas and status.availableReplicas
    new_rs_new_replicas, reconcile: one sync of rolloutRolling
    pods_to_delete: the ReplicaSet controller's choice of pods when scaled down
    simulate: a whole rollout with pods that become available at once (upstream's examples)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX = "25%"     # upstream's default for both maxSurge and maxUnavailable

IntOrPercent = int | str


@dataclass(frozen=True)
class RollingUpdate:
    """A Deployment's strategy.rollingUpdate.

    max_surge: pods over replicas while updating (a count, or "N%" of replicas rounded up)
    max_unavailable: pods under replicas that may be unavailable (a count, or "N%" rounded down)
    """

    max_surge: IntOrPercent = DEFAULT_MAX
    max_unavailable: IntOrPercent = DEFAULT_MAX


def scaled_value(value: IntOrPercent, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: a count as is; a percentage of total, rounded up
    (maxSurge) or down (maxUnavailable)."""
    if isinstance(value, int):
        return value
    pct = int(value.rstrip("%"))
    exact = pct * total / 100
    # upstream computes in float64 with math.Ceil / math.Floor: the same here
    return int(math.ceil(exact)) if round_up else int(math.floor(exact))


def resolve_fenceposts(max_surge: IntOrPercent | None, max_unavailable: IntOrPercent | None,
                       desired: int) -> tuple[int, int]:
    """deploymentutil.ResolveFenceposts: (surge, unavailable) for `desired` replicas; None is
    0. When both resolve to 0 (a small percentage rounded down), unavailable becomes 1 "on the
    theory that surge might not work due to quota"."""
    surge = scaled_value(0 if max_surge is None else max_surge, desired, True)
    unavailable = scaled_value(0 if max_unavailable is None else max_unavailable, desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_unavailable(replicas: int, strategy: RollingUpdate) -> int:
    """deploymentutil.MaxUnavailable: the resolved maxUnavailable, at most replicas (0 for no
    replicas)."""
    if replicas == 0:
        return 0
    _, unavailable = resolve_fenceposts(strategy.max_surge, strategy.max_unavailable, replicas)
    return min(unavailable, replicas)


def max_surge(replicas: int, strategy: RollingUpdate) -> int:
    """The resolved maxSurge (rounded up), as NewRSNewReplicas computes it."""
    return scaled_value(strategy.max_surge, replicas, True)


@dataclass(frozen=True)
class ReplicaSet:
    """What the rolling logic reads of a ReplicaSet.

    replicas: spec.replicas (pods it keeps; a terminating pod no longer counts)
    available: status.availableReplicas (pods Ready for minReadySeconds, not terminating)
    """

    replicas: int
    available: int = 0


def new_rs_new_replicas(replicas: int, strategy: RollingUpdate, all_rs: Sequence[ReplicaSet],
                        new: ReplicaSet) -> int:
    """deploymentutil.NewRSNewReplicas (RollingUpdate): the new ReplicaSet's replicas after a
    scale-up: up to replicas + maxSurge pods in all ReplicaSets, never past replicas."""
    surge = max_surge(replicas, strategy)
    current = sum(rs.replicas for rs in all_rs)
    most = replicas + surge
    if current >= most:
        return new.replicas
    return new.replicas + min(most - current, replicas - new.replicas)


@dataclass(frozen=True)
class Decision:
    """One sync of rolloutRolling.

    new_replicas: the new ReplicaSet's spec.replicas after it
    old_replicas: each old ReplicaSet's spec.replicas after it (in the order given)
    cleaned_up: old pods scaled down because they were not available (cleanupUnhealthyReplicas)
    scaled_down: old pods scaled down beyond those (scaleDownOldReplicaSetsForRollingUpdate)
    """

    new_replicas: int
    old_replicas: tuple[int, ...]
    cleaned_up: int = 0
    scaled_down: int = 0


def reconcile(replicas: int, strategy: RollingUpdate, new: ReplicaSet,
              old: Sequence[ReplicaSet]) -> Decision:
    """rolloutRolling's one sync: scale the new ReplicaSet up if it can (and stop there);
    otherwise scale old ones down as far as availability allows, unavailable old pods first.

    replicas: the Deployment's spec.replicas; new: the new ReplicaSet; old: the old ones,
    oldest first (upstream sorts them by creation time)."""
    olds = [rs.replicas for rs in old]
    if new.replicas > replicas:   # reconcileNewReplicaSet: scale down to replicas
        return Decision(replicas, tuple(olds))
    if new.replicas < replicas:
        want = new_rs_new_replicas(replicas, strategy, [*old, new], new)
        if want != new.replicas:
            return Decision(want, tuple(olds))
    # reconcileOldReplicaSets
    if sum(olds) == 0:
        return Decision(new.replicas, tuple(olds))
    all_pods = sum(olds) + new.replicas
    min_available = replicas - max_unavailable(replicas, strategy)
    new_unavailable = new.replicas - new.available
    most_down = all_pods - min_available - new_unavailable
    if most_down <= 0:
        return Decision(new.replicas, tuple(olds))
    # cleanupUnhealthyReplicas: the old pods that are not available go first
    cleaned = 0
    availables = [rs.available for rs in old]
    for i in range(len(olds)):
        if cleaned >= most_down:
            break
        if olds[i] == 0 or olds[i] == availables[i]:
            continue
        down = min(most_down - cleaned, olds[i] - availables[i])
        olds[i] -= down
        cleaned += down
    # scaleDownOldReplicaSetsForRollingUpdate: as long as enough pods stay available (the
    # ReplicaSets' status, which the cleanup above did not change)
    available = sum(availables) + new.available
    scaled = 0
    if available > min_available:
        total = available - min_available
        for i in range(len(olds)):
            if scaled >= total:
                break
            if olds[i] == 0:
                continue
            down = min(olds[i], total - scaled)
            olds[i] -= down
            scaled += down
    return Decision(new.replicas, tuple(olds), cleaned, scaled)


@dataclass(frozen=True)
class PodView:
    """A pod as the ReplicaSet controller ranks it for deletion.

    name: the pod; node: where it runs; ready: its Ready condition
    index: its order of creation (higher: newer)
    """

    name: str
    node: str
    ready: bool
    index: int


def pods_to_delete(pods: Sequence[PodView], count: int) -> list[str]:
    """The ReplicaSet controller's getPodsToDelete, simplified to what the testbed knows
    (upstream's ActivePodsWithRanks): not-ready pods first, then pods on nodes running more of
    the set's pods, then the newest."""
    per_node: dict[str, int] = {}
    for p in pods:
        per_node[p.node] = per_node.get(p.node, 0) + 1
    ranked = sorted(pods, key=lambda p: (p.ready, -per_node[p.node], -p.index))
    return [p.name for p in ranked[:max(count, 0)]]


@dataclass(frozen=True)
class ScaleEvent:
    """'Scaled up replica set <new> to N' / 'Scaled down replica set <old> to N', as the
    Deployment controller's events say.

    rs: "new" or "old"; direction: "up" or "down"; replicas: the ReplicaSet's new size
    """

    rs: str
    direction: str
    replicas: int

    def __str__(self) -> str:
        return f"Scaled {self.direction} replica set {self.rs} to {self.replicas}"


def simulate(replicas: int, strategy: RollingUpdate, max_syncs: int = 10_000
             ) -> list[ScaleEvent]:
    """A whole rolling update from `replicas` old pods when every new pod is available as soon
    as it is made and an old pod is gone as soon as it is scaled down: the sequence of scaling
    events upstream's documentation shows (3 replicas, 25%/25%: new 1, old 2, new 2, old 1,
    new 3, old 0)."""
    new, old = ReplicaSet(0, 0), ReplicaSet(replicas, replicas)
    events: list[ScaleEvent] = []
    for _ in range(max_syncs):
        d = reconcile(replicas, strategy, new, [old])
        if d.new_replicas != new.replicas:
            direction = "up" if d.new_replicas > new.replicas else "down"
            new = ReplicaSet(d.new_replicas, d.new_replicas)
            events.append(ScaleEvent("new", direction, new.replicas))
            continue
        if d.old_replicas[0] != old.replicas:
            old = ReplicaSet(d.old_replicas[0], d.old_replicas[0])
            events.append(ScaleEvent("old", "down", old.replicas))
            continue
        return events
    raise RuntimeError("the rollout did not settle")   # a bug in reconcile: never in practice
