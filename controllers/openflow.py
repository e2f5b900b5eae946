"""OpenFlow 1.3 vocabulary of the VPC: named tables, priorities, cookies, and the message builders.

Names: T_* tables, P_* priorities, COOKIE_* kinds, CT_* conntrack zones and state bits
NXActionNATPadded, NXActionCTPadded: os-ken's NX actions with the pad bytes it forgets
cookie, flow, delete_by_cookie: the one flow builder and its cookie scheme
ct, nat_reverse, nat_dst, nat_src: conntrack actions
Bucket, select_group, delete_group: the LB's group, whose buckets serialize once
hash_slot, delete_flows, delete_flow_strict: a big LB's hash slots (see controllers/lb.py)
arp_responder, arp_flow, nexthop_flow: the router's per-address entries
clear_switch, switch_config: what a freshly connected switch gets first
encode: a message's bytes with a given xid, serialized once however many switches get it;
    MessageTooLong when it would not fit OpenFlow's 16-bit length
Messages are os-ken parser objects built against DP, a stand-in datapath; encode turns them into
the bytes the app writes to a switch, many messages in one write.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Mapping
from types import SimpleNamespace

from os_ken.ofproto import ether, inet, nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

# Stand-in datapath: all the parser classes need to build and serialize a message. The app sends
# the bytes of these messages (encode). Why os-ken objects and not our own dataclasses: what the
# tests inspect and serialize is exactly what goes on the wire -- the NXAction padding fix
# included -- with no second representation to keep in step.
DP = SimpleNamespace(ofproto=ofp, ofproto_parser=ofpp, id=None)

# Tables: the same on every switch; the LB tables are only filled on the core.
#
#   INGRESS(0) --ARP--> ARP(1)                            answer from the table, out IN_PORT
#      | VIP (core) ----> ct(nat) --> LB_SELECT(2) --new--> group (select, 1 bucket/backend)
#      |                                  | est                 bucket: ct(commit,nat(dst=B:P))
#      |                                  |   (a big LB: multipath -> LB_PICK(9), the same ct)
#      |                                  v                              |
#      |                             [LB_SNAT(3)] <---- preserve_client_ip=false ----+
#      |                                  | ct(commit,nat(src=snat_ip))             | true
#      |                                  v                                          v
#      | LB reply (core) --> ct(nat) [--> LB_UNNAT(4) ct(nat)] --+       ROUTE(6) dec_ttl
#      | VIP (subnet switch) --> out toward core                 |          |
#      v                                                         v          v
#   DISPATCH(5) --eth_dst = a gateway MAC--> ROUTE(6) ------> NEXTHOP(7) /32: eth_src, eth_dst
#      | other                                                   |
#      v                                                         v
#   L2(8) <------------------------------------------------------+  eth_dst -> port
T_INGRESS = 0
T_ARP = 1
T_LB_SELECT = 2
T_LB_SNAT = 3
T_LB_UNNAT = 4
T_DISPATCH = 5
T_ROUTE = 6
T_NEXTHOP = 7
T_L2 = 8
T_LB_PICK = 9     # after l2 only because goto-table must go forward: lb_select(2) jumps here
TABLE_NAMES = {T_INGRESS: "ingress", T_ARP: "arp", T_LB_SELECT: "lb_select", T_LB_SNAT: "lb_snat",
               T_LB_UNNAT: "lb_unnat", T_DISPATCH: "dispatch", T_ROUTE: "route",
               T_NEXTHOP: "nexthop", T_L2: "l2", T_LB_PICK: "lb_pick"}

# Priorities (higher wins inside one table).
P_MISS = 0          # table-miss: drop, or the default next table
P_DEFAULT = 100     # the ordinary entry of a table
P_LB_REPLY = 150    # ingress: traffic from a backend (ip, port) -> un-NAT (subnet switch: to core)
P_LB_CUT = 150      # lb_select: an established connection to a backend whose draining ended: drop
P_FROM_CORE = 160   # ingress (subnet switch): from the core -> dispatch, never back up
P_LB_VIP = 200      # ingress: traffic to a VIP; lb_select: a new connection -> group
P_LB_SOURCE = 210   # ingress: traffic to a VIP from one of its source ranges (the rest: P_LB_VIP)
P_L2_HAIRPIN = 200  # l2: out the port it came in on (needs OFPP_IN_PORT)
P_ARP = 300         # ingress: ARP goes to the responder table

# Cookie kinds (top byte). The low 56 bits are a hash of the object's key, so
# `ovs-ofctl dump-flows br cookie=0x04.../-1` finds one pod's flows and a delete by cookie
# removes exactly them.
COOKIE_BASE = 0x01      # pipeline glue: table-miss entries, dec_ttl, the generic un-NAT
COOKIE_GATEWAY = 0x02   # a subnet's router leg: ARP for the gateway, dispatch to routing
COOKIE_HOST = 0x03      # a host interface: ARP, /32 next hop, L2 forwarding
COOKIE_POD = 0x04       # a container-native pod route: ARP, /32 next hop via its node
COOKIE_LB = 0x05        # a load balancer: VIP capture, new-connection select, SNAT
COOKIE_BACKEND = 0x06   # a backend (proto, ip, port): reply traffic un-NAT
COOKIE_BGP = 0x07       # a prefix learned by BGP (controllers/bgp.py): next hop, its node
COOKIE_EXTERNAL_IP = 0x08   # a Service's external IP: the /32 next hop to the node it is routed to
COOKIE_KINDS = {COOKIE_BASE: "base", COOKIE_GATEWAY: "gateway", COOKIE_HOST: "host",
                COOKIE_POD: "pod", COOKIE_LB: "lb", COOKIE_BACKEND: "backend",
                COOKIE_BGP: "bgp", COOKIE_EXTERNAL_IP: "external-ip"}
COOKIE_KIND_MASK = 0xff << 56
COOKIE_ALL = 0xffffffffffffffff

# Conntrack zones. One DNAT zone (and one SNAT zone) for all LBs, not one per LB: reply traffic
# is recognised by the backend's (proto, ip, port) alone, and in nodeport mode every node is a
# backend of every LB -- per-LB zones would need per-LB reply flows with identical matches.
# The VIP:port in each connection's tuple already keeps LBs apart inside one zone.
CT_ZONE_DNAT = 0xcb1
CT_ZONE_SNAT = 0xcb2

# When preserve_client_ip is false the LB SNATs to snat_ip with a source port from this range,
# which lies below Linux's ephemeral range (32768-60999): the health checker's own connections
# from the same address then never collide with SNATed ones in the reverse lookup.
SNAT_PORTS = (1024, 32767)

# nicira_ext has no names for these (OVS include/openflow/nicira-ext.h, enum nx_nat_flags).
NX_NAT_F_SRC = 1 << 0
NX_NAT_F_DST = 1 << 1

# multipath's field set (OVS include/openflow/nicira-ext.h, enum nx_hash_fields; os-ken names
# only the first two): IP addresses, protocol and TCP *or UDP* ports -- symmetric_l4 would leave
# UDP ports out and send every UDP flow between two hosts to one backend.
NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP = 3
# ... and the source address alone: the hash of client-IP affinity.
NX_HASH_FIELDS_NW_SRC = 4

# The most an OpenFlow message can be: its header's length field is 16 bits.
OFP_MAX_LEN = 0xffff

# ct_state bits (OVS ovs-fields(7)).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

Ports = Mapping[str, int]              # a switch's port name -> OpenFlow port number
Messages = dict[str, list]              # switch name -> messages to send, in order

# An LB protocol's IP protocol number and its source / destination port match fields.
LB_PROTOCOLS = {"tcp": (inet.IPPROTO_TCP, "tcp_src", "tcp_dst"),
                "udp": (inet.IPPROTO_UDP, "udp_src", "udp_dst")}


# --------------------------------------------------------------------------------------------
# NXAction padding fix
# --------------------------------------------------------------------------------------------

class _PadToLen(ofpp.NXAction):
    """Write the zero pad bytes os-ken 4.2.2's NXAction.serialize forgets.

    NXAction.serialize sets `self.len` to the 8-byte-rounded length but appends only the body,
    so everything after the action is shifted. In a flow-mod the next action or the instruction
    length hides it; in a group bucket (ct(nat(dst=ip:port)) is 22 bytes + 2 of pad) OVS
    rejects the group-mod with OFPBRC_BAD_LEN. Subclassing keeps os-ken itself untouched; the
    base NXAction comes after NXActionNAT/CT in the padded classes' MRO, so super() is theirs.
    """

    def serialize(self, buf, offset):
        super().serialize(buf, offset)
        end = offset + self.len
        if len(buf) < end:
            buf += bytearray(end - len(buf))


class NXActionNATPadded(_PadToLen, ofpp.NXActionNAT):
    """NXActionNAT that serializes to exactly its `len` (zero padded)."""


class NXActionCTPadded(_PadToLen, ofpp.NXActionCT):
    """NXActionCT that serializes to exactly its `len` (zero padded)."""


# --------------------------------------------------------------------------------------------
# One flow builder, and the small action helpers
# --------------------------------------------------------------------------------------------

def cookie(kind: int, key: str) -> int:
    """Cookie for the object `key` of `kind`: kind in the top byte, 56 bits of its hash below."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=7).digest(), "big")
    return (kind << 56) | digest


def hex_cookie(c: int) -> str:
    """A cookie as the REST API shows it: 0x and 16 hex digits."""
    return f"0x{c:016x}"


def flow(table: int, priority: int, cookie: int, match: Mapping | None = None,
         actions: Iterable = (), goto: int | None = None) -> ofpp.OFPFlowMod:
    """The one flow builder: an OFPFC_ADD with apply-actions and/or goto-table."""
    inst = []
    actions = list(actions)
    if actions:
        inst.append(ofpp.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if goto is not None:
        inst.append(ofpp.OFPInstructionGotoTable(goto))
    return ofpp.OFPFlowMod(DP, cookie=cookie, table_id=table, priority=priority,
                           command=ofp.OFPFC_ADD, buffer_id=ofp.OFP_NO_BUFFER,
                           out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                           match=ofpp.OFPMatch(**dict(match or {})), instructions=inst)


def delete_by_cookie(value: int, mask: int = COOKIE_ALL) -> ofpp.OFPFlowMod:
    """Delete every flow (all tables) whose cookie matches value under mask."""
    return ofpp.OFPFlowMod(DP, cookie=value, cookie_mask=mask, table_id=ofp.OFPTT_ALL,
                           command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY,
                           out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch())


def ct(zone: int, table: int | None = None, commit: bool = False,
       nat: ofpp.NXActionNAT | None = None) -> NXActionCTPadded:
    """ct(zone=Z[,commit][,table=T][,nat...]) -- table None: no recirculation."""
    return NXActionCTPadded(
        flags=nicira_ext.NX_CT_F_COMMIT if commit else 0, zone_src="", zone_ofs_nbits=zone,
        recirc_table=nicira_ext.NX_CT_RECIRC_NONE if table is None else table, alg=0,
        actions=[nat] if nat is not None else [])


def nat_reverse() -> NXActionNATPadded:
    """Plain `nat`: apply the connection's existing translation (either direction)."""
    return NXActionNATPadded(flags=0)


def nat_dst(ip: str, port: int) -> NXActionNATPadded:
    """nat(dst=ip:port) -- encoded like ovs-ofctl does: ipv4 min + proto min (needs the pad)."""
    return NXActionNATPadded(flags=NX_NAT_F_DST, range_ipv4_min=ip, range_proto_min=port)


def nat_src(ip: str, ports: tuple[int, int] = SNAT_PORTS) -> NXActionNATPadded:
    """nat(src=ip:lo-hi)."""
    return NXActionNATPadded(flags=NX_NAT_F_SRC, range_ipv4_min=ip, range_proto_min=ports[0],
                             range_proto_max=ports[1])


def arp_responder(ip: str, mac: str) -> list:
    """Turn the ARP request into the reply for ip is-at mac and send it back out IN_PORT."""
    return [ofpp.NXActionRegMove(src_field="eth_src", dst_field="eth_dst", n_bits=48),
            ofpp.OFPActionSetField(eth_src=mac),
            ofpp.OFPActionSetField(arp_op=2),
            ofpp.NXActionRegMove(src_field="arp_sha", dst_field="arp_tha", n_bits=48),
            ofpp.OFPActionSetField(arp_sha=mac),
            ofpp.NXActionRegMove(src_field="arp_spa", dst_field="arp_tpa", n_bits=32),
            ofpp.OFPActionSetField(arp_spa=ip),
            ofpp.OFPActionOutput(ofp.OFPP_IN_PORT)]


def arp_flow(c: int, ip: str, mac: str, asker_net: ipaddress.IPv4Network) -> ofpp.OFPFlowMod:
    """Answer 'who has ip' with mac -- only to askers inside asker_net (same subnet)."""
    match = {"eth_type": ether.ETH_TYPE_ARP, "arp_op": 1, "arp_tpa": ip,
             "arp_spa": (str(asker_net.network_address), str(asker_net.netmask))}
    return flow(T_ARP, P_DEFAULT, c, match, arp_responder(ip, mac))


def nexthop_flow(c: int, ip: str, gateway_mac: str, mac: str) -> ofpp.OFPFlowMod:
    """The /32 route to ip: from the gateway's MAC to mac, then bridged."""
    return flow(T_NEXTHOP, P_DEFAULT, c, {"eth_type": ether.ETH_TYPE_IP, "ipv4_dst": ip},
                [ofpp.OFPActionSetField(eth_src=gateway_mac), ofpp.OFPActionSetField(eth_dst=mac)],
                goto=T_L2)


class Bucket(ofpp.OFPBucket):
    """A weight-1 select bucket that serializes its actions once and then copies the bytes.

    An LB's group is rewritten whole whenever a backend enters or leaves service; with 1000
    backends coming up together, serializing every bucket's ct(nat) anew each time was half a
    million bucket serializations (tens of seconds of CPU). A bucket is never changed once built.
    """

    def __init__(self, actions: list):
        super().__init__(weight=1, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                         actions=actions)
        self._wire: bytes | None = None

    def serialize(self, buf, offset):
        if self._wire is None:
            first = bytearray()
            super().serialize(first, 0)             # also sets self.len
            self._wire = bytes(first)
        if len(buf) < offset:
            buf += bytearray(offset - len(buf))
        buf[offset:offset + len(self._wire)] = self._wire


def select_group(command: int, group_id: int, buckets: Iterable[Bucket]) -> ofpp.OFPGroupMod:
    """A select group of these buckets."""
    return ofpp.OFPGroupMod(DP, command=command, type_=ofp.OFPGT_SELECT, group_id=group_id,
                            buckets=list(buckets))


def delete_group(group_id: int) -> ofpp.OFPGroupMod:
    """Delete one group (and, in OVS, any flow still naming it)."""
    return ofpp.OFPGroupMod(DP, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_SELECT,
                            group_id=group_id)


def hash_slot(slots: int, basis: int = 0,
              fields: int = NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP) -> ofpp.NXActionMultipath:
    """reg1 := a hash of the connection (addresses, protocol, ports; or with fields
    NX_HASH_FIELDS_NW_SRC the source address alone) modulo slots (1-65536).

    Every slot is equally likely: a plain modulo of a 32-bit hash, unlike a select group, whose
    weights OVS does not honour in proportion (docs/controller.md, "Big load balancers").
    """
    return ofpp.NXActionMultipath(
        fields=fields, basis=basis,
        algorithm=nicira_ext.NX_MP_ALG_MODULO_N, max_link=slots - 1, arg=0,
        ofs_nbits=nicira_ext.ofs_nbits(0, 31), dst="reg1")


def delete_flows(table: int, match: Mapping) -> ofpp.OFPFlowMod:
    """Delete every flow of one table whose match includes these fields (non-strict)."""
    return ofpp.OFPFlowMod(DP, table_id=table, command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY,
                           out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch(**dict(match)))


def delete_flow_strict(table: int, priority: int, match: Mapping) -> ofpp.OFPFlowMod:
    """Delete the one flow with exactly this table, priority and match."""
    return ofpp.OFPFlowMod(DP, table_id=table, priority=priority,
                           command=ofp.OFPFC_DELETE_STRICT, out_port=ofp.OFPP_ANY,
                           out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch(**dict(match)))


def clear_switch() -> list:
    """Delete every flow and every group."""
    return [ofpp.OFPFlowMod(DP, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                            out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch()),
            ofpp.OFPGroupMod(DP, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_ALL,
                             group_id=ofp.OFPG_ALL)]


def switch_config() -> list:
    """Send whole packets to the controller, and let invalid-TTL packet-ins through.

    OF1.3 dropped set_config's OFPC_INVALID_TTL_TO_CONTROLLER bit (OVS answers
    OFPSCFC_BAD_FLAGS to it on 1.3); the async config's packet-in mask is how 1.3 asks.
    """
    reasons = (1 << ofp.OFPR_NO_MATCH) | (1 << ofp.OFPR_ACTION) | (1 << ofp.OFPR_INVALID_TTL)
    port_status = (1 << ofp.OFPPR_ADD) | (1 << ofp.OFPPR_DELETE) | (1 << ofp.OFPPR_MODIFY)
    return [ofpp.OFPSetConfig(DP, ofp.OFPC_FRAG_NORMAL, ofp.OFPCML_NO_BUFFER),
            ofpp.OFPSetAsync(DP, [reasons, 0], [port_status, port_status], [0, 0])]


class MessageTooLong(ValueError):
    """A message that would not fit OpenFlow's 16-bit length field; it is refused, not sent."""


def describe(msg: ofpp.MsgBase) -> str:
    """A message in a few words, for errors: its kind and what it is about."""
    if isinstance(msg, ofpp.OFPGroupMod):
        return f"group-mod of group {msg.group_id} ({len(msg.buckets)} buckets)"
    if isinstance(msg, ofpp.OFPFlowMod):
        return (f"flow-mod in table {TABLE_NAMES.get(msg.table_id, msg.table_id)} "
                f"(cookie {hex_cookie(msg.cookie)})")
    return type(msg).__name__


def encode(msg: ofpp.MsgBase, xid: int) -> bytes:
    """msg as it goes on the wire, with transaction id xid.

    Serialized on first use and kept on the message: one message object may go to many switches
    (a pod's route is the same on all of them), so only the xid differs between its copies.
    A message is never changed once it is built. MessageTooLong if it is over OFP_MAX_LEN bytes
    (os-ken would fail with a bare struct.error packing the header's length).
    """
    wire = msg.__dict__.get("_wire")
    if wire is None:
        if msg.xid is None:
            msg.xid = xid
        try:
            msg.serialize()
        except struct.error:
            size = len(msg.buf or b"")
            if size <= OFP_MAX_LEN:
                raise                                  # not the length: a bug, let it show
            raise MessageTooLong(f"{describe(msg)} would be {size} bytes; an OpenFlow message "
                                 f"holds at most {OFP_MAX_LEN}") from None
        wire = msg._wire = bytes(msg.buf)
    return wire[:4] + xid.to_bytes(4, "big") + wire[8:]
