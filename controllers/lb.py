"""The cloud load balancer on the core switch: its backends, their health, and its flows.

Balancer: per LB the registered backends and their Health; VIP capture, select group (or hash
    slots, for an LB too big for one group), SNAT and reply un-NAT flows; register / deregister /
    observe_results return the messages to send; checker_targets, backends_view and lbs_view
    are what the checker and the REST API see
SlotTable: a big LB's slots (slot -> backend, backend -> slot), updated moving as few as it can
GROUP_MAX_BACKENDS: the most backends an LB can have and keep one select group
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from os_ken.ofproto import ether
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import MAX_LB_BACKENDS, Backend, ConfigError, Fabric, LoadBalancer
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
    T_LB_PICK,
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
    delete_flow_strict,
    delete_flows,
    delete_group,
    flow,
    hash_slot,
    hex_cookie,
    nat_dst,
    nat_reverse,
    nat_src,
    select_group,
)
from controllers.topology import Topology

# An LB keeps one select group while every registered backend's bucket fits one group-mod:
# (65535 - 16 bytes of group-mod header) // 64 bytes a bucket (ct(commit, nat(dst=ip:port))).
# Counted over registered backends, not in-service ones, so health changes never move an LB
# between a group and hash slots; only registering the 1024th backend (or deregistering it) does.
#
# A bigger LB picks by hash slots: its new-connection flow sets reg1 := hash(addresses,
# protocol, ports) mod S (multipath), S = its in-service backends, and table lb_pick has one
# flow per slot, reg1 = i -> the ct(commit, nat(dst)) a bucket would have. Every backend is
# equally likely, however many there are, and a health change rewrites one or two slot flows and
# the select flow (SlotTable), never a whole table. Not a select group of select groups: OVS 3.1
# does not choose a group's buckets in proportion to their weights (the hash method ranks
# hash x weight; dp_hash rounds weights onto 16-256 hash values), and a nested group hashes the
# same fields again, so its choice depends on its parent's.
GROUP_MAX_BACKENDS = 1023

BackendKey = tuple[str, int]            # (ip, port)


class Balancer:
    """Every load balancer of the fabric, as the controller sees it at run time.

    backends: per LB name, backends by (ip, port)
    health: per (LB name, ip, port), a Health
    reply_keys: every (proto, ip, port) ever registered as a backend -- their reply flows stay
                after deregistration so in-flight connections drain (a no-op for other traffic)
    checks_enabled: False when no checker runs; backends are then "unchecked" and in service
    slots: per big LB (more than GROUP_MAX_BACKENDS registered), its hash slots (see above)
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
        self.slots: dict[str, SlotTable] = {}
        for lb in fabric.load_balancers:
            self.backends[lb.name] = {}
            for b in lb.backends:
                self._register(lb, b)
            if not self.uses_group(lb):
                self.slots[lb.name] = SlotTable()
                self.slots[lb.name].update([], [b.key for b in self.in_service(lb)])

    def flows(self, switch: str, ports: Ports) -> list:
        """The LB part of a full program: groups and flows on the core, VIP uplinks elsewhere."""
        msgs = []
        if switch == self.fabric.core.name:
            for lb in self.fabric.load_balancers:
                # The group (or slots) first: OVS refuses a flow that names a missing group
                # (BAD_OUT_GROUP), and a slot must be there before a hash can pick it.
                if lb.name in self.slots:
                    msgs += [_slot_flow(lb, i, key)
                             for i, key in enumerate(self.slots[lb.name].keys)]
                else:
                    msgs.append(self.group(lb, ofp.OFPGC_ADD))
                msgs += self._core_flows(lb)
            msgs += self.reply_flows()
        else:
            for lb in self.fabric.load_balancers:
                msgs += self._edge_flows(switch, ports, lb)
        return msgs

    def _core_flows(self, lb: LoadBalancer) -> list:
        c = cookie(COOKIE_LB, lb.name)
        vip = _vip_match(lb)
        after_dnat = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
        msgs = [
            # Tag the packet with the LB (reg0 survives recirculation and shows up in an
            # invalid-TTL packet-in), then look it up with the existing NAT applied.
            flow(T_INGRESS, P_LB_VIP, c, vip, [ofpp.OFPActionSetField(reg0=lb.tag),
                                                ct(CT_ZONE_DNAT, T_LB_SELECT, nat=nat_reverse())]),
            self._select_flow(lb),
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

    def _select_flow(self, lb: LoadBalancer) -> ofpp.OFPFlowMod:
        """Still addressed to the VIP and new: pick a backend, by the group or by a hash slot."""
        c = cookie(COOKIE_LB, lb.name)
        new = dict(_vip_match(lb), reg0=lb.tag, ct_state=(CT_NEW | CT_TRK, CT_NEW | CT_TRK))
        table = self.slots.get(lb.name)
        if table is None:
            return flow(T_LB_SELECT, P_LB_VIP, c, new, [ofpp.OFPActionGroup(lb.group_id)])
        if not table.keys:             # none in service: dropped, as by an empty group
            return flow(T_LB_SELECT, P_LB_VIP, c, new)
        return flow(T_LB_SELECT, P_LB_VIP, c, new, [hash_slot(len(table.keys))],
                    goto=T_LB_PICK)

    def _bucket(self, lb: LoadBalancer, b: Backend) -> Bucket:
        """The backend's bucket: DNAT to it, committed; built once per registration."""
        key = (lb.name, *b.key)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(_dnat(lb, b.ip, b.port))
        return bucket

    def in_service(self, lb: LoadBalancer) -> list[Backend]:
        """The LB's backends that get new connections, in a stable order."""
        return [b for key, b in sorted(self.backends[lb.name].items())
                if self.health[(lb.name, *key)].in_service]

    def group(self, lb: LoadBalancer, command: int) -> ofpp.OFPGroupMod:
        """The LB's select group: one bucket per in-service backend."""
        return select_group(command, lb.group_id,
                            [self._bucket(lb, b) for b in self.in_service(lb)])

    def uses_group(self, lb: LoadBalancer) -> bool:
        """Whether the LB picks with one select group (else by hash slots)."""
        return len(self.backends[lb.name]) <= GROUP_MAX_BACKENDS

    def _changes(self, lb: LoadBalancer, touched: Iterable[BackendKey]) -> list:
        """Bring the LB's selection up to date after the backends `touched` were registered,
        deregistered or changed service; returns the messages that do the same on the core (the
        state changes whether the core is there). A big LB's cost is that of the change, not of
        its size: 1000 checks a second on 5000 backends must not sort 5000 a batch."""
        table = self.slots.get(lb.name)
        if self.uses_group(lb):
            if table is None:
                return [self.group(lb, ofp.OFPGC_MODIFY)]
            # Back to one group: the group, then the select flow naming it, then no slots.
            del self.slots[lb.name]
            return [self.group(lb, ofp.OFPGC_ADD), self._select_flow(lb),
                    delete_flows(T_LB_PICK, {"reg0": lb.tag})]
        if table is None:                        # out of one group
            table = self.slots[lb.name] = SlotTable()
            table.update([], [b.key for b in self.in_service(lb)])
            return ([_slot_flow(lb, i, key) for i, key in enumerate(table.keys)]
                    + [self._select_flow(lb), delete_group(lb.group_id)])
        serving = {key: self._serving(lb, key) for key in touched}
        before = len(table.keys)
        moved = table.update([k for k, on in serving.items() if not on and k in table.index],
                             sorted(k for k, on in serving.items() if on and k not in table.index))
        # New and moved slots before the select flow that can pick them; dropped ones after it.
        msgs: list = [_slot_flow(lb, i, table.keys[i]) for i in sorted(moved)]
        if len(table.keys) != before:
            msgs.append(self._select_flow(lb))
        return msgs + [delete_flow_strict(T_LB_PICK, P_DEFAULT, _slot_match(lb, i))
                       for i in range(len(table.keys), before)]

    def _serving(self, lb: LoadBalancer, key: BackendKey) -> bool:
        """Whether backend key of lb is registered and in service."""
        h = self.health.get((lb.name, *key))
        return h is not None and h.in_service

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

        Registering a backend that is already there only updates its name. ConfigError when the
        LB already has MAX_LB_BACKENDS.
        """
        lb = self._lb(lb_name)
        if b.key in self.backends[lb.name]:           # idempotent: keep its health
            self.backends[lb.name][b.key] = b
            return {}
        if len(self.backends[lb.name]) >= MAX_LB_BACKENDS:
            raise ConfigError(f"lb {lb.name} has {MAX_LB_BACKENDS} backends, the most an LB can "
                              "have -- deregister one first")
        new_key = (lb.protocol, b.ip, b.port) not in self.reply_keys
        self._register(lb, b)
        return self._core_update(lb, [b.key], ports_by_switch,
                                 self._reply_flows((lb.protocol, b.ip, b.port)) if new_key else [])

    def remove_backend(self, lb_name: str, ip: str, port: int,
                       ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Deregister a backend (KeyError if unknown); its reply flow stays for draining."""
        lb = self._lb(lb_name)
        del self.backends[lb.name][(ip, port)]
        del self.health[(lb.name, ip, port)]
        self._buckets.pop((lb.name, ip, port), None)
        return self._core_update(lb, [(ip, port)], ports_by_switch)

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
        msgs = [m for name, keys in changed.items() for m in self._changes(self._lb(name), keys)]
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
        msgs = self._changes(lb, touched)
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
        return rows

    def lbs_view(self) -> list[dict]:
        """One row per LB: VIP, mode, how it picks (group id or slots), zones, backend counts,
        health check."""
        rows = []
        for lb in self.fabric.load_balancers:
            hc = lb.health_check
            slots = self.slots.get(lb.name)
            rows.append({"name": lb.name, "vip": lb.vip, "port": lb.port,
                         "protocol": lb.protocol, "target_mode": lb.target_mode,
                         "preserve_client_ip": lb.preserve_client_ip,
                         "snat_ip": None if lb.preserve_client_ip else lb.snat_ip,
                         "selection": "select_group" if slots is None else "hash_slots",
                         "group_id": lb.group_id if slots is None else None,
                         "slots": None if slots is None else len(slots.keys),
                         "reg0_tag": lb.tag,
                         "ct_zone_dnat": CT_ZONE_DNAT,
                         "ct_zone_snat": None if lb.preserve_client_ip else CT_ZONE_SNAT,
                         "backends": len(self.backends[lb.name]),
                         "in_service": len(self.in_service(lb)),
                         "health_check": dataclasses.asdict(hc) if hc else None,
                         "cookie": hex_cookie(cookie(COOKIE_LB, lb.name))})
        return rows


class SlotTable:
    """A big LB's hash slots: keys[i] is slot i's backend, index[key] its slot.

    A backend that stays keeps its slot. A backend that leaves hands its slot to the last slot's
    backend (the table shrinks by one); one that joins takes a new slot at the end. So a change
    rewrites at most one slot flow, and the slots are always exactly the in-service backends.
    """

    def __init__(self) -> None:
        self.keys: list[BackendKey] = []
        self.index: dict[BackendKey, int] = {}

    def update(self, leaving: Iterable[BackendKey], joining: Iterable[BackendKey]) -> set[int]:
        """Take leaving out (each must have a slot) and joining in (none may have one); returns
        the slots, still in the table, whose backend changed or that are new."""
        changed = set()
        for key in leaving:
            i = self.index.pop(key)
            last = self.keys.pop()
            if i < len(self.keys):             # not the last slot itself: move the last one in
                self.keys[i] = last
                self.index[last] = i
                changed.add(i)
        for key in joining:
            self.index[key] = len(self.keys)
            changed.add(len(self.keys))
            self.keys.append(key)
        return {i for i in changed if i < len(self.keys)}


def _vip_match(lb: LoadBalancer) -> dict:
    proto, _, l4_dst = LB_PROTOCOLS[lb.protocol]
    return {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_dst": lb.vip,
            l4_dst: lb.port}


def _slot_flow(lb: LoadBalancer, slot: int, key: BackendKey) -> ofpp.OFPFlowMod:
    """A big LB's slot: reg1 = slot -> DNAT to the backend, committed (like its bucket)."""
    return flow(T_LB_PICK, P_DEFAULT, cookie(COOKIE_LB, lb.name), _slot_match(lb, slot),
                _dnat(lb, *key))


def _slot_match(lb: LoadBalancer, slot: int) -> dict:
    # eth_type and ip_proto: OVS refuses nat() with ports in a flow that does not match on them.
    return {"eth_type": ether.ETH_TYPE_IP, "ip_proto": LB_PROTOCOLS[lb.protocol][0],
            "reg0": lb.tag, "reg1": slot}


def _dnat(lb: LoadBalancer, ip: str, port: int) -> list:
    """DNAT to backend ip:port, committed, then on to routing (or the LB's SNAT)."""
    after = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
    return [ct(CT_ZONE_DNAT, after, commit=True, nat=nat_dst(ip, port))]


def _reply_cookie(key: tuple[str, str, int]) -> int:
    return cookie(COOKIE_BACKEND, f"{key[0]}/{key[1]}:{key[2]}")
