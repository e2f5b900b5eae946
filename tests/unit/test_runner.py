"""The runner's pure parts: parsing real tool output, turning probe rows into samples."""

import os

import pytest

from testbed.experiments.client import request_rows
from testbed.experiments.compare import parse_iperf_csv, parse_wrk, with_iperf_service
from testbed.experiments.failover import recovery_time
from testbed.experiments.scaling import synthetic_services
from testbed.paths import REPO
from testbed.plan.addresses import build_plan
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")

WRK = """Running 2s test @ http://198.51.100.10:80/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   453.10us  300.12us   5.00ms   90.00%
    Req/Sec    17.90k     1.20k   20.00k    70.00%
  Latency Distribution
     50%  400.00us
     75%  510.00us
     90%  700.00us
     99%    1.83ms
  71234 requests in 2.00s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  35617.00
Transfer/sec:      6.17MB
"""


def test_parse_wrk():
    res = parse_wrk(WRK)
    assert res["percentiles"] == pytest.approx({50: 0.4, 75: 0.51, 90: 0.7, 99: 1.83})
    assert res["requests_per_s"] == 35617.0 and res["requests"] == 71234
    assert res["errors"] == 2 + 1 + 4


def test_parse_iperf_csv():
    line = "20261126034500,203.0.113.10,40000,198.51.100.11,5001,3,0.0-5.0,560000000,895999000"
    assert parse_iperf_csv(line + "\n") == 895.999
    assert parse_iperf_csv("connect failed: Connection refused\n") is None


def test_request_rows_find_entry_node_and_hops():
    plan = build_plan(load_topology(TALK, mode="nodeport"))
    probe = [
        {"t_start": 0.0, "total_ms": 1.0, "connect_ms": 0.5, "status": 200, "pod": "web-3",
         "node": "node2", "client": "10.244.1.0", "syn_ack_ttl": 61,   # SNAT to node1's flannel.1
         "error": None},
        {"t_start": 0.1, "total_ms": None, "connect_ms": None, "status": 0, "pod": None,
         "node": None, "client": None, "syn_ack_ttl": None, "error": "connect timeout"},
        {"summary": True, "requests": 2, "errors": 1},
    ]
    rows = request_rows(probe, plan, "203.0.113.10", "Cluster")
    assert len(rows) == 2
    assert rows[0]["entry_node"] == "node1" and rows[0]["hops"] == 3 and rows[0]["ok"]
    assert not rows[1]["ok"] and rows[1]["hops"] is None


def test_recovery_time_is_last_failure_after_the_event():
    rows = [{"t": 5.0, "ok": True}, {"t": 5.5, "ok": False}, {"t": 6.2, "ok": False},
            {"t": 7.0, "ok": True}]
    assert abs(recovery_time(rows, 5.0) - 1.2) < 1e-9
    assert recovery_time([{"t": 9.0, "ok": True}], 5.0) == 0.0


def test_iperf_service_rides_on_the_measured_services_pods():
    topo = with_iperf_service(load_topology(TALK, mode="container-native"), "web")
    plan = build_plan(topo)
    iperf = next(s for s in plan.services if s.name == "iperf")
    assert iperf.endpoints == next(s for s in plan.services if s.name == "web").endpoints
    lb = next(b for b in plan.load_balancers if b.service == "iperf")
    assert {b.port for b in lb.backends} == {5001}
    assert {b.health_port for b in lb.backends} == {8080}


def test_synthetic_services_are_distinct():
    svcs = synthetic_services(300, 5)
    assert len({s.cluster_ip for s in svcs}) == 300
    assert len({ep.ip for s in svcs for ep in s.endpoints}) == 1500
