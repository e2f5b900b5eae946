"""Topology files: valid ones parse, broken ones get one line each pointing at file and line."""

import glob
import os
import subprocess
import sys

import pytest

from testbed.cli.main import main
from testbed.errors import InputError
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.fields import close_match
from testbed.spec.topology import load_topology, parse_topology
from testbed.spec.yamldoc import parse_document
from tests.badfiles import LINE_RE, expectation

BAD = os.path.join(REPO, "tests", "data", "bad")
SHIPPED = sorted(glob.glob(os.path.join(REPO, "topologies", "*.yaml")))


def bad_files():
    return sorted(f for f in glob.glob(os.path.join(BAD, "*.yaml")) if os.path.isfile(f))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
@pytest.mark.parametrize("mode", ["nodeport", "container-native"])
def test_shipped_topologies_are_valid(path, mode):
    topo = load_topology(path, mode=mode)
    assert topo.nodes and topo.deployments and topo.services


def test_at_least_forty_broken_files():
    assert len(bad_files()) + 1 >= 40   # + the directory case


@pytest.mark.parametrize("path", bad_files(), ids=os.path.basename)
def test_broken_file_gets_one_line_naming_file_line_and_fix(path, capsys):
    line, text = expectation(path)
    status = main(["validate", path])
    err = capsys.readouterr().err
    assert status == 2
    first = err.splitlines()[0]
    m = LINE_RE.match(first)
    assert m, f"not FILE:LINE: ... — fix: {first!r}"
    assert m.group("file") == path and int(m.group("line")) == line, first
    assert text in first, first
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err   # one problem in the file: one line, no echoes


def test_directory_instead_of_file(capsys):
    path = os.path.join(BAD, "a-directory.yaml")
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: is a directory") and " — " in err


def test_missing_file(capsys):
    assert main(["validate", "/nonexistent/topology.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_truly_empty_file(tmp_path, capsys):
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert main(["validate", str(f)]) == 2
    assert f"{f}:1: file is empty" in capsys.readouterr().err


def test_netem_missing_is_reported_only_when_asked_for(tmp_path):
    src = open(SHIPPED[0]).read()
    f = tmp_path / "delay.yaml"
    f.write_text(src + "links: {bw: 100, delay: 2ms}\n")
    with pytest.raises(InputError) as err:
        load_topology(str(f), netem=False)
    assert "netem" in str(err.value) and "links.delay" in str(err.value)
    assert load_topology(str(f), netem=True).links.delay_ms == 2.0
    plain = tmp_path / "plain.yaml"
    plain.write_text(src + "links: {bw: 100}\n")
    assert load_topology(str(plain), netem=False).links.bw == 100


def test_max_pods_applies_only_in_container_native(tmp_path):
    src = open(os.path.join(REPO, "topologies", "talk.yaml")).read().replace(
        "maxPodsPerNode: 17", "maxPodsPerNode: 2")
    f = tmp_path / "t.yaml"
    f.write_text(src)
    load_topology(str(f), mode="nodeport")
    with pytest.raises(InputError, match="maxPodsPerNode=2"):
        load_topology(str(f), mode="container-native")


@pytest.mark.parametrize("argv", [
    ["up"], ["frobnicate"], ["validate"], ["up", "x.yaml", "--mode", "fast"],
    ["render", "plan"], ["render", "kube-proxy", SHIPPED[0]], ["up", "x.yaml", "--bogus"],
])
def test_bad_command_lines_get_one_line_and_status_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_cli_process_prints_no_traceback():
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "validate", os.path.join(BAD, "empty.yaml")],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["node-named-like-pod.yaml", "bw-nan.yaml",
                                  "vpc-overlaps-default-cni.yaml"])
def test_real_command_refuses_with_status_2_and_no_traceback(name):
    path = os.path.join(BAD, name)
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "validate", path],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith(f"{path}:")


# -- what must stay accepted next to what is refused -----------------------------------------

MINIMAL = """name: t
vpc: {cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}}
nodes: {node1: {subnet: az-a}, node2: {subnet: az-a}}
deployments: {web: {replicas: 3}}
services: {web: {port: 80}}
"""


def _parse(text: str, mode=None):
    return parse_topology(parse_document("t.yaml", text), mode=mode)


def _problems(text: str, mode=None) -> list[str]:
    with pytest.raises(InputError) as err:
        _parse(text, mode)
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize("extra", [
    "cni: {overlay: host-gw}",                                  # one subnet: L2 adjacency
    "cni: {podCIDR: 100.64.0.0/16, serviceCIDR: 172.31.0.0/16}",  # shared and private ranges
    "loadBalancer: {vip: 198.51.100.250}",                      # one LB service: the last VIP
    "loadBalancer: {healthCheck: {interval: 100ms}}",           # the timeout follows: 50ms
    "links: {bw: 0.1, delay: 1us, loss: 100}",
    "clients: {vpc: {}, lb: {}, web-x: {}, web-01: {}, c0: {}}",  # not a switch, LB host or pod
])
@pytest.mark.parametrize("mode", ["nodeport", "container-native"])
def test_edges_of_the_rules_stay_accepted(extra, mode):
    topo = _parse(MINIMAL + extra + "\n", mode)
    build_plan(topo)


def test_ip_masq_is_flannels_default_and_can_be_turned_off():
    assert _parse(MINIMAL).cni.ip_masq is True
    topo = _parse(MINIMAL + "cni: {ipMasq: false}\n", "nodeport")
    assert topo.cni.ip_masq is False and build_plan(topo).ip_masq is False
    (problem,) = _problems(MINIMAL + "cni: {ipMasq: sometimes}\n")
    assert "cni.ipMasq" in problem and "true" in problem, problem


def test_a_local_service_keeps_its_health_check_node_port():
    topo = _parse(MINIMAL.replace("{port: 80}", "{port: 80, externalTrafficPolicy: Local, "
                                                "healthCheckNodePort: 30090}"))
    assert topo.services[0].health_check_node_port == 30090


def test_a_short_interval_gets_a_shorter_default_timeout():
    hc = _parse(MINIMAL + "loadBalancer: {healthCheck: {interval: 300ms}}\n").load_balancer.health_check
    assert (hc.interval_s, hc.timeout_s) == (0.3, 0.15)


def test_a_service_written_alone_takes_every_default():
    assert _parse(MINIMAL.replace("{web: {port: 80}}", "{web: }")).services[0].port == 80


def test_vpc_clash_with_default_ranges_points_at_vpc_cidr_and_names_both_ways_out():
    text = MINIMAL.replace("cidr: 192.168.0.0/16, subnets: {az-a: 192.168.0.0/24}",
                           "cidr: 10.244.0.0/16, subnets: {az-a: 10.244.0.0/24}")
    [problem] = _problems(text)
    assert problem.startswith("t.yaml:2: vpc.cidr: 10.244.0.0/16 overlaps the default pod CIDR")
    assert "cni." not in problem.split(" — ")[0] and "cni.podCIDR" in problem.split(" — ")[1]
    written = _problems(text + "cni: {podCIDR: 10.244.0.0/16}\n")
    assert written == ["t.yaml:6: cni.podCIDR: pod CIDR 10.244.0.0/16 overlaps the VPC "
                       "(10.244.0.0/16) — choose a range outside the VPC, or move the VPC "
                       "(vpc.cidr)"]


def test_pod_limit_points_at_the_deployment_that_crosses_it():
    text = MINIMAL.replace("deployments: {web: {replicas: 3}}",
                           "deployments:\n  api: {replicas: 2}\n  web:\n    replicas: 40\n")
    [problem] = _problems(text, mode="container-native")
    assert problem.startswith("t.yaml:7: deployments.web.replicas: 21 pods on node 'node1' "
                              "(and 1 more node) exceed vpc.maxPodsPerNode=17")


def test_mode_written_at_the_top_says_where_the_mode_goes():
    [problem] = _problems(MINIMAL + "mode: container-native\n")
    assert "did you mean" not in problem and "loadBalancer.targets" in problem and "--mode" in problem


def test_client_fields_say_clients_take_none():
    [problem] = _problems(MINIMAL + "clients: {client1: {ip: 203.0.113.9}}\n")
    assert "takes no fields" in problem and "valid keys" not in problem


@pytest.mark.parametrize("word, choices, hint", [
    ("mode", ["nodes", "name", "vpc"], None), ("container", ["nodeport", "container-native"],
                                               "container-native"),
    ("loadbalancer", ["ClusterIP", "LoadBalancer"], "LoadBalancer"), ("linkz", ["links"], "links"),
    ("Locale", ["Cluster", "Local"], "Local"), ("node_port", ["nodePort"], "nodePort"),
    ("targetport", ["port", "targetPort"], "targetPort"), ("xyz", ["links", "nodes"], None),
    ("spred", ["spread"], "spread"), ("az-c", ["az-a", "az-b"], "az-b"),
])
def test_did_you_mean_only_for_close_typos(word, choices, hint):
    assert close_match(word, choices) == hint
