"""The scaling experiment's pods sweep, without a cluster: the topology scaled to n pods (pure),
the sizes checked against the topology (one line each, at the size's line, saying what to
change), and every size the checks accept builds as a user's topology would."""

import itertools
import os
from dataclasses import replace

import pytest

from testbed.errors import InputError
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.experiment import load_experiment, load_resolved
from testbed.spec.model import MAX_NODES, pods_per_node
from testbed.spec.scaling import (
    DEFAULT_PODS_PER_NODE,
    node_count,
    node_subnets,
    scale_topology,
    scaled_deployment,
    subnet_prefix_for,
)
from testbed.spec.topology import load_topology
from tests.badfiles import LINE_RE
from tests.unit.test_validate_property import check_buildable

TOPOLOGIES = os.path.join(REPO, "topologies")
ZONES = os.path.join(TOPOLOGIES, "zones.yaml")
MINIMAL = os.path.join(TOPOLOGIES, "minimal.yaml")
TALK = os.path.join(TOPOLOGIES, "talk.yaml")
VARIANTS = ("variants:\n  nodeport-cluster: {mode: nodeport}\n"
            "  container-native: {mode: container-native}\n")


def experiment(tmp_path, body, topology=ZONES, variants=VARIANTS, name="e.yaml"):
    path = tmp_path / name
    path.write_text(f"kind: scaling\ntopology: {topology}\n{body}\n{variants}")
    return str(path)


def problems(path):
    try:
        load_resolved(path)
    except InputError as exc:
        return [str(p) for p in exc.problems]
    return []


# -- the scaled topology ----------------------------------------------------------------------

def test_zones_at_1000_pods_is_50_nodes_cycling_over_the_ten_subnets():
    base = load_topology(ZONES)
    grown = scale_topology(base, 1000, 20)
    assert [n.name for n in grown.nodes] == [f"node{k}" for k in range(1, 51)]
    subnets = [s.name for s in base.vpc.subnets]
    assert [n.subnet for n in grown.nodes] == [subnets[k % 10] for k in range(50)]
    (web,) = grown.deployments
    assert (web.name, web.replicas, web.placement) == ("web", 1000, ())
    assert set(pods_per_node(grown).values()) == {20}
    assert grown.vpc.max_pods_per_node == 20 and grown.doc is None
    # what the topology says besides nodes and pods is kept
    assert (grown.services, grown.clients, grown.load_balancer, grown.cni) == \
        (base.services, base.clients, base.load_balancer, base.cni)
    assert scale_topology(base, 1000, 20) == grown   # pure: the same input, the same cluster


def test_never_fewer_nodes_than_the_topology_and_no_more_than_needed():
    base = load_topology(ZONES)            # 2 nodes
    assert [node_count(base, n, 20) for n in (1, 10, 40, 41, 1000)] == [2, 2, 2, 3, 50]
    assert len(scale_topology(base, 10, 20).nodes) == 2
    assert max(pods_per_node(scale_topology(base, 41, 20)).values()) == 14


def test_max_pods_per_node_is_raised_to_what_a_node_gets():
    base = load_topology(TALK)             # maxPodsPerNode 17
    assert scale_topology(base, 100, 40).vpc.max_pods_per_node == 34   # 100 pods on 3 nodes
    assert scale_topology(base, 30, 40).vpc.max_pods_per_node == 17    # never lowered


def test_host_gw_keeps_every_node_in_the_first_nodes_subnet():
    base = load_topology(ZONES)
    hostgw = replace(base, cni=replace(base.cni, overlay="host-gw"))
    assert [s.name for s in node_subnets(hostgw)] == ["az-a"]
    assert {n.subnet for n in scale_topology(hostgw, 200, 20).nodes} == {"az-a"}


def test_other_deployments_keep_their_replicas_spread_and_the_services_one_grows():
    base = load_topology(TALK)
    api = replace(base.deployments[0], name="api", replicas=2, placement=(("node1", 2),))
    two = replace(base, deployments=(api, base.deployments[0]))
    assert scaled_deployment(two, "web") == "web" and scaled_deployment(two, None) == "api"
    grown = scale_topology(two, 60, 20, "web")
    assert [(d.name, d.replicas, d.placement) for d in grown.deployments] == [
        ("api", 2, ()), ("web", 60, ())]
    with pytest.raises(ValueError, match="no deployment"):
        scale_topology(replace(base, deployments=()), 10)


@pytest.mark.parametrize("pods,prefix", [(1, 25), (63, 25), (64, 24), (191, 24), (192, 23),
                                         (447, 23), (448, 22), (1000, 21)])
def test_subnet_prefix_for_holds_the_pods_above_the_node_addresses(pods, prefix):
    assert subnet_prefix_for(pods) == prefix
    room = 2 ** (32 - prefix) - 1 - 64             # .64 up to the one before broadcast
    assert room >= pods and (prefix == 25 or room // 2 - 32 < pods)   # and no longer prefix would


# -- the experiment file ----------------------------------------------------------------------

def test_shipped_scaling_sweeps_pods_up_to_1000_and_services():
    exp = load_experiment(os.path.join(REPO, "experiments", "scaling.yaml"))
    assert exp.pods[-1] == 1000 and exp.pods == tuple(sorted(set(exp.pods)))
    assert exp.pods_per_node == DEFAULT_PODS_PER_NODE and exp.services
    assert exp.to_dict()["pods"] == list(exp.pods)


def test_pods_alone_and_the_default_pods_per_node(tmp_path):
    exp = load_resolved(experiment(tmp_path, "pods: [4, 8]")).experiment
    assert (exp.pods, exp.pods_per_node, exp.services) == ((4, 8), 20, ())


@pytest.mark.parametrize("body,line,text", [
    ("pods: [10, 10]", 3, "pods[1]: 10 does not grow from the 10 before it"),
    ("pods: [0]", 3, "pods[0]: 0 is outside 1-5000"),
    ("pods: 100", 3, "pods: expected a list of pod counts"),
    ("pods: [10]\npodsPerNode: 0", 4, "podsPerNode: 0 is outside 1-250"),
    ("services: [10]\npodsPerNode: 5", 4, "podsPerNode sizes the clusters of the pods sweep"),
    ("endpoints: 5", 1, "missing required field 'services' or 'pods'"),
])
def test_bad_sweep_fields(tmp_path, body, line, text):
    path = experiment(tmp_path, body)
    (first, *_) = problems(path)
    m = LINE_RE.match(first)
    assert m and m.group("file") == path and int(m.group("line")) == line, first
    assert text in first, first


def test_a_size_container_native_subnets_cannot_hold_names_the_prefix_needed(tmp_path):
    path = experiment(tmp_path, "pods: [100, 2000, 5000]")
    got = problems(path)
    assert len(got) == 2, got
    assert got[0].startswith(f"{path}:3: pods[1]: 2000 pods put 200 pods in subnet 'az-a' "
                             "(192.168.0.0/24), which has 191 addresses for pods"), got
    assert "variant 'container-native'" in got[0]
    assert "make subnet 'az-a' a /23 or larger" in got[0]
    assert "pods[2]" in got[1] and "a /22 or larger" in got[1]
    # the same sizes are fine when no variant is container-native
    only = experiment(tmp_path, "pods: [100, 2000, 5000]", name="np.yaml",
                      variants="variants: {np: {mode: nodeport}}\n")
    assert problems(only) == []


def test_more_nodes_than_the_testbed_supports(tmp_path):
    path = experiment(tmp_path, "pods: [5000]\npodsPerNode: 10", topology=MINIMAL,
                      variants="variants: {np: {mode: nodeport}}\n")
    (only,) = problems(path)
    assert f"pods[0]: 5000 pods at podsPerNode 10 need 500 nodes, more than the {MAX_NODES} " \
           "supported — raise podsPerNode to at least 20" in only, only


def test_a_single_subnet_topology_says_to_add_subnets(tmp_path):
    path = experiment(tmp_path, "pods: [10, 1200]", topology=MINIMAL,
                      variants="variants: {np: {mode: nodeport}}\n")
    (only,) = problems(path)
    assert only.startswith(f"{path}:3: pods[1]: 1200 pods at podsPerNode 20 need 60 nodes, "
                           "60 of them in subnet 'az-a' (192.168.0.0/24), which has room for 54"), \
        only
    assert only.endswith("raise podsPerNode to at least 23, or add subnets to the topology")


def test_what_the_topologys_own_checks_find_is_said_too(tmp_path):
    # a client named like a scaled node: the topology's name check, pointing back at the size
    topo = tmp_path / "t.yaml"
    topo.write_text(open(ZONES).read().replace("client1: {}", "node9: {}"))
    path = experiment(tmp_path, "pods: [10, 200]", topology=str(topo),
                      variants="variants: {np: {mode: nodeport}}\n")
    (only,) = problems(path)
    assert only.startswith(f"{path}:3: pods[1]: 'node9' is also the name of a node"), only
    assert "grown to 200 pods in mode nodeport for variant 'np'" in only


# -- what the checks accept builds ------------------------------------------------------------

SIZES = (1, 7, 50, 191, 400, 1000, 1910, 2500)
PER_NODE = (1, 20, 64)


@pytest.mark.parametrize("topology", ["minimal.yaml", "talk.yaml", "large.yaml", "zones.yaml"])
def test_every_accepted_size_builds_and_every_refused_one_is_one_line(tmp_path, topology):
    """cnlb validate's promise, for the scaled clusters: a size the checks accept renders and
    builds like a user's topology; a refused one is one line at its size's line."""
    path = os.path.join(TOPOLOGIES, topology)
    base = load_topology(path)
    accepted = 0
    for per_node, n in itertools.product(PER_NODE, SIZES):
        exp = experiment(tmp_path, f"pods: [{n}]\npodsPerNode: {per_node}", topology=path,
                         name=f"{per_node}-{n}.yaml")
        got = problems(exp)
        if got:
            assert all(LINE_RE.match(p) and p.startswith(f"{exp}:3: pods[0]: ") for p in got), got
            continue
        accepted += 1
        grown = scale_topology(base, n, per_node, "web")
        for mode in ("nodeport", "container-native"):
            check_buildable(replace(grown, mode=mode, load_balancer=replace(
                grown.load_balancer, targets=mode)))
        assert len(build_plan(grown).pods) == n + sum(
            d.replicas for d in base.deployments if d.name != "web")
    assert accepted >= 10
