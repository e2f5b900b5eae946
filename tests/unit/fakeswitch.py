"""Shared test fakes for the VPC controller: a small OpenFlow 1.3 switch, a fabric, a datapath.

FakeSwitch: tables, priorities, masked matches, apply-actions/goto, select groups, multipath
    (over the 5-tuple or the source address), and
    just enough conntrack for ct(commit, nat(dst|src)) and the reverse `nat`; process() says where
    a packet goes
FakeFabric: every switch programmed from a Vpc, walk() follows a packet across the links
FakeDatapath: records what the controller writes, decoded from the bytes back into messages
decode: the messages in a buffer written to a switch (os-ken parses few of those; the rest here)
"""

import copy
import hashlib
import ipaddress
import random
import struct

from os_ken.ofproto import nicira_ext, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.openflow import (
    CT_EST,
    CT_NEW,
    CT_RPL,
    CT_TRK,
    DP,
    NX_HASH_FIELDS_NW_SRC,
    NX_NAT_F_DST,
    NX_NAT_F_SRC,
)


def _norm(value):
    """Compare IPs and MACs as integers."""
    if isinstance(value, str):
        if ":" in value:
            return int(value.replace(":", ""), 16)
        return int(ipaddress.IPv4Address(value))
    return value


class FakeSwitch:
    """Tables of (priority, match, instructions, cookie), select groups, and a toy conntrack.

    process(pkt, in_port) returns [(port, packet)]; ("controller", packet) for invalid TTL.
    Select buckets are chosen by hash of (ipv4_src, l4 src port), like a 5-tuple hash.
    """

    def __init__(self, msgs=()):
        self.tables = {}         # table id -> {(priority, match key): flow}, flows as in `flows`
        self.groups = {}
        self.conns = []          # dicts: zone, orig, reply, kind, to
        self.apply(msgs)

    def apply(self, msgs):
        for m in msgs:
            if isinstance(m, ofpp.OFPFlowMod):
                if m.command == ofp.OFPFC_ADD:
                    for inst in m.instructions:       # like OVS: OFPBAC_BAD_OUT_GROUP
                        for a in getattr(inst, "actions", []):
                            assert not isinstance(a, ofpp.OFPActionGroup) or \
                                a.group_id in self.groups, "flow names a missing group"
                    table = self.tables.setdefault(m.table_id, {})
                    key = (m.priority, _match_key(m.match))
                    table.pop(key, None)
                    table[key] = (m.table_id, *key, m.instructions, m.cookie)
                elif m.command == ofp.OFPFC_DELETE_STRICT:
                    self.tables.get(m.table_id, {}).pop((m.priority, _match_key(m.match)), None)
                elif m.command == ofp.OFPFC_DELETE:
                    mask, want = m.cookie_mask, set(_match_key(m.match))
                    for table_id, table in self.tables.items():
                        if m.table_id in (ofp.OFPTT_ALL, table_id):
                            self.tables[table_id] = {
                                k: f for k, f in table.items()
                                if (mask and (f[4] & mask) != (m.cookie & mask))
                                or not want <= set(f[2])}
            elif isinstance(m, ofpp.OFPGroupMod):
                if m.command == ofp.OFPGC_DELETE:
                    self.groups.clear() if m.group_id == ofp.OFPG_ALL else \
                        self.groups.pop(m.group_id, None)
                elif m.command == ofp.OFPGC_ADD:
                    assert m.group_id not in self.groups
                    self.groups[m.group_id] = m.buckets
                else:
                    assert m.group_id in self.groups
                    self.groups[m.group_id] = m.buckets

    @property
    def flows(self):
        """Every flow as (table, priority, match key, instructions, cookie)."""
        return [f for table in self.tables.values() for f in table.values()]

    def table(self, table_id):
        return list(self.tables.get(table_id, {}).values())

    def process(self, pkt, in_port):
        pkt = dict(pkt, in_port=in_port)
        pkt.setdefault("reg0", 0)
        return self._table(0, pkt, 0)

    def _table(self, table_id, pkt, depth):
        assert depth < 32, "pipeline loop"
        hits = [f for f in self.table(table_id) if _matches(f[2], pkt)]
        if not hits:
            return []
        best = max(f[1] for f in hits)
        top = [f for f in hits if f[1] == best]
        assert len(top) == 1, f"ambiguous flows in table {table_id}: {top}"
        out = []
        for inst in top[0][3]:
            if isinstance(inst, ofpp.OFPInstructionActions):
                done, res = self._actions(inst.actions, pkt, depth)
                out += res
                if done:
                    return out
            elif isinstance(inst, ofpp.OFPInstructionGotoTable):
                out += self._table(inst.table_id, pkt, depth + 1)
        return out

    def _actions(self, actions, pkt, depth):
        """Run an action list on pkt (in place); returns (stop, outputs)."""
        out = []
        for a in actions:
            if isinstance(a, ofpp.OFPActionSetField):
                pkt[a.key] = a.value
            elif isinstance(a, ofpp.NXActionRegMove):
                pkt[a.dst_field] = pkt[a.src_field]
            elif isinstance(a, ofpp.OFPActionDecNwTtl):
                if pkt["ttl"] <= 1:
                    return True, out + [("controller", dict(pkt))]
                pkt["ttl"] -= 1
            elif isinstance(a, ofpp.OFPActionOutput):
                port = pkt["in_port"] if a.port == ofp.OFPP_IN_PORT else a.port
                if a.port != ofp.OFPP_IN_PORT and a.port == pkt["in_port"]:
                    continue                            # OpenFlow never outputs to in_port
                out.append((port, dict(pkt)))
            elif isinstance(a, ofpp.OFPActionGroup):
                buckets = self.groups[a.group_id]
                if buckets:
                    sport = pkt.get("tcp_src", pkt.get("udp_src"))
                    h = hash((pkt["ipv4_src"], sport)) % len(buckets)
                    done, res = self._actions(buckets[h].actions, dict(pkt), depth)
                    out += res
            elif isinstance(a, ofpp.NXActionMultipath):       # a stable stand-in for its hash
                five = f"{pkt['ipv4_src']} {pkt['ipv4_dst']} {pkt['ip_proto']} " \
                       f"{pkt.get('tcp_src', pkt.get('udp_src'))} " \
                       f"{pkt.get('tcp_dst', pkt.get('udp_dst'))}"
                if a.fields == NX_HASH_FIELDS_NW_SRC:           # the source address alone
                    five = pkt["ipv4_src"]
                h = int.from_bytes(hashlib.blake2b(five.encode(), digest_size=4).digest(), "big")
                pkt[a.dst] = h % (a.max_link + 1)
            elif isinstance(a, ofpp.NXActionCT):
                self._ct(a, pkt)
                if a.recirc_table != nicira_ext.NX_CT_RECIRC_NONE:
                    return True, out + self._table(a.recirc_table, pkt, depth + 1)
            else:
                raise AssertionError(f"unmodelled action {a}")
        return False, out

    def _ct(self, a, pkt):
        zone = a.zone_ofs_nbits
        l4s = "tcp_src" if pkt["ip_proto"] == 6 else "udp_src"
        l4d = "tcp_dst" if pkt["ip_proto"] == 6 else "udp_dst"
        t = (pkt["ipv4_src"], pkt.get(l4s), pkt["ipv4_dst"], pkt.get(l4d))
        nat = a.actions[0] if a.actions else None
        for c in self.conns:
            if c["zone"] != zone:
                continue
            if t == c["orig"]:
                pkt["ct_state"] = CT_TRK | CT_EST
                if nat is not None:
                    dst = c["kind"] == "dst"
                    ip_key, port_key = ("ipv4_dst", l4d) if dst else ("ipv4_src", l4s)
                    pkt[ip_key], pkt[port_key] = c["to"]
                return
            if t == c["reply"]:
                pkt["ct_state"] = CT_TRK | CT_EST | CT_RPL
                if nat is not None:
                    if c["kind"] == "dst":
                        pkt["ipv4_src"], pkt[l4s] = c["orig"][2], c["orig"][3]
                    else:
                        pkt["ipv4_dst"], pkt[l4d] = c["orig"][0], c["orig"][1]
                return
        pkt["ct_state"] = CT_TRK | CT_NEW
        if a.flags & nicira_ext.NX_CT_F_COMMIT:
            kind, to = None, None
            if nat is not None and nat.flags & NX_NAT_F_DST:
                kind, to = "dst", (nat.range_ipv4_min, nat.range_proto_min)
                pkt["ipv4_dst"], pkt[l4d] = to
            elif nat is not None and nat.flags & NX_NAT_F_SRC:
                lo, hi = nat.range_proto_min, nat.range_proto_max
                port = pkt[l4s] if lo <= pkt[l4s] <= hi else lo
                kind, to = "src", (nat.range_ipv4_min, port)
                pkt["ipv4_src"], pkt[l4s] = to
            now = (pkt["ipv4_src"], pkt.get(l4s), pkt["ipv4_dst"], pkt.get(l4d))
            self.conns.append({"zone": zone, "orig": t, "reply": (now[2], now[3], now[0], now[1]),
                               "kind": kind, "to": to})


def _match_key(match):
    return tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in match.items()))


def _matches(fields, pkt):
    for name, want in fields:
        if name not in pkt:
            return False
        have = _norm(pkt[name])
        if isinstance(want, tuple):
            value, mask = _norm(want[0]), _norm(want[1])
            if have & mask != value & mask:
                return False
        elif have != _norm(want):
            return False
    return True



class FakeFabric:
    """All switches of a fabric, programmed from a Vpc, with a walk() across links.

    ports: per switch name, its port name -> number map (the switches that exist)
    """

    def __init__(self, vpc, ports):
        self.vpc = vpc
        self.ports = ports
        self.sw = {name: FakeSwitch(vpc.program_switch(name, ports[name])) for name in ports}

    def apply(self, by_switch):
        for name, msgs in by_switch.items():
            self.sw[name].apply(msgs)

    def walk(self, switch, port_name, pkt):
        """Inject pkt and follow it across switch links; returns [(switch, port name, pkt)]."""
        peer = {}
        for link in self.vpc.fabric.links:
            peer[(link.a, link.a_port)] = (link.b, link.b_port)
            peer[(link.b, link.b_port)] = (link.a, link.a_port)
        out = []
        todo = [(switch, port_name, pkt)]
        while todo:
            sw, pname, p = todo.pop()
            names = {n: name for name, n in self.ports[sw].items()}
            for port, q in self.sw[sw].process(copy.deepcopy(p), self.ports[sw][pname]):
                oname = "controller" if port == "controller" else names[port]
                if (sw, oname) in peer:
                    todo.append((*peer[(sw, oname)], q))
                else:
                    out.append((sw, oname, q))
        return out



class FakeDatapath:
    """A connected switch as the controller sees it: id, xid counter, parser and send(bytes).

    sent: every message written, decoded from the bytes (so tests see what goes on the wire)
    writes: how many writes carried them
    """

    ofproto = ofp
    ofproto_parser = ofpp

    def __init__(self, dpid):
        self.id = dpid
        self.xid = random.randint(0, ofp.MAX_XID)     # as os-ken's Datapath starts it
        self.sent = []
        self.writes = 0

    def send(self, buf):
        self.writes += 1
        self.sent += decode(buf)


def decode(buf):
    """The messages in buf, in order, as os-ken objects with their xid."""
    msgs, offset = [], 0
    while offset < len(buf):
        version, msg_type, msg_len, xid = ofproto_parser.header(buf[offset:])
        assert version == ofp.OFP_VERSION and msg_len >= ofp.OFP_HEADER_SIZE
        one = bytes(buf[offset:offset + msg_len])
        assert len(one) == msg_len, "a message cut short"
        msg = _decode_one(msg_type, one)
        msg.xid = xid
        msgs.append(msg)
        offset += msg_len
    return msgs


def _decode_one(msg_type, buf):
    body = ofp.OFP_HEADER_SIZE
    if msg_type == ofp.OFPT_FLOW_MOD:
        return ofpp.OFPFlowMod.parser(DP, ofp.OFP_VERSION, msg_type, len(buf), 0, buf)
    if msg_type == ofp.OFPT_GROUP_MOD:
        command, type_, group_id = struct.unpack_from("!HBxI", buf, body)
        buckets, offset = [], ofp.OFP_GROUP_MOD_SIZE
        while offset < len(buf):
            buckets.append(ofpp.OFPBucket.parser(buf, offset))
            offset += buckets[-1].len
        return ofpp.OFPGroupMod(DP, command, type_, group_id, buckets)
    if msg_type == ofp.OFPT_PACKET_OUT:
        buffer_id, in_port, actions_len = struct.unpack_from("!IIH6x", buf, body)
        actions, offset = [], ofp.OFP_PACKET_OUT_SIZE
        while offset < ofp.OFP_PACKET_OUT_SIZE + actions_len:
            actions.append(ofpp.OFPAction.parser(buf, offset))
            offset += actions[-1].len
        return ofpp.OFPPacketOut(DP, buffer_id, in_port, actions, buf[offset:])
    if msg_type == ofp.OFPT_BARRIER_REQUEST:
        return ofpp.OFPBarrierRequest(DP)
    if msg_type == ofp.OFPT_MULTIPART_REQUEST:
        mp_type, flags = struct.unpack_from("!HH", buf, body)
        assert mp_type == ofp.OFPMP_PORT_DESC, f"unmodelled multipart request {mp_type}"
        return ofpp.OFPPortDescStatsRequest(DP, flags)
    if msg_type == ofp.OFPT_SET_CONFIG:
        return ofpp.OFPSetConfig(DP, *struct.unpack_from("!HH", buf, body))
    if msg_type == ofp.OFPT_SET_ASYNC:
        v = struct.unpack_from("!6I", buf, body)
        return ofpp.OFPSetAsync(DP, list(v[0:2]), list(v[2:4]), list(v[4:6]))
    raise AssertionError(f"unmodelled message type {msg_type}")
