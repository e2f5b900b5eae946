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
    ServiceHealth,
    StateError,
    parse_state,
    service_response,
)

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
    def __init__(self, state: Path, healthz_port: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.kubernetes.dataplane.healthserver",
             "--state", str(state), "--bind", HOST, "--healthz-port", str(healthz_port)],
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
    assert set(json.loads(body)) == {"lastUpdated", "currentTime"}
    assert headers["Content-Type"] == "application/json"


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
])
def test_parse_state_names_the_bad_field(text, message):
    with pytest.raises(StateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_state(text)
