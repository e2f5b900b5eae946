"""The controller's REST API: JSON over HTTP on /v1/... (see docs/controller.md for the table).

RestApi: a WSGI app over a VpcService; each route is one small method returning (status, body).
It is the small Routes + WebOb app os-ken's ControllerBase was (os-ken 4.2.2 dropped
os_ken.app.wsgi), served by os-ken's hub.WSGIServer; tests call it without a socket.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import routes
import webob

from controllers.bgp import parse_bgp
from controllers.config import (
    ConfigError,
    parse_backend,
    parse_new_load_balancer,
    parse_pod_route,
    parse_seconds,
)
from controllers.service import VpcService, add_lb, remove_lb

LOG = logging.getLogger("cnlb.vpc")

Reply = tuple[int, Any]


class RestApi:
    """JSON over HTTP, /v1/...

    service: the VpcService whose state is shown and changed
    """

    def __init__(self, service: VpcService):
        self.service = service
        m = self.mapper = routes.Mapper()
        m.connect("/v1/status", action="get_status", conditions={"method": ["GET"]})
        m.connect("/v1/health", action="get_health", conditions={"method": ["GET"]})
        m.connect("/v1/routes", action="get_routes", conditions={"method": ["GET"]})
        m.connect("/v1/lbs", action="get_lbs", conditions={"method": ["GET"]})
        m.connect("/v1/lbs", action="post_lb", conditions={"method": ["POST"]})
        m.connect("/v1/lbs/{lb}", action="delete_lb", conditions={"method": ["DELETE"]})
        m.connect("/v1/lbs/{lb}/backends", action="get_backends", conditions={"method": ["GET"]})
        m.connect("/v1/lbs/{lb}/backends", action="post_backend", conditions={"method": ["POST"]})
        m.connect("/v1/lbs/{lb}/backends/{ip}/{port}", action="delete_backend",
                  conditions={"method": ["DELETE"]})
        m.connect("/v1/pods", action="get_pods", conditions={"method": ["GET"]})
        m.connect("/v1/pods", action="post_pod", conditions={"method": ["POST"]})
        m.connect("/v1/pods/{pod}", action="delete_pod", conditions={"method": ["DELETE"]})
        m.connect("/v1/bgp", action="get_bgp", conditions={"method": ["GET"]})
        m.connect("/v1/bgp", action="put_bgp", conditions={"method": ["PUT"]})

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        req = webob.Request(environ)
        match = self.mapper.match(environ=environ)
        try:
            if match is None:
                status, body = 404, {"error": f"no route {req.method} {req.path}"}
            else:
                args = {k: v for k, v in match.items() if k != "action"}
                status, body = getattr(self, match["action"])(req, **args)
        except ConfigError as e:
            status, body = 400, {"error": str(e)}
        except Exception as e:                        # a bug: answer 500, keep serving
            LOG.exception("REST %s %s failed", req.method, req.path)
            status, body = 500, {"error": f"{type(e).__name__}: {e}"}
        res = webob.Response(status=status, content_type="application/json", charset="utf-8",
                             body=(json.dumps(body, indent=1) + "\n").encode())
        return res(environ, start_response)

    def _json(self, req: webob.Request) -> dict:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as e:
            raise ConfigError(f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ConfigError("request body must be a JSON object")
        return body

    def get_status(self, req: webob.Request) -> Reply:
        return 200, self.service.status()

    def get_health(self, req: webob.Request) -> Reply:
        ready = self.service.ready()
        return (200 if ready else 503), {"ready": ready, "waiting_for": self.service.waiting_for()}

    def get_routes(self, req: webob.Request) -> Reply:
        return 200, self.service.vpc.routes_view()

    def get_lbs(self, req: webob.Request) -> Reply:
        return 200, self.service.vpc.lbs_view()

    def post_lb(self, req: webob.Request) -> Reply:
        """Create an LB from a load_balancers[] entry of fabric.json (201, its GET /v1/lbs
        row): a Service that turned LoadBalancer, or a new listener of one."""
        lb = parse_new_load_balancer(self.service.vpc.fabric, self._json(req))
        add_lb(self.service, lb)
        return 201, next(r for r in self.service.vpc.lbs_view() if r["name"] == lb.name)

    def delete_lb(self, req: webob.Request, lb: str) -> Reply:
        """Remove an LB: its VIP:port answers nothing any more (404 if there is none)."""
        try:
            remove_lb(self.service, lb)
        except KeyError:
            return 404, {"error": f"no load balancer {lb!r}"}
        return 200, {"deleted": lb}

    def get_backends(self, req: webob.Request, lb: str) -> Reply:
        if self.service.vpc.fabric.lb(lb) is None:
            return 404, {"error": f"no load balancer {lb!r}"}
        return 200, self.service.backends_view(lb)

    def post_backend(self, req: webob.Request, lb: str) -> Reply:
        """Register {name, ip, port[, after_s]}: now (201; 200 if known), or after_s seconds
        from now (202, the row is pending)."""
        vpc = self.service.vpc
        if vpc.fabric.lb(lb) is None:
            return 404, {"error": f"no load balancer {lb!r}"}
        body = self._json(req)
        backend = parse_backend(body, "backend")
        after_s = parse_seconds(body.get("after_s", 0), "backend.after_s")
        known = backend.key in vpc.balancer.backends[lb]
        self.service.add_backend(lb, backend, after_s)
        row = next(b for b in self.service.backends_view(lb)
                   if (b["ip"], b["port"]) == backend.key)
        return (202 if after_s > 0 else 200 if known else 201), row

    def delete_backend(self, req: webob.Request, lb: str, ip: str, port: str) -> Reply:
        """Deregister, now or ?after_s=S from now; it then drains ?drain_s=S (default: the
        LB's deregistration delay; 0 cuts its connections at once)."""
        after_s = parse_seconds(_number(req.GET.get("after_s", "0")), "after_s")
        drain = req.GET.get("drain_s")
        drain_s = None if drain is None else parse_seconds(_number(drain), "drain_s")
        try:
            self.service.remove_backend(lb, ip, int(port), after_s, drain_s)
        except (KeyError, ValueError):
            return 404, {"error": f"no backend {ip}:{port} in load balancer {lb!r}"}
        return (202 if after_s > 0 else 200), {"deleted": {"lb": lb, "ip": ip, "port": int(port),
                                                           "after_s": after_s,
                                                           "drain_s": drain_s}}

    def get_pods(self, req: webob.Request) -> Reply:
        return 200, [r for r in self.service.vpc.routes_view() if r["kind"] == "pod"]

    def post_pod(self, req: webob.Request) -> Reply:
        vpc = self.service.vpc
        if vpc.fabric.mode != "container-native":
            return 409, {"error": f"pod routes are unknown to the VPC in {vpc.fabric.mode} mode"}
        pod = parse_pod_route(self._json(req), "pod")
        self.service.add_pod(pod)
        return 201, next(r for r in vpc.routes_view()
                         if r["kind"] == "pod" and r["name"] == pod.pod)

    def delete_pod(self, req: webob.Request, pod: str) -> Reply:
        try:
            self.service.remove_pod(pod)
        except KeyError:
            return 404, {"error": f"no pod route {pod!r}"}
        return 200, {"deleted": pod}


    def get_bgp(self, req: webob.Request) -> Reply:
        """The fabric's BGP neighbours and learned routes (Calico-style routing)."""
        return 200, self.service.vpc.bgp.view()

    def put_bgp(self, req: webob.Request) -> Reply:
        """Replace what the fabric's BGP speaker learned ({neighbors, routes}): prefixes that
        came are routed to the node announcing them, prefixes that went are dropped."""
        service = self.service
        neighbors, routes = parse_bgp(service.vpc.fabric, self._json(req))
        service.send_by_switch(service.vpc.bgp.update(neighbors, routes,
                                                      service.ports_by_switch()))
        return 200, service.vpc.bgp.view()


def _number(text: str) -> float | str:
    """A query parameter as a number (left as text when it is not one, for the error)."""
    try:
        return float(text)
    except ValueError:
        return text
