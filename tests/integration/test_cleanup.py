"""Nothing of the testbed outlives it: after a normal run, Ctrl-C or SIGTERM at several stages of
`cnlb up`, and kill -9 followed by `cnlb clean` (or the next `cnlb up`)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.emulation.journal import STATE_ROOT
from testbed.paths import REPO

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")
CNLB = [sys.executable, "-m", "testbed.cli"]


def start_up(*args):
    return subprocess.Popen(CNLB + ["up", MINIMAL, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(proc, text, timeout=120):
    """Read the process's output until a line contains text; return everything read."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}; output:\n{''.join(seen)}")


def test_check_run_leaves_nothing(no_leftovers):
    p = subprocess.run(CNLB + ["up", MINIMAL, "--check"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "reachability: all as expected" in p.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["fabric ...", "switches ...", "is up"])
def test_interrupt_at_any_stage_removes_everything(no_leftovers, sig, stage):
    proc = start_up()
    wait_for(proc, stage)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0), out
    assert "Traceback" not in out, out


def test_kill_9_then_clean_removes_everything(no_leftovers):
    proc = start_up()
    wait_for(proc, "is up")
    proc.kill()
    proc.wait(30)
    assert os.path.exists(os.path.join(STATE_ROOT, "current", "journal.jsonl"))
    p = subprocess.run(CNLB + ["clean"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "removed" in p.stdout


def test_kill_9_then_next_up_cleans_first(no_leftovers):
    proc = start_up()
    wait_for(proc, "is up")
    proc.kill()
    proc.wait(30)
    p = subprocess.run(CNLB + ["up", MINIMAL, "--check"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "crashed earlier run" in p.stderr


def test_second_up_is_refused_while_one_runs(no_leftovers):
    proc = start_up()
    try:
        wait_for(proc, "is up")
        p = subprocess.run(CNLB + ["up", MINIMAL, "--check"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 3 and "another cluster is running" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
