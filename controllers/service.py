"""The controller as a service: switch states, the Vpc core and the checker, without os-ken's loop.

SwitchState: what the controller knows of one fabric switch (connected, programmed, errors)
Timer: a backend's next timed action (a delayed registration or deregistration, the end of its
    draining)
VpcService: one method per event the app receives and per action the REST API asks for; it
    updates the state, asks the core for messages and sends them through the datapath objects
    it is handed (anything with `id`, `xid`, `ofproto` and os-ken's `send(bytes)`), so tests
    build it with fake datapaths and their own clock.
add_lb, remove_lb: an LB created or removed at run time (POST /v1/lbs, DELETE /v1/lbs/<lb>)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import controllers
from controllers import conntrack
from controllers.config import Backend, LoadBalancer, PodRoute, parse_fabric
from controllers.health import HealthChecker, parse_result
from controllers.openflow import (
    DP,
    Messages,
    MessageTooLong,
    Ports,
    clear_switch,
    encode,
    switch_config,
)
from controllers.topology import identify_switch
from controllers.vpc import Vpc

LOG = logging.getLogger("cnlb.vpc")

# How many sent messages are kept to explain an OpenFlow error (by datapath id and xid).
SENT_KEPT = 50000

REGISTER, DEREGISTER, CUT = "register", "deregister", "cut"


@dataclass(frozen=True)
class Timer:
    """What happens to one backend of one LB at `due` (the service's clock).

    action: register (a delayed registration: the cloud LB controller's lag), deregister (a
        delayed deregistration), cut (its draining ends)
    backend: the backend
    drain_s: for deregister, how long it drains (None: the LB's deregistration delay)
    """
    due: float
    action: str
    backend: Backend
    drain_s: float | None = None


@dataclass
class SwitchState:
    """What the app knows of one fabric switch.

    dp: the os-ken Datapath while connected
    ports: port name -> number from the last complete port description
    programmed: a full program was acknowledged by a barrier with no error before it
    """
    name: str
    dp: Any = None
    connected: bool = False
    programmed: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    barrier_xid: int | None = None
    errors: int = 0
    errors_at_program: int = 0
    last_error: str | None = None
    programs: int = 0
    flows_sent: int = 0
    connected_at: float | None = None
    programmed_at: float | None = None


class VpcService:
    """The VPC router, ARP responder and cloud load balancer: state and actions.

    vpc: the core (fabric config + run-time state)
    switches: SwitchState by switch name
    checker: the health-checker child's parent side (started by start_checker)
    timers: per (LB, ip, port), the backend's next timed action; a new action on the backend
        replaces it (the last word wins, as the cloud LB controller's reconciling does)
    clock: seconds, monotonic (tests pass their own)
    """

    def __init__(self, vpc: Vpc, clock: Callable[[], float] = time.monotonic):
        self.vpc = vpc
        self.clock = clock
        self.timers: dict[tuple[str, str, int], Timer] = {}
        self.started = time.time()
        self.switches = {s.name: SwitchState(s.name) for s in vpc.fabric.switches}
        self.checker = HealthChecker(vpc.fabric.checker_netns, self.on_health_results)
        self._pending_ports: dict[int, dict[str, int]] = {}   # dpid -> ports of a reply so far
        self._sent: dict = {}               # (dpid, xid) -> message, to explain errors
        self.run_command: Callable[[list[str]], None] = conntrack.run   # tests record instead

    @classmethod
    def from_config(cls, path: str) -> VpcService:
        """Read fabric.json at path; the checker runs iff it names a network namespace."""
        with open(path) as f:
            fabric = parse_fabric(json.load(f), source=path)
        service = cls(Vpc(fabric, checks_enabled=fabric.checker_netns is not None))
        LOG.info("fabric %s: mode %s, %d switches, %d hosts, %d LBs, health checker %s",
                 fabric.cluster, fabric.mode, len(fabric.switches), len(fabric.hosts),
                 len(fabric.load_balancers),
                 f"in network namespace {fabric.checker_netns}" if service.checks_enabled
                 else "off (backends unchecked, always in service)")
        return service

    def warm_up(self) -> None:
        """Build and serialize the messages that are kept (host, pod and reply routes) now, at
        start-up, rather than when the first switch connects."""
        for m in self.vpc.kept_flows():
            encode(m, 0)

    @property
    def checks_enabled(self) -> bool:
        return self.vpc.checks_enabled

    def start_checker(self) -> None:
        if self.checks_enabled:
            self.checker.start(self.vpc.checker_targets())

    # ---- OpenFlow events --------------------------------------------------------------------

    def on_features(self, dp: Any) -> None:
        """A switch connected: clear it and set its config (the port description follows)."""
        LOG.info("switch %016x connected", dp.id)
        self.send(dp, clear_switch() + switch_config())

    def on_port_desc(self, dp: Any, ports: Ports, more: bool) -> None:
        """One part of a port description; the last part programs the switch in full."""
        pending = self._pending_ports.setdefault(dp.id, {})
        pending.update(ports)
        if more:
            return
        complete = self._pending_ports.pop(dp.id)
        spec = identify_switch(self.vpc.fabric, dp.id, complete)
        if spec is None:
            LOG.warning("switch %016x (ports %s) is not in the fabric; leaving it alone",
                        dp.id, sorted(complete))
            return
        self._program(self.switches[spec.name], dp, complete)

    def on_barrier(self, dp: Any, xid: int) -> None:
        """The barrier after a full program came back: programmed unless an error came first."""
        st = self.state_of(dp)
        if st is None or xid != st.barrier_xid:
            return
        st.barrier_xid = None
        st.programmed = st.errors == st.errors_at_program
        st.programmed_at = time.time()
        LOG.info("switch %s %s (%d messages, %d errors)", st.name,
                 "programmed" if st.programmed else "NOT programmed", st.flows_sent,
                 st.errors - st.errors_at_program)

    def on_error(self, dp: Any, xid: int, type_: int, code: int) -> None:
        """An OpenFlow error: logged with the message that caused it, counted."""
        st = self.state_of(dp)
        sent = self._sent.get((dp.id, xid))
        text = f"type={type_} code={code} for {sent!r:.300}"
        LOG.error("OpenFlow error from %s: %s", st.name if st else dp.id, text)
        if st is not None:
            st.errors += 1
            st.last_error = text

    def on_port_status(self, dp: Any, name: str, reason: int) -> None:
        """A port we use appeared, vanished or was renumbered: ask for the port description."""
        st = self.state_of(dp)
        if st is None or name not in self.vpc.wanted_ports(st.name):
            return
        LOG.info("switch %s: port %s changed (reason %d); reprogramming", st.name, name, reason)
        self.send(dp, [dp.ofproto_parser.OFPPortDescStatsRequest(DP, 0)])

    def on_invalid_ttl(self, dp: Any, in_port: int, data: bytes, reg0: int) -> None:
        """A packet's TTL ran out at dec_ttl: answer ICMP time exceeded."""
        st = self.state_of(dp)
        if st is None:
            return
        self.send(dp, self.vpc.time_exceeded(st.name, in_port, data, reg0=reg0))

    def on_disconnect(self, dp: Any) -> None:
        st = self.state_of(dp)
        if st is not None and st.dp is dp:
            LOG.warning("switch %s disconnected", st.name)
            st.dp, st.connected, st.programmed = None, False, False

    def on_health_result(self, line: dict) -> None:
        """One checker result line (see on_health_results)."""
        self.on_health_results([line])

    def on_health_results(self, lines: list[dict]) -> None:
        """Checker result lines, in order: the health state machine; one group modify per LB
        whose bucket set changed over the batch."""
        results = [parse_result(line) for line in lines]
        health = self.vpc.balancer.health
        before = {k: h.state for r in results
                  if (h := health.get(k := (r.lb, r.ip, r.port))) is not None}
        msgs = self.vpc.observe_results(results, self.ports_by_switch())
        for (lb, ip, port), state in before.items():
            h = health.get((lb, ip, port))
            if h is not None and h.state != state:
                LOG.info("lb %s backend %s:%d: %s -> %s (%s)", lb, ip, port, state, h.state,
                         h.last.get("status") or h.last.get("error"))
        self.send_by_switch(msgs)

    def on_tick(self) -> None:
        """Run the timed actions that are due, in the order they fell due."""
        now = self.clock()
        for key, t in sorted(self.timers.items(), key=lambda kv: kv[1].due):
            if t.due > now:
                break
            del self.timers[key]
            if t.action == REGISTER:
                self._register(key[0], t.backend)
            elif t.action == DEREGISTER:
                self._deregister(key[0], t.backend.ip, t.backend.port, t.drain_s)
            else:
                cut_backend(self, *key)

    # ---- REST actions -------------------------------------------------------------------

    def add_backend(self, lb: str, backend: Backend, after_s: float = 0.0) -> None:
        """Register backend in LB lb now, or after_s seconds from now (the cloud LB
        controller's registration delay); KeyError if there is no such LB."""
        self._known_lb(lb)
        key = (lb, *backend.key)
        self.timers.pop(key, None)
        if after_s > 0:
            self.timers[key] = Timer(self.clock() + after_s, REGISTER, backend)
        else:
            self._register(lb, backend)

    def remove_backend(self, lb: str, ip: str, port: int, after_s: float = 0.0,
                       drain_s: float | None = None) -> None:
        """Deregister backend ip:port of LB lb now or after_s seconds from now (the cloud LB
        controller's deregistration lag); it then drains for drain_s seconds (None: the LB's
        deregistration delay; 0: its connections are cut at once). KeyError if it is neither
        registered nor about to be."""
        key = (lb, ip, port)
        pending = self.timers.get(key)
        backend = self.vpc.balancer.backends[self._known_lb(lb)].get((ip, port))
        if backend is None and (pending is None or pending.action != REGISTER):
            raise KeyError(key)
        if backend is None:                    # registration still pending: it never happens
            del self.timers[key]
            return
        self.timers.pop(key, None)
        if after_s > 0:
            self.timers[key] = Timer(self.clock() + after_s, DEREGISTER, backend, drain_s)
        else:
            self._deregister(lb, ip, port, drain_s)

    def _known_lb(self, lb: str) -> str:
        if self.vpc.fabric.lb(lb) is None:
            raise KeyError(lb)
        return lb

    def _register(self, lb: str, backend: Backend) -> None:
        self.send_by_switch(self.vpc.add_backend(lb, backend, self.ports_by_switch()))
        self.checker.update(self.vpc.checker_targets())

    def _deregister(self, lb: str, ip: str, port: int, drain_s: float | None) -> None:
        backend = self.vpc.balancer.backends[lb].get((ip, port))
        if backend is None:
            return
        self.send_by_switch(self.vpc.remove_backend(lb, ip, port, self.ports_by_switch()))
        self.checker.update(self.vpc.checker_targets())
        drain = self.vpc.lb_config(lb).deregistration_delay_s if drain_s is None else drain_s
        if drain > 0:
            self.timers[(lb, ip, port)] = Timer(self.clock() + drain, CUT, backend)
        else:
            cut_backend(self, lb, ip, port)

    def backends_view(self, lb: str) -> list[dict]:
        """GET /v1/lbs/<lb>/backends: the core's rows, each with its pending action, then the
        registrations still pending (state pending)."""
        return with_timers(self.vpc.backends_view(lb), lb, self.timers, self.clock())

    def add_pod(self, pod: PodRoute) -> None:
        self.send_by_switch(self.vpc.add_pod(pod, self.ports_by_switch()))

    def remove_pod(self, name: str) -> None:
        self.send_by_switch(self.vpc.remove_pod(name, self.ports_by_switch()))

    def status(self) -> dict:
        """GET /v1/status: per switch, the controller, the health checker."""
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

    def waiting_for(self) -> list[str]:
        """The switches not yet connected and programmed."""
        return [st.name for st in self.switches.values() if not (st.connected and st.programmed)]

    # ---- plumbing ---------------------------------------------------------------------------

    def _program(self, st: SwitchState, dp: Any, ports: dict[str, int]) -> None:
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
        st.barrier_xid = self.send(dp, msgs + [dp.ofproto_parser.OFPBarrierRequest(DP)])

    def send(self, dp: Any, msgs: list) -> int | None:
        """Send msgs to dp in order, in one write; returns the last one's xid (None if none).

        One write, not one per message: os-ken's send_msg queues each message on its own, and a
        1000-pod switch's ~2200 flow-mods then cost a green-thread hand-off each. Each message
        is remembered by xid to explain an error. A message too long for OpenFlow is refused:
        logged and counted as an error of the switch (so a program with one is not
        "programmed"), and the others still go.
        """
        self._sent = self._sent if len(self._sent) < SENT_KEPT else {}
        chunks, xid = [], None
        for m in msgs:
            this = _next_xid(dp)
            try:
                chunks.append(encode(m, this))
            except MessageTooLong as e:
                self._refused(dp, m, e)
                continue
            xid = this
            self._sent[(dp.id, xid)] = m
        if chunks:
            dp.send(b"".join(chunks))
        return xid

    def _refused(self, dp: Any, msg: Any, error: MessageTooLong) -> None:
        st = self.state_of(dp)
        lb = next((lb.name for lb in self.vpc.fabric.load_balancers
                   if getattr(msg, "group_id", None) == lb.group_id), None)
        text = (f"switch {st.name if st else dp.id}: not sent: "
                f"{f'lb {lb}: ' if lb else ''}{error}")
        LOG.error("%s", text)
        if st is not None:
            st.errors += 1
            st.last_error = text

    def send_by_switch(self, by_switch: Messages) -> None:
        for name, msgs in by_switch.items():
            st = self.switches[name]
            if st.dp is not None and msgs:
                self.send(st.dp, msgs)

    def ports_by_switch(self) -> dict[str, dict]:
        """Port maps of the connected switches (the run-time changes go to these only)."""
        return {name: st.ports for name, st in self.switches.items() if st.dp is not None}

    def state_of(self, dp: Any) -> SwitchState | None:
        return next((st for st in self.switches.values() if st.dp is dp), None)


def cut_backend(service: VpcService, lb: str, ip: str, port: int) -> None:
    """A deregistered backend's draining ended: its connections through the LB end (a UDP
    client's next datagram is a new flow, which goes to a registered target)."""
    service.send_by_switch(service.vpc.cut_backend(lb, ip, port, service.ports_by_switch()))
    if service.vpc.lb_config(lb).protocol == "udp":
        service.run_command(conntrack.flush_udp_to_backend_argv(
            service.vpc.fabric.core.name, ip, port))


def add_lb(service: VpcService, lb: LoadBalancer) -> None:
    """A new LB (a Service turned LoadBalancer): flows on the switches, its backends checked
    from now on (each starts initial)."""
    service.send_by_switch(service.vpc.add_lb(lb, service.ports_by_switch()))
    service.checker.update(service.vpc.checker_targets())


def remove_lb(service: VpcService, name: str) -> None:
    """Remove an LB and its pending timers (KeyError if unknown): its VIP is released."""
    service.vpc.lb_config(name)
    service.timers = {k: t for k, t in service.timers.items() if k[0] != name}
    service.send_by_switch(service.vpc.remove_lb(name, service.ports_by_switch()))
    service.checker.update(service.vpc.checker_targets())


def with_timers(rows: list[dict], lb: str, timers: dict[tuple[str, str, int], Timer],
                now: float) -> list[dict]:
    """An LB's backend rows with each one's pending action (what, in how many seconds), and a
    row of state pending per registration not yet made."""
    known = set()
    for row in rows:
        known.add((row["ip"], row["port"]))
        t = timers.get((lb, row["ip"], row["port"]))
        row["pending"] = None if t is None else {"action": t.action,
                                                 "in_s": round(t.due - now, 3)}
    for (name, ip, port), t in sorted(timers.items()):
        if name == lb and t.action == REGISTER and (ip, port) not in known:
            rows.append({"name": t.backend.name, "ip": ip, "port": port, "state": "pending",
                         "in_service": False,
                         "pending": {"action": REGISTER, "in_s": round(t.due - now, 3)}})
    return rows


def _next_xid(dp: Any) -> int:
    """The datapath's next transaction id, from the counter os-ken's own messages use too."""
    dp.xid = (dp.xid + 1) & dp.ofproto.MAX_XID
    return dp.xid
