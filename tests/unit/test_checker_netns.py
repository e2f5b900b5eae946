"""Where the health checker runs: the LB host's named network namespace, given by its file.

fabric.json's health_checker.netns is the file nsenter --net= opens (/run/netns/cnlb-lb0 for the
testbed's lb0), so the LB host needs no shell process for the checks to run in its namespace.
"""

import json
import os

import pytest

from controllers import health
from controllers.config import ConfigError, parse_fabric
from controllers.service import VpcService
from testbed.cloud.fabric import render_fabric
from testbed.paths import REPO
from testbed.plan.addresses import LB_HOST, build_plan
from testbed.spec.topology import load_topology

from .vpc_fixtures import fabric_dict

LB0_NETNS = "/run/netns/cnlb-lb0"


def test_the_checker_enters_the_namespace_file_fabric_json_names():
    fabric = parse_fabric(fabric_dict())
    assert fabric.checker_netns == LB0_NETNS
    checker = health.HealthChecker(fabric.checker_netns, lambda results: None)
    assert checker.command()[:3] == ["nsenter", f"--net={LB0_NETNS}", "--"]
    assert checker.command()[-3:] == ["-m", "controllers.run", "--checker"]
    assert checker.status()["enabled"] and checker.status()["netns"] == LB0_NETNS


@pytest.mark.parametrize("checker, message", [
    ({"host": "lb0", "netns_pid": 4242},
     'health_checker.netns_pid: replaced by netns, the namespace\'s file -- write '
     '"netns": "/proc/4242/ns/net"'),
    ({"host": "lb0", "netns": "cnlb-lb0"},
     "health_checker.netns: 'cnlb-lb0' is not a file path like /run/netns/NAME"),
    ({"host": "lb0", "netns": 12},
     "health_checker.netns: 12 is not a file path"),
])
def test_a_checker_namespace_that_is_not_a_file_path_is_refused(checker, message):
    d = dict(fabric_dict(), health_checker=checker)
    with pytest.raises(ConfigError) as e:
        parse_fabric(d)
    assert str(e.value).startswith("fabric.json." + message)


def test_without_a_namespace_no_checker_runs(tmp_path):
    d = dict(fabric_dict(), health_checker={"host": "lb0", "netns": None})
    path = tmp_path / "fabric.json"
    path.write_text(json.dumps(d))
    svc = VpcService.from_config(str(path))
    assert not svc.checks_enabled
    assert {b["state"] for b in svc.vpc.backends_view("web")} == {"unchecked"}


def test_render_fabric_names_the_lb_hosts_namespace_file():
    topo = load_topology(os.path.join(REPO, "topologies", "minimal.yaml"))
    plan = build_plan(topo)
    hc = topo.load_balancer.health_check
    assert render_fabric(plan, hc, lb_netns=LB0_NETNS)["health_checker"] == {
        "host": LB_HOST, "netns": LB0_NETNS}
    assert "health_checker" not in render_fabric(plan, hc)
    assert parse_fabric(render_fabric(plan, hc, lb_netns=LB0_NETNS)).checker_netns == LB0_NETNS
