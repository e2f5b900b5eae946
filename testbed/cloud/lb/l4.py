"""The L4 cloud load balancer: the VPC controller's OpenFlow balancer (an NLB-like VIP on the
core switch, health-checked from the LB host), driven through the controller's REST API
(`/v1/lbs/<service>/backends`, see docs/controller.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Set

from testbed.cloud.lb.base import CloudLoadBalancer, Target, TargetHealth, TargetKind
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.errors import EnvironmentProblem

POLL_S = 0.1


class L4LoadBalancer(CloudLoadBalancer):
    """The OpenFlow L4 balancer the VPC controller runs: one group of buckets per service.

    controller: the running VPC controller (its REST API)
    target_kind: instance (nodeport mode) or ip (container-native mode)
    """

    def __init__(self, controller: ControllerProcess, target_kind: TargetKind):
        self.controller = controller
        self.target_kind = target_kind

    def register(self, service: str, target: Target) -> None:
        self.controller.api("POST", f"/v1/lbs/{service}/backends",
                            {"name": target.name, "ip": target.ip, "port": target.port})

    def deregister(self, service: str, target: Target) -> None:
        try:
            self.controller.api("DELETE", f"/v1/lbs/{service}/backends/{target.ip}/{target.port}")
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
