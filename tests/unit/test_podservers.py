"""testbed.emulation.podservers: the launcher as the cluster drives it, on 127.0.0.1.

No root and no namespaces: the servers get --bind 127.0.0.1 instead of --netns (server_flags'
line is checked on its own). Every launcher is stopped by its pid in the fixture's finalizer.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import time

import pytest

from testbed.emulation import journal, podservers
from testbed.emulation.podservers import Launcher, served_ports, server_flags
from testbed.errors import EnvironmentProblem
from testbed.paths import REPO
from testbed.plan.addresses import PortPlan, build_plan
from testbed.spec.topology import load_topology
from tests.unit.test_podserver import (
    TIMEOUT,
    Conn,
    free_port,
    free_udp_port,
    get_json,
    udp_ask,
    wait_for,
)
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
    with pytest.raises(EnvironmentProblem, match="launcher has exited"):
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


def _talk_plan():
    return build_plan(load_topology(os.path.join(REPO, "topologies", "talk.yaml")))


def test_a_pod_serves_every_target_port_of_the_services_selecting_it():
    plan = _talk_plan()
    pod = plan.pods[0]
    (svc,) = [s for s in plan.services if s.selector == pod.deployment][:1]
    multi = dataclasses.replace(svc, ports=(
        PortPlan("http", 80, pod.port, "TCP", 30080),        # the container port: once
        PortPlan("dns", 53, 5353, "UDP", 30053),
        PortPlan("dns-tcp", 53, 5353, "TCP", 30054)))
    other = dataclasses.replace(svc, name="other", selector="not-" + pod.deployment,
                                ports=(PortPlan("x", 81, 9999, "UDP"),))
    again = dataclasses.replace(svc, name="again", ports=(PortPlan("d", 54, 5353, "UDP"),
                                                          PortPlan("m", 82, 9090, "TCP")))
    assert served_ports(pod, [multi, other, again]) == [
        (pod.port, "TCP"), (5353, "UDP"), (5353, "TCP"), (9090, "TCP")]
    assert server_flags(pod, "/run/netns/cnlb-web-0", [multi, other, again]) == [
        "--netns", "/run/netns/cnlb-web-0", "--port", str(pod.port), "--port", "5353/udp",
        "--port", "5353", "--port", "9090", "--pod", "web-0", "--node", "node1"]
    # the single-port form (ports empty) counts too, with its protocol
    single = dataclasses.replace(svc, ports=(), target_port=6000, protocol="UDP")
    assert served_ports(pod, [single]) == [(pod.port, "TCP"), (6000, "UDP")]
    assert served_ports(pod, plan.services) == [(pod.port, "TCP")]   # talk.yaml: one port
    sctp = dataclasses.replace(svc, ports=(PortPlan("s", 7, 7, "SCTP"),))
    with pytest.raises(ValueError, match="speaks TCP and UDP"):
        served_ports(pod, [sctp])


def test_a_launched_server_answers_on_every_port_server_flags_gives(launched):
    plan = _talk_plan()
    pod = dataclasses.replace(plan.pods[0], port=free_port())
    udp = free_udp_port()
    svc = dataclasses.replace(plan.services[0], selector=pod.deployment,
                              ports=(PortPlan("dns", 53, udp, "UDP"),))
    line = server_flags(pod, "unused", [svc])[2:] + ["--bind", "127.0.0.1"]   # no --netns
    (server,) = launched.launch([(pod.name, line)])
    assert server.wait_ready(TIMEOUT)
    assert answer(pod.port)["pod"] == pod.name and udp_ask(udp)[0]["pod"] == pod.name


def test_set_ready_toggles_readyz_and_terminate_drains(launched):
    port = free_port()
    (server,) = launched.launch([("web-0", flags(port, "web-0"))])
    assert server.wait_ready(TIMEOUT)

    def readyz():
        conn = Conn(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        try:
            return conn.get("/readyz")[0]
        finally:
            conn.close()

    server.set_ready(False)
    wait_for(lambda: readyz() == 503, "set_ready(False)")
    server.set_ready(True)
    wait_for(lambda: readyz() == 200, "set_ready(True)")
    server.terminate()
    assert server.wait(TIMEOUT) == 0
