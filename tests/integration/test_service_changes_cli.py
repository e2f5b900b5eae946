"""`cnlb service apply | set | delete` against a detached cluster (`cnlb up --detach`): its own
module, as the cluster of test_service_changes.py must be down before `up` may run."""

from __future__ import annotations

import json
import subprocess
import sys

from testbed.paths import REPO
from tests.integration.e2e_jig import CURL_REFUSED
from tests.integration.test_service_changes import EXEC, TOPOLOGY, WEB


def test_cli_against_the_detached_cluster(no_leftovers, tmp_path):
    """`cnlb service apply | set | delete` against `cnlb up --detach`: one line per problem
    naming the argument or the file's line (exit 2) and nothing changed — upstream's "should
    check NodePort out-of-range" —, then a change the status shows, and a delete."""
    def cnlb(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    topo = tmp_path / "svc.yaml"
    topo.write_text(TOPOLOGY)
    assert cnlb("up", str(topo), "--detach", "--quiet").returncode == 0
    try:
        bad = cnlb("service", "set", "base", "type=NodePort", "nodePort=80")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert bad.stderr.startswith("cnlb service set:2: base.nodePort: 80 ")
        wrong = tmp_path / "wrong.yaml"
        wrong.write_text("extra:\n  type: NodePort\n  selector: nope\n")
        bad = cnlb("service", "apply", str(wrong))
        assert bad.returncode == 2 and bad.stderr.startswith(f"{wrong}:3: extra.selector: ")
        status = json.loads(cnlb("status", "--json").stdout)
        assert [(s["name"], s["type"]) for s in status["services"]] == [("base", "ClusterIP")]
        ok = cnlb("service", "set", "base", "type=NodePort", "nodePort=30123")
        assert ok.returncode == 0 and json.loads(ok.stdout)["node_port"] == 30123
        status = json.loads(cnlb("status", "--json").stdout)
        assert [(s["name"], s["node_port"]) for s in status["services"]] == [("base", 30123)]
        node1 = status["nodes"][0]["ip"]
        got = cnlb("exec", EXEC, "--", "curl", "-s", "-m", "3", f"http://{node1}:30123/")
        assert json.loads(got.stdout)["pod"] in WEB
        assert cnlb("service", "delete", "base").returncode == 0
        assert cnlb("service", "delete", "base").returncode == 2
        gone = cnlb("exec", EXEC, "--", "curl", "-s", "-m", "3", f"http://{node1}:30123/")
        assert gone.returncode == CURL_REFUSED
    finally:
        assert cnlb("down").returncode == 0
