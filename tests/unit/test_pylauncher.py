"""testbed.emulation.pylauncher: Python servers forked into a network namespace, reported in
the launcher protocol that testbed.emulation.launcher reads (root: setns needs it)."""

import os
import signal
import sys
import time

import pytest

from testbed.emulation.launcher import NOT_STARTED, LaunchedServer, ServerLauncher

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setns(2) needs root")
TIMEOUT = 10
TARGET = "tests.unit.pylauncher_target"
LAUNCHER = [sys.executable, "-S", "-m", "testbed.emulation.pylauncher"]


@pytest.fixture
def launcher(tmp_path):
    journaled = []
    lch = ServerLauncher(str(tmp_path / "servers.log"), lambda pid: journaled.append(pid),
                         lambda servers: journaled.extend(s.name for s in servers),
                         LaunchedServer, LAUNCHER)
    lch.journaled = journaled
    yield lch
    if lch.proc.poll() is None:
        lch.proc.kill()
    lch.proc.wait(TIMEOUT)


def wait_file(path):
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return open(path).read().split()


def test_servers_run_the_module_in_the_namespace_and_report_their_exit(launcher, tmp_path):
    files = [str(tmp_path / f"n{i}") for i in range(3)]
    servers = launcher.launch([(f"node{i}", ["--netns", "/proc/self/ns/net", TARGET, f])
                               for i, f in enumerate(files)])
    for server, path in zip(servers, files, strict=True):
        pid, netns = wait_file(path)
        assert int(pid) == server.pid                         # the forked child is the server
        assert netns == os.readlink("/proc/self/ns/net")     # it entered the namespace named
        assert server.poll() is None
    assert sorted(n for n in launcher.journaled if isinstance(n, str)) == \
        ["node0", "node1", "node2"]
    servers[0].terminate()
    assert servers[0].wait(TIMEOUT) == 3                      # its own exit status came back
    servers[1].kill()
    assert servers[1].wait(TIMEOUT) == -signal.SIGKILL
    launcher.close()                                          # no more lines ...
    assert launcher.proc.poll() is None                       # ... it waits for its last server
    servers[2].terminate()
    assert servers[2].wait(TIMEOUT) == 3
    launcher.proc.wait(TIMEOUT)


def test_a_bad_line_or_module_fails_that_server_only(launcher, tmp_path):
    bad_netns, bad_module, good = launcher.launch([
        ("a", ["--netns", str(tmp_path / "no-such-netns"), TARGET, str(tmp_path / "a")]),
        ("b", ["--netns", "/proc/self/ns/net", "tests.unit.no_such_module", "x"]),
        ("c", ["--netns", "/proc/self/ns/net", TARGET, str(tmp_path / "c")]),
    ])
    assert bad_netns.wait(TIMEOUT) == 1                        # forked, could not enter: exit 1
    assert bad_module.wait(TIMEOUT) == NOT_STARTED             # never forked
    assert "no-such-netns" in open(launcher.log).read()
    wait_file(str(tmp_path / "c"))
    assert good.poll() is None


def test_servers_die_with_their_launcher(launcher, tmp_path):
    (server,) = launcher.launch([("a", ["--netns", "/proc/self/ns/net", TARGET,
                                       str(tmp_path / "a")])])
    wait_file(str(tmp_path / "a"))
    launcher.proc.kill()
    assert server.wait(TIMEOUT) == -signal.SIGKILL
    assert not launcher.alive()


def test_sigterm_to_the_launcher_stops_every_server(launcher, tmp_path):
    servers = launcher.launch([(n, ["--netns", "/proc/self/ns/net", TARGET, str(tmp_path / n)])
                               for n in ("a", "b")])
    for n in ("a", "b"):
        wait_file(str(tmp_path / n))
    launcher.proc.send_signal(signal.SIGTERM)
    assert [s.wait(TIMEOUT) for s in servers] == [3, 3]
    assert launcher.proc.wait(TIMEOUT) == 0
