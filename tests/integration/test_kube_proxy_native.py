"""kube-proxy's own servers in container-native mode (its rules matter less there, but every node
still runs kube-proxy: /healthz on 10256 and /metrics on 127.0.0.1:10249), in every mode."""

import os

import pytest

from testbed.emulation.cluster import Cluster
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.proxy_modes import MODES, skip_unless_runs

SERVICES = os.path.join(REPO, "tests", "data", "services.yaml")


@pytest.mark.parametrize("proxy_mode", MODES)
def test_kube_proxy_healthz_answers_in_container_native_mode(machine_ready, proxy_mode):
    from tests.integration.leftovers import snapshot
    skip_unless_runs(proxy_mode)
    before = snapshot()
    with Cluster(load_topology(SERVICES, mode="container-native"), proxy_mode=proxy_mode) as c:
        out = c.sh("node1", "curl -s -w ' %{http_code}' http://127.0.0.1:10256/healthz").stdout
        assert out.endswith(" 200") and '"nodeEligible": true' in out, out
        metrics = c.sh("node2", "curl -s http://127.0.0.1:10249/metrics").stdout
        assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1" in metrics
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"
