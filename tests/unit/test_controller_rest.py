"""The controller's REST API over a VpcService, called as a WSGI app (no sockets, no event loop)."""

import json
from pathlib import Path

import pytest
import webob
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers import health
from controllers.config import parse_fabric
from controllers.rest import RestApi
from controllers.service import VpcService
from controllers.vpc import Vpc

from .fakeswitch import FakeDatapath
from .vpc_fixtures import PORTS, fabric_dict

ROOT = Path(__file__).resolve().parents[2]


def service(mode="nodeport", connected=True):
    """A VpcService over the test fabric; connected: every switch has a FakeDatapath and PORTS."""
    svc = VpcService(Vpc(parse_fabric(fabric_dict(mode))))
    if connected:
        for i, (name, st) in enumerate(svc.switches.items()):
            st.dp, st.connected, st.ports = FakeDatapath(i + 1), True, PORTS[name]
    return svc


def sent(svc):
    """{switch: messages} that reached each switch's datapath so far."""
    return {name: st.dp.sent for name, st in svc.switches.items() if st.dp and st.dp.sent}


def call(svc, method, path, body=None):
    req = webob.Request.blank(path, method=method)
    if body is not None:
        req.body = body if isinstance(body, bytes) else json.dumps(body).encode()
    res = req.get_response(RestApi(svc))
    return res.status_int, json.loads(res.body)


def test_health_is_503_until_every_switch_is_programmed():
    app = service(connected=False)
    status, body = call(app, "GET", "/v1/health")
    assert status == 503 and body["waiting_for"] == ["vpc0", "vpc1", "vpc2"]
    for st in app.switches.values():
        st.connected = st.programmed = True
    assert call(app, "GET", "/v1/health") == (200, {"ready": True, "waiting_for": []})
    status, body = call(app, "GET", "/v1/status")
    assert status == 200 and body["ready"] is True
    assert [s["name"] for s in body["switches"]] == ["vpc0", "vpc1", "vpc2"]
    assert body["controller"]["version"]


def test_backend_register_and_deregister():
    app = service()
    status, row = call(app, "POST", "/v1/lbs/web/backends",
                       {"name": "node3", "ip": "192.168.0.11", "port": 30080})
    assert status == 201 and row["state"] == "initial" and row["in_service"] is False
    [(switch, msgs)] = sent(app).items()                      # the core's group, nothing else
    assert switch == "vpc0" and isinstance(msgs[-1], ofpp.OFPGroupMod)
    assert call(app, "POST", "/v1/lbs/web/backends",
                {"name": "node3", "ip": "192.168.0.11", "port": 30080})[0] == 200
    status, rows = call(app, "GET", "/v1/lbs/web/backends")
    assert status == 200 and [r["ip"] for r in rows] == ["192.168.0.10", "192.168.0.11",
                                                         "192.168.1.10"]
    assert call(app, "DELETE", "/v1/lbs/web/backends/192.168.0.11/30080")[0] == 200
    assert call(app, "DELETE", "/v1/lbs/web/backends/192.168.0.11/30080")[0] == 404
    assert call(app, "GET", "/v1/lbs/nope/backends")[0] == 404


def test_bad_requests_say_why():
    app = service()
    status, body = call(app, "POST", "/v1/lbs/web/backends", {"ip": "x", "port": 1})
    assert status == 400 and "backend.ip" in body["error"]
    assert call(app, "POST", "/v1/lbs/web/backends", b"{nope")[0] == 400
    assert call(app, "GET", "/v1/nothing")[0] == 404


def test_pods_only_in_container_native_mode():
    status, body = call(service("nodeport"), "POST", "/v1/pods",
                        {"pod": "p", "ip": "10.244.0.5", "node": "node1"})
    assert status == 409
    app = service("container-native")
    status, row = call(app, "POST", "/v1/pods", {"pod": "web-9", "ip": "192.168.0.109",
                                                 "node": "node3"})
    assert status == 201 and row["via"] == "node3" and row["cookie"].startswith("0x04")
    assert "web-9" in [r["name"] for r in call(app, "GET", "/v1/pods")[1]]
    assert call(app, "POST", "/v1/pods", {"pod": "x", "ip": "192.168.0.109",
                                          "node": "node1"})[0] == 400     # IP taken
    assert call(app, "DELETE", "/v1/pods/web-9")[0] == 200
    assert call(app, "DELETE", "/v1/pods/web-9")[0] == 404


def test_lbs_and_routes_views():
    app = service()
    [lb] = call(app, "GET", "/v1/lbs")[1]
    assert (lb["vip"], lb["group_id"], lb["backends"]) == ("198.51.100.10", 1, 2)
    routes = call(app, "GET", "/v1/routes")[1]
    assert {r["prefix"] for r in routes} >= {"192.168.0.10/32", "203.0.113.10/32"}


# ----------------------------------------------------------------------------------------------
# The health checker's probe (controllers.health), against a local HTTP answerer
# ----------------------------------------------------------------------------------------------

def _probe_against(status_line: bytes):
    import asyncio

    async def main():
        async def answer(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await health.probe("127.0.0.1", port, "/healthz", 1.0, "web/x:1")

    return asyncio.run(main())


def test_probe_200_is_healthy_and_503_is_not():
    ok = _probe_against(b"HTTP/1.1 200 OK")
    assert ok["ok"] is True and ok["status"] == 200 and ok["id"] == "web/x:1"
    # kube-proxy's healthCheckNodePort answers 503 on a node without a local endpoint.
    bad = _probe_against(b"HTTP/1.1 503 Service Unavailable")
    assert bad["ok"] is False and bad["status"] == 503


def test_probe_refused_is_an_error():
    import asyncio
    import socket

    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = asyncio.run(health.probe("127.0.0.1", port, "/healthz", 1.0))
    assert result["ok"] is False and result["error"] == "Connection refused"


# ----------------------------------------------------------------------------------------------
# The checker's two ends: results read together, first checks spread over the interval
# ----------------------------------------------------------------------------------------------

class _Pipe:
    """A child's stdout that yields these chunks, as the pipe held them, then EOF."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def read(self, n):
        return self.chunks.pop(0) if self.chunks else b""


def test_the_checker_parent_hands_over_the_result_lines_read_together():
    batches = []
    checker = health.HealthChecker("/run/netns/cnlb-lb0", batches.append)
    checker.proc = type("Proc", (), {"stdout": _Pipe([
        b'{"id": "web/a:1", "ok": true}\n{"event": "targets", "count": 2}\n{"id": "web/b',
        b':1", "ok": false}\n{"id": "web/a:1", "ok": true}\n',
        b'not json\n'])})()
    checker._read_results()
    assert [[r["id"] for r in b] for b in batches] == [["web/a:1"], ["web/b:1", "web/a:1"]]
    assert checker.results == 3


def test_targets_registered_together_are_first_checked_spread_over_the_interval():
    targets = [{"id": f"web/10.0.0.{i}:80", "interval_s": 5.0} for i in range(4)]
    assert health.first_check_delays(targets) == [0.0, 1.25, 2.5, 3.75]
    assert health.first_check_delays(targets[:1]) == [0.0]           # one alone: at once


def test_the_first_checks_wait_for_the_fabric_but_not_forever():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    programmed_at = 1.0
    assert health.wait_until(lambda: now[0] >= programmed_at, 60.0, sleep, lambda: now[0])
    assert sum(slept) == pytest.approx(1.0)                  # checks begin once it is programmed
    now[0], slept[:] = 0.0, []
    assert not health.wait_until(lambda: False, 3.0, sleep, lambda: now[0])   # a switch never came
    assert 3.0 <= sum(slept) < 3.3
    slept[:] = []
    assert health.wait_until(lambda: True, 0.0, sleep) and slept == []     # ready: no wait


def test_the_checker_child_checks_each_target_again_and_again():
    import http.server
    import subprocess
    import sys
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    targets = [{"id": f"web/127.0.0.1:{port}{path}", "ip": "127.0.0.1", "port": port,
                "path": path, "interval_s": 0.2, "timeout_s": 1.0} for path in ("/healthz", "/x")]
    child = subprocess.Popen([sys.executable, "-m", "controllers.run", "--checker"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        child.stdin.write((json.dumps({"targets": targets}) + "\n").encode())
        child.stdin.flush()
        seen: dict[str, list] = {}
        while min((len(seen.get(t["id"], [])) for t in targets), default=0) < 2:
            line = json.loads(child.stdout.readline())
            if "id" in line:
                seen.setdefault(line["id"], []).append(line)
    finally:
        child.stdin.close()                              # EOF: the child exits
        child.wait(10)
        server.shutdown()
    assert {r["status"] for r in seen[targets[0]["id"]]} == {200}
    assert {(r["ok"], r["status"]) for r in seen[targets[1]["id"]]} == {(False, 503)}
    assert child.returncode == 0
