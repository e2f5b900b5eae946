"""The cloud LB with ip targets (container-native mode): every pod serves with the client's
address kept; failed and removed pods leave service within the health-check window; traffic
resumes after the controller is killed and restarted."""

import os
import time

import pytest

from testbed.emulation.cluster import Cluster
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import VIP, answers, probe, wait_answering

TALK = os.path.join(REPO, "topologies", "talk.yaml")


@pytest.fixture(scope="module")
def native(machine_ready):
    with Cluster(load_topology(TALK, mode="container-native")) as c:
        yield c


def test_container_native_every_pod_answers_with_client_ip(native):
    got = answers(native, "client1", f"http://{VIP}/", 60)
    assert len(got) == 60
    assert {a["pod"] for a in got} == {p.name for p in native.plan.pods}
    assert {a["client"] for a in got} == {"203.0.113.10"}



def test_failed_pod_leaves_service_within_health_check_window(native):
    hc = native.topo.load_balancer.health_check
    window = hc.interval_s * hc.unhealthy_threshold + hc.timeout_s + 1.0
    native.fail_pod("web-0", instant=True)
    time.sleep(window)
    got = probe(native, 40)
    assert all(r["error"] is None and r["status"] == 200 for r in got), got
    assert "web-0" not in {r["pod"] for r in got}



def test_removed_pod_gets_no_traffic(native):
    native.remove_pod("web-3", instant=True)   # the LB behaviour, without the clock
    got = probe(native, 40)
    assert all(r["status"] == 200 for r in got)
    assert not {"web-0", "web-3"} & {r["pod"] for r in got}



def test_traffic_resumes_after_controller_restart(native):
    native.restart_controller(kill=True)
    status = native.controller.api("GET", "/v1/status")
    assert all(s["programmed"] and s["programs"] >= 1 for s in status["switches"])
    wait_answering(native, "client1", f"http://{VIP}/")
    got = probe(native, 20)
    assert len(got) == 20 and all(r["status"] == 200 for r in got)

