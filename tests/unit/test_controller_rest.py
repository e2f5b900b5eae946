"""The controller's REST API over a VpcService, called as a WSGI app (no sockets, no event loop)."""

import json

import webob
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers import health
from controllers.config import parse_fabric
from controllers.rest import RestApi
from controllers.service import VpcService
from controllers.vpc import Vpc

from .fakeswitch import FakeDatapath
from .vpc_fixtures import PORTS, fabric_dict


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
