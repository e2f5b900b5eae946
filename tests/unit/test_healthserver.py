"""kube-proxy health-check server (testbed/kubernetes/dataplane/healthserver.py).

Runs the real server as `python -m testbed.kubernetes.dataplane.healthserver` on 127.0.0.1 and
free high ports; each server is stopped by its pid in the fixture's finalizer.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.kubernetes.dataplane.healthserver import (
    HealthServer,
    ProxierHealth,
    ServiceHealth,
    State,
    StateError,
    go_time,
    parse_state,
    proxy_healthz_response,
    service_response,
)
from testbed.kubernetes.dataplane.metrics import ProxyMetrics, go_float, render_metrics

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TIMEOUT = 5.0

UPSTREAM_BODY_2 = (
    '{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "web"\n\t},\n'
    '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}'
)


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_state(path: Path, services, proxy_healthy=True, keep_mtime=False):
    before = path.stat().st_mtime_ns if keep_mtime else None
    data = {"services": [
        {"namespace": ns, "name": name, "port": port, "local_endpoints": count}
        for ns, name, port, count in services
    ], "proxyHealthy": proxy_healthy}
    path.write_text(json.dumps(data))
    if keep_mtime:
        os.utime(path, ns=(before, before))


def get(port: int, path: str = "/healthz"):
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


class Server:
    def __init__(self, state: Path, healthz_port: int, metrics_port: int = 0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.kubernetes.dataplane.healthserver",
             "--state", str(state), "--bind", HOST, "--healthz-port", str(healthz_port),
             "--metrics-bind", HOST, "--metrics-port", str(metrics_port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def wait_listening(self) -> str:
        """Wait for the next "listening on" line (printed after every (re)load)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if "listening on" in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read()}")
        raise AssertionError("server did not report listening")

    def hup(self) -> str:
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_listening()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture
def ports():
    return free_ports(4)


@pytest.fixture
def server(tmp_path, ports):
    state = tmp_path / "state.json"
    web, api, _, healthz = ports
    write_state(state, [("default", "web", web, 2), ("default", "api", api, 0)])
    srv = Server(state, healthz)
    srv.state = state
    try:
        srv.wait_listening()
        yield srv
    finally:
        srv.stop()


def test_200_with_local_endpoints_503_without(server, ports):
    web, api, _, _ = ports
    status, headers, body = get(web)
    assert status == 200
    assert body == UPSTREAM_BODY_2
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    status, headers, body = get(api, "/any/path?x=1")
    assert status == 503
    assert json.loads(body) == {"service": {"namespace": "default", "name": "api"},
                                "localEndpoints": 0, "serviceProxyHealthy": True}
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "0"


def test_sighup_reloads_counts_and_opens_new_ports(server, ports):
    web, api, new, _ = ports
    # Same mtime on purpose: only the signal can make the server notice.
    write_state(server.state, [("default", "web", web, 0), ("default", "api", api, 3),
                               ("kube-system", "dns", new, 1)], keep_mtime=True)
    assert get(web)[0] == 200  # not reloaded yet
    line = server.hup()
    assert str(new) in line
    assert get(web)[0] == 503
    assert get(api)[0] == 200
    status, _, body = get(new)
    assert status == 200 and json.loads(body)["service"]["namespace"] == "kube-system"


def test_mtime_change_is_noticed_per_request_and_removed_ports_close(server, ports):
    web, api, _, _ = ports
    time.sleep(0.01)
    write_state(server.state, [("default", "web", web, 0)])
    assert get(web)[0] == 503  # reloaded before answering, no signal
    with pytest.raises(ConnectionRefusedError):
        get(api)


def test_proxy_unhealthy_makes_every_service_503(server, ports):
    web, _, _, healthz = ports
    time.sleep(0.01)
    write_state(server.state, [("default", "web", web, 2)], proxy_healthy=False)
    status, _, body = get(web)
    assert status == 503 and json.loads(body)["serviceProxyHealthy"] is False
    assert get(healthz)[0] == 503


def test_kube_proxy_healthz(server, ports):
    status, headers, body = get(ports[3])
    assert status == 200
    got = json.loads(body)
    assert set(got) == {"lastUpdated", "currentTime", "nodeEligible"} and got["nodeEligible"]
    assert got["lastUpdated"] == got["currentTime"]   # healthy: upstream reports "now"
    assert headers["Content-Type"] == "application/json"
    status, _, body = get(ports[3], "/livez")
    assert status == 200 and set(json.loads(body)) == {"lastUpdated", "currentTime"}
    status, _, body = get(ports[3], "/")
    assert (status, body) == (404, "404 page not found\n")
    assert get(ports[3], "/healthz/x")[0] == 404


def test_metrics_server_answers_metrics_proxy_mode_and_healthz(tmp_path):
    web, healthz, metrics = free_ports(3)
    state = tmp_path / "state.json"
    m = ProxyMetrics()
    m.observe_sync(0.003, True, 1714567890.5)
    state.write_text(json.dumps({"services": [], "metrics": m.to_json()}))
    srv = Server(state, healthz, metrics)
    try:
        srv.wait_listening()
        assert get(metrics, "/proxyMode")[::2] == (200, "iptables")
        assert get(metrics, "/healthz")[::2] == (200, "ok")
        assert get(metrics, "/nope")[0] == 404
        assert get(healthz, "/healthz")[0] == 200
        status, headers, body = get(metrics, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in body
        assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7145678905e+09" in body
        assert 'kubeproxy_proxy_healthz_total{code="200"} 1' in body   # the probe above
    finally:
        srv.stop()


def test_healthz_503_when_a_queued_sync_is_late_and_when_the_node_is_not_eligible():
    """upstream proxier_health.go: healthy unless a queued update waited past healthTimeout;
    /healthz also needs nodeEligible, /livez does not."""
    late = State({}, proxier=ProxierHealth(last_updated=1000.0, oldest_pending_queued=1001.0,
                                           health_timeout=60.0))
    status, _, body = proxy_healthz_response(late, 1061.0)
    assert status == 503
    assert body == ('{"lastUpdated": "1970-01-01 00:16:40 +0000 UTC",'
                    '"currentTime": "1970-01-01 00:17:41 +0000 UTC", "nodeEligible": true}')
    assert proxy_healthz_response(late, 1060.9)[0] == 200     # queued, not late yet
    leaving = State({}, proxier=ProxierHealth(node_eligible=False))
    assert proxy_healthz_response(leaving, 5.0)[0] == 503
    assert proxy_healthz_response(leaving, 5.0, livez=True)[0] == 200
    svc = ServiceHealth("default", "web", 32000, 2)
    server = HealthServer("unused", healthz_port=10256)
    server.state = State({32000: svc}, proxier=late.proxier)
    assert server.respond(32000, b"GET / HTTP/1.1\r\n\r\n", now=1061.0).startswith(
        b"HTTP/1.1 503")   # the service checks report kube-proxy's health too


def test_go_time_is_gos_time_string():
    assert go_time(None) == "0001-01-01 00:00:00 +0000 UTC"
    assert go_time(1714567890.125) == "2024-05-01 12:51:30.125 +0000 UTC"
    assert go_time(1714567890.5, started=1714567888.25) == \
        "2024-05-01 12:51:30.5 +0000 UTC m=+2.250000000"


def test_render_metrics_is_prometheus_text_with_upstream_names_and_buckets():
    m = ProxyMetrics()
    m.observe_sync(0.0015, True, 1714567890.0)
    m.observe_sync(20.0, False, 1714567899.0)
    m.sync_proxy_rules_iptables_last = {"filter": 4, "nat": 12}
    text = render_metrics(m, {"200": 3})
    lines = text.splitlines()
    name = "kubeproxy_sync_proxy_rules_duration_seconds"
    assert lines[lines.index(f"# TYPE {name} histogram") - 1] == \
        f"# HELP {name} [ALPHA] SyncProxyRules latency in seconds"
    buckets = [line for line in lines if line.startswith(f"{name}_bucket")]
    assert [b.split('"')[1] for b in buckets] == [
        "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
        "0.512", "1.024", "2.048", "4.096", "8.192", "16.384", "+Inf"]
    assert buckets[0].endswith(" 0") and buckets[1].endswith(" 1") and buckets[-2].endswith(" 1")
    assert buckets[-1].endswith(" 2") and f"{name}_count 2" in lines
    assert f"{name}_sum 20.0015" in lines
    assert 'kubeproxy_sync_proxy_rules_iptables_last{table="nat"} 12' in lines
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1" in lines
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.714567899e+09" in lines
    assert 'kubeproxy_proxy_healthz_total{code="200"} 3' in lines
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert families == sorted(families) and "kubeproxy_proxy_livez_total" not in families


@pytest.mark.parametrize("value, text", [
    (0.001, "0.001"), (16.384, "16.384"), (3, "3"), (1e6, "1e+06"), (123456.0, "123456"),
    (1e-05, "1e-05"), (0.0001, "0.0001"), (1714567890.123, "1.714567890123e+09"),
])
def test_go_float_formats_as_strconv_g(value, text):
    assert go_float(value) == text


def test_bad_state_file_keeps_the_previous_state(server, ports):
    web = ports[0]
    time.sleep(0.01)
    server.state.write_text("{not json")
    assert get(web)[0] == 200
    server.proc.send_signal(signal.SIGHUP)
    assert get(web)[0] == 200


def test_sigterm_stops_it(tmp_path, ports):
    state = tmp_path / "state.json"
    write_state(state, [("default", "web", ports[0], 1)])
    srv = Server(state, 0)
    try:
        srv.wait_listening()
    finally:
        assert srv.stop() == 0


def test_service_response_matches_upstream_text():
    status, headers, body = service_response(ServiceHealth("default", "web", 32000, 2), True)
    assert (status, body) == (200, UPSTREAM_BODY_2)
    assert headers == {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff",
                       "X-Load-Balancing-Endpoint-Weight": "2"}
    assert service_response(ServiceHealth("default", "web", 32000, 2), False)[0] == 503


@pytest.mark.parametrize("text, message", [
    ("[]", "expected"),
    ('{"services": [{"namespace": "d", "name": "w", "port": 0}]}', "services[0].port"),
    ('{"services": [{"namespace": "d", "name": "w", "port": 80, "local_endpoints": -1}]}',
     "services[0].local_endpoints"),
    ('{"services": [{"namespace": "d", "port": 80}]}', "services[0].name"),
    ('{"services": [{"namespace": "d", "name": "a", "port": 80},'
     ' {"namespace": "d", "name": "b", "port": 80}]}', "two services"),
    ('{"services": [], "proxyHealthy": "yes"}', "proxyHealthy"),
    ('{"services": [], "proxier": {"lastUpdated": "now"}}', "proxier.lastUpdated"),
    ('{"services": [], "proxier": {"healthTimeout": 0}}', "proxier.healthTimeout"),
    ('{"services": [], "proxier": {"nodeEligible": 1}}', "proxier.nodeEligible"),
    ('{"services": [], "metrics": {"sync_proxy_rules_duration_seconds": {"counts": [1]}}}',
     "metrics"),
])
def test_parse_state_names_the_bad_field(text, message):
    with pytest.raises(StateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_state(text)
