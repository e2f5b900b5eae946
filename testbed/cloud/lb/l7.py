"""The L7 cloud load balancer: HAProxy as the cloud's HTTP proxy LB (AWS ALB, GCP's HTTP(S) LB
with NEGs), run in its own host (lb7) on the LB range, its targets managed at run time through
HAProxy's runtime API the way target registration and NEG attach/detach work.

The VPC routes each VIP to lb7 (haproxy.l7_fabric) instead of balancing it in OpenFlow. A
client's connection ends at HAProxy; every request is balanced on its own, over connections
to the targets that HAProxy keeps alive; the pod sees lb7's address as the peer and the client's
in X-Forwarded-For. Instance targets are every node's IP:NodePort, ip targets each pod's IP:port.

    L7LoadBalancer.start(host, state, plan, health, run_script, gone)   HAProxy up, targets in
    L7LoadBalancer.start_in(cluster)   the same for a built cluster
    .register / .deregister / .drain / .enable / .targets / .wait_ready
    .reap()   collect HAProxy's exit status once the journal's clean has stopped it
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from testbed.cloud.lb import haproxy as hx
from testbed.cloud.lb.base import CloudLoadBalancer, Target, TargetHealth, TargetKind
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.errors import EnvironmentProblem
from testbed.plan.addresses import L7_HOST, Plan, lb_backends
from testbed.spec.model import HealthCheck

POLL_S = 0.1
START_TIMEOUT_S = 10.0
CONFIG, SOCKET, LOG = "haproxy.cfg", "haproxy.sock", "haproxy.log"


@dataclass
class SlotUse:
    """A server slot holding a target.

    port: the target's traffic port in this backend
    deregistered: deregistered, its requests in flight finishing (the slot frees when done)
    was_healthy: in service at some point since it was registered (DOWN then is unhealthy)
    """
    target: Target
    port: int
    deregistered: bool = False
    was_healthy: bool = False


class L7LoadBalancer(CloudLoadBalancer):
    """HAProxy in the L7 LB host: one frontend (the VIP's listener) and one backend of server
    slots (the targets) per LoadBalancer service.

    controller: the VPC controller (it only routes the VIPs to the L7 host here)
    target_kind: instance (nodeport mode) or ip (container-native mode)
    """

    def __init__(self, controller: ControllerProcess, target_kind: TargetKind):
        self.controller = controller
        self.target_kind = target_kind
        self.socket = ""
        self.log = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxies: dict[str, list[hx.Proxy]] = {}
        # backend -> its slots, index k-1 for server target<k>: None while free
        self.slots: dict[str, list[SlotUse | None]] = {}
        self.lock = threading.Lock()

    # -- life ----------------------------------------------------------------------------------
    def start_in(self, cluster: Any) -> None:
        """start() for a built cluster (testbed.emulation.cluster.Cluster, its switches
        programmed): its L7 host, state directory, plan and health check."""
        self.start(cluster.host(L7_HOST), cluster.state, cluster.plan,
                   cluster.topo.load_balancer.health_check,
                   lambda cmds: cluster.hosts.run_script(L7_HOST, cmds),
                   gone=frozenset(cluster.removed_pods))

    def start(self, host: Any, state: Any, plan: Plan, health: HealthCheck,
              run_script: Callable[[Sequence[str]], object],
              gone: Collection[str] = frozenset()) -> None:
        """Give the L7 host its VIPs, start HAProxy there and register every target.

        host: the L7 host (its popen journals the process, so teardown stops it by pid)
        state: the cluster's StateDir (config, runtime socket and log go there)
        run_script: runs command lines in the L7 host's namespace
        gone: pods removed since the build (not registered)"""
        slots = hx.slot_count(len(plan.pods) + len(plan.nodes))
        for lb in plan.load_balancers:
            self.proxies[lb.service] = hx.proxies(lb)
            for proxy in self.proxies[lb.service]:
                self.slots[proxy.backend] = [None] * slots
        run_script(hx.vip_setup(plan.load_balancers))
        self.socket, self.log = state.file(SOCKET), state.file(LOG)
        config = state.file(CONFIG)
        with open(config, "w") as fh:
            fh.write(hx.render_config(plan.load_balancers, health, self.socket, slots,
                                      hx.tcp_services(plan.services)))
        with open(self.log, "ab") as log:
            self.proc = host.popen([hx.HAPROXY, "-db", "-f", config], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
        self._wait_listening()
        for lb in plan.load_balancers:
            svc = next(s for s in plan.services if s.name == lb.service)
            for b in lb_backends(plan, svc):
                if b.name not in gone:
                    self.register(lb.service, Target(b.name, b.ip, b.port))

    def _wait_listening(self) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EnvironmentProblem("HAProxy (the L7 load balancer) exited during start-up; "
                                         "its log ends with:\n" + self.log_tail())
            try:
                self.command("show info")
                return
            except OSError:
                time.sleep(POLL_S / 2)
        raise EnvironmentProblem(f"HAProxy's runtime API did not answer on {self.socket} "
                                 f"within {START_TIMEOUT_S:.0f}s; its log ends with:\n"
                                 + self.log_tail())

    def reap(self) -> None:
        """Collect HAProxy's exit status (teardown's clean stopped it by its journaled pid)."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One line to HAProxy's runtime API (commands separated by ';'); its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.socket)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    # -- the seam ------------------------------------------------------------------------------
    def register(self, service: str, target: Target) -> None:
        with self.lock:
            for proxy in self._proxies(service):
                slots = self.slots[proxy.backend]
                k = self._slot_of(slots, target)
                if k is not None:
                    use = slots[k]
                    assert use is not None
                    if use.deregistered:   # not freed yet: registered anew, checked afresh
                        self.command(hx.restart_server(proxy, hx.slot_name(k + 1)))
                        slots[k] = SlotUse(target, use.port)
                    continue
                k = next((i for i, u in enumerate(slots) if u is None), None)
                if k is None:
                    raise EnvironmentProblem(
                        f"L7 load balancer {proxy.backend}: all {len(slots)} server slots are "
                        f"taken; {target.name} not registered")
                answer = self.command(hx.add_server(proxy, hx.slot_name(k + 1), target.ip,
                                                    target.port))
                if "changed" not in answer and "no need" not in answer:   # set server addr
                    raise EnvironmentProblem(f"HAProxy refused target {target.name} of "
                                             f"{proxy.backend}: {answer.strip()}")
                slots[k] = SlotUse(target, proxy.target_port or target.port)

    def deregister(self, service: str, target: Target) -> None:
        with self.lock:
            for proxy in self._proxies(service):
                slots = self.slots[proxy.backend]
                k = self._slot_of(slots, target)
                use = slots[k] if k is not None else None
                if k is None or use is None or use.deregistered:
                    continue   # not there (any more): the goal is "not there"
                self.command(hx.remove_server(proxy, hx.slot_name(k + 1)))
                use.deregistered = True

    def deregister_after(self, service: str, target: Target, after_s: float,
                         drain_s: float | None = None) -> None:
        """Deregister after_s seconds from now (returns at once); then the requests in flight
        finish, and after drain_s seconds the sessions still open are cut (the target group's
        deregistration delay). drain_s None: never cut, the slot frees when they end."""
        def deregister() -> None:
            self.deregister(service, target)
            if drain_s is not None:
                _later(drain_s, lambda: self._cut(service, target))
        _later(after_s, deregister)

    def drain(self, service: str, target: Target) -> None:
        """Stop sending new requests to a registered target; those in flight finish."""
        self._admin(service, target, hx.drain_server)

    def enable(self, service: str, target: Target) -> None:
        """Send to a drained target again."""
        self._admin(service, target, hx.ready_server)

    def targets(self, service: str) -> list[TargetHealth]:
        with self.lock:
            proxies = self._proxies(service)
            stats = {(st.backend, st.server): st
                     for st in hx.parse_stat(self.command("show stat"))}
            self._free_drained(stats)
            if not proxies:
                return []
            backend = proxies[0].backend
            out = []
            for k, use in enumerate(self.slots[backend]):
                stat = stats.get((backend, hx.slot_name(k + 1)))
                if use is None or stat is None:
                    continue
                in_service, state = hx.target_state(stat, use.deregistered, use.was_healthy)
                use.was_healthy |= in_service
                t = use.target
                out.append(TargetHealth(t, in_service, state, {
                    "name": t.name, "ip": t.ip, "port": t.port, "in_service": in_service,
                    "state": state, "lb": "l7", "server": f"{backend}/{stat.server}",
                    "haproxy": stat.status, "check": stat.check_status,
                    "check_code": stat.check_code, "sessions": stat.current,
                    "sessions_total": stat.total, "since_s": stat.since_s}))
            return out

    def wait_ready(self, expected: Mapping[str, Set[str]], timeout: float) -> None:
        deadline = time.time() + timeout
        for service, want in expected.items():
            while True:
                serving = {t.target.name for t in self.targets(service) if t.in_service}
                if want <= serving:
                    break
                if time.time() > deadline:
                    missing = sorted(want - serving)
                    raise EnvironmentProblem(
                        f"L7 load balancer {service}: targets {', '.join(missing[:8])} not "
                        f"healthy after {timeout:.0f}s; HAProxy's log ends with:\n"
                        + self.log_tail())
                time.sleep(POLL_S)

    # -- helpers -------------------------------------------------------------------------------
    def _proxies(self, service: str) -> list[hx.Proxy]:
        return self.proxies.get(service, [])

    @staticmethod
    def _slot_of(slots: list[SlotUse | None], target: Target) -> int | None:
        return next((k for k, u in enumerate(slots) if u is not None and u.target == target),
                    None)

    def _admin(self, service: str, target: Target,
               line: Callable[[hx.Proxy, str], str]) -> None:
        with self.lock:
            for proxy in self._proxies(service):
                slots = self.slots[proxy.backend]
                k = self._slot_of(slots, target)
                if k is not None and not slots[k].deregistered:   # type: ignore[union-attr]
                    self.command(line(proxy, hx.slot_name(k + 1)))

    def _cut(self, service: str, target: Target) -> None:
        """Cut the sessions a deregistered target still has (its slot frees at the next look)."""
        with self.lock:
            for proxy in self._proxies(service):
                slots = self.slots[proxy.backend]
                k = self._slot_of(slots, target)
                use = slots[k] if k is not None else None
                if k is not None and use is not None and use.deregistered:
                    try:
                        self.command(hx.cut_sessions(proxy, hx.slot_name(k + 1)))
                    except OSError:   # HAProxy is gone (the cluster was torn down meanwhile)
                        return

    def _free_drained(self, stats: Mapping[tuple[str, str], hx.ServerStat]) -> None:
        """Free the slots of deregistered targets whose last session has ended (lock held)."""
        for backend, slots in self.slots.items():
            for k, use in enumerate(slots):
                stat = stats.get((backend, hx.slot_name(k + 1)))
                if use is not None and use.deregistered and stat is not None \
                        and stat.current == 0:
                    slots[k] = None


def _later(after_s: float, action: Callable[[], None]) -> None:
    """action() now, or after_s seconds from now in a daemon timer thread."""
    if after_s <= 0:
        action()
        return
    timer = threading.Timer(after_s, action)
    timer.daemon = True
    timer.start()
