"""A cluster that stays up: up --detach, exec, status --json, pod remove, down; a killed
owner process whose cluster `cnlb down` still removes completely; and a foreground `cnlb up`
that status names and down stops only when forced."""

import json
import os
import signal
import subprocess
import sys

from testbed.emulation.journal import StateDir, owner_pid
from testbed.paths import REPO

TALK = os.path.join(REPO, "topologies", "talk.yaml")
MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")
CNLB = [sys.executable, "-m", "testbed.cli"]


def cnlb(*args, timeout=300, check=True):
    p = subprocess.run(CNLB + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"cnlb {' '.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def test_detached_session(no_leftovers):
    up = cnlb("up", TALK, "--detach", "--quiet")
    try:   # whatever fails below, the cluster goes (a cluster left up fails every later test)
        assert "cluster talk is up (nodeport, kube-proxy iptables)" in up.stdout, up.stdout
        assert "cnlb exec client1" in up.stdout
        again = cnlb("up", TALK, "--detach", check=False)
        assert again.returncode == 3 and "another cluster is running" in again.stderr
        out = os.path.join(REPO, "results", "never-made")
        run = cnlb("run", os.path.join(REPO, "experiments", "compare-quick.yaml"), "--out", out,
                   check=False)
        assert run.returncode == 3 and "another cluster is running" in run.stderr
        assert not os.path.exists(out)

        status = json.loads(cnlb("status", "--json").stdout)
        assert status["mode"] == "nodeport" and status["owner"]["alive"]
        assert [n["name"] for n in status["nodes"]] == ["node1", "node2", "node3"]
        assert sorted(p["name"] for p in status["pods"]) == ["web-0", "web-1", "web-2", "web-3"]
        assert all(p["healthy"] for p in status["pods"])
        svc = status["services"][0]
        assert (svc["name"], svc["node_port"], svc["vip"]) == ("web", 30080, "198.51.100.10")
        assert all(b["in_service"] for b in status["load_balancers"][0]["backends"])

        via_vip = cnlb("exec", "client1", "--", "curl", "-s", "-m", "3", "http://198.51.100.10/")
        assert '"pod":"web-' in via_vip.stdout
        via_cluster_ip = cnlb("exec", "web-0", "--", "curl", "-s", "-m", "3",
                              f"http://{svc['cluster_ip']}:{svc['port']}/")
        assert '"pod":"web-' in via_cluster_ip.stdout
        assert cnlb("exec", "node1", "--", "sh", "-c", "exit 7", check=False).returncode == 7
        assert cnlb("exec", "nosuch", "--", "true", check=False).returncode == 2

        removed = json.loads(cnlb("pod", "remove", "web-1", "--instant").stdout)
        assert removed["removed"] == "web-1" and removed["timing"] == "instant", removed
        script = "for i in $(seq 40); do curl -s -m 2 http://198.51.100.10/; echo; done"
        out = cnlb("exec", "client1", "--", "sh", "-c", script).stdout
        pods = [json.loads(line)["pod"] for line in out.splitlines() if line.startswith("{")]
        assert len(pods) == 40 and "web-1" not in pods
        status = json.loads(cnlb("status", "--json").stdout)
        assert "web-1" not in [p["name"] for p in status["pods"]]
    finally:
        down = cnlb("down", check=False)
    assert down.returncode == 0 and "cluster removed" in down.stdout


def test_killed_owner_then_down_removes_everything(no_leftovers):
    cnlb("up", TALK, "--mode", "container-native", "--detach", "--quiet")
    pid, _ = owner_pid(StateDir.for_cluster("current"))
    os.kill(pid, signal.SIGKILL)
    status = cnlb("status", "--json", check=False)
    assert status.returncode == 0 and json.loads(status.stdout)["owner"]["alive"] is False
    down = cnlb("down")
    assert "owner process is gone" in down.stderr and "cluster removed" in down.stdout


def test_a_foreground_holder_is_named_and_stopped_only_by_force(no_leftovers):
    up = subprocess.Popen(CNLB + ["up", MINIMAL, "--quiet"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        for line in up.stdout:
            if "is up" in line:
                break
        else:
            raise AssertionError(f"cnlb up exited ({up.wait()}): {up.stderr.read()}")
        status = cnlb("status")
        assert f"held by a foreground process: pid {up.pid} (`" in status.stdout
        assert "node1" in status.stdout and "web-0" in status.stdout
        status = json.loads(cnlb("status", "--json").stdout)
        assert status["holder"]["pid"] == up.pid and status["holder"]["kind"] == "foreground"
        assert status["holder"]["argv"][-3:] == ["up", MINIMAL, "--quiet"]
        assert [n["name"] for n in status["nodes"]] == ["node1", "node2"]
        assert all(b["in_service"] for b in status["load_balancers"][0]["backends"])
        via_vip = cnlb("exec", "client1", "--", "curl", "-s", "-m", "3", "http://198.51.100.10/")
        assert '"pod":"web-' in via_vip.stdout

        refused = cnlb("down", check=False)
        assert refused.returncode == 3 and refused.stdout == ""
        assert f"held by a foreground process, pid {up.pid}" in refused.stderr
        assert "--force" in refused.stderr and up.poll() is None

        forced = cnlb("down", "--force")
        assert forced.stdout == "cluster removed\n"
        assert up.poll() is not None                 # down waited for its teardown
        assert up.returncode == 130
        assert "everything the testbed made was removed" in up.stderr.read()
        assert cnlb("status", check=False).returncode == 3
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(120)
        up.stdout.close()
        up.stderr.close()
