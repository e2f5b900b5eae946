"""What a data plane's packet model is asked and answers, the same for every kube-proxy mode.

A Packet is a new connection's first packet at one node; a Trace says where it can go (the set
of DNAT destinations: every probabilistic branch is followed, as in upstream's tracePacket),
whether it is masqueraded, and the filter verdicts it meets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Packet:
    """A new connection's first packet.

    src, dst, dport, protocol: its header
    local_origin: sent by a process on the node (nat OUTPUT) rather than arriving (PREROUTING)
    local_ips: the node's own addresses (for -m addrtype LOCAL)
    """

    src: str
    dst: str
    dport: int
    local_ips: frozenset[str]
    protocol: str = "tcp"
    local_origin: bool = False


@dataclass
class Trace:
    """Where a first packet can go at one node.

    destinations: "ip:port" DNAT targets
    verdicts: the filter verdicts it met (DROP / REJECT / ACCEPT)
    masquerade: whether it is marked for SNAT to the node's address
    matched: the rules it matched, for a failing test's message
    """

    destinations: set[str] = field(default_factory=set)
    verdicts: list[str] = field(default_factory=list)
    masquerade: bool = False
    matched: list[str] = field(default_factory=list)
