"""The VPC controller app: the os-ken side of controllers.vpc_core.

Read it like Ryu's simple_switch_13.py: each handler finds the switch's state, asks the core for
messages and sends them. The core decides everything; this module only does the I/O:

    switch features  -> clear flows and groups, set config (os-ken's ofp_handler already asks
                        for the port description)
    port desc reply  -> program the switch in full from its port-name -> number map, then a
                        barrier; so a reconnect or a restarted ovs-vswitchd is reprogrammed whole
    barrier reply    -> the switch is programmed (if no OpenFlow error came back before it)
    port status      -> a port we use appeared/vanished/renumbered: ask for port desc again
    packet-in        -> invalid TTL: answer ICMP time exceeded
    error            -> logged with the message that caused it, counted in /v1/status
    checker result   -> health state machine; a bucket set change -> group modify
    REST             -> /v1/... on 127.0.0.1 (see docs/controller.md)

Configuration comes from os-ken's CONF (set by controllers.run): vpc_config (fabric.json),
vpc_rest_host, vpc_rest_port.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import routes
import webob

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER,
                                       set_ev_cls)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

import controllers
from controllers import vpc_core as core

CONF = cfg.CONF
CONF.register_opts([
    cfg.StrOpt("vpc-config", default="fabric.json", help="the fabric config (fabric.json)"),
    cfg.StrOpt("vpc-rest-host", default="127.0.0.1", help="REST API listen address"),
    cfg.IntOpt("vpc-rest-port", default=18080, help="REST API listen port"),
])

LOG = logging.getLogger("cnlb.vpc")


@dataclass
class SwitchState:
    """What the app knows of one fabric switch.

    dp: the os-ken Datapath while connected
    ports: port name -> number from the last complete port description
    programmed: a full program was acknowledged by a barrier with no error before it
    """
    name: str
    dp: object = None
    connected: bool = False
    programmed: bool = False
    ports: dict = field(default_factory=dict)
    pending_ports: dict = field(default_factory=dict)
    barrier_xid: int | None = None
    errors: int = 0
    errors_at_program: int = 0
    last_error: str | None = None
    programs: int = 0
    flows_sent: int = 0
    connected_at: float | None = None
    programmed_at: float | None = None


class VpcController(app_manager.OSKenApp):
    """The VPC router, ARP responder and cloud load balancer, driven by fabric.json."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        with open(CONF.vpc_config) as f:
            fabric = core.parse_fabric(json.load(f), source=CONF.vpc_config)
        self.started = time.time()
        self.vpc = core.Vpc(fabric, checks_enabled=fabric.checker_netns_pid is not None)
        self.switches = {s.name: SwitchState(s.name) for s in fabric.switches}
        self.checker = HealthChecker(fabric.checker_netns_pid, self.on_health_result)
        self._pending_ports: dict = {}      # dpid -> ports of a multipart reply so far
        self._sent: dict = {}               # (dpid, xid) -> message, to explain errors
        LOG.info("fabric %s: mode %s, %d switches, %d hosts, %d LBs, health checker %s",
                 fabric.cluster, fabric.mode, len(fabric.switches), len(fabric.hosts),
                 len(fabric.load_balancers),
                 f"in netns of pid {fabric.checker_netns_pid}" if self.checks_enabled
                 else "off (backends unchecked, always in service)")

    @property
    def checks_enabled(self) -> bool:
        return self.vpc.checks_enabled

    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self._serve_rest))
        if self.checks_enabled:
            self.checker.start(self.vpc.checker_targets())
        return thread

    def stop(self):
        self.checker.stop()
        super().stop()

    # ---- OpenFlow events ------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        dp = ev.msg.datapath
        LOG.info("switch %016x connected", dp.id)
        # No port-desc request here: os-ken's ofp_handler sends one on every features reply,
        # and a second would program the switch twice.
        self._send(dp, core.clear_switch() + core.switch_config())

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def port_desc_handler(self, ev):
        dp = ev.msg.datapath
        pending = self._pending_ports.setdefault(dp.id, {})
        pending.update({p.name.decode(errors="replace"): p.port_no for p in ev.msg.body})
        if ev.msg.flags & dp.ofproto.OFPMPF_REPLY_MORE:
            return
        ports = self._pending_ports.pop(dp.id)
        spec = core.identify_switch(self.vpc.fabric, dp.id, ports)
        if spec is None:
            LOG.warning("switch %016x (ports %s) is not in the fabric; leaving it alone",
                        dp.id, sorted(ports))
            return
        self._program(self.switches[spec.name], dp, ports)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def barrier_reply_handler(self, ev):
        st = self._state_of(ev.msg.datapath)
        if st is None or ev.msg.xid != st.barrier_xid:
            return
        st.barrier_xid = None
        st.programmed = st.errors == st.errors_at_program
        st.programmed_at = time.time()
        LOG.info("switch %s %s (%d messages, %d errors)", st.name,
                 "programmed" if st.programmed else "NOT programmed", st.flows_sent,
                 st.errors - st.errors_at_program)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def error_handler(self, ev):
        msg = ev.msg
        st = self._state_of(msg.datapath)
        sent = self._sent.get((msg.datapath.id, msg.xid))
        text = f"type={msg.type} code={msg.code} for {sent!r:.300}"
        LOG.error("OpenFlow error from %s: %s", st.name if st else msg.datapath.id, text)
        if st is not None:
            st.errors += 1
            st.last_error = text

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev):
        st = self._state_of(ev.msg.datapath)
        name = ev.msg.desc.name.decode(errors="replace")
        if st is None or name not in self.vpc.wanted_ports(st.name):
            return
        LOG.info("switch %s: port %s changed (reason %d); reprogramming", st.name, name,
                 ev.msg.reason)
        dp = ev.msg.datapath
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        msg = ev.msg
        st = self._state_of(msg.datapath)
        if st is None or msg.reason != msg.datapath.ofproto.OFPR_INVALID_TTL:
            return
        out = self.vpc.time_exceeded(st.name, msg.match["in_port"], msg.data,
                                     reg0=msg.match.get("reg0", 0))
        self._send(msg.datapath, out)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def state_change_handler(self, ev):
        st = self._state_of(ev.datapath)
        if ev.state == DEAD_DISPATCHER and st is not None and st.dp is ev.datapath:
            LOG.warning("switch %s disconnected", st.name)
            st.dp, st.connected, st.programmed = None, False, False

    # ---- health checker results -----------------------------------------------------------

    def on_health_result(self, result: dict):
        lb, ip, port = core.parse_backend_id(result["id"])
        health = self.vpc.health.get((lb, ip, port))
        before = health.state if health else None
        msgs = self.vpc.observe_health(lb, ip, port, bool(result.get("ok")), result,
                                       self._ports_by_switch())
        if health is not None and health.state != before:
            LOG.info("lb %s backend %s:%d: %s -> %s (%s)", lb, ip, port, before, health.state,
                     result.get("status") or result.get("error"))
        self._send_by_switch(msgs)

    # ---- REST actions (called by RestApi) -------------------------------------------------

    def add_backend(self, lb: str, backend: core.Backend):
        self._send_by_switch(self.vpc.add_backend(lb, backend, self._ports_by_switch()))
        self.checker.update(self.vpc.checker_targets())

    def remove_backend(self, lb: str, ip: str, port: int):
        self._send_by_switch(self.vpc.remove_backend(lb, ip, port, self._ports_by_switch()))
        self.checker.update(self.vpc.checker_targets())

    def add_pod(self, pod: core.PodRoute):
        self._send_by_switch(self.vpc.add_pod(pod, self._ports_by_switch()))

    def remove_pod(self, name: str):
        self._send_by_switch(self.vpc.remove_pod(name, self._ports_by_switch()))

    def status(self) -> dict:
        switches = []
        for spec in self.vpc.fabric.switches:
            st = self.switches[spec.name]
            switches.append({
                "name": st.name, "dpid": spec.dpid, "role": spec.role,
                "connected": st.connected, "programmed": st.programmed,
                "programs": st.programs, "messages_sent": st.flows_sent, "errors": st.errors,
                "last_error": st.last_error,
                "missing_ports": sorted(self.vpc.wanted_ports(st.name) - set(st.ports))
                if st.connected else None,
                "connected_at": st.connected_at, "programmed_at": st.programmed_at})
        return {"ready": self.ready(), "cluster": self.vpc.fabric.cluster,
                "mode": self.vpc.fabric.mode,
                "controller": {"version": controllers.__version__, "pid": os.getpid(),
                               "uptime_s": round(time.time() - self.started, 3)},
                "health_checker": self.checker.status(), "switches": switches}

    def ready(self) -> bool:
        return all(st.connected and st.programmed for st in self.switches.values())

    # ---- plumbing ---------------------------------------------------------------------------

    def _program(self, st: SwitchState, dp, ports: dict):
        if st.dp is not dp:
            st.connected_at = time.time()
        st.dp, st.connected, st.ports, st.programmed = dp, True, ports, False
        missing = self.vpc.wanted_ports(st.name) - set(ports)
        if missing:
            LOG.warning("switch %s: ports %s are missing; their flows are left out until "
                        "they appear", st.name, sorted(missing))
        msgs = self.vpc.program_switch(st.name, ports)
        st.programs += 1
        st.errors_at_program = st.errors
        st.flows_sent = len(msgs)
        self._send(dp, msgs)
        barrier = dp.ofproto_parser.OFPBarrierRequest(dp)
        dp.send_msg(barrier)
        st.barrier_xid = barrier.xid

    def _send(self, dp, msgs):
        self._sent = self._sent if len(self._sent) < 50000 else {}
        for m in msgs:
            m.datapath = dp
            dp.send_msg(m)
            self._sent[(dp.id, m.xid)] = m

    def _send_by_switch(self, by_switch: dict):
        for name, msgs in by_switch.items():
            st = self.switches[name]
            if st.dp is not None and msgs:
                self._send(st.dp, msgs)

    def _ports_by_switch(self) -> dict:
        return {name: st.ports for name, st in self.switches.items() if st.dp is not None}

    def _state_of(self, dp) -> SwitchState | None:
        return next((st for st in self.switches.values() if st.dp is dp), None)

    def _serve_rest(self):
        host, port = CONF.vpc_rest_host, CONF.vpc_rest_port
        LOG.info("REST API on http://%s:%d/v1/", host, port)
        hub.WSGIServer((host, port), RestApi(self)).serve_forever()


# --------------------------------------------------------------------------------------------
# REST API
# --------------------------------------------------------------------------------------------

class RestApi:
    """JSON over HTTP, /v1/... (os-ken 4.2.2 dropped os_ken.app.wsgi, so this is the small
    Routes + WebOb app its ControllerBase was, served by os-ken's hub.WSGIServer).

    app: the VpcController whose state is shown and changed
    """

    def __init__(self, app: VpcController):
        self.app = app
        m = self.mapper = routes.Mapper()
        m.connect("/v1/status", action="get_status", conditions={"method": ["GET"]})
        m.connect("/v1/health", action="get_health", conditions={"method": ["GET"]})
        m.connect("/v1/routes", action="get_routes", conditions={"method": ["GET"]})
        m.connect("/v1/lbs", action="get_lbs", conditions={"method": ["GET"]})
        m.connect("/v1/lbs/{lb}/backends", action="get_backends", conditions={"method": ["GET"]})
        m.connect("/v1/lbs/{lb}/backends", action="post_backend", conditions={"method": ["POST"]})
        m.connect("/v1/lbs/{lb}/backends/{ip}/{port}", action="delete_backend",
                  conditions={"method": ["DELETE"]})
        m.connect("/v1/pods", action="get_pods", conditions={"method": ["GET"]})
        m.connect("/v1/pods", action="post_pod", conditions={"method": ["POST"]})
        m.connect("/v1/pods/{pod}", action="delete_pod", conditions={"method": ["DELETE"]})

    def __call__(self, environ, start_response):
        req = webob.Request(environ)
        match = self.mapper.match(environ=environ)
        try:
            if match is None:
                status, body = 404, {"error": f"no route {req.method} {req.path}"}
            else:
                args = {k: v for k, v in match.items() if k != "action"}
                status, body = getattr(self, match["action"])(req, **args)
        except core.ConfigError as e:
            status, body = 400, {"error": str(e)}
        except Exception as e:                        # a bug: answer 500, keep serving
            LOG.exception("REST %s %s failed", req.method, req.path)
            status, body = 500, {"error": f"{type(e).__name__}: {e}"}
        res = webob.Response(status=status, content_type="application/json", charset="utf-8",
                             body=(json.dumps(body, indent=1) + "\n").encode())
        return res(environ, start_response)

    def _json(self, req) -> dict:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as e:
            raise core.ConfigError(f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise core.ConfigError("request body must be a JSON object")
        return body

    def get_status(self, req):
        return 200, self.app.status()

    def get_health(self, req):
        ready = self.app.ready()
        waiting = [st.name for st in self.app.switches.values()
                   if not (st.connected and st.programmed)]
        return (200 if ready else 503), {"ready": ready, "waiting_for": waiting}

    def get_routes(self, req):
        return 200, self.app.vpc.routes_view()

    def get_lbs(self, req):
        return 200, self.app.vpc.lbs_view()

    def get_backends(self, req, lb):
        if self.app.vpc.fabric.lb(lb) is None:
            return 404, {"error": f"no load balancer {lb!r}"}
        return 200, self.app.vpc.backends_view(lb)

    def post_backend(self, req, lb):
        if self.app.vpc.fabric.lb(lb) is None:
            return 404, {"error": f"no load balancer {lb!r}"}
        backend = core.parse_backend(self._json(req), "backend")
        known = backend.key in self.app.vpc.backends[lb]
        self.app.add_backend(lb, backend)
        row = next(b for b in self.app.vpc.backends_view(lb)
                   if (b["ip"], b["port"]) == backend.key)
        return (200 if known else 201), row

    def delete_backend(self, req, lb, ip, port):
        try:
            self.app.remove_backend(lb, ip, int(port))
        except (KeyError, ValueError):
            return 404, {"error": f"no backend {ip}:{port} in load balancer {lb!r}"}
        return 200, {"deleted": {"lb": lb, "ip": ip, "port": int(port)}}

    def get_pods(self, req):
        return 200, [r for r in self.app.vpc.routes_view() if r["kind"] == "pod"]

    def post_pod(self, req):
        if self.app.vpc.fabric.mode != "container-native":
            return 409, {"error": f"pod routes are unknown to the VPC in "
                                  f"{self.app.vpc.fabric.mode} mode"}
        pod = core.parse_pod_route(self._json(req), "pod")
        self.app.add_pod(pod)
        return 201, next(r for r in self.app.vpc.routes_view()
                         if r["kind"] == "pod" and r["name"] == pod.pod)

    def delete_pod(self, req, pod):
        try:
            self.app.remove_pod(pod)
        except KeyError:
            return 404, {"error": f"no pod route {pod!r}"}
        return 200, {"deleted": pod}


# --------------------------------------------------------------------------------------------
# The health-checker child
# --------------------------------------------------------------------------------------------

class HealthChecker:
    """Runs `python -m controllers.run --checker` inside the LB host's network namespace.

    Why a child process and not setns() here: setns() moves the calling OS thread, and with
    eventlet every green thread -- OpenFlow, REST, everything -- is that one thread, so sockets
    created afterwards would all land in lb0's namespace. The controller must stay in the root
    namespace (127.0.0.1 only) and lb0's namespace has the only route to the backends, so the
    checks run in a separate process entered with nsenter: its sockets live in lb0's namespace
    from the start, it dies with us (PR_SET_PDEATHSIG, and EOF on its stdin), and it speaks JSON
    lines: targets in on stdin, one result per check out on stdout.

    netns_pid: a process in the LB host's namespace (fabric.json health_checker.netns_pid)
    on_result: called with each result dict {"id", "ok", "status"|"error", "ms"}
    """

    RESTART_S = 2.0

    def __init__(self, netns_pid: int | None, on_result):
        self.netns_pid = netns_pid
        self.on_result = on_result
        self.proc = None
        self.targets: list = []
        self.stopping = False
        self.last_error: str | None = None
        self.results = 0
        self.starts = 0

    def command(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.netns_pid}/ns/net", "--",
                sys.executable, "-m", "controllers.run", "--checker"]

    def start(self, targets: list):
        self.targets = targets
        hub.spawn(self._run)

    def update(self, targets: list):
        self.targets = targets
        self._write_targets()

    def stop(self):
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def status(self) -> dict:
        return {"enabled": self.netns_pid is not None, "netns_pid": self.netns_pid,
                "running": self.proc is not None and self.proc.poll() is None,
                "pid": self.proc.pid if self.proc else None, "starts": self.starts,
                "results": self.results, "last_error": self.last_error}

    def _write_targets(self):
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write((json.dumps({"targets": self.targets}) + "\n").encode())
            proc.stdin.flush()
        except OSError as e:
            self.last_error = f"writing targets: {e}"

    def _run(self):
        from eventlet.green import subprocess     # green pipes; imported here, not at load
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        while not self.stopping:
            self.starts += 1
            try:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, cwd=root, env=env,
                                             preexec_fn=_die_with_parent)
            except OSError as e:
                self.last_error = f"cannot start checker: {e}"
                LOG.error("%s", self.last_error)
                hub.sleep(self.RESTART_S)
                continue
            LOG.info("health checker pid %d started in the netns of pid %d", self.proc.pid,
                     self.netns_pid)
            self._write_targets()
            for line in self.proc.stdout:
                try:
                    result = json.loads(line)
                except ValueError:
                    LOG.warning("checker said %r", line[:200])
                    continue
                if "id" in result:
                    self.results += 1
                    self.on_result(result)
                elif result.get("event"):
                    LOG.info("checker: %s", result)
            code = self.proc.wait()
            if not self.stopping:
                self.last_error = f"checker exited with {code}"
                LOG.error("health checker exited with %s; restarting in %.0fs", code,
                          self.RESTART_S)
                hub.sleep(self.RESTART_S)


def _die_with_parent():
    """In the child before exec: get SIGTERM when the controller dies (survives exec)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
