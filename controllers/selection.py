"""How a cloud LB picks a backend for a new connection: its select group, or hash slots.

Selection: per LB, the select group (its buckets built once per backend), the hash slots of an
    LB too big for one group (SlotTable), or the client-IP slots of an LB with session affinity
    (StickyTable); the select flow and the group or slot messages that bring the core up to date
    after a change (changes)
SlotTable: a big LB's slots (slot -> backend, backend -> slot), updated moving as few as it can
StickyTable, sticky_slots: an affinity LB's slots over the client's address
vip_match, dnat: the LB's VIP:port match, and the committed DNAT to one backend
GROUP_MAX_BACKENDS: the most backends an LB can have and keep one select group
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from os_ken.ofproto import ether
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import MAX_LB_BACKENDS, Backend, LoadBalancer
from controllers.health import Health
from controllers.openflow import (
    COOKIE_LB,
    CT_NEW,
    CT_TRK,
    CT_ZONE_DNAT,
    LB_PROTOCOLS,
    NX_HASH_FIELDS_NW_SRC,
    P_DEFAULT,
    P_LB_VIP,
    T_LB_PICK,
    T_LB_SELECT,
    T_LB_SNAT,
    T_ROUTE,
    Bucket,
    cookie,
    ct,
    delete_flow_strict,
    delete_flows,
    delete_group,
    flow,
    hash_slot,
    nat_dst,
    select_group,
)

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

# A UDP LB picks by hash slots too, whatever its size: multipath hashes symmetric_l3l4+udp,
# a select group OVS's default fields, which leave UDP ports out (see Selection.uses_group).
#
# Client-IP affinity (GCP's CLIENT_IP, an NLB's source_ip stickiness) hashes the source address
# alone. OpenFlow 1.3 cannot set a select group's hash fields (OVS's selection_method is an
# OpenFlow 1.5 group property), so an affinity LB of any size picks by hash slots: multipath
# over nw_src into a fixed number of slots, each slot naming a backend (a lookup table, as
# Maglev's). A backend keeps its slots while it is in service; a leaving one's slots go to those
# with the fewest, a joining one takes its share from those with the most. The table has at
# least STICKY_SLOTS_PER_BACKEND slots a registered backend (a power of two, STICKY_MIN_SLOTS
# to 65536) and only ever doubles, copying slot i to slot i + n, which moves no client:
# h mod 2n is h mod n or h mod n + n.
STICKY_MIN_SLOTS = 256
STICKY_SLOTS_PER_BACKEND = 4

BackendKey = tuple[str, int]            # (ip, port)


class Selection:
    """How every LB picks a backend for a new connection.

    backends, health: the Balancer's registered backends and their Health (read here only)
    slots: per big LB (more than GROUP_MAX_BACKENDS registered), its hash slots (see above)
    sticky: per LB with client-IP affinity, its slots over the client's address (see above)
    """

    def __init__(self, backends: Mapping[str, Mapping[BackendKey, Backend]],
                 health: Mapping[tuple[str, str, int], Health]):
        self.backends = backends
        self.health = health
        self.slots: dict[str, SlotTable] = {}
        self.sticky: dict[str, StickyTable] = {}
        self._buckets: dict[tuple[str, str, int], Bucket] = {}   # (LB name, ip, port)

    def start(self, lb: LoadBalancer) -> None:
        """Set the LB's selection up for the backends it was configured with."""
        if lb.sticky:
            self.sticky[lb.name] = StickyTable()
            self._sticky_changes(lb)
        elif not self.uses_group(lb):
            self.slots[lb.name] = SlotTable()
            self.slots[lb.name].update([], [b.key for b in self.in_service(lb)])

    def program(self, lb: LoadBalancer) -> list:
        """The LB's group or slot flows, for a full program (before the select flow)."""
        if lb.name in self.sticky:
            return [slot_flow(lb, i, key)
                    for i, key in enumerate(self.sticky[lb.name].keys) if key]
        if lb.name in self.slots:
            return [slot_flow(lb, i, key) for i, key in enumerate(self.slots[lb.name].keys)]
        return [self.group(lb, ofp.OFPGC_ADD)]

    def forget(self, lb: LoadBalancer, key: BackendKey) -> None:
        """A backend was deregistered: its bucket is built anew if it comes back."""
        self._buckets.pop((lb.name, *key), None)

    def kind(self, lb: LoadBalancer) -> str:
        """What GET /v1/lbs calls the LB's selection."""
        return ("client_ip_slots" if lb.name in self.sticky else
                "hash_slots" if lb.name in self.slots else "select_group")

    def slot_count(self, lb: LoadBalancer) -> int | None:
        table = self.sticky.get(lb.name) or self.slots.get(lb.name)
        return None if table is None else len(table.keys)

    def select_flow(self, lb: LoadBalancer) -> ofpp.OFPFlowMod:
        """Still addressed to the VIP and new: pick a backend, by the group or by a hash slot
        (of the connection, or with client-IP affinity of the client's address)."""
        c = cookie(COOKIE_LB, lb.name)
        new = dict(vip_match(lb), reg0=lb.tag, ct_state=(CT_NEW | CT_TRK, CT_NEW | CT_TRK))
        sticky = self.sticky.get(lb.name)
        if sticky is not None:
            if not sticky.serving:     # none in service: dropped, as by an empty group
                return flow(T_LB_SELECT, P_LB_VIP, c, new)
            return flow(T_LB_SELECT, P_LB_VIP, c, new,
                        [hash_slot(len(sticky.keys), fields=NX_HASH_FIELDS_NW_SRC)],
                        goto=T_LB_PICK)
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
            bucket = self._buckets[key] = Bucket(dnat(lb, b.ip, b.port))
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
        """Whether the LB picks with one select group (else by hash slots): a TCP LB without
        affinity and with at most GROUP_MAX_BACKENDS registered. Not UDP: an OpenFlow 1.3
        select group hashes OVS's default fields, symmetric_l4, which has TCP ports but no UDP
        ports -- every datagram from one client went to one backend (measured on OVS 3.1)."""
        return (not lb.sticky and lb.protocol == "tcp"
                and len(self.backends[lb.name]) <= GROUP_MAX_BACKENDS)

    def changes(self, lb: LoadBalancer, touched: Iterable[BackendKey]) -> list:
        """Bring the LB's selection up to date after the backends `touched` were registered,
        deregistered or changed service; returns the messages that do the same on the core (the
        state changes whether the core is there). A big LB's cost is that of the change, not of
        its size: 1000 checks a second on 5000 backends must not sort 5000 a batch."""
        if lb.sticky:
            return self._sticky_changes(lb)
        table = self.slots.get(lb.name)
        if self.uses_group(lb):
            if table is None:
                return [self.group(lb, ofp.OFPGC_MODIFY)]
            # Back to one group: the group, then the select flow naming it, then no slots.
            del self.slots[lb.name]
            return [self.group(lb, ofp.OFPGC_ADD), self.select_flow(lb),
                    delete_flows(T_LB_PICK, {"reg0": lb.tag})]
        if table is None:                        # out of one group
            table = self.slots[lb.name] = SlotTable()
            table.update([], [b.key for b in self.in_service(lb)])
            return ([slot_flow(lb, i, key) for i, key in enumerate(table.keys)]
                    + [self.select_flow(lb), delete_group(lb.group_id)])
        serving = {key: self._serving(lb, key) for key in touched}
        before = len(table.keys)
        moved = table.update([k for k, on in serving.items() if not on and k in table.index],
                             sorted(k for k, on in serving.items() if on and k not in table.index))
        # New and moved slots before the select flow that can pick them; dropped ones after it.
        msgs: list = [slot_flow(lb, i, table.keys[i]) for i in sorted(moved)]
        if len(table.keys) != before:
            msgs.append(self.select_flow(lb))
        return msgs + [delete_flow_strict(T_LB_PICK, P_DEFAULT, slot_match(lb, i))
                       for i in range(len(table.keys), before)]

    def _sticky_changes(self, lb: LoadBalancer) -> list:
        """An affinity LB's slots after a change: the slots that changed owner (or are new),
        then the select flow if the slot count changed or the LB started or stopped serving."""
        table = self.sticky[lb.name]
        size, serving = len(table.keys), table.serving
        changed = table.grow(sticky_slots(len(self.backends[lb.name])))
        changed |= table.update([b.key for b in self.in_service(lb)])
        msgs: list = [slot_flow(lb, i, key) for i in sorted(changed)
                      if (key := table.keys[i]) is not None]
        if len(table.keys) != size or bool(table.serving) != bool(serving):
            msgs.append(self.select_flow(lb))
        return msgs

    def _serving(self, lb: LoadBalancer, key: BackendKey) -> bool:
        """Whether backend key of lb is registered and in service."""
        h = self.health.get((lb.name, *key))
        return h is not None and h.in_service


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


class StickyTable:
    """An affinity LB's slots: keys[i] is the backend of the clients whose address hashes to i
    (None before any backend served). See STICKY_MIN_SLOTS for why and how it changes.

    serving: how many backends were in service at the last update
    """

    def __init__(self) -> None:
        self.keys: list[BackendKey | None] = []
        self.serving = 0

    def grow(self, size: int) -> set[int]:
        """Double until there are at least size slots (a new slot copies its lower half's
        owner, so no client moves); returns the new slots."""
        before = len(self.keys)
        if not self.keys:
            self.keys = [None] * size
        while len(self.keys) < size:
            self.keys += self.keys
        return set(range(before, len(self.keys))) if before else set()

    def update(self, serving: Iterable[BackendKey]) -> set[int]:
        """Give every slot to a backend in serving, moving as few as can be while the shares
        differ by at most one; returns the slots whose owner changed. With nothing serving the
        slots are left as they are (the select flow drops new connections)."""
        owned: dict[BackendKey, list[int]] = {k: [] for k in serving}
        self.serving = len(owned)
        if not owned:
            return set()
        free: list[int] = []
        for i, key in enumerate(self.keys):
            (owned[key] if key in owned else free).append(i)
        lo, extra = divmod(len(self.keys), len(owned))
        # The richest keep one more than the rest: a backend that had lo + 1 keeps it when
        # another leaves (the share only grows), so only a leaving backend's clients move.
        ranked = sorted(owned, key=lambda k: (-len(owned[k]), k))
        quota = {k: lo + (r < extra) for r, k in enumerate(ranked)}
        for key in ranked:
            while len(owned[key]) > quota[key]:
                free.append(owned[key].pop())
        changed = set()
        for key in ranked:
            while len(owned[key]) < quota[key]:
                i = free.pop()
                self.keys[i] = key
                owned[key].append(i)
                changed.add(i)
        return changed


def sticky_slots(registered: int) -> int:
    """How many slots an affinity LB with this many registered backends wants."""
    want = max(STICKY_MIN_SLOTS, STICKY_SLOTS_PER_BACKEND * registered)
    return min(MAX_LB_BACKENDS, 1 << (want - 1).bit_length())


def vip_match(lb: LoadBalancer) -> dict:
    proto, _, l4_dst = LB_PROTOCOLS[lb.protocol]
    return {"eth_type": ether.ETH_TYPE_IP, "ip_proto": proto, "ipv4_dst": lb.vip,
            l4_dst: lb.port}


def slot_flow(lb: LoadBalancer, slot: int, key: BackendKey) -> ofpp.OFPFlowMod:
    """A big LB's slot: reg1 = slot -> DNAT to the backend, committed (like its bucket)."""
    return flow(T_LB_PICK, P_DEFAULT, cookie(COOKIE_LB, lb.name), slot_match(lb, slot),
                dnat(lb, *key))


def slot_match(lb: LoadBalancer, slot: int) -> dict:
    # eth_type and ip_proto: OVS refuses nat() with ports in a flow that does not match on them.
    return {"eth_type": ether.ETH_TYPE_IP, "ip_proto": LB_PROTOCOLS[lb.protocol][0],
            "reg0": lb.tag, "reg1": slot}


def dnat(lb: LoadBalancer, ip: str, port: int) -> list:
    """DNAT to backend ip:port, committed, then on to routing (or the LB's SNAT)."""
    after = T_ROUTE if lb.preserve_client_ip else T_LB_SNAT
    return [ct(CT_ZONE_DNAT, after, commit=True, nat=nat_dst(ip, port))]


