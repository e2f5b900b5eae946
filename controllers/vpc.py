"""The VPC controller's pure core: fabric config in, OpenFlow 1.3 messages out.

Vpc: composes the Topology, the Router and the Balancer; program_switch is a switch's whole
    program, the run-time changes return {switch: messages}. Nothing here opens a socket,
    sleeps or touches an os-ken event loop, so tests run it against a fake switch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from controllers import icmp
from controllers.bgp import BgpRoutes
from controllers.config import Backend, Fabric, LoadBalancer, PodRoute
from controllers.health import CheckResult
from controllers.lb import Balancer, add_lb, remove_lb
from controllers.openflow import Messages, Ports, clear_switch, switch_config
from controllers.routing import Router
from controllers.topology import Topology


class Vpc:
    """The VPC as the controller sees it: fabric config + the parts that change at run time.

    fabric: the validated fabric.json
    checks_enabled: False when no checker runs; backends are then "unchecked" and in service
    topology / router / balancer: the parts; router.pods, balancer.backends and balancer.health
        are the run-time state
    """

    def __init__(self, fabric: Fabric, checks_enabled: bool = True):
        self.fabric = fabric
        self.checks_enabled = checks_enabled
        self.topology = Topology(fabric)
        self.router = Router(fabric, self.topology)
        self.balancer = Balancer(fabric, self.topology, checks_enabled)
        self.bgp = BgpRoutes(fabric)   # prefixes the fabric's BGP speaker learned

    def program_switch(self, switch: str, ports: Ports) -> list:
        """Everything the switch needs, from an empty table: clear, config, then all flows."""
        return (clear_switch() + switch_config() + self.router.flows(switch, ports)
                + self.bgp.flows() + self.balancer.flows(switch, ports))

    def kept_flows(self) -> list:
        """The messages built once and kept: host and pod routes (the same on every switch)
        and the core's reply flows."""
        return self.router.shared_flows() + self.balancer.reply_flows()

    def wanted_ports(self, switch: str) -> set[str]:
        """Every port name this switch's flows refer to (status shows the missing ones)."""
        return self.topology.wanted_ports(switch)

    def time_exceeded(self, switch: str, in_port: int, data: bytes, reg0: int = 0) -> list:
        """The ICMP time exceeded answer to an invalid-TTL packet-in (see icmp.time_exceeded)."""
        return icmp.time_exceeded(self.fabric, switch, in_port, data, reg0)

    # ---- run-time changes (each returns the messages for the switches in ports_by_switch)

    def add_pod(self, pod: PodRoute, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Container-native: route pod.ip via its node (replaces a pod of the same name)."""
        return self.router.add_pod(pod, ports_by_switch)

    def remove_pod(self, name: str, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Forget pod `name`'s route (KeyError if unknown)."""
        return self.router.remove_pod(name, ports_by_switch)

    def add_backend(self, lb_name: str, b: Backend,
                    ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Register a backend; it takes traffic once healthy (or unchecked)."""
        return self.balancer.add_backend(lb_name, b, ports_by_switch)

    def remove_backend(self, lb_name: str, ip: str, port: int,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Deregister a backend (KeyError if unknown); its reply flow stays for draining."""
        return self.balancer.remove_backend(lb_name, ip, port, ports_by_switch)

    def cut_backend(self, lb_name: str, ip: str, port: int,
                    ports_by_switch: Mapping[str, Ports]) -> Messages:
        """A deregistered backend's draining ended: its connections through the LB are cut."""
        return self.balancer.cut_backend(lb_name, ip, port, ports_by_switch)

    def add_lb(self, lb: LoadBalancer, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Add an LB (config.parse_new_load_balancer checked it against this fabric): the
        fabric has it from now on, and so would a switch's full program."""
        self._set_fabric(dataclasses.replace(
            self.fabric, load_balancers=(*self.fabric.load_balancers, lb)))
        return add_lb(self.balancer, lb, ports_by_switch)

    def remove_lb(self, name: str, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Remove LB `name` (KeyError if unknown): its VIP:port answers nothing any more."""
        msgs = remove_lb(self.balancer, name, ports_by_switch)
        self._set_fabric(dataclasses.replace(self.fabric, load_balancers=tuple(
            lb for lb in self.fabric.load_balancers if lb.name != name)))
        return msgs

    def _set_fabric(self, fabric: Fabric) -> None:
        """The config changed at run time (LBs added or removed): every part reads the new one."""
        self.fabric = fabric
        for part in (self.topology, self.router, self.balancer, self.bgp):
            part.fabric = fabric

    def lb_config(self, name: str) -> LoadBalancer:
        """The LB called name, as fabric.json has it (KeyError if there is none)."""
        lb = self.fabric.lb(name)
        if lb is None:
            raise KeyError(name)
        return lb

    def observe_health(self, lb_name: str, ip: str, port: int, ok: bool, result: dict,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Feed one checker result; returns messages only when the bucket set changes."""
        return self.observe_results([CheckResult(lb_name, ip, port, ok, result)],
                                    ports_by_switch)

    def observe_results(self, results: list[CheckResult],
                        ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Feed checker results in order; one group modify per LB whose bucket set changed."""
        return self.balancer.observe_results(results, ports_by_switch)

    # ---- what the checker and the REST API see ----------------------------------------

    def checker_targets(self) -> list[dict]:
        """One entry per checked backend, for the health-checker child."""
        return self.balancer.checker_targets()

    def routes_view(self) -> list[dict]:
        """Every route the router knows: hosts' and pods' /32s, then prefixes learned by BGP."""
        return self.router.routes_view() + self.bgp.routes_view()

    def backends_view(self, lb_name: str) -> list[dict]:
        """One row per backend of LB lb_name."""
        return self.balancer.backends_view(lb_name)

    def lbs_view(self) -> list[dict]:
        """One row per LB."""
        return self.balancer.lbs_view()
