"""The cloud LB with instance targets (nodeport mode) on the talk's cluster: traffic enters
through every node, and survives an ovs-vswitchd restart (the switches are reprogrammed)."""

import os
from collections import Counter

import pytest

from testbed.emulation.cluster import Cluster
from testbed.emulation.machine import restart_vswitchd, vswitchd_pid
from testbed.paths import REPO
from testbed.spec.topology import load_topology
from tests.integration.helpers import VIP, answers, entry_node, wait_answering

TALK = os.path.join(REPO, "topologies", "talk.yaml")


@pytest.fixture(scope="module")
def classic(machine_ready):
    with Cluster(load_topology(TALK, mode="nodeport")) as c:
        yield c


def test_nodeport_traffic_enters_through_every_node(classic):
    got = answers(classic, "client1", f"http://{VIP}/", 60)
    assert len(got) == 60
    entries = Counter(entry_node(classic, a["client"]) for a in got)
    assert set(entries) == {"node1", "node2", "node3"}, entries


def test_traffic_resumes_after_ovs_vswitchd_restart(classic):
    before = vswitchd_pid()
    restart_vswitchd()
    assert vswitchd_pid() not in (None, before)
    classic.controller.wait_programmed([s.name for s in classic.plan.switches], timeout=60)
    classic.wait_lb_ready()
    wait_answering(classic, "client1", f"http://{VIP}/")
    got = answers(classic, "client1", f"http://{VIP}/", 20)
    assert len(got) == 20
