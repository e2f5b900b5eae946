"""The cloud load balancer on the core switch: its backends, their health, and its flows.

Balancer: per LB the registered backends and their Health; VIP capture, select group (or hash
    slots, for an LB too big for one group or with client-IP affinity), SNAT and reply un-NAT
    flows; register / deregister (then draining, then cut) / observe_results return the
    messages to send; checker_targets, backends_view and lbs_view are what the checker and the
    REST API see
add_lb, remove_lb: an LB created or removed at run time (the messages, the Balancer's state)
How an LB picks a backend (its group, hash slots, client-IP slots) is controllers/selection.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

from os_ken.ofproto import ether
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import MAX_LB_BACKENDS, Backend, ConfigError, Fabric, LoadBalancer
from controllers.health import (
    DRAINING,
    INITIAL,
    UNCHECKED,
    CheckResult,
    Health,
    backend_id,
    observe,
)
from controllers.openflow import (
    COOKIE_BACKEND,
    COOKIE_BASE,
    COOKIE_LB,
    CT_INV,
    CT_TRK,
    CT_ZONE_DNAT,
    CT_ZONE_SNAT,
    LB_PROTOCOLS,
    P_DEFAULT,
    P_FROM_CORE,
    P_LB_CUT,
    P_LB_REPLY,
    P_LB_SOURCE,
    P_LB_VIP,
    T_DISPATCH,
    T_INGRESS,
    T_LB_SELECT,
    T_LB_SNAT,
    T_LB_UNNAT,
    T_NEXTHOP,
    T_ROUTE,
    Messages,
    Ports,
    arp_flow,
    cookie,
    ct,
    delete_by_cookie,
    delete_flow_strict,
    delete_group,
    flow,
    hex_cookie,
    nat_reverse,
    nat_src,
)
from controllers.selection import (
    BackendKey,
    Selection,
    vip_match,
)
from controllers.topology import Topology

LbBackendKey = tuple[str, str, int]     # (LB name, ip, port)


class Balancer:
    """Every load balancer of the fabric, as the controller sees it at run time.

    backends: per LB name, backends by (ip, port)
    health: per (LB name, ip, port), a Health
    reply_keys: every (proto, ip, port) ever registered as a backend -- their reply flows stay
                after deregistration so in-flight connections drain (a no-op for other traffic)
    checks_enabled: False when no checker runs; backends are then "unchecked" and in service
    selection: how each LB picks a backend (its group or slots; controllers/selection.py)
    draining: deregistered backends whose established connections still work
    cut: deregistered backends whose draining ended: their connections through the LB are
        dropped (until registered again)
    redirect_keys: the (proto, ip, port) of backends of LBs with address "hostname" (and the
        client's address kept): on subnet switches their replies go to the core, un-NATed there
        even when the client is on the same switch (a pod or node calling the VIP)
    """

    def __init__(self, fabric: Fabric, topology: Topology, checks_enabled: bool = True):
        self.fabric = fabric
        self.topology = topology
        self.checks_enabled = checks_enabled
        self.backends: dict[str, dict[tuple[str, int], Backend]] = {}
        self.health: dict[tuple[str, str, int], Health] = {}
        self.reply_keys: set[tuple[str, str, int]] = set()
        self._reply_msgs: dict[tuple[tuple[str, str, int], bool], list] = {}  # (key, snat)
        self.selection = Selection(self.backends, self.health)
        self.draining: dict[LbBackendKey, Backend] = {}
        self.cut: set[LbBackendKey] = set()
        self.redirect_keys: set[tuple[str, str, int]] = set()
        self._redirect_msgs: dict[tuple[tuple[str, str, int], int], ofpp.OFPFlowMod] = {}
        for lb in fabric.load_balancers:
            self.backends[lb.name] = {}
            for b in lb.backends:
                self._register(lb, b)
            self.selection.start(lb)

    def flows(self, switch: str, ports: Ports) -> list:
        """The LB part of a full program: groups and flows on the core, VIP uplinks elsewhere."""
        msgs = []
        if switch == self.fabric.core.name:
            for lb in self.fabric.load_balancers:
                # The group (or slots) first: OVS refuses a flow that names a missing group
                # (BAD_OUT_GROUP), and a slot must be there before a hash can pick it.
                msgs += self.selection.program(lb) + self._core_flows(lb)
            msgs += [_cut_flow(self._lb(name), ip, port) for name, ip, port in sorted(self.cut)]
            msgs += self.reply_flows()
        else:
            for lb in self.fabric.load_balancers:
                msgs += self._edge_flows(switch, ports, lb)
            msgs += self._redirect_flows(switch, ports, sorted(self.redirect_keys), base=True)
        return msgs

    def _core_flows(self, lb: LoadBalancer) -> list:
        c = cookie(COOKIE_LB, lb.name)
        vip = vip_match(lb)
        after_dnat = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
        msgs = [
            *_capture_flows(lb, c, vip),
            self.selection.select_flow(lb),
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

    def _redirect_flows(self, switch: str, ports: Ports, keys: Iterable[tuple[str, str, int]],
                        base: bool = False) -> list:
        """On a subnet switch: replies of these backends go up to the core unrouted (to be
        un-NATed there; a client on the same switch would otherwise get them straight from the
        backend's address). base: also the flow that sends what comes down from the core on,
        never back up -- the core sends the un-NATed reply down the same link."""
        if not any(lb.address == "hostname" and lb.preserve_client_ip
                   for lb in self.fabric.load_balancers):
            return []
        uplink = self.topology.port_toward(switch, self.fabric.core.name) or ""
        out = ports.get(uplink)
        if out is None:
            return []
        msgs = []
        if base:
            msgs.append(flow(T_INGRESS, P_FROM_CORE, cookie(COOKIE_BASE, "from-core"),
                             {"in_port": out}, goto=T_DISPATCH))
        for key in keys:
            m = self._redirect_msgs.get((key, out))
            if m is None:                       # the same on every switch with this uplink
                proto, l4_src, _ = LB_PROTOCOLS[key[0]]
                m = self._redirect_msgs[(key, out)] = flow(
                    T_INGRESS, P_LB_REPLY, _reply_cookie(key),
                    {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_src": key[1],
                     l4_src: key[2]}, [ofpp.OFPActionOutput(out)])
            msgs.append(m)
        return msgs

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
        if lb.address == "hostname" and lb.preserve_client_ip:
            self.redirect_keys.add((lb.protocol, b.ip, b.port))

    # ---- run-time changes (each returns the messages for the switches in ports_by_switch)

    def add_backend(self, lb_name: str, b: Backend,
                    ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Register a backend (the NEG idea); it takes traffic once healthy (or unchecked).

        Registering a backend that is already there only updates its name; one that is draining
        (or was cut) is registered anew: it gets new connections once healthy, and its old ones
        are no longer dropped. ConfigError when the LB already has MAX_LB_BACKENDS.
        """
        lb = self._lb(lb_name)
        if b.key in self.backends[lb.name]:           # idempotent: keep its health
            self.backends[lb.name][b.key] = b
            return {}
        if len(self.backends[lb.name]) >= MAX_LB_BACKENDS:
            raise ConfigError(f"lb {lb.name} has {MAX_LB_BACKENDS} backends, the most an LB can "
                              "have -- deregister one first")
        reply_key = (lb.protocol, b.ip, b.port)
        new_key = reply_key not in self.reply_keys
        new_redirect = reply_key not in self.redirect_keys
        self.draining.pop((lb.name, *b.key), None)
        uncut = []
        if (lb.name, *b.key) in self.cut:
            self.cut.discard((lb.name, *b.key))
            uncut = [delete_flow_strict(T_LB_SELECT, P_LB_CUT, _cut_match(lb, *b.key))]
        self._register(lb, b)
        msgs = self._core_update(lb, [b.key], ports_by_switch,
                                 uncut + (self._reply_flows(reply_key) if new_key else []))
        if new_redirect and reply_key in self.redirect_keys:
            for sw, ports in ports_by_switch.items():
                if sw != self.fabric.core.name:
                    msgs[sw] = self._redirect_flows(sw, ports, [reply_key])
        return msgs

    def remove_backend(self, lb_name: str, ip: str, port: int,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Deregister a backend (KeyError if unknown): no new connections go to it from now on;
        its established ones keep working (it is draining, its reply flow stays) until
        cut_backend."""
        lb = self._lb(lb_name)
        b = self.backends[lb.name].pop((ip, port))
        del self.health[(lb.name, ip, port)]
        self.selection.forget(lb, (ip, port))
        self.draining[(lb.name, ip, port)] = b
        return self._core_update(lb, [(ip, port)], ports_by_switch)

    def cut_backend(self, lb_name: str, ip: str, port: int,
                    ports_by_switch: Mapping[str, Ports]) -> Messages:
        """The draining of a deregistered backend ended: drop what is left of its connections
        through the LB, as an NLB does with connection termination on. Nothing if it is not
        draining (registered again meanwhile, or already cut)."""
        lb = self._lb(lb_name)
        if self.draining.pop((lb.name, ip, port), None) is None:
            return {}
        self.cut.add((lb.name, ip, port))
        core = self.fabric.core.name
        return {core: [_cut_flow(lb, ip, port)]} if core in ports_by_switch else {}

    def observe_results(self, results: Iterable[CheckResult],
                        ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Feed checker results in order; one group modify (or slot update) per LB whose
        in-service set changed.

        One group-mod for a batch, not one per change: 1000 backends turning healthy together
        would otherwise rewrite a group of up to 1000 buckets 1000 times.
        """
        changed: dict[str, list[BackendKey]] = {}      # LB name -> backends that flipped
        for r in results:
            lb = self.fabric.lb(r.lb)
            h = self.health.get((r.lb, r.ip, r.port))
            if lb is None or h is None or lb.health_check is None or h.state == UNCHECKED:
                continue                               # a result for a removed backend
            h.last = r.detail
            before = h.in_service
            observe(h, r.ok, lb.health_check)
            if h.in_service != before:
                changed.setdefault(lb.name, []).append((r.ip, r.port))
        msgs = [m for name, keys in changed.items()
                for m in self.selection.changes(self._lb(name), keys)]
        core = self.fabric.core.name
        if core not in ports_by_switch or not msgs:
            return {}
        return {core: msgs}

    def _lb(self, name: str) -> LoadBalancer:
        """The LB called name (KeyError if there is none)."""
        lb = self.fabric.lb(name)
        if lb is None:
            raise KeyError(name)
        return lb

    def _core_update(self, lb: LoadBalancer, touched: list[BackendKey],
                     ports_by_switch: Mapping[str, Ports], extra: Iterable = ()) -> Messages:
        msgs = self.selection.changes(lb, touched)
        core = self.fabric.core.name
        if core not in ports_by_switch:
            return {}
        return {core: list(extra) + msgs}

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
        for (name, ip, port), b in sorted(self.draining.items()):
            if name == lb.name:
                rows.append({"name": b.name, "ip": ip, "port": port, "state": DRAINING,
                             "in_service": False})
        return rows

    def lbs_view(self) -> list[dict]:
        """One row per LB: VIP, mode, how it picks (group id or slots), zones, backend counts,
        health check."""
        rows = []
        for lb in self.fabric.load_balancers:
            hc = lb.health_check
            rows.append({"name": lb.name, "vip": lb.vip, "port": lb.port,
                         "protocol": lb.protocol, "target_mode": lb.target_mode,
                         "preserve_client_ip": lb.preserve_client_ip,
                         "snat_ip": None if lb.preserve_client_ip else lb.snat_ip,
                         "session_affinity": lb.session_affinity, "address": lb.address,
                         "deregistration_delay_s": lb.deregistration_delay_s,
                         "source_ranges": list(lb.source_ranges),
                         "selection": self.selection.kind(lb),
                         "group_id": lb.group_id if self.selection.uses_group(lb) else None,
                         "slots": self.selection.slot_count(lb),
                         "reg0_tag": lb.tag,
                         "ct_zone_dnat": CT_ZONE_DNAT,
                         "ct_zone_snat": None if lb.preserve_client_ip else CT_ZONE_SNAT,
                         "backends": len(self.backends[lb.name]),
                         "in_service": len(self.selection.in_service(lb)),
                         "draining": sum(k[0] == lb.name for k in self.draining),
                         "health_check": dataclasses.asdict(hc) if hc else None,
                         "cookie": hex_cookie(cookie(COOKIE_LB, lb.name))})
        return rows


# ---- LBs created and removed at run time (POST /v1/lbs, DELETE /v1/lbs/<lb>) ---------------

def add_lb(bal: Balancer, lb: LoadBalancer, ports_by_switch: Mapping[str, Ports]
           ) -> Messages:
    """An LB added at run time (bal.fabric has it already): its backends registered (each
    checked anew), its selection, its core flows and its VIP uplinks on the subnet
    switches."""
    bal.backends[lb.name] = {}
    for b in lb.backends:
        bal._register(lb, b)
    bal.selection.start(lb)
    replies = [m for b in lb.backends for m in bal._reply_flows((lb.protocol, *b.key))]
    redirects = sorted({(lb.protocol, *b.key) for b in lb.backends} & bal.redirect_keys)
    out: Messages = {}
    for sw, ports in ports_by_switch.items():
        if sw == bal.fabric.core.name:
            out[sw] = bal.selection.program(lb) + bal._core_flows(lb) + replies
        else:
            out[sw] = bal._edge_flows(sw, ports, lb) + \
                bal._redirect_flows(sw, ports, redirects, base=True)
    return out


def remove_lb(bal: Balancer, name: str, ports_by_switch: Mapping[str, Ports]) -> Messages:
    """Forget an LB (KeyError if unknown; bal.fabric still has it): every flow with its
    cookie on every switch, its group, its backends' health and draining. Its backends'
    reply flows stay (in-flight connections, as after a deregistration). The flows it
    shared with the other listeners of its VIP (ARP, the subnet switches' uplink, one
    match each) are written again for them."""
    lb = bal._lb(name)
    has_group = lb.name not in bal.selection.sticky and lb.name not in bal.selection.slots
    for key in bal.backends.pop(lb.name):
        bal.health.pop((lb.name, *key), None)
        bal.selection.forget(lb, key)
    bal.selection.slots.pop(lb.name, None)
    bal.selection.sticky.pop(lb.name, None)
    bal.draining = {k: b for k, b in bal.draining.items() if k[0] != lb.name}
    bal.cut = {k for k in bal.cut if k[0] != lb.name}
    siblings = [x for x in bal.fabric.load_balancers if x.vip == lb.vip and x is not lb]
    out: Messages = {}
    for sw, ports in ports_by_switch.items():
        msgs = [delete_by_cookie(cookie(COOKIE_LB, lb.name))]
        if sw == bal.fabric.core.name:
            msgs += [delete_group(lb.group_id)] if has_group else []
            msgs += [m for x in siblings[:1] for m in _vip_arp(bal, x)]
        else:
            msgs += [m for x in siblings for m in bal._edge_flows(sw, ports, x)]
        out[sw] = msgs
    return out


def _vip_arp(bal: Balancer, lb: LoadBalancer) -> list:
    """The core's answer to ARP for the LB's VIP from its subnet (as _core_flows has it)."""
    subnet = bal.fabric.subnet_of_ip(lb.vip)
    if subnet is None:
        return []
    return [arp_flow(cookie(COOKIE_LB, lb.name), lb.vip, subnet.gateway_mac, subnet.cidr)]


def _cut_match(lb: LoadBalancer, ip: str, port: int) -> dict:
    """The LB's tracked traffic already DNATed to backend ip:port (after ct(nat), in lb_select,
    an established packet carries the backend's address; a new one still the VIP's)."""
    proto, _, l4_dst = LB_PROTOCOLS[lb.protocol]
    return {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "reg0": lb.tag,
            "ct_state": (CT_TRK, CT_TRK), "ipv4_dst": ip, l4_dst: port}


def _capture_flows(lb: LoadBalancer, c: int, vip: dict) -> list:
    """Traffic to the VIP enters the LB: tagged with the LB (reg0 survives recirculation and
    shows up in an invalid-TTL packet-in), then looked up with the existing NAT applied. With
    source ranges (loadBalancerSourceRanges, an NLB's security group) only clients in them
    enter; the rest of the VIP's traffic is dropped, as a security group drops it."""
    enter = [ofpp.OFPActionSetField(reg0=lb.tag), ct(CT_ZONE_DNAT, T_LB_SELECT, nat=nat_reverse())]
    if not lb.source_ranges:
        return [flow(T_INGRESS, P_LB_VIP, c, vip, enter)]
    allowed = [flow(T_INGRESS, P_LB_SOURCE, c, {**vip, "ipv4_src": _net_mask(cidr)}, enter)
               for cidr in lb.source_ranges]
    return [*allowed, flow(T_INGRESS, P_LB_VIP, c, vip, [])]


def _net_mask(cidr: str) -> tuple[str, str]:
    """A CIDR as an OpenFlow masked match: (address, netmask)."""
    net = ipaddress.IPv4Network(cidr)
    return str(net.network_address), str(net.netmask)


def _cut_flow(lb: LoadBalancer, ip: str, port: int) -> ofpp.OFPFlowMod:
    """Drop what is left of a cut backend's connections through the LB."""
    return flow(T_LB_SELECT, P_LB_CUT, cookie(COOKIE_LB, lb.name), _cut_match(lb, ip, port))


def _reply_cookie(key: tuple[str, str, int]) -> int:
    return cookie(COOKIE_BACKEND, f"{key[0]}/{key[1]}:{key[2]}")
