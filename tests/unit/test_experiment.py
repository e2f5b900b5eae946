"""Experiment files: shipped ones load and resolve; broken ones get one line each pointing at
file and line, like topologies (tests/unit/test_spec.py)."""

import glob
import json
import os

import pytest

from testbed.errors import InputError
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.experiment import (
    Variant,
    load_experiment,
    load_resolved,
    resolve,
    seconds,
    validate_files,
)
from testbed.spec.topology import load_topology
from tests.badfiles import LINE_RE, expectation

BAD = os.path.join(REPO, "tests", "data", "bad-experiments")
SHIPPED = sorted(glob.glob(os.path.join(REPO, "experiments", "*.yaml")))
TALK = os.path.join(REPO, "topologies", "talk.yaml")


def bad_files():
    return sorted(glob.glob(os.path.join(BAD, "*.yaml")))



def problems_of(path):
    """What `cnlb validate`/`cnlb run` would print: one line per problem."""
    try:
        load_resolved(path)
    except InputError as exc:
        return [str(p) for p in exc.problems]
    return []


def write(tmp_path, text, name="e.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


# -- valid files ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_experiments_load_and_resolve(path):
    res = load_resolved(path)
    exp = res.experiment
    assert exp.variants and list(res.variants) == [v.name for v in exp.variants]
    assert res.service == "web"
    for variant in exp.variants:
        topo = res.variants[variant.name]
        assert topo.mode == variant.mode
        build_plan(topo)                      # every variant's cluster has an address plan
    json.dumps(exp.to_dict())                 # meta.json can hold it
    if exp.kind == "compare":
        assert [w.name for w in exp.workloads] == \
            ["latency", "keepalive", "load", "throughput", "path"]
    assert validate_files([path]) == []


def test_shipped_kinds():
    kinds = {load_experiment(p).kind for p in SHIPPED}
    assert kinds == {"compare", "scaling", "failover", "rollout"}
    assert {os.path.basename(p) for p in SHIPPED} >= {"compare.yaml", "compare-quick.yaml",
                                                      "scaling.yaml", "failover.yaml"}


def test_compare_file_fields():
    exp = load_experiment(os.path.join(REPO, "experiments", "compare.yaml"))
    assert (exp.name, exp.kind, exp.seed, exp.repetitions, exp.warmup_s) == \
        ("compare", "compare", 42, 3, 1.0)
    assert exp.topology == os.path.normpath(TALK) or os.path.samefile(exp.topology, TALK)
    assert [(v.name, v.mode, v.external_traffic_policy, v.to) for v in exp.variants] == [
        ("nodeport-cluster", "nodeport", "Cluster", "vip"),
        ("nodeport-local", "nodeport", "Local", "vip"),
        ("container-native", "container-native", "Cluster", "vip"),
        ("direct", "container-native", "Cluster", "pods"),
        ("nodeport-l7", "nodeport", "Cluster", "vip"),
        ("container-native-l7", "container-native", "Cluster", "vip"),
        ("classic-bgp", "nodeport", "Cluster", "vip"),
        ("container-native-bgp", "container-native", "Cluster", "vip"),
        ("classic-nftables", "nodeport", "Cluster", "vip"),
        ("classic-ebpf", "nodeport", "Cluster", "vip"),
        ("classic-ebpf-dsr", "nodeport", "Cluster", "vip")]
    assert [v.lb for v in exp.variants] == [None] * 4 + ["l7", "l7"] + [None] * 5
    assert [v.cni for v in exp.variants] == [None] * 6 + ["bgp", "bgp", None, None, "bgp"]
    assert [v.proxy_mode for v in exp.variants] == [None] * 8 + ["nftables", "ebpf", "ebpf"]
    assert [v.bpf_lb_mode for v in exp.variants] == [None] * 10 + ["dsr"]
    load = exp.workload("load")
    assert (load.duration_s, load.connections, load.threads) == (5.0, 32, 2)
    assert exp.workload("latency").requests == 200 and exp.workload("nothing") is None


def test_a_direct_variant_is_container_native_and_not_the_same_as_one_through_the_vip(tmp_path):
    f = write(tmp_path, f"topology: {TALK}\nvariants:\n  cn: {{mode: container-native}}\n"
                        "  direct: {mode: container-native, to: pods}\n"
                        "  again: {mode: container-native, to: vip}\n"
                        "workloads: {latency: {}}\n")
    problems = problems_of(f)
    assert len(problems) == 1, problems
    assert "variants.again: runs the same as variant 'cn'" in problems[0], problems
    exp = load_experiment(write(tmp_path, f"topology: {TALK}\n"
                                          "variants: {d: {mode: container-native, to: pods}}\n"
                                          "workloads: {latency: {}}\n", "d.yaml"))
    assert exp.variant("d").to == "pods" and exp.to_dict()["variants"][0]["to"] == "pods"


def test_quick_compare_is_quick():
    exp = load_experiment(os.path.join(REPO, "experiments", "compare-quick.yaml"))
    assert exp.repetitions == 1
    per_variant = sum(w.duration_s or 0 for w in exp.workloads) + exp.warmup_s * len(exp.workloads)
    assert per_variant <= 12
    assert load_topology(exp.topology).name == "minimal"


def test_failover_and_scaling_fields():
    fo = load_experiment(os.path.join(REPO, "experiments", "failover.yaml"))
    assert (fo.duration_s, fo.rate, fo.timeout_s, fo.workloads) == (33.0, 200.0, 1.0, ())
    assert [(e.at_s, e.action, e.target) for e in fo.events] == [
        (2.0, "remove-pod", "web-0"), (6.0, "fail-pod", "web-1"), (10.0, "fail-node", "node2")]
    sc = load_experiment(os.path.join(REPO, "experiments", "scaling.yaml"))
    assert sc.services == (10, 100, 1000, 10000) and sc.endpoints == 5
    assert [w.name for w in sc.workloads] == ["latency"]


def test_topology_override_and_relative_path(tmp_path):
    sub = tmp_path / "exps"
    sub.mkdir()
    f = write(sub, "topology: ../topo.yaml\nvariants: {cn: {mode: container-native}}\n"
                   "workloads: {latency: {}}\n")
    with pytest.raises(InputError, match=r"e.yaml:1: topology: no such file '../topo.yaml'"):
        load_experiment(f)
    exp = load_experiment(f, topology=TALK)
    assert exp.topology == TALK and exp.name == "e"
    (tmp_path / "topo.yaml").write_text(open(TALK).read())
    assert load_experiment(f).topology == str(tmp_path / "topo.yaml")


def test_events_are_sorted_by_time(tmp_path):
    f = write(tmp_path, f"topology: {TALK}\nkind: failover\nduration: 20s\n"
                        "variants: {a: {mode: nodeport}}\n"
                        "events:\n  - {at: 9s, action: fail-node, node: node3}\n"
                        "  - {at: 2s, action: remove-pod, pod: web-1}\n")
    exp = load_resolved(f).experiment
    assert [(e.at_s, e.index) for e in exp.events] == [(2.0, 1), (9.0, 0)]


@pytest.mark.parametrize("raw,value", [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5),
                                       (0, 0.0), ("250us", 0.00025)])
def test_seconds(raw, value):
    assert seconds(0, 3600)(raw) == pytest.approx(value)


@pytest.mark.parametrize("raw", [5, "5", "5 hours", True, None, [1], "-1s"])
def test_seconds_rejects(raw):
    with pytest.raises(ValueError):
        seconds(0, 3600)(raw)


# -- Variant.apply ----------------------------------------------------------------------------

def test_variant_apply_sets_mode_and_policy_on_load_balancer_services():
    talk = load_topology(TALK)
    local = Variant("local", "nodeport", "Local").apply(talk)
    assert local.mode == "nodeport" and local.load_balancer.targets == "nodeport"
    web = local.services[0]
    assert web.external_traffic_policy == "Local" and web.health_check_node_port is None
    plan = build_plan(local)
    assert plan.services[0].health_check_node_port is not None     # the plan assigned one
    cn = Variant("cn", "container-native").apply(talk)
    assert cn.mode == "container-native" and cn.services[0].external_traffic_policy == "Cluster"
    # untouched
    assert talk.services[0].external_traffic_policy == "Cluster" and talk.mode == "nodeport"


def test_variant_apply_keeps_given_health_check_port_and_other_service_types(tmp_path):
    text = open(TALK).read().replace(
        "externalTrafficPolicy: Cluster}",
        "externalTrafficPolicy: Local, healthCheckNodePort: 31000}\n"
        "  internal: {type: ClusterIP, selector: web, port: 81}")
    topo = load_topology(write(tmp_path, text, "t.yaml"))
    local = Variant("l", "nodeport", "Local").apply(topo)
    assert local.services[0].health_check_node_port == 31000
    assert local.services[1] == topo.services[1]
    cluster = Variant("c", "nodeport", "Cluster").apply(topo)
    assert cluster.services[0].health_check_node_port is None
    assert cluster.services[0].external_traffic_policy == "Cluster"


def test_resolve_checks_each_mode_against_the_topology(tmp_path):
    topo_file = write(tmp_path, open(TALK).read().replace("maxPodsPerNode: 17",
                                                          "maxPodsPerNode: 2"), "t.yaml")
    exp_file = write(tmp_path, f"topology: {topo_file}\nvariants:\n  np: {{mode: nodeport}}\n"
                               "  cn: {mode: container-native}\nworkloads: {latency: {}}\n")
    with pytest.raises(InputError) as err:
        load_resolved(exp_file)
    line = str(err.value.problems[0])
    assert line.startswith(topo_file) and "maxPodsPerNode=2" in line and "variant 'cn'" in line
    only_np = write(tmp_path, f"topology: {topo_file}\nvariants: {{np: {{mode: nodeport}}}}\n"
                              "workloads: {latency: {}}\n", "np.yaml")
    assert list(load_resolved(only_np).variants) == ["np"]


def test_resolve_needs_a_load_balancer_service(tmp_path):
    topo_file = write(tmp_path, open(TALK).read().replace("type: LoadBalancer", "type: NodePort")
                      .replace("externalTrafficPolicy: Cluster", ""), "t.yaml")
    exp = load_experiment(write(tmp_path, f"topology: {topo_file}\n"
                                          "variants: {a: {mode: nodeport}}\n"
                                          "workloads: {latency: {}}\n"))
    with pytest.raises(InputError, match="has no LoadBalancer service"):
        resolve(exp, load_topology(topo_file))


# -- broken files -----------------------------------------------------------------------------

def test_at_least_twelve_broken_files():
    assert len(bad_files()) >= 12


@pytest.mark.parametrize("path", bad_files(), ids=os.path.basename)
def test_broken_file_gets_one_line_naming_file_line_and_fix(path):
    line, text = expectation(path)
    problems = problems_of(path)
    assert problems, f"{path} was accepted"
    first = problems[0]
    m = LINE_RE.match(first)
    assert m, f"not FILE:LINE: ... — fix: {first!r}"
    assert m.group("file") == path and int(m.group("line")) == line, first
    assert text in first, first
    assert all("\n" not in p and " — " in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path):
    f = write(tmp_path, f"topology: {TALK}\nrepetitions: 0\nwarmup: 5\n"
                        "variants:\n  a: {mode: x}\n"
                        "workloads:\n  load: {threads: 100}\n")
    problems = problems_of(f)
    assert len(problems) >= 4, problems
    assert [int(LINE_RE.match(p).group("line")) for p in problems] == sorted(
        int(LINE_RE.match(p).group("line")) for p in problems)


def test_missing_experiment_file_points_at_experiments():
    with pytest.raises(InputError, match="see experiments/"):
        load_experiment("/nonexistent/experiment.yaml")


def test_datapath_is_auto_unless_the_file_asks_for_afxdp(tmp_path):
    base = (f"topology: {TALK}\nvariants: {{cn: {{mode: container-native}}}}\n"
            "workloads: {latency: {}}\n")
    assert load_experiment(write(tmp_path, base)).datapath == "auto"
    exp = load_experiment(write(tmp_path, base + "datapath: afxdp\n", "x.yaml"))
    assert exp.datapath == "afxdp"
    (problem,) = problems_of(write(tmp_path, base + "datapath: dpdk\n", "bad.yaml"))
    assert "bad.yaml:4: datapath:" in problem and "afxdp" in problem, problem
