"""The router's one answer from the controller: ICMP time exceeded for a packet whose TTL ran out.

time_exceeded: the packet-out for an invalid-TTL packet-in ([] for what must not be answered)
ICMP_QUOTE_MAX: how much of the offending packet the error quotes
"""

from __future__ import annotations

from os_ken.lib.packet import ethernet, icmp, ipv4, packet
from os_ken.ofproto import ether, inet
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import Fabric
from controllers.openflow import (
    CT_ZONE_DNAT,
    CT_ZONE_SNAT,
    DP,
    T_LB_UNNAT,
    T_NEXTHOP,
    ct,
    nat_reverse,
)

# ICMP errors quote at most this much of the offending packet, so the whole error stays within
# 576 bytes as Linux's icmp_send() does. Quoting only IP header + 8 bytes is not an option: OVS
# 3.1's userspace conntrack can crash ovs-vswitchd when such a short quote passes ct(nat).
ICMP_QUOTE_MAX = 576 - 20 - 8


def time_exceeded(fabric: Fabric, switch: str, in_port: int, data: bytes,
                  reg0: int = 0) -> list:
    """The router's answer to a packet whose TTL ran out at dec_ttl: ICMP time exceeded.

    From the gateway address of the subnet the packet entered the router through (the
    gateway whose MAC it was sent to), to its source, quoting up to ICMP_QUOTE_MAX bytes.
    A packet the LB translated (reg0 = LB tag) goes back through ct(nat) so conntrack
    un-NATs the quote; the error then carries the VIP as outer source (conntrack rewrites
    the outer header of a related ICMP too). Anything else goes straight out in_port.
    Returns [] for what must not be answered (ICMP errors, broadcasts, non-IPv4).
    """
    pkt = packet.Packet(data)
    eth = pkt.get_protocol(ethernet.ethernet)
    ip4 = pkt.get_protocol(ipv4.ipv4)
    if eth is None or ip4 is None or int(eth.src.split(":")[0], 16) & 1:
        return []
    if ip4.proto == inet.IPPROTO_ICMP:
        inner = pkt.get_protocol(icmp.icmp)
        if inner is None or inner.type not in (icmp.ICMP_ECHO_REQUEST, icmp.ICMP_ECHO_REPLY):
            return []                              # never an error about an error
    gw = next((s for s in fabric.subnets if s.gateway_mac == eth.dst), None)
    gw = gw or fabric.subnet_of_ip(ip4.src)
    if gw is None:
        return []
    quote = _ip_bytes(data)[:ICMP_QUOTE_MAX]
    reply = packet.Packet()
    reply.add_protocol(ethernet.ethernet(dst=eth.src, src=gw.gateway_mac,
                                         ethertype=ether.ETH_TYPE_IP))
    reply.add_protocol(ipv4.ipv4(src=gw.gateway, dst=ip4.src, proto=inet.IPPROTO_ICMP, ttl=64))
    reply.add_protocol(icmp.icmp(type_=icmp.ICMP_TIME_EXCEEDED, code=0, csum=0,
                                 data=icmp.TimeExceeded(data_len=0, data=quote)))
    reply.serialize()
    lb = next((lb for lb in fabric.load_balancers if lb.tag == reg0), None)
    if lb is not None and switch == fabric.core.name:
        actions = [ct(CT_ZONE_SNAT, T_LB_UNNAT, nat=nat_reverse())
                   if not lb.preserve_client_ip
                   else ct(CT_ZONE_DNAT, T_NEXTHOP, nat=nat_reverse())]
    else:
        actions = [ofpp.OFPActionOutput(in_port)]
    return [ofpp.OFPPacketOut(DP, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                              actions=actions, data=bytes(reply.data))]


def _ip_bytes(data: bytes) -> bytes:
    """The IPv4 packet inside the frame (after the Ethernet header and any VLAN tags)."""
    offset = 14
    while int.from_bytes(data[offset - 2:offset], "big") in (0x8100, 0x88a8):
        offset += 4
    return data[offset:]
