"""The rollout experiment's fields (kind: rollout) and the variant settings it compares
(readinessGates, deregistrationDelay), read into the experiment and checked against the
topology. What the run does: testbed.experiments.rollout; the manual: docs/rollout.md.

    ROLLOUT_KEYS: the kind's own keys; read_rollout: them, as Experiment's fields
    READINESS_GATE: the condition type a variant's `readinessGates: true` gives every deployment
    with_variant_settings: a topology with a variant's gates and draining applied
    rollout_problems: the rolled deployment exists in the topology
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from testbed.errors import Problem
from testbed.spec.durations import fmt_s, seconds
from testbed.spec.fields import Reader, integer, name
from testbed.spec.model import Timing, Topology
from testbed.spec.yamldoc import Document

ROLLOUT_KEYS = {"duration", "rate", "timeout", "at", "deployment"}
# The pod condition the cloud LB controller sets once the pod's target is healthy (AWS's is
# target-health.elbv2.k8s.aws/<target group>, GKE's cloud.google.com/load-balancer-neg-ready)
READINESS_GATE = "target-health.cnlb.io/load-balancer"
VARIANT_KEYS = {"readinessGates", "deregistrationDelay"}


def read_rollout(r: Reader) -> dict[str, Any]:
    """duration, rate, timeout, at, deployment: the Experiment's keyword arguments."""
    duration = r.get((), "duration", seconds(1, 3600), default=60.0,
                     fix="write a duration like 60s (1s-1h): the rollout must end within it")
    rate = r.get((), "rate", integer(1, 100_000), default=200,
                 fix="use 1-100000 requests per second")
    timeout = r.get((), "timeout", seconds(0.01, 10), default=1.0,
                    fix="write a timeout like 1s (10ms-10s)")
    at = r.get((), "at", seconds(0, 3600), default=2.0,
               fix="write when the rollout starts after the load, like 2s")
    if at is not None and duration is not None and at >= duration:
        r.problem(("at",), f"{fmt_s(at)} is not before the end of the run ({fmt_s(duration)})",
                  "start the rollout earlier or make the duration longer")
    deployment = r.get((), "deployment", name(20), default=None,
                       fix="name a deployment of the topology (default: the measured "
                           "service's)")
    return {"duration_s": duration or 60.0, "rate": float(rate or 200),
            "timeout_s": timeout or 1.0, "rollout_at_s": at or 0.0, "deployment": deployment}


def read_variant_settings(r: Reader, vpath: tuple[Any, ...]) -> dict[str, Any]:
    """A variant's readinessGates (true/false) and deregistrationDelay (a duration): Variant's
    keyword arguments (None: the topology's)."""
    gates = r.get(vpath, "readinessGates", _boolean, default=None,
                  fix="write true (every deployment's pods get the LB's readiness gate) or false")
    delay = r.get(vpath, "deregistrationDelay", seconds(0, 3600), default=None,
                  fix="write the LB's draining time, like 5s, or 0 for none")
    return {"readiness_gates": gates, "deregistration_delay_s": delay}


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {raw!r}")
    return raw


def with_variant_settings(topology: Topology, kubernetes: Timing, gates: bool | None,
                          delay_s: float | None) -> Topology:
    """The topology with a variant's readiness gates (on every deployment) and LB draining."""
    deployments = topology.deployments if gates is None else tuple(
        replace(d, readiness_gates=(READINESS_GATE,) if gates else ())
        for d in topology.deployments)
    if delay_s is not None:
        kubernetes = replace(kubernetes, lb_deregistration_delay_s=delay_s)
    return replace(topology, deployments=deployments, kubernetes=kubernetes)


def rolled_deployment(topology: Topology, service: str, deployment: str | None) -> str | None:
    """The deployment a rollout replaces: the one named, else the measured service's."""
    if deployment is not None:
        return deployment
    svc = next((s for s in topology.services if s.name == service), None)
    return svc.selector if svc is not None else None


def rollout_problems(doc: Document, topology: Topology, service: str,
                     deployment: str | None) -> list[Problem]:
    """The rolled deployment must be one of the topology's, with pods. doc: the experiment"""
    r = Reader(doc)
    names = [d.name for d in topology.deployments]
    rolled = rolled_deployment(topology, service, deployment)
    where = ("deployment",) if deployment is not None else ("service",)
    if rolled not in names:
        r.problem(where, f"the topology has no deployment '{rolled}' to roll out",
                  f"use one of {', '.join(names)}" if names else "add a deployment")
    elif not next(d for d in topology.deployments if d.name == rolled).replicas:
        r.problem(where, f"deployment '{rolled}' has no replicas to replace",
                  "give it replicas: 1 or more")
    return r.problems
