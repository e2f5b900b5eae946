"""Topology files: valid ones parse, broken ones get one line each pointing at file and line."""

import glob
import os
import re
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.badfiles import LINE_RE, expectation
from testbed.cli.main import main
from testbed.errors import InputError
from testbed.spec.yamldoc import parse_document
from testbed.spec.topology import load_topology, parse_topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


# -- property: any mutation of a valid file is either valid or one-line errors -------------

def _leaves(data, path=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaves(v, path + (i,))
    yield path


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                 st.text(max_size=12), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                 st.sampled_from(["192.168.0.0/24", "10.0.0.0/8", "az-a", "node1", "web", "Local",
                                  "container-native", "1ms", "30080", "0.0.0.0/0"]))


@settings(max_examples=int(os.environ.get("CNLB_HYPOTHESIS_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_topologies_never_crash(data):
    path = data.draw(st.sampled_from(SHIPPED[:2]))
    tree = yaml.safe_load(open(path))
    leaves = [p for p in _leaves(tree) if p]
    target = data.draw(st.sampled_from(leaves))
    action = data.draw(st.sampled_from(["replace", "delete", "rename"]))
    parent = tree
    for part in target[:-1]:
        parent = parent[part]
    key = target[-1]
    if action == "replace":
        parent[key] = data.draw(JUNK)
    elif action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "rename" and isinstance(parent, dict):
        parent[str(key) + data.draw(st.text(max_size=3))] = parent.pop(key)
    text = yaml.safe_dump(tree, sort_keys=False)
    try:
        topo = parse_topology(parse_document("mutant.yaml", text))
    except InputError as exc:
        assert exc.problems
        for problem in exc.problems:
            line = str(problem)
            assert "\n" not in line and line.startswith("mutant.yaml") and " — " in line, line
    else:
        assert topo.nodes
