"""The controller's REST API, called as a WSGI app (no sockets, no switch, no os-ken loop)."""

import json
import time

import webob

from controllers import vpc_app, vpc_core as core
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from .test_vpc_core import PORTS, fabric_dict


class FakeApp:
    """The REST-facing part of VpcController, with sending replaced by recording."""

    add_backend = vpc_app.VpcController.add_backend
    remove_backend = vpc_app.VpcController.remove_backend
    add_pod = vpc_app.VpcController.add_pod
    remove_pod = vpc_app.VpcController.remove_pod
    status = vpc_app.VpcController.status
    ready = vpc_app.VpcController.ready

    def __init__(self, mode="nodeport"):
        self.vpc = core.Vpc(core.parse_fabric(fabric_dict(mode)))
        self.switches = {s.name: vpc_app.SwitchState(s.name) for s in self.vpc.fabric.switches}
        self.checker = vpc_app.HealthChecker(None, None)
        self.started = time.time()
        self.sent = []

    def _send_by_switch(self, by_switch):
        self.sent.append(by_switch)

    def _ports_by_switch(self):
        return PORTS


def call(app, method, path, body=None):
    req = webob.Request.blank(path, method=method)
    if body is not None:
        req.body = body if isinstance(body, bytes) else json.dumps(body).encode()
    res = req.get_response(vpc_app.RestApi(app))
    return res.status_int, json.loads(res.body)


def test_health_is_503_until_every_switch_is_programmed():
    app = FakeApp()
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
    app = FakeApp()
    status, row = call(app, "POST", "/v1/lbs/web/backends",
                       {"name": "node3", "ip": "192.168.0.11", "port": 30080})
    assert status == 201 and row["state"] == "initial" and row["in_service"] is False
    [sent] = app.sent
    assert isinstance(sent["vpc0"][-1], ofpp.OFPGroupMod)
    assert call(app, "POST", "/v1/lbs/web/backends",
                {"name": "node3", "ip": "192.168.0.11", "port": 30080})[0] == 200
    status, rows = call(app, "GET", "/v1/lbs/web/backends")
    assert status == 200 and [r["ip"] for r in rows] == ["192.168.0.10", "192.168.0.11",
                                                         "192.168.1.10"]
    assert call(app, "DELETE", "/v1/lbs/web/backends/192.168.0.11/30080")[0] == 200
    assert call(app, "DELETE", "/v1/lbs/web/backends/192.168.0.11/30080")[0] == 404
    assert call(app, "GET", "/v1/lbs/nope/backends")[0] == 404


def test_bad_requests_say_why():
    app = FakeApp()
    status, body = call(app, "POST", "/v1/lbs/web/backends", {"ip": "x", "port": 1})
    assert status == 400 and "backend.ip" in body["error"]
    assert call(app, "POST", "/v1/lbs/web/backends", b"{nope")[0] == 400
    assert call(app, "GET", "/v1/nothing")[0] == 404


def test_pods_only_in_container_native_mode():
    status, body = call(FakeApp("nodeport"), "POST", "/v1/pods",
                        {"pod": "p", "ip": "10.244.0.5", "node": "node1"})
    assert status == 409
    app = FakeApp("container-native")
    status, row = call(app, "POST", "/v1/pods", {"pod": "web-9", "ip": "192.168.0.109",
                                                 "node": "node3"})
    assert status == 201 and row["via"] == "node3" and row["cookie"].startswith("0x04")
    assert "web-9" in [r["name"] for r in call(app, "GET", "/v1/pods")[1]]
    assert call(app, "POST", "/v1/pods", {"pod": "x", "ip": "192.168.0.109",
                                          "node": "node1"})[0] == 400     # IP taken
    assert call(app, "DELETE", "/v1/pods/web-9")[0] == 200
    assert call(app, "DELETE", "/v1/pods/web-9")[0] == 404


def test_lbs_and_routes_views():
    app = FakeApp()
    [lb] = call(app, "GET", "/v1/lbs")[1]
    assert (lb["vip"], lb["group_id"], lb["backends"]) == ("198.51.100.10", 1, 2)
    routes = call(app, "GET", "/v1/routes")[1]
    assert {r["prefix"] for r in routes} >= {"192.168.0.10/32", "203.0.113.10/32"}


# ----------------------------------------------------------------------------------------------
# The health checker's probe (controllers.run), against a local HTTP answerer
# ----------------------------------------------------------------------------------------------

def _probe_against(status_line: bytes):
    import asyncio

    from controllers import run

    async def main():
        async def answer(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await run.probe("127.0.0.1", port, "/healthz", 1.0, "web/x:1")

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

    from controllers import run

    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = asyncio.run(run.probe("127.0.0.1", port, "/healthz", 1.0))
    assert result["ok"] is False and result["error"] == "Connection refused"
