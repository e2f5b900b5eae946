"""testbed.emulation.podservers: the launcher as the cluster drives it, on 127.0.0.1.

No root and no namespaces: the servers get --bind 127.0.0.1 instead of --netns (server_flags'
line is checked on its own). Every launcher is stopped by its pid in the fixture's finalizer.
"""

import os
import signal
import socket
import subprocess
import time

import pytest

from testbed.emulation import journal, podservers
from testbed.emulation.podservers import Launcher, server_flags
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology
from tests.unit.test_podserver import TIMEOUT, Conn, free_port, get_json
from tests.unit.test_podserver import podserver_bin as podserver_bin  # noqa: F401 (fixture)


@pytest.fixture
def launched(podserver_bin, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    """A Launcher of the freshly built server; what it journaled in .journaled."""
    monkeypatch.setattr(podservers, "PODSERVER", str(podserver_bin))
    journaled = []
    lch = Launcher(str(tmp_path / "podservers.log"),
                   lambda pid: journaled.append(f"launcher {pid}"),
                   lambda servers: journaled.extend(f"{s.pod} {s.pid} {s.start_time}"
                                                    for s in servers))
    lch.journaled = journaled
    yield lch
    if lch.proc.poll() is None:
        lch.proc.kill()
    lch.proc.wait(TIMEOUT)


def flags(port, pod):
    return ["--port", str(port), "--pod", pod, "--node", "node1", "--bind", "127.0.0.1"]


def answer(port):
    conn = Conn(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
    try:
        return get_json(conn)
    finally:
        conn.close()


def test_servers_listen_answer_and_are_journaled_as_they_start(launched):
    ports = [free_port() for _ in range(3)]
    servers = launched.launch([(f"web-{i}", flags(p, f"web-{i}")) for i, p in enumerate(ports)])
    assert all(s.wait_ready(TIMEOUT) for s in servers)
    assert [answer(p)["pod"] for p in ports] == ["web-0", "web-1", "web-2"]
    assert all(s.pid > 0 and s.poll() is None for s in servers)
    assert launched.journaled == [f"launcher {launched.proc.pid}"] + [
        f"{s.pod} {s.pid} {journal.proc_start_time(s.pid)}" for s in servers]


def test_kill_wait_and_restart_like_popen(launched):
    port = free_port()
    (first,) = launched.launch([("web-0", flags(port, "web-0"))])
    assert first.wait_ready(TIMEOUT)
    with pytest.raises(subprocess.TimeoutExpired):
        first.wait(0.1)
    first.kill()
    assert first.wait(TIMEOUT) == -signal.SIGKILL and first.poll() == -signal.SIGKILL
    first.kill()   # gone: nothing is signalled (its pid may be another process's by now)
    (again,) = launched.launch([("web-0", flags(port, "web-0"))])
    assert again.wait_ready(TIMEOUT) and answer(port)["pod"] == "web-0"
    again.terminate()
    assert again.wait(TIMEOUT) == 0


def test_a_server_that_cannot_start_says_why(launched):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        (server,) = launched.launch([("web-0", flags(busy.getsockname()[1], "web-0"))])
        assert not server.wait_ready(TIMEOUT)
    finally:
        busy.close()
    assert server.poll() == 1
    assert "bind 127.0.0.1 port" in launched.log_line("web-0")
    assert launched.log_line("web-1") == ""


def test_servers_of_a_killed_launcher_are_gone_and_it_is_collected(launched):
    servers = launched.launch([(f"web-{i}", flags(free_port(), f"web-{i}")) for i in range(2)])
    assert all(s.wait_ready(TIMEOUT) for s in servers)
    launched.proc.kill()
    assert [s.wait(TIMEOUT) for s in servers] == [-signal.SIGKILL] * 2
    deadline = time.monotonic() + TIMEOUT
    while not launched.gone and time.monotonic() < deadline:
        time.sleep(0.01)
    assert launched.gone and launched.proc.returncode == -signal.SIGKILL   # no zombie
    assert not launched.alive()
    with pytest.raises(podservers.EnvironmentProblem, match="launcher has exited"):
        launched.launch([("web-9", flags(free_port(), "web-9"))])


def test_closed_launcher_exits_after_its_last_server(launched):
    (server,) = launched.launch([("web-0", flags(free_port(), "web-0"))])
    assert server.wait_ready(TIMEOUT)
    launched.close()
    time.sleep(0.1)
    assert launched.proc.poll() is None
    server.terminate()
    assert server.wait(TIMEOUT) == 0 and launched.proc.wait(TIMEOUT) == 0


def test_server_flags_carry_the_namespace_and_refuse_what_a_line_cannot_hold():
    pod = build_plan(load_topology(os.path.join(REPO, "topologies", "talk.yaml"))).pods[0]
    assert server_flags(pod, "/run/netns/cnlb-web-0") == [
        "--netns", "/run/netns/cnlb-web-0", "--port", "8080", "--pod", "web-0",
        "--node", "node1"]
    with pytest.raises(ValueError, match="cannot go on a launcher line"):
        server_flags(pod, "/run/netns/two words")
