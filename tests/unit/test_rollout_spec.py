"""The rollout's fields: a deployment's strategy.rollingUpdate, minReadySeconds and
readinessGates in the topology (Kubernetes' names, upstream's validation), and the rollout
experiment's fields and variant settings (readinessGates, deregistrationDelay)."""

from __future__ import annotations

import os

import pytest

from testbed.errors import InputError
from testbed.paths import REPO
from testbed.spec.experiment import load_resolved
from testbed.spec.rollout import READINESS_GATE
from testbed.spec.topology import load_topology

TOPOLOGY = """
name: t
nodes: {node1: {}, node2: {}}
deployments:
  web: {replicas: 4%s}
services:
  web: {type: LoadBalancer, port: 80, targetPort: 8080}
loadBalancer: {vip: 198.51.100.10, targets: container-native}
clients: {client1: {}}
"""


def topo(tmp_path, extra: str):
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY % extra)
    return load_topology(str(path))


def problems(tmp_path, extra: str) -> list[str]:
    with pytest.raises(InputError) as exc:
        topo(tmp_path, extra)
    return [str(p) for p in exc.value.problems]


def test_deployment_rollout_fields(tmp_path):
    d = topo(tmp_path, ", minReadySeconds: 2, strategy: {type: RollingUpdate, rollingUpdate: "
             "{maxSurge: 2, maxUnavailable: 10%}}, readinessGates: [{conditionType: x/y}]"
             ).deployments[0]
    assert (d.max_surge, d.max_unavailable, d.min_ready_s, d.readiness_gates) == \
        (2, "10%", 2.0, ("x/y",))
    d = topo(tmp_path, "").deployments[0]
    assert (d.max_surge, d.max_unavailable, d.min_ready_s, d.readiness_gates) == \
        ("25%", "25%", 0.0, ())


@pytest.mark.parametrize("extra, says", [
    (", strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}}",
     "maxUnavailable: may not be 0 when maxSurge is 0"),
    (", strategy: {rollingUpdate: {maxUnavailable: 150%}}", "150% is more than 100%"),
    (", strategy: {rollingUpdate: {maxSurge: -1}}", "maxSurge: expected a count"),
    (", strategy: {type: Recreate}", "strategy.type"),
    (", readinessGates: {conditionType: x}", "readinessGates: expected a list"),
    (", minReadySeconds: -1", "minReadySeconds: -1 is outside"),
])
def test_deployment_rollout_fields_refused(tmp_path, extra, says):
    found = problems(tmp_path, extra)
    assert len(found) == 1 and says in found[0] and ":5: deployments.web." in found[0], found


def test_shipped_rollout_experiment():
    res = load_resolved(os.path.join(REPO, "experiments", "rollout.yaml"))
    exp = res.experiment
    assert exp.kind == "rollout" and exp.rollout_at_s < exp.duration_s
    gates = {name: t.deployments[0].readiness_gates for name, t in res.variants.items()}
    for lb in ("l4", "l7"):   # container-native: gates x draining, through either LB
        assert gates[f"cn-{lb}-gates"] == (READINESS_GATE,) and gates[f"cn-{lb}"] == ()
        assert res.variants[f"cn-{lb}-gates-no-drain"].kubernetes.lb_deregistration_delay_s == 0
        assert res.variants[f"cn-{lb}-gates"].kubernetes.lb_deregistration_delay_s == \
            res.topology.kubernetes.lb_deregistration_delay_s
    kinds = {name: (t.mode, t.load_balancer.kind) for name, t in res.variants.items()}
    assert kinds["classic-l7"] == ("nodeport", "l7") and kinds["cn-l7"] == ("container-native",
                                                                          "l7")
    assert kinds["classic-l4"] == ("nodeport", "l4")
    assert len(res.variants) == len(exp.variants) == 12


def write_experiment(tmp_path, body: str) -> str:
    (tmp_path / "t.yaml").write_text(TOPOLOGY % "")
    path = tmp_path / "e.yaml"
    path.write_text("kind: rollout\ntopology: t.yaml\n" + body)
    return str(path)


@pytest.mark.parametrize("body, says", [
    ("duration: 10s\nat: 10s\nvariants: {cn: {mode: container-native}}\n",
     "at: 10s is not before the end of the run"),
    ("deployment: api\nvariants: {cn: {mode: container-native}}\n",
     "deployment: the topology has no deployment 'api'"),
    ("variants: {cn: {mode: container-native, readinessGates: yes-please}}\n",
     "readinessGates: expected true or false"),
    ("events: []\nvariants: {cn: {mode: container-native}}\n",
     "'events' belongs to kind failover"),
    ("variants: {a: {mode: container-native, readinessGates: true},\n"
     "           b: {mode: container-native, readinessGates: true}}\n",
     "runs the same as variant 'a'"),
    ("variants: {cn: {mode: container-native, lb: l9}}\n", "lb: "),
])
def test_rollout_experiment_refused(tmp_path, body, says):
    with pytest.raises(InputError) as exc:
        load_resolved(write_experiment(tmp_path, body))
    found = [str(p) for p in exc.value.problems]
    assert any(says in p for p in found), found


def test_a_variants_lb_is_its_topologys_load_balancer_kind(tmp_path):
    res = load_resolved(write_experiment(
        tmp_path, "variants: {a: {mode: container-native, lb: l7},\n"
                  "           b: {mode: container-native}}\n"))
    assert res.variants["a"].load_balancer.kind == "l7"
    assert res.variants["b"].load_balancer.kind == res.topology.load_balancer.kind == "l4"
    assert res.experiment.variant("a").lb == "l7" and res.experiment.variant("b").lb is None
