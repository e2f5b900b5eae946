"""The L4 cloud load balancer: the VPC controller's OpenFlow balancer (an NLB-like VIP on the
core switch, health-checked from the LB host), driven through the controller's REST API
(`/v1/lbs/<service>/backends`, see docs/controller.md). A service with several ports has one
controller LB per listener (testbed.cloud.fabric.listener_name); a target goes to all of them.
The lags and the draining are the controller's timers (after_s, drain_s).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass

from testbed.cloud.lb.base import CloudLoadBalancer, Target, TargetHealth, TargetKind
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.errors import EnvironmentProblem

POLL_S = 0.1


@dataclass(frozen=True)
class ListenerRef:
    """One listener of a service's LB, as the controller knows it: its LB's name, and the port
    every target gets its traffic on: its target group's port (the targetPort of ip targets, the
    nodePort of instance targets), whatever port the target's pod declares; None (a fabric
    without it): the target's own port."""
    lb: str
    backend_port: int | None


class L4LoadBalancer(CloudLoadBalancer):
    """The OpenFlow L4 balancer the VPC controller runs: one group of buckets per service.

    controller: the running VPC controller (its REST API)
    target_kind: instance (nodeport mode) or ip (container-native mode)
    """

    def __init__(self, controller: ControllerProcess, target_kind: TargetKind):
        self.controller = controller
        self.target_kind = target_kind
        self._listeners: dict[str, list[ListenerRef]] = {}
        self._read: float | None = None       # fabric.json's mtime when last read

    def listeners(self, service: str) -> list[ListenerRef]:
        """The service's listeners, from the controller's fabric.json (read again when it
        changes): the first is the LB named after the service. Each has its backend port, the
        first too: a pod added later must get the listener's targetPort, not its own
        containerPort (an LB controller registers pods at the target group's port)."""
        path = getattr(self.controller, "config", "")
        try:
            mtime: float | None = os.stat(path).st_mtime
        except OSError:
            mtime = None
        if mtime != self._read or self._read is None:
            self._read = mtime
            try:
                with open(path) as fh:
                    lbs = json.load(fh).get("load_balancers") or []
            except (OSError, ValueError):
                lbs = []
            self._listeners = {}
            for lb in lbs:
                mine = self._listeners.setdefault(lb.get("service", lb["name"]), [])
                mine.append(ListenerRef(lb["name"], lb.get("backend_port")))
        return self._listeners.get(service) or [ListenerRef(service, None)]

    def reload(self) -> None:
        """fabric.json changed (a Service changed while running): read the listeners again
        (its mtime may not have moved within the file system's time resolution)."""
        self._read = None

    def register(self, service: str, target: Target) -> None:
        self.register_after(service, target, 0.0)

    def deregister(self, service: str, target: Target) -> None:
        self.deregister_after(service, target, 0.0)

    def register_after(self, service: str, target: Target, after_s: float) -> None:
        for listener in self.listeners(service):
            body: dict[str, object] = {"name": target.name, "ip": target.ip,
                                       "port": listener.backend_port or target.port}
            if after_s > 0:
                body["after_s"] = after_s
            self.controller.api("POST", f"/v1/lbs/{listener.lb}/backends", body)

    def deregister_after(self, service: str, target: Target, after_s: float,
                         drain_s: float | None = None) -> None:
        args = ([f"after_s={after_s}"] if after_s > 0 else []) + \
            ([] if drain_s is None else [f"drain_s={drain_s}"])
        query = "?" + "&".join(args) if args else ""
        for listener in self.listeners(service):
            port = listener.backend_port or target.port
            try:
                self.controller.api("DELETE",
                                    f"/v1/lbs/{listener.lb}/backends/{target.ip}/{port}{query}")
            except Exception:   # already gone (404) is fine: the goal is "not there"
                pass

    def targets(self, service: str) -> list[TargetHealth]:
        rows = self.controller.api("GET", f"/v1/lbs/{service}/backends")
        return [TargetHealth(Target(r["name"], r["ip"], r["port"]), bool(r.get("in_service")),
                             r.get("state", ""), r) for r in rows]

    def wait_ready(self, expected: Mapping[str, Set[str]], timeout: float) -> None:
        deadline = time.time() + timeout
        for service, want in expected.items():
            while not self._serves(service, want):
                if time.time() > deadline:
                    serving = {t.target.name for t in self.targets(service) if t.in_service}
                    raise EnvironmentProblem(
                        f"load balancer {service}: backends {_some(sorted(want - serving))} not "
                        f"healthy after {timeout:.0f}s; controller log ends with:\n"
                        + self.controller.log_tail())
                time.sleep(POLL_S)

    def _serves(self, service: str, want: Set[str]) -> bool:
        """Whether every target in want is in service. The LB's one-line summary (GET /v1/lbs)
        first: the list of 1000 targets is ~300 kB of JSON that the controller, busy with their
        health checks, would otherwise render ten times a second."""
        rows = self.controller.api("GET", "/v1/lbs")
        count = next((int(r["in_service"]) for r in rows if r["name"] == service), 0)
        if count < len(want):
            return False
        return want <= {t.target.name for t in self.targets(service) if t.in_service}


def _some(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
