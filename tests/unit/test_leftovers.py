"""The integration tests' leftover check (tests/integration/leftovers.py) counts what a test's
clusters wrote in their journals and the processes the test started, and nothing else: a
process called cnlb-something that another terminal runs is not a leftover; a journaled process
left alive is, even after teardown deleted its journal. Runs without root, on a private state
root, with sleep processes it starts and kills by pid."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from testbed.emulation.journal import Journal, StateDir, alive, proc_start_time
from tests.integration.leftovers import Watch, descendants


def orphan(script: str) -> int:
    """Start a shell command whose parent exits at once (as if another terminal ran it);
    returns its pid."""
    out = subprocess.run(["bash", "-c", f"({script}) </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


def wait_for(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout:.0f}s")
        time.sleep(0.01)


@pytest.fixture
def pids():
    """pids this test started; each one still running at the end is killed."""
    started: list = []
    yield started
    for pid, start in started:
        if alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    for pid, start in started:
        wait_for(lambda pid=pid, start=start: not alive(pid, start), f"pid {pid} exiting")


def keep(pids: list, pid: int) -> int:
    pids.append((pid, proc_start_time(pid)))
    return pid


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "state")


def test_a_process_named_cnlb_that_the_test_did_not_make_is_no_leftover(root, pids):
    other = keep(pids, orphan("exec -a cnlb-validate sleep 60"))
    late = keep(pids, orphan("sleep 0.3; exec -a cnlb-status sleep 60"))   # becomes it meanwhile
    wait_for(lambda: "cnlb-validate" in cmdline(other), "exec")
    watch = Watch(root)
    journal = Journal(StateDir(os.path.join(root, "current")))   # a cluster that cleans up
    journal.record("start", cluster="t", pid=os.getpid(), pid_start=proc_start_time(os.getpid()))
    journal.close()
    shutil.rmtree(os.path.join(root, "current"))
    wait_for(lambda: "cnlb-status" in cmdline(late), "exec")
    assert watch.leftovers() == {}
    assert alive(*pids[0]) and alive(*pids[1])


def test_a_journaled_process_left_alive_is_a_leftover_after_its_journal_is_gone(root, pids):
    server = keep(pids, orphan("exec sleep 60"))
    late = keep(pids, orphan("exec sleep 60"))
    state = StateDir(os.path.join(root, "current"))
    watch = Watch(root)
    journal = Journal(state)
    journal.process(server, "web-0: podserver")
    watch.poll()
    journal.process(late, "vpc controller")      # written after the watch last looked
    journal.record("link", name="lo")             # a root-namespace link that exists
    journal.close()
    left = watch.leftovers()
    assert left["processes"] == sorted([f"{server} sleep 60", f"{late} sleep 60"])
    assert left["links"] == ["lo"] and left["state"] == [state.path]
    shutil.rmtree(state.path)                    # what teardown does, and it kills:
    for pid, _ in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(*p) for p in pids), "the kill")
    assert watch.leftovers() == {"links": ["lo"]}


def test_a_journal_from_before_the_watch_is_not_the_tests(root, pids):
    server = keep(pids, orphan("exec sleep 60"))
    journal = Journal(StateDir(os.path.join(root, "current")))
    journal.process(server, "someone's cluster")
    watch = Watch(root)
    journal.close()
    assert watch.leftovers() == {}


def test_a_process_the_test_started_is_a_leftover_until_it_ends(root, pids):
    watch = Watch(root)
    proc = subprocess.Popen(["sleep", "60"])
    keep(pids, proc.pid)
    assert watch.leftovers() == {"processes": [f"{proc.pid} sleep 60"]}
    proc.kill()
    proc.wait()
    assert watch.leftovers() == {}


def test_a_child_of_a_journaled_process_is_followed_after_its_parent_dies(root, pids):
    parent = keep(pids, orphan("exec sh -c 'sleep 60 & wait'"))
    wait_for(lambda: descendants({parent: None}), "the child")
    (child, start), = descendants({parent: None})
    pids.append((child, start))
    watch = Watch(root)
    journal = Journal(StateDir(os.path.join(root, "current")))
    journal.process(parent, "vpc controller")
    journal.close()
    watch.poll()                                  # sees the child below a journaled process
    os.kill(parent, signal.SIGKILL)               # the child is orphaned, not killed
    wait_for(lambda: not alive(parent, pids[0][1]), "the kill")
    left = watch.leftovers()
    assert left["processes"] == [f"{child} sleep 60"]
