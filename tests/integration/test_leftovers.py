"""The leftover check on real clusters: a process named cnlb-something that is not the test's
(another terminal's `cnlb validate`, say) does not fail a test; what a killed `cnlb up` left
behind is found, by its journal, until `cnlb clean` removes it."""

import os
import signal
import subprocess
import sys

import pytest

from testbed.emulation.cluster import Cluster
from testbed.emulation.journal import alive, proc_start_time
from testbed.spec.topology import load_topology
from tests.integration.leftovers import Watch
from tests.integration.test_cleanup import MINIMAL, REPO, start_up, wait_for

CNLB = [sys.executable, "-m", "testbed.cli"]


def orphan(script: str) -> tuple[int, int]:
    """A command whose parent exits at once, as if another terminal ran it: (pid, start)."""
    out = subprocess.run(["bash", "-c", f"({script}) </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    return pid, proc_start_time(pid)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


@pytest.fixture
def someone_elses_cnlb():
    """Processes whose command lines say cnlb, started before the test and not by it; one
    becomes so while the test runs. Killed by pid afterwards."""
    procs = [orphan("exec -a cnlb-validate sleep 120"),
             orphan("sleep 1; exec -a cnlb-status sleep 120")]
    yield procs
    for pid, start in procs:
        if alive(pid, start):
            os.kill(pid, signal.SIGKILL)


def test_a_cluster_run_beside_someone_elses_cnlb_leaves_nothing(someone_elses_cnlb, no_leftovers):
    with Cluster(load_topology(MINIMAL, mode="nodeport")) as cluster:
        assert cluster.sh("client1", "curl -s -m 3 http://198.51.100.10/").returncode == 0
    for pid, start in someone_elses_cnlb:
        assert alive(pid, start) and "cnlb-" in cmdline(pid)   # still there for the check


def test_a_killed_up_leaves_what_the_journal_names_until_clean(machine_ready):
    watch = Watch()
    proc = start_up()
    try:
        wait_for(proc, "is up")
        proc.kill()
        proc.wait(30)
        left = watch.leftovers()
        assert {"processes", "bridges", "links", "state"} <= set(left), left
        assert any("controllers.run" in p for p in left["processes"]), left["processes"]
        assert any("podserver" in p for p in left["processes"]), left["processes"]
    finally:
        clean = subprocess.run(CNLB + ["clean"], cwd=REPO, capture_output=True, text=True,
                               timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert watch.leftovers() == {}
