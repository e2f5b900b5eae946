"""The Deployment controller's rolling logic (testbed.kubernetes.deployment) against upstream's
own examples: deployment_util_test.go (TestResolveFenceposts, TestMaxUnavailable,
TestNewRSNewReplicas), rolling_test.go (reconcileNewReplicaSet, reconcileOldReplicaSets,
scaleDownOldReplicaSetsForRollingUpdate) and the documentation's rollout of 3 replicas."""

from __future__ import annotations

import pytest

from testbed.kubernetes.deployment import (
    PodView,
    ReplicaSet,
    RollingUpdate,
    max_unavailable,
    new_rs_new_replicas,
    pods_to_delete,
    reconcile,
    resolve_fenceposts,
    scaled_value,
    simulate,
)


@pytest.mark.parametrize("surge, unavailable, desired, want", [
    ("0", "0", 0, (0, 1)),            # both zero: unavailable becomes 1
    ("39%", "39%", 10, (4, 3)),       # surge rounds up, unavailable down
    (None, "39%", 10, (0, 3)),
    ("39%", None, 10, (4, 0)),
    (None, None, 10, (0, 1)),
])
def test_resolve_fenceposts_as_upstream(surge, unavailable, desired, want):
    def value(raw):
        return None if raw is None else (int(raw) if raw.isdigit() else raw)
    assert resolve_fenceposts(value(surge), value(unavailable), desired) == want


@pytest.mark.parametrize("replicas, unavailable, want", [
    (10, 5, 5), (10, 10, 10), (5, 10, 5), (0, 10, 0),
    (10, "50%", 5), (10, "100%", 10), (5, "100%", 5),
])
def test_max_unavailable_as_upstream(replicas, unavailable, want):
    assert max_unavailable(replicas, RollingUpdate(0, unavailable)) == want


def test_defaults_25_percent_round_surge_up_and_unavailable_down():
    assert resolve_fenceposts("25%", "25%", 3) == (1, 0)
    assert resolve_fenceposts("25%", "25%", 4) == (1, 1)
    assert resolve_fenceposts("25%", "25%", 10) == (3, 2)
    assert scaled_value("25%", 1, round_up=False) == 0


@pytest.mark.parametrize("replicas, new, surge, old, want", [
    (1, 5, 1, [5], 5),          # cannot scale up: already past replicas + surge
    (6, 2, 10, [4], 6),         # scale up to replicas, not past them
])
def test_new_rs_new_replicas_as_upstream(replicas, new, surge, old, want):
    new_rs = ReplicaSet(new)
    all_rs = [ReplicaSet(n) for n in old] + [new_rs]
    assert new_rs_new_replicas(replicas, RollingUpdate(surge, 0), all_rs, new_rs) == want


@pytest.mark.parametrize("replicas, surge, old, new, want_new", [
    (10, 0, 10, 0, 0),      # should not scale up (scale-down of old is the other half)
    (10, 2, 10, 0, 2),
    (10, 2, 5, 0, 7),
    (10, 2, 10, 2, 2),
    (10, 2, 2, 11, 10),     # the new set past replicas is scaled down to them
])
def test_reconcile_new_replica_set_as_upstream(replicas, surge, old, new, want_new):
    d = reconcile(replicas, RollingUpdate(surge, 0), ReplicaSet(new, new),
                  [ReplicaSet(old, 0)])
    assert d.new_replicas == want_new


@pytest.mark.parametrize("unavailable, old, new, ready_old, ready_new, want_old", [
    (0, 10, 0, 10, 0, 9),
    (2, 10, 0, 10, 0, 8),
    (2, 10, 0, 8, 0, 8),     # the unhealthy old replicas are cleaned up
    (2, 10, 0, 9, 0, 8),     # one cleaned up, one ready pod scaled down
    (2, 8, 2, 8, 0, 8),      # the new set's unavailable pods block a further scale-down
])
def test_reconcile_old_replica_sets_as_upstream(unavailable, old, new, ready_old, ready_new,
                                                want_old):
    # maxSurge 0 as upstream's table, and the new set already at its size for this sync
    d = reconcile(10, RollingUpdate(0, unavailable), ReplicaSet(new, ready_new),
                  [ReplicaSet(old, ready_old)])
    if new == 0:   # upstream calls reconcileOldReplicaSets alone; with surge 0 nothing grows
        assert d.new_replicas == 0
    assert d.old_replicas == (want_old,)


@pytest.mark.parametrize("unavailable, ready, old, want_old", [
    (0, 10, 10, 9), (2, 10, 10, 8), (2, 8, 10, 8), (2, 10, 0, 0), (2, 1, 10, 8),
])
def test_scale_down_old_for_rolling_update(unavailable, ready, old, want_old):
    """upstream's scaleDownOldReplicaSetsForRollingUpdate table, through reconcile: its last
    row (1 of 10 ready) scales nothing down there; here the cleanup of unhealthy pods runs
    first in the same sync, as reconcileOldReplicaSets does, limited to allPods - minAvailable
    (2): 8 stay."""
    new = ReplicaSet(0, 0)
    d = reconcile(10, RollingUpdate(0, unavailable), new, [ReplicaSet(old, ready)])
    assert d.old_replicas == (want_old,)


def test_the_documentations_rollout_of_three_replicas():
    """kubernetes.io's 'Updating a Deployment' (nginx, 3 replicas, 25%/25%): at least 3 pods
    available, at most 4 in all, the events in this order."""
    assert [str(e) for e in simulate(3, RollingUpdate())] == [
        "Scaled up replica set new to 1", "Scaled down replica set old to 2",
        "Scaled up replica set new to 2", "Scaled down replica set old to 1",
        "Scaled up replica set new to 3", "Scaled down replica set old to 0"]


@pytest.mark.parametrize("replicas, strategy", [
    (4, RollingUpdate()), (10, RollingUpdate()), (10, RollingUpdate(3, 2)),
    (5, RollingUpdate(0, 1)), (5, RollingUpdate("100%", 0)), (1, RollingUpdate(0, "10%")),
])
def test_a_rollout_keeps_within_surge_and_unavailable(replicas, strategy):
    """Between 3 and 5 pods for 4 replicas (the documentation), and in general never more than
    replicas + maxSurge pods nor fewer than replicas - maxUnavailable available."""
    surge, unavailable = resolve_fenceposts(strategy.max_surge, strategy.max_unavailable,
                                            replicas)
    new, old = 0, replicas
    for e in simulate(replicas, strategy):
        if e.rs == "new":
            new = e.replicas
        else:
            old = e.replicas
        assert new + old <= replicas + surge
        assert new + old >= replicas - min(unavailable, replicas)
    assert (new, old) == (replicas, 0)


def test_pods_to_delete_not_ready_then_crowded_node_then_newest():
    pods = [PodView("web-0", "node1", True, 0), PodView("web-1", "node1", True, 1),
            PodView("web-2", "node2", True, 2), PodView("web-3", "node2", False, 3),
            PodView("web-4", "node1", True, 4)]
    assert pods_to_delete(pods, 3) == ["web-3", "web-4", "web-1"]
    assert pods_to_delete(pods, 0) == []
