"""Reading YAML: any file gets a Document or one-line problems (never a traceback), each file is
read once (so /dev/stdin and pipes work), keys keep their text, merges override, and nesting,
aliases and size are bounded. Timings are measured in bench/yaml_limits.py, not here."""

import os
import subprocess
import sys
import threading

import pytest

from testbed.cli.commands import _is_experiment
from testbed.cli.main import main
from testbed.errors import InputError
from testbed.paths import REPO
from testbed.spec.yamldoc import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_PROBLEMS,
    MAX_VALUES,
    parse_document,
    read_document,
)
from tests.badfiles import LINE_RE

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")
QUICK = os.path.join(REPO, "experiments", "compare-quick.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(InputError) as err:
        parse_document("f.yaml", text)
    lines = [str(p) for p in err.value.problems]
    assert all("\n" not in p and " — " in p for p in lines), lines
    return lines


def one_line_refusal(argv, capsys) -> str:
    """Run the CLI; it must refuse with status 2 and one line per problem, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err and "Traceback" not in err
    for line in err.splitlines():
        assert " — " in line, line
    return err.splitlines()[0]


# -- bounded: nesting, aliases, values, size -----------------------------------------------------

@pytest.mark.parametrize("text", [
    "a: " + "[" * 100_000 + "\n",
    "a: " + "{b: " * 100_000 + "\n",
    "".join("  " * i + f"k{i}:\n" for i in range(200)),
    "- " * 5_000 + "x\n",
], ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"])
def test_deep_nesting_is_one_line_at_its_line(text):
    first = problems(text)[0]
    assert f"nested more than {MAX_DEPTH} levels deep" in first
    assert first.startswith("f.yaml:")


def test_nesting_up_to_the_limit_is_fine():
    doc = parse_document("f.yaml", "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    assert doc.data["a"] is not None


def test_billion_laughs_stops_early():
    text = "l0: &l0 [" + ", ".join(["lol"] * 10) + "]\n" + "".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    first = problems(text)[0]
    assert first.startswith("f.yaml:5: l4[") and f"past {MAX_VALUES} values" in first


def test_aliases_nested_past_the_depth_limit_are_refused():
    text = "a0: &a0 [[[[[[[[1]]]]]]]]\n" + "".join(
        f"a{i}: &a{i} [[[[[[[[*a{i - 1}]]]]]]]]\n" for i in range(1, 6))
    assert f"more than {MAX_DEPTH} levels deep" in problems(text)[0]


def test_too_many_values():
    first = problems("a: [" + "1," * (MAX_VALUES + 10) + "]\n")[0]
    assert first.startswith("f.yaml:1: a[") and f"more than {MAX_VALUES} values" in first


@pytest.mark.parametrize("text, line, words", [
    ("a: &x [1, *x]\n", 1, "alias '*x' refers to the value that contains it"),
    ("a: &x {b: {c: *x}}\n", 1, "alias '*x' refers to the value that contains it"),
    ("a: 1\nb: *nope\n", 2, "alias '*nope' has no anchor '&nope' before it"),
    ("a: *later\nb: &later 1\n", 1, "alias '*later' has no anchor"),
    ("x: &k name\n*k : 1\n", 2, "alias '*k' used as a key"),
])
def test_bad_aliases(text, line, words):
    first = problems(text)[0]
    assert first.startswith(f"f.yaml:{line}:") and words in first, first


def test_an_alias_is_a_copy_with_lines():
    doc = parse_document("f.yaml", "a: &x {b: [1, 2]}\nc:\n  d: *x\n")
    assert doc.data == {"a": {"b": [1, 2]}, "c": {"d": {"b": [1, 2]}}}
    assert doc.data["c"]["d"] is not doc.data["a"]
    assert doc.lines[("c", "d")] == 3 and doc.line(("c", "d", "b", 1)) == 1


# -- tags ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("!!int three", "'three' is not a valid !!int"),
    ("!!bool maybe", "'maybe' is not a valid !!bool"),
    ("!!float x", "'x' is not a valid !!float"),
    ("!!timestamp x", "tag '!!timestamp' is not supported"),
    ("!!timestamp 2024-01-01", "tag '!!timestamp' is not supported"),
    ("!!python/name:os.system", "tag '!!python/name:os.system' is not supported"),
    ("!!python/object/apply:os.system [echo]", "tag '!!python/object/apply:os.system' is not"),
    ("!foo x", "tag '!foo' is not supported"),
    ("!!binary aGk=", "tag '!!binary' is not supported"),
    ("!!set {a}", "tag '!!set' is not supported"),
    ("!!omap [a: 1]", "tag '!!omap' is not supported"),
    ("!!int " + "9" * 5000, "is not a valid !!int"),
])
def test_tags_other_than_plain_types_are_refused(value, words):
    first = problems(f"a:\n  b: {value}\n")[0]
    assert first.startswith("f.yaml:2: a.b: ") and words in first, first
    assert len(first) < 300


def test_plain_type_tags_are_read():
    doc = parse_document("f.yaml", "a: !!int 0x1F\nb: !!str 80\nc: !!float 1\nd: !!null ''\n"
                                   "e: !!bool yes\nf: ! 12\ng: !!map {x: 1}\nh: !!seq [1]\n")
    assert doc.data == {"a": 31, "b": "80", "c": 1.0, "d": None, "e": True, "f": 12,
                        "g": {"x": 1}, "h": [1]}


def test_something_that_only_looks_like_a_date_stays_text():
    assert parse_document("f.yaml", "a: 2024-13-45\n").data == {"a": "2024-13-45"}


# -- keys ---------------------------------------------------------------------------------------

def test_keys_keep_the_text_they_were_written_with():
    doc = parse_document("f.yaml", "on: 1\nno: 2\nyes: 3\noff: 4\n~: 5\n0x10: 6\n'y': 7\n")
    assert list(doc.data) == ["on", "no", "yes", "off", "~", "0x10", "y"]
    assert doc.lines[("off",)] == 4


def test_a_yaml_boolean_key_is_reported_as_written(tmp_path, capsys):
    f = tmp_path / "t.yaml"
    f.write_text(open(MINIMAL).read().replace("  node1: {subnet: az-a}",
                                              "  node1: {subnet: az-a, on: 1, off: 2}"))
    first = one_line_refusal(["validate", str(f)], capsys)
    assert "nodes.node1.on: unknown key 'on'" in first and "True" not in first


@pytest.mark.parametrize("text", ["? [a]\n: 1\n", "{a: 1}: 2\n", "[1, 2]:\n"])
def test_a_collection_as_key_is_refused(text):
    assert "a key must be a plain name" in problems(text)[0]


def test_duplicate_keys_are_reported_with_the_first_line():
    first = problems("a: 1\nb: 2\na: 3\n")[0]
    assert first.startswith("f.yaml:3: a: 'a' is given twice (first on line 1)")


# -- merge keys ---------------------------------------------------------------------------------

def test_an_explicit_key_overrides_a_merged_one():
    doc = parse_document("f.yaml", "nodes:\n  node1: &node {subnet: az-a, x: 1}\n"
                                   "  node2: {<<: *node, subnet: az-b}\n")
    assert doc.data["nodes"]["node2"] == {"subnet": "az-b", "x": 1}
    assert doc.lines[("nodes", "node2", "subnet")] == 3
    assert doc.lines[("nodes", "node2", "x")] == 2       # where the merged value is written


def test_the_first_of_several_merged_mappings_wins():
    doc = parse_document("f.yaml", "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc: {<<: [*a, *b], z: 3}\n")
    assert doc.data["c"] == {"x": 1, "y": 2, "z": 3}
    assert doc.lines[("c", "x")] == 1 and doc.lines[("c", "y")] == 2


def test_an_explicit_key_given_twice_beside_a_merge_is_still_a_duplicate():
    first = problems("a: &a {x: 1}\nb: {<<: *a, x: 2, x: 3}\n")[0]
    assert "'x' is given twice" in first


@pytest.mark.parametrize("value, kind", [("3", "int"), ("text", "str"), ("[1, 2]", "a list"),
                                         ("~", "nothing")])
def test_merge_of_something_not_a_mapping(value, kind):
    first = problems(f"s: &s {value}\nb:\n  <<: *s\n  x: 1\n")[0]
    assert first.startswith("f.yaml:3: b.<<: '<<' merges a mapping, got " + kind), first


def test_merge_override_topology_is_valid(tmp_path, capsys):
    f = tmp_path / "t.yaml"
    f.write_text(open(MINIMAL).read().replace(
        "subnets: {az-a: 192.168.0.0/24}", "subnets: {az-a: 192.168.0.0/24, az-b: 192.168.1.0/24}"
    ).replace("  node1: {subnet: az-a}\n  node2: {subnet: az-a}\n",
              "  node1: &node {subnet: az-a}\n  node2: {<<: *node, subnet: az-b}\n"))
    assert main(["validate", str(f)]) == 0, capsys.readouterr().err


# -- whole documents ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, words", [
    ("a: 1\n---\nb: 2\n", 2, "a second YAML document"),
    ("a: 1\nb: x\x01y\n", 2, "contains the control character U+0001"),
    ("a: [1\n", 2, "YAML syntax error"),
    ("", 1, "file is empty"),
    ("# only a comment\n", 1, "file is empty"),
])
def test_document_level_problems(text, line, words):
    first = problems(text)[0]
    assert first.startswith(f"f.yaml:{line}:") and words in first, first


# -- reading files: once, as a stream, bounded --------------------------------------------------

def test_dev_zero_is_refused_without_reading_it_all(capsys):
    first = one_line_refusal(["validate", "/dev/zero"], capsys)
    assert first.startswith("/dev/zero: file is larger than") and str(MAX_FILE_BYTES) in first


def test_dev_null_is_empty(capsys):
    assert "file is empty" in one_line_refusal(["validate", "/dev/null"], capsys)


def test_a_file_over_the_limit_is_refused(tmp_path, capsys):
    f = tmp_path / "big.yaml"
    f.write_bytes(b"# padding\n" * (MAX_FILE_BYTES // 10) + b"name: x\n")
    assert "file is larger than" in one_line_refusal(["validate", str(f)], capsys)


def test_a_file_at_the_limit_is_read(tmp_path):
    f = tmp_path / "full.yaml"
    body = b"name: x\n"
    f.write_bytes(body + b"#" * (MAX_FILE_BYTES - len(body)))
    assert read_document(str(f)).data == {"name": "x"}


def _fifo(tmp_path, payload: bytes) -> tuple[str, threading.Thread]:
    path = str(tmp_path / "pipe.yaml")
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as fh:
                fh.write(payload)
        except BrokenPipeError:     # the reader stopped at the limit, as it should
            pass
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return path, writer


def test_a_pipe_is_read_once(tmp_path, capsys):
    path, writer = _fifo(tmp_path, open(MINIMAL, "rb").read())
    assert main(["validate", path]) == 0, capsys.readouterr().err
    writer.join(5)
    assert f"{path}: ok" in capsys.readouterr().out


def test_an_endless_pipe_is_refused_at_the_limit(tmp_path, capsys):
    path, writer = _fifo(tmp_path, b"a: b\n" * (MAX_FILE_BYTES // 2))
    assert "file is larger than" in one_line_refusal(["validate", path], capsys)
    writer.join(5)


@pytest.mark.parametrize("source", [MINIMAL, QUICK], ids=["topology", "experiment"])
def test_dev_stdin(source):
    text = open(source).read()
    if source == QUICK:     # relative to the experiment file, which stdin is not
        text = text.replace("../topologies/minimal.yaml", MINIMAL)
    p = subprocess.run([sys.executable, "-m", "testbed.cli", "validate", "/dev/stdin"],
                       input=text, capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0 and p.stdout == "/dev/stdin: ok\n", p.stderr


def test_render_and_up_get_the_same_one_line_refusal(tmp_path, capsys):
    f = tmp_path / "deep.yaml"
    f.write_text("nodes: " + "[" * 10_000 + "\n")
    for argv in (["render", "plan", str(f)], ["up", str(f)], ["run", str(f)]):
        first = one_line_refusal(argv, capsys)
        assert LINE_RE.match(first) and "nested more than" in first, first


# -- which kind of file: decided from the parsed content ----------------------------------------

@pytest.mark.parametrize("text, experiment", [
    ('{"topology": "t.yaml", "variants": {}, "workloads": {}}', True),
    ('"kind": compare\n"variants": {}\n', True),
    ("kind: failover\n", True),
    ("name: t\nnodes: {node1: {}}\nkind: compare\n", False),
    ("name: t\n", False),
    ("services: [10, 100]\nvariants: {}\n", True),
    ("[1, 2]\n", False),
    ("just text\n", False),
])
def test_kind_is_decided_from_the_parsed_keys(text, experiment):
    assert _is_experiment(parse_document("f", text)) is experiment


def test_json_experiment_is_checked_as_an_experiment(tmp_path, capsys):
    f = tmp_path / "e.json"
    f.write_text(f'{{"topology": "{MINIMAL}", "repetitions": 0,\n'
                 ' "variants": {"a": {"mode": "nodeport"}},\n "workloads": {"latency": {}}}\n')
    first = one_line_refusal(["validate", str(f)], capsys)
    assert first.startswith(f"{f}:1: repetitions:") and "1-100" in first, first
    f.write_text(f.read_text().replace('"repetitions": 0', '"repetitions": 2'))
    assert main(["validate", str(f)]) == 0, capsys.readouterr().err


def test_validate_mixes_kinds_and_reports_in_file_order(tmp_path, capsys):
    topo, exp = tmp_path / "t.yaml", tmp_path / "e.yaml"
    topo.write_text(open(MINIMAL).read() + "on: 1\n")
    exp.write_text(open(QUICK).read().replace("../topologies/minimal.yaml", MINIMAL) + "off: 1\n")
    assert main(["validate", str(exp), str(topo)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "unknown key 'off'" in err[0] and "unknown key 'on'" in err[1], err


def test_reading_stops_after_many_problems():
    lines = problems("a: [" + "!!python/name:os.system x, " * (MAX_PROBLEMS * 10) + "]\n")
    assert len(lines) == MAX_PROBLEMS + 1
    assert f"stopped reading after {MAX_PROBLEMS} problems" in lines[-1]


def test_problems_found_before_a_stop_are_kept():
    lines = problems("a: 1\na: 2\nb: " + "[" * 100 + "\n")
    assert "'a' is given twice" in lines[0] and "nested more than" in lines[1]
