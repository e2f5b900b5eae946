"""The cloud load balancer on the core switch: its backends, their health, and its flows.

Balancer: per LB the registered backends and their Health; VIP capture, select group, SNAT and
    reply un-NAT flows; register / deregister / observe_results return the messages to send;
    checker_targets, backends_view and lbs_view are what the checker and the REST API see
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from os_ken.ofproto import ether
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import Backend, Fabric, LoadBalancer
from controllers.health import INITIAL, UNCHECKED, CheckResult, Health, backend_id, observe
from controllers.openflow import (
    COOKIE_BACKEND,
    COOKIE_LB,
    CT_INV,
    CT_NEW,
    CT_TRK,
    CT_ZONE_DNAT,
    CT_ZONE_SNAT,
    LB_PROTOCOLS,
    P_DEFAULT,
    P_LB_REPLY,
    P_LB_VIP,
    T_INGRESS,
    T_LB_SELECT,
    T_LB_SNAT,
    T_LB_UNNAT,
    T_NEXTHOP,
    T_ROUTE,
    Bucket,
    Messages,
    Ports,
    arp_flow,
    cookie,
    ct,
    flow,
    hex_cookie,
    nat_dst,
    nat_reverse,
    nat_src,
    select_group,
)
from controllers.topology import Topology


class Balancer:
    """Every load balancer of the fabric, as the controller sees it at run time.

    backends: per LB name, backends by (ip, port)
    health: per (LB name, ip, port), a Health
    reply_keys: every (proto, ip, port) ever registered as a backend -- their reply flows stay
                after deregistration so in-flight connections drain (a no-op for other traffic)
    checks_enabled: False when no checker runs; backends are then "unchecked" and in service
    """

    def __init__(self, fabric: Fabric, topology: Topology, checks_enabled: bool = True):
        self.fabric = fabric
        self.topology = topology
        self.checks_enabled = checks_enabled
        self.backends: dict[str, dict[tuple[str, int], Backend]] = {}
        self.health: dict[tuple[str, str, int], Health] = {}
        self.reply_keys: set[tuple[str, str, int]] = set()
        self._buckets: dict[tuple[str, str, int], Bucket] = {}   # (LB name, ip, port)
        self._reply_msgs: dict[tuple[tuple[str, str, int], bool], list] = {}  # (key, snat)
        for lb in fabric.load_balancers:
            self.backends[lb.name] = {}
            for b in lb.backends:
                self._register(lb, b)

    def flows(self, switch: str, ports: Ports) -> list:
        """The LB part of a full program: groups and flows on the core, VIP uplinks elsewhere."""
        msgs = []
        if switch == self.fabric.core.name:
            for lb in self.fabric.load_balancers:
                # The group first: OVS refuses a flow that names a missing group (BAD_OUT_GROUP).
                msgs.append(self.group(lb, ofp.OFPGC_ADD))
                msgs += self._core_flows(lb)
            msgs += self.reply_flows()
        else:
            for lb in self.fabric.load_balancers:
                msgs += self._edge_flows(switch, ports, lb)
        return msgs

    def _core_flows(self, lb: LoadBalancer) -> list:
        c = cookie(COOKIE_LB, lb.name)
        proto, _, l4_dst = LB_PROTOCOLS[lb.protocol]
        vip = {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_dst": lb.vip,
               l4_dst: lb.port}
        after_dnat = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
        msgs = [
            # Tag the packet with the LB (reg0 survives recirculation and shows up in an
            # invalid-TTL packet-in), then look it up with the existing NAT applied.
            flow(T_INGRESS, P_LB_VIP, c, vip, [ofpp.OFPActionSetField(reg0=lb.tag),
                                                ct(CT_ZONE_DNAT, T_LB_SELECT, nat=nat_reverse())]),
            # Still addressed to the VIP and new: pick a backend.
            flow(T_LB_SELECT, P_LB_VIP, c,
                 dict(vip, reg0=lb.tag, ct_state=(CT_NEW | CT_TRK, CT_NEW | CT_TRK)),
                 [ofpp.OFPActionGroup(lb.group_id)]),
            # Anything else tracked (established, or a retransmitted SYN already DNATed): go on.
            flow(T_LB_SELECT, P_DEFAULT, c, {"reg0": lb.tag, "ct_state": (CT_TRK, CT_TRK | CT_INV)},
                 goto=after_dnat),
        ]
        if not lb.preserve_client_ip:
            assert lb.snat_ip is not None, "parse_fabric refuses SNAT without an address"
            msgs.append(flow(T_LB_SNAT, P_DEFAULT, c,
                             {"eth_type": ether.ETH_TYPE_IP, "reg0": lb.tag},
                             [ct(CT_ZONE_SNAT, T_ROUTE, commit=True, nat=nat_src(lb.snat_ip))]))
        # The VIP's subnet is the LB's leg: hosts there ARP the VIP and get its gateway MAC.
        subnet = self.fabric.subnet_of_ip(lb.vip)
        if subnet is not None:
            msgs.append(arp_flow(c, lb.vip, subnet.gateway_mac, subnet.cidr))
        return msgs

    def _edge_flows(self, switch: str, ports: Ports, lb: LoadBalancer) -> list:
        """On a subnet switch: VIP traffic goes to the core unrouted (the LB routes it)."""
        out = ports.get(self.topology.port_toward(switch, self.fabric.core.name) or "")
        if out is None:
            return []
        return [flow(T_INGRESS, P_LB_VIP, cookie(COOKIE_LB, lb.name),
                     {"eth_type": ether.ETH_TYPE_IP, "ipv4_dst": lb.vip},
                     [ofpp.OFPActionOutput(out)])]

    def _bucket(self, lb: LoadBalancer, b: Backend) -> Bucket:
        """The backend's bucket: DNAT to it, committed; built once per registration."""
        key = (lb.name, *b.key)
        bucket = self._buckets.get(key)
        if bucket is None:
            after = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
            bucket = self._buckets[key] = Bucket(
                [ct(CT_ZONE_DNAT, after, commit=True, nat=nat_dst(b.ip, b.port))])
        return bucket

    def in_service(self, lb: LoadBalancer) -> list[Backend]:
        """The LB's backends that get new connections, in a stable order."""
        return [b for key, b in sorted(self.backends[lb.name].items())
                if self.health[(lb.name, *key)].in_service]

    def group(self, lb: LoadBalancer, command: int) -> ofpp.OFPGroupMod:
        """The LB's select group: one bucket per in-service backend."""
        return select_group(command, lb.group_id,
                            [self._bucket(lb, b) for b in self.in_service(lb)])

    def _reply_flows(self, key: tuple[str, str, int]) -> list:
        """Traffic from backend (proto, ip, port): un-SNAT (if any LB SNATs) then un-DNAT."""
        proto_name, ip, port = key
        proto, l4_src, _ = LB_PROTOCOLS[proto_name]
        snat = any(not lb.preserve_client_ip and (ip, port) in self.backends[lb.name]
                   for lb in self.fabric.load_balancers if lb.protocol == proto_name)
        msgs = self._reply_msgs.get((key, snat))
        if msgs is None:                       # built once per kind: 1000 on a 1000-pod core
            action = (ct(CT_ZONE_SNAT, T_LB_UNNAT, nat=nat_reverse()) if snat
                      else ct(CT_ZONE_DNAT, T_NEXTHOP, nat=nat_reverse()))
            msgs = self._reply_msgs[(key, snat)] = [
                flow(T_INGRESS, P_LB_REPLY, _reply_cookie(key),
                     {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_src": ip,
                      l4_src: port}, [action])]
        return msgs

    def reply_flows(self) -> list:
        """The core's reply un-NAT flows of every backend ever registered (built once, kept)."""
        return [m for key in sorted(self.reply_keys) for m in self._reply_flows(key)]

    def _register(self, lb: LoadBalancer, b: Backend) -> None:
        self.backends[lb.name][b.key] = b
        checked = self.checks_enabled and lb.health_check is not None
        self.health.setdefault((lb.name, *b.key), Health(INITIAL if checked else UNCHECKED))
        self.reply_keys.add((lb.protocol, b.ip, b.port))

    # ---- run-time changes (each returns the messages for the switches in ports_by_switch)

    def add_backend(self, lb_name: str, b: Backend,
                    ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Register a backend (the NEG idea); it takes traffic once healthy (or unchecked).

        Registering a backend that is already there only updates its name.
        """
        lb = self._lb(lb_name)
        if b.key in self.backends[lb.name]:           # idempotent: keep its health
            self.backends[lb.name][b.key] = b
            return {}
        new_key = (lb.protocol, b.ip, b.port) not in self.reply_keys
        self._register(lb, b)
        return self._core_update(lb, ports_by_switch,
                                 self._reply_flows((lb.protocol, b.ip, b.port)) if new_key else [])

    def remove_backend(self, lb_name: str, ip: str, port: int,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Deregister a backend (KeyError if unknown); its reply flow stays for draining."""
        lb = self._lb(lb_name)
        del self.backends[lb.name][(ip, port)]
        del self.health[(lb.name, ip, port)]
        self._buckets.pop((lb.name, ip, port), None)
        return self._core_update(lb, ports_by_switch)

    def observe_results(self, results: Iterable[CheckResult],
                        ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Feed checker results in order; one group modify per LB whose bucket set changed.

        One group-mod for a batch, not one per change: 1000 backends turning healthy together
        would otherwise rewrite a group of up to 1000 buckets 1000 times.
        """
        changed: list[LoadBalancer] = []
        for r in results:
            lb = self.fabric.lb(r.lb)
            h = self.health.get((r.lb, r.ip, r.port))
            if lb is None or h is None or lb.health_check is None or h.state == UNCHECKED:
                continue                               # a result for a removed backend
            h.last = r.detail
            before = h.in_service
            observe(h, r.ok, lb.health_check)
            if h.in_service != before and lb not in changed:
                changed.append(lb)
        core = self.fabric.core.name
        if core not in ports_by_switch or not changed:
            return {}
        return {core: [self.group(lb, ofp.OFPGC_MODIFY) for lb in changed]}

    def _lb(self, name: str) -> LoadBalancer:
        """The LB called name (KeyError if there is none)."""
        lb = self.fabric.lb(name)
        if lb is None:
            raise KeyError(name)
        return lb

    def _core_update(self, lb: LoadBalancer, ports_by_switch: Mapping[str, Ports],
                     extra: Iterable = ()) -> Messages:
        core = self.fabric.core.name
        if core not in ports_by_switch:
            return {}
        return {core: list(extra) + [self.group(lb, ofp.OFPGC_MODIFY)]}

    # ---- what the checker and the REST API see ----------------------------------------

    def checker_targets(self) -> list[dict]:
        """One entry per checked backend, for the health-checker child."""
        targets = []
        for lb in self.fabric.load_balancers:
            hc = lb.health_check
            if hc is None or not self.checks_enabled:
                continue
            for (ip, port), _b in sorted(self.backends[lb.name].items()):
                targets.append({"id": backend_id(lb.name, ip, port), "ip": ip,
                                "port": hc.port or port, "path": hc.path,
                                "interval_s": hc.interval_s, "timeout_s": hc.timeout_s})
        return targets

    def backends_view(self, lb_name: str) -> list[dict]:
        """One row per backend of LB lb_name: its address, health state and last check."""
        lb = self._lb(lb_name)
        rows = []
        for (ip, port), b in sorted(self.backends[lb.name].items()):
            h = self.health[(lb.name, ip, port)]
            rows.append({"name": b.name, "ip": ip, "port": port, "state": h.state,
                         "in_service": h.in_service, "ok_streak": h.ok_streak,
                         "fail_streak": h.fail_streak, "checks": h.checks, "last": h.last,
                         "health_check_port": (lb.health_check.port or port)
                         if lb.health_check else None})
        return rows

    def lbs_view(self) -> list[dict]:
        """One row per LB: VIP, mode, group id, zones, backend counts, health check."""
        rows = []
        for lb in self.fabric.load_balancers:
            hc = lb.health_check
            rows.append({"name": lb.name, "vip": lb.vip, "port": lb.port,
                         "protocol": lb.protocol, "target_mode": lb.target_mode,
                         "preserve_client_ip": lb.preserve_client_ip,
                         "snat_ip": None if lb.preserve_client_ip else lb.snat_ip,
                         "group_id": lb.group_id, "reg0_tag": lb.tag,
                         "ct_zone_dnat": CT_ZONE_DNAT,
                         "ct_zone_snat": None if lb.preserve_client_ip else CT_ZONE_SNAT,
                         "backends": len(self.backends[lb.name]),
                         "in_service": len(self.in_service(lb)),
                         "health_check": dataclasses.asdict(hc) if hc else None,
                         "cookie": hex_cookie(cookie(COOKIE_LB, lb.name))})
        return rows


def _reply_cookie(key: tuple[str, str, int]) -> int:
    return cookie(COOKIE_BACKEND, f"{key[0]}/{key[1]}:{key[2]}")
