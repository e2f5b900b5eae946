"""Who holds the cluster: the lock file names its holder (pid, start time, command line, since
when); `cnlb status` shows it, `cnlb down` refuses a foreground holder unless --force, and then
stops it by pid and start time. No root: the state directory is a temporary one and the holder
a plain process that takes the lock."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from testbed.emulation import journal as owner
from testbed.emulation.journal import Holder, Lock, lock_holder, parse_holder, proc_start_time
from testbed.emulation.session import format_status, is_detached_owner
from testbed.paths import REPO

HOLD = ("import sys, time; from testbed.emulation.journal import Lock\n"
        "assert Lock().acquire(); print('held', flush=True); time.sleep(600)\n")


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    root = str(tmp_path / "state")
    monkeypatch.setattr(owner, "STATE_ROOT", root)
    return root


def cnlb(root, *args):
    env = dict(os.environ, CNLB_STATE_DIR=root)
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def holder(state_root):
    """A foreground process holding the lock, as `cnlb up` would (but building nothing)."""
    env = dict(os.environ, CNLB_STATE_DIR=state_root)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, "up", "topologies/minimal.yaml"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


def test_the_lock_names_its_holder_until_released(state_root):
    assert lock_holder() is None
    lock = Lock()
    before = time.time()
    assert lock.acquire()
    try:
        held = lock_holder()
        assert held.pid == os.getpid() and held.start == proc_start_time(os.getpid())
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
            assert list(held.argv) == [a.decode() for a in fh.read().split(b"\0") if a]
        assert before - 1 <= held.since <= time.time() + 1
        assert lock.holder() == os.getpid()
        assert f"pid {os.getpid()} (`" in lock.busy_message()
    finally:
        lock.release()
    assert lock_holder() is None and lock.holder() is None


def test_a_holder_killed_with_9_holds_nothing(state_root, holder):
    assert lock_holder().pid == holder.pid
    holder.kill()
    holder.wait()
    with open(os.path.join(state_root, "lock")) as fh:
        assert json.loads(fh.read())["pid"] == holder.pid      # its content stays behind ...
    assert lock_holder() is None                               # ... but names no live process
    assert Lock().acquire()


def test_a_recycled_pid_is_not_the_holder(state_root):
    os.makedirs(state_root)
    with open(os.path.join(state_root, "lock"), "w") as fh:   # our pid, another start time
        json.dump({"pid": os.getpid(), "start": proc_start_time(os.getpid()) - 1, "argv": []}, fh)
    assert lock_holder() is None


@pytest.mark.parametrize("text, pid", [
    ("", None), ("\n", None), ("garbage", None), ("[1]", None), ('{"pid": "1"}', None),
    ('{"pid": -4}', None), ("true", None), ("123\n", 123), ('{"pid": 7, "argv": "x"}', 7)])
def test_parse_holder(text, pid):
    held = parse_holder(text)
    assert (held.pid if held else None) == pid


def test_the_command_is_shown_as_typed():
    def command(*argv):
        return Holder(1, None, argv, None).command()
    assert command("/v/bin/python3", "/v/bin/cnlb", "up", "a b.yaml") == "cnlb up 'a b.yaml'"
    assert command("/usr/bin/python3.11", "-m", "testbed.cli", "run", "e.yaml") == "cnlb run e.yaml"
    assert command("/usr/bin/python3", "-m", "pytest", "-q") == "/usr/bin/python3 -m pytest -q"
    assert command() == "?"
    described = Holder(42, None, ("cnlb", "up", "a\nb"), time.time() - 300).describe()
    assert described.startswith("pid 42 (`cnlb up 'a\\nb'`, since ") and ", 5 min ago)" in described
    up = ("python", "-m", "testbed.cli", "up", "f")
    assert is_detached_owner(Holder(1, None, up + ("--owner",), 0))
    assert not is_detached_owner(Holder(1, None, up, 0))


def test_status_names_a_foreground_holder(state_root, holder):
    p = cnlb(state_root, "status")
    assert p.returncode == 0, p.stderr
    assert f"held by a foreground process: pid {holder.pid} (`" in p.stdout
    assert "up topologies/minimal.yaml" in p.stdout and "cnlb down --force" in p.stdout
    assert p.stdout.splitlines()[-1] == "no cluster is up yet: nothing more to show"
    p = cnlb(state_root, "status", "--json")
    status = json.loads(p.stdout)
    assert status["holder"]["pid"] == holder.pid and status["holder"]["kind"] == "foreground"
    assert status["holder"]["argv"][-2:] == ["up", "topologies/minimal.yaml"]
    assert status["state"] == "building"


def test_down_refuses_a_foreground_holder_then_force_stops_it(state_root, holder):
    p = cnlb(state_root, "down")
    assert p.returncode == 3 and p.stdout == ""
    assert p.stderr.startswith("cnlb: the cluster is held by a foreground process, "
                               f"pid {holder.pid} (`")
    assert "`cnlb down --force`" in p.stderr and len(p.stderr.splitlines()) == 1
    assert holder.poll() is None                     # refused: it runs on
    p = cnlb(state_root, "pod", "remove", "web-0")   # and requests name it too
    assert p.returncode == 3 and f"pid {holder.pid}" in p.stderr
    p = cnlb(state_root, "down", "--force")
    assert p.returncode == 0 and p.stdout == "cluster removed\n"
    assert f"stopping the foreground holder, pid {holder.pid}" in p.stderr
    assert holder.wait(timeout=10) == -signal.SIGTERM
    assert lock_holder() is None


def test_nothing_holds_the_cluster(state_root):
    p = cnlb(state_root, "status")
    assert p.returncode == 3 and "no cluster is running" in p.stderr
    p = cnlb(state_root, "down", "--force")
    assert p.returncode == 0 and p.stdout == "no cluster is running\n"


def test_format_status_of_a_foreground_cluster_as_built():
    status = {
        "cluster": "minimal", "mode": "nodeport", "file": "topologies/minimal.yaml",
        "state": "running", "as_built": True,
        "holder": {"pid": 42, "start": 1, "argv": ["cnlb", "up", "topologies/minimal.yaml"],
                   "since": None, "kind": "foreground"},
        "owner": {"pid": 42, "alive": True},
        "controller": {"pid": 43, "alive": True, "rest": "http://127.0.0.1:1/v1/"},
        "nodes": [{"name": "node1", "ip": "192.168.0.10", "subnet": "az-a", "failed": False}],
        "pods": [{"name": "web-0", "node": "node1", "ip": "10.244.1.2", "healthy": True}],
        "services": [],
        "load_balancers": [{"vip": "198.51.100.10", "port": 80, "service": "web",
                            "targets": "nodeport", "backends": {"error": "connection refused"}}],
    }
    lines = format_status(status)
    assert lines[:2] == ["cluster minimal (nodeport) from topologies/minimal.yaml",
                         "held by a foreground process: pid 42 (`cnlb up topologies/minimal.yaml`)"]
    assert "controller pid 43 alive (http://127.0.0.1:1/v1/)" in lines
    assert not any(line.startswith("owner pid") for line in lines)
    assert "  backends unknown: connection refused" in lines
