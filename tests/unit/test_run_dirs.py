"""Run directories given to report, plot and agree: bad meta.json and records.jsonl are bad
input (one line each, exit 2); a last record cut by a crash is read without it, with a warning;
agree on runs with nothing to compare says why (exit 2) instead of "0/0 intervals overlap"."""

import json
import os
import subprocess
import sys
import time

import pytest

from testbed.analysis.records import RunWriter
from testbed.analysis.rundir_check import check_run_dir
from testbed.cli.main import main
from testbed.paths import REPO


def run_dir(path, values=(1.0, 1.1, 0.9), name="e", variant="v"):
    w = RunWriter(str(path), experiment={"name": name}, git={"revision": "x"})
    for rep, v in enumerate(values):
        w.record(name, variant, rep, "latency_p50_ms", v, workload="latency")
    w.finish()
    return str(path)


def with_meta(path, text: str) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "meta.json"), "w") as fh:
        fh.write(text)
    return str(path)


def meta_of(path) -> dict:
    with open(os.path.join(path, "meta.json")) as fh:
        return json.load(fh)


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_problem(path) -> str:
    problems = [str(p) for p in check_run_dir(str(path)).problems]
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize("text, words", [
    ("", "meta.json: empty — "),
    ("   \n", "meta.json: empty — "),
    ('{"format": 1,\n "status": ', "meta.json:2: not JSON ("),
    ("[1, 2]", "meta.json:1: a list, not an object — "),
    ("null", "meta.json:1: null, not an object — "),
    ('"text"', "meta.json:1: text, not an object — "),
    ('{"format": 1, "status": "ok", "variants": [], "experiment": null} trailing', "not JSON ("),
])
def test_meta_that_is_not_a_json_object_is_one_problem(tmp_path, text, words):
    d = with_meta(tmp_path / "run", text)
    problem = one_problem(d)
    assert problem.startswith(os.path.join(d, "meta.json")) and words in problem
    assert "run the experiment again" in problem


def test_meta_not_utf8_and_meta_a_directory(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "meta.json").write_bytes(b"\xff\xfe{}")
    assert "not UTF-8" in one_problem(d)
    (d / "meta.json").unlink()
    (d / "meta.json").mkdir()
    assert "cannot be read" in one_problem(d)


def test_each_missing_or_mistyped_field_is_named_with_its_line(tmp_path):
    good = run_dir(tmp_path / "good")
    meta = meta_of(good)
    del meta["status"]
    meta["variants"] = "v"
    meta["format"] = True
    meta["experiment"] = {"name": "e", "repetitions": "three"}
    d = with_meta(tmp_path / "bad", json.dumps(meta, indent=1))
    problems = [str(p) for p in check_run_dir(d).problems]
    lines = json.dumps(meta, indent=1).splitlines()
    line_of = {k: next(i + 1 for i, line in enumerate(lines) if line.startswith(f' "{k}":'))
               for k in ("format", "variants")}
    path = os.path.join(d, "meta.json")
    problems = [p.split(" — ")[0] + " — " for p in problems]
    assert f"{path}: status: missing — " in problems
    assert f"{path}:{line_of['format']}: format: true/false, not a whole number — " in problems
    assert f"{path}:{line_of['variants']}: variants: text, not a list — " in problems
    assert any(": experiment.repetitions: text, not a whole number or null — " in p
               for p in problems)
    assert len(problems) == 4


def test_field_values_the_readers_cannot_use(tmp_path):
    meta = meta_of(run_dir(tmp_path / "good"))
    for field, value, words in [("format", 2, "format: 2 is not a format this cnlb reads"),
                                ("status", "done", "status: 'done' is not one of running, ok"),
                                ("variants", ["a", 3], "variants[1]: a number, not a variant name"),
                                ("faults", ["x"], "faults[0]: text, not an object"),
                                ("plans", {"a": 1}, "plans.a: a number, not an object")]:
        d = with_meta(tmp_path / field, json.dumps({**meta, field: value}, indent=1))
        assert words in one_problem(d)


def test_a_good_run_and_a_run_still_running_are_accepted(tmp_path):
    d = run_dir(tmp_path / "run")
    assert check_run_dir(d).problems == [] and check_run_dir(d).warnings == []
    running = RunWriter(str(tmp_path / "running"), git={})    # killed before finish: status running
    running.record("e", "v", 0, "errors", 0)
    assert check_run_dir(str(tmp_path / "running")).problems == []


def test_no_directory_and_no_meta(tmp_path):
    assert "no such directory — give results/<run-id>" in one_problem(tmp_path / "nope")
    assert "not a run directory (no meta.json)" in one_problem(tmp_path)


def test_a_cut_last_record_is_a_warning_garbage_elsewhere_is_a_problem(tmp_path):
    d = run_dir(tmp_path / "run")
    records = os.path.join(d, "records.jsonl")
    with open(records, "a") as fh:
        fh.write('{"experiment": "e", "variant": "v", "repe')     # a crash mid-write
    check = check_run_dir(d)
    assert check.problems == []
    assert check.warnings == [f"{records}:4: warning: the last line was cut (the run stopped while "
                              "writing it); read without it"]
    with open(records, "a") as fh:        # the same line, now followed by others: not a crash
        fh.write('\n[1]\n{"variant": 3, "metric": "errors", "value": "1"}\n{"variant": "v"}\n')
    problems = [str(p) for p in check_run_dir(d).problems]
    assert [p.split(" — ")[0] for p in problems] == [
        f"{records}:4: not JSON (Unterminated string starting at)",
        f"{records}:5: a list, not a record object",
        f"{records}:6: variant: a number, not text",
        f"{records}:6: value: text, not a number or null",
        f"{records}:7: metric: missing",
        f"{records}:7: value: missing"]


def test_a_file_of_garbage_gets_a_bounded_number_of_lines(tmp_path):
    d = run_dir(tmp_path / "run")
    with open(os.path.join(d, "records.jsonl"), "a") as fh:
        fh.write("garbage\n" * 500)
    problems = [str(p) for p in check_run_dir(d).problems]
    assert len(problems) == 21 and "480 more line(s) with problems like these" in problems[-1]


def test_report_and_plot_refuse_bad_meta_with_exit_2(tmp_path, capsys):
    d = with_meta(tmp_path / "run", "")
    for command in ("report", "plot"):
        code, out, err = cli(capsys, command, d)
        assert code == 2 and out == ""
        assert err == (f"{os.path.join(d, 'meta.json')}: empty — restore the meta.json "
                       "`cnlb run` wrote, or run the experiment again\n")
    assert not os.path.exists(os.path.join(d, "report.md"))
    assert not os.path.exists(os.path.join(d, "figures"))


def test_report_warns_of_a_cut_last_record_and_goes_on(tmp_path, capsys):
    d = run_dir(tmp_path / "run")
    with open(os.path.join(d, "records.jsonl"), "a") as fh:
        fh.write('{"variant": "v", "metr')
    code, out, err = cli(capsys, "report", d)
    assert code == 0 and out.strip().endswith("report.md")
    assert "records.jsonl:4: warning: the last line was cut" in err


def test_agree_refuses_two_garbage_runs_naming_both(tmp_path, capsys):
    a = with_meta(tmp_path / "a", "")
    b = with_meta(tmp_path / "b", "{")
    code, out, err = cli(capsys, "agree", a, b)
    assert code == 2 and "intervals overlap" not in out
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(os.path.join(a, "meta.json"))
    assert lines[1].startswith(os.path.join(b, "meta.json") + ":1: not JSON")


def test_agree_on_runs_with_nothing_to_compare_says_why(tmp_path, capsys):
    a = run_dir(tmp_path / "a")
    other = run_dir(tmp_path / "other", name="f", variant="w")
    single = run_dir(tmp_path / "single", values=(1.0,))
    empty = run_dir(tmp_path / "empty", values=())
    code, out, err = cli(capsys, "agree", a, other)
    assert code == 2 and out == ""
    assert err.strip() == (f"cnlb agree: {a} and {other} have no variant, metric and workload in "
                           "common (experiments 'e' and 'f') — give two runs of one experiment")
    code, out, err = cli(capsys, "agree", a, single)
    assert code == 2 and "has no confidence interval (one repetition gives none)" in err
    code, out, err = cli(capsys, "agree", empty, a)
    assert code == 2 and f"{empty} holds no measurements" in err
    code, out, err = cli(capsys, "agree", a, run_dir(tmp_path / "b", values=(1.05, 1.15, 0.95)))
    assert code == 0 and "1/1 intervals overlap" in out


def _wchan(pid: int) -> str:
    """Where in the kernel a process sleeps (pipe_read while it waits on a FIFO)."""
    try:
        with open(f"/proc/{pid}/wchan") as fh:
            return fh.read()
    except OSError:
        return ""


def test_a_killed_validate_says_only_interrupted(tmp_path):
    """Ctrl-C or SIGTERM during a command that builds nothing: no word of removing anything."""
    fifo = str(tmp_path / "topology.yaml")
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "validate", fifo], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # opening the write end succeeds only once validate has the fifo open for reading: it is
    # then blocked reading it, long past installing its SIGTERM handler
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()
    # a signal that lands between two reads, before Python looks at it, is only seen when the
    # next read returns (PEP 475): signal it once the kernel shows it asleep in the read
    deadline = time.time() + 10
    while time.time() < deadline and "pipe" not in _wchan(proc.pid):
        time.sleep(0.01)
    try:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 130
    assert err == "cnlb: interrupted\n"


def test_only_commands_that_build_say_what_was_removed(monkeypatch, capsys):
    import testbed.cli.commands as cli_module

    def interrupted(args):
        raise KeyboardInterrupt
    for name in ("cmd_validate", "cmd_up", "cmd_report"):
        monkeypatch.setattr(cli_module, name, interrupted)
    assert cli(capsys, "validate", "x.yaml")[2] == "cnlb: interrupted\n"
    assert cli(capsys, "report", "x")[2] == "cnlb: interrupted\n"
    code, _, err = cli(capsys, "up", "x.yaml")
    assert code == 130 and err == "cnlb: interrupted; everything the testbed made was removed\n"
