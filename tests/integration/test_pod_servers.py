"""Pod servers on a real cluster: each one listens inside its pod's namespace (started by the
launcher with --netns), a crashed one is found and restarted, a new pod's server answers, and
teardown leaves no server and no zombie behind."""

import os
import signal
import time

from testbed.emulation.cluster import Cluster
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import answers

TALK = os.path.join(REPO, "topologies", "talk.yaml")


def _state(pid: int) -> str | None:
    """A process's state letter (Z: a zombie), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_servers_crash_restart_grow_and_leave_nothing(no_leftovers):
    with Cluster(load_topology(TALK, mode="container-native")) as c:
        servers = dict(c.pod_servers)
        launcher = c.control.launcher.proc.pid
        # each answers from inside its own pod: its address and name
        for pod in c.plan.pods:
            got = c.sh("client1", f"curl -s -m 3 http://{pod.ip}:{pod.port}/").stdout
            assert f'"pod":"{pod.name}"' in got and f'"server":"{pod.ip}"' in got, got
        assert all(c.control.server_running(p.name) for p in c.plan.pods)

        os.kill(servers["web-1"].pid, signal.SIGKILL)   # a crash nobody asked for
        deadline = time.time() + 5
        while c.control.dead_pod_servers() != ["web-1"] and time.time() < deadline:
            time.sleep(0.05)
        assert c.control.dead_pod_servers() == ["web-1"]
        c.control.restart_pod_servers(["web-1"])
        web1 = c.plan.pod("web-1")
        got = c.sh("client1", f"curl -s -m 3 http://{web1.ip}:{web1.port}/").stdout
        assert '"pod":"web-1"' in got and c.pod_servers["web-1"].pid != servers["web-1"].pid

        c.fail_pod("web-0")
        assert not c.control.server_running("web-0") and c.pod_servers.get("web-0") is None

        new = c.add_pod("web", node="node3")
        pod = c.plan.pod(new)
        got = c.sh("client1", f"curl -s -m 3 http://{pod.ip}:{pod.port}/").stdout
        assert f'"pod":"{new}","node":"node3"' in got, got
        c.wait_lb_ready()
        assert new in {a["pod"] for a in answers(c, "client1", "http://198.51.100.10/", 40)}
        pids = [s.pid for s in c.pod_servers.values()] + [launcher]
    assert [_state(pid) for pid in pids] == [None] * len(pids)   # gone, and collected
