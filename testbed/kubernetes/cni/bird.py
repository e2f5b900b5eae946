"""BIRD 2 configuration for Calico-style BGP routing, and reading what `birdc` prints (pure).

Each node's config has the shape Calico's confd templates give calico-node's BIRD (bird.cfg,
bird_aggr.cfg, bird_ipam.cfg): a static protocol with a blackhole route per block the node owns
(exported to the kernel, so an unused address of a block is dropped on its node), the
`calico_aggr` function announcing each block and nothing beneath it, a kernel protocol that
programs learned routes into the node's table, a device and a direct protocol (interface routes
resolve the next hops of multihop sessions), and one BGP session per peer: `Mesh_<ip>` to every
other node (node-to-node mesh), `Global_<ip>` to the fabric's speaker (a BGPPeer to the
top-of-rack). Where this differs from upstream it says so.

The fabric's speaker (its own host on the VPC's core switch) imports every node's blocks and
exports nothing: the VPC controller routes by what it learned (testbed.emulation.bgp relays it).

render_node: one node's bird.conf
render_speaker: the fabric speaker's bird.conf
speaker_protocol: the speaker's session name for a node
parse_protocols: `birdc show protocols` as rows
parse_routes: `birdc show route all` as (prefix, protocol, BGP next hop) rows
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from testbed.plan.addresses import BgpPlan, NodePlan, Plan
from testbed.plan.calico_ipam import blocks_of

# BGP's timers besides the hold time, as Calico's bgp_template sets them: a quick first
# connect, retries every 5 s, and a back-off after errors.
TIMERS = "connect delay time 2;\n  connect retry time 5;\n  error wait time 5,30;"


def _ident(ip: str) -> str:
    return ip.replace(".", "_")


def speaker_protocol(node: str) -> str:
    """The speaker's name for its session with node (a BIRD symbol: letters, digits, _)."""
    return "node_" + re.sub(r"[^A-Za-z0-9_]", "_", node)


def keepalive(hold_s: int) -> int:
    """BGP's keepalive interval: a third of the hold time (RFC 4271's suggestion), at least 1."""
    return max(1, hold_s // 3)


def _timers(bgp: BgpPlan) -> str:
    return f"hold time {bgp.hold_time_s};\n  keepalive time {keepalive(bgp.hold_time_s)};\n  " \
        + TIMERS


def render_node(plan: Plan, node: NodePlan) -> str:
    """One node's bird.conf: its blocks, the filters, and its sessions."""
    bgp = plan.bgp
    assert bgp is not None, "a plan with overlay bgp has its BGP set-up"
    blocks = blocks_of(plan.blocks, node.name)
    statics = "".join(f"  route {b} blackhole;\n" for b in blocks)
    aggr = "".join(f"  # Block {b} is confirmed\n"
                   f"  if ( net = {b} ) then {{ accept; }}\n"
                   f"  if ( net ~ {b} ) then {{ reject; }}\n" for b in blocks)
    out = [
        f"# node {node.name}: rendered by cnlb from the plan, in the shape of Calico's confd",
        "# templates (bird.cfg, bird_aggr.cfg, bird_ipam.cfg)",
        f"router id {node.ip};",
        'timeformat protocol "%s";',
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "",
        "# bird_aggr.cfg: a blackhole route per block this node owns; the block is announced,",
        "# nothing beneath it",
        f"protocol static static_blocks {{\n  ipv4;\n{statics}}}",
        "",
        f"function calico_aggr ()\n{{\n{aggr}}}",
        "",
        "# bird_ipam.cfg. Upstream's export filter also accepts any route in an IP pool; here a",
        "# node announces its own blocks only, so the fabric never hears a block from a node",
        "# that merely learned it (which, with the fabric as every node's gateway, would loop).",
        "filter calico_export_to_bgp_peers {\n  calico_aggr();\n  reject;\n}",
        "",
        "# Upstream programs every route into the kernel; here only pool routes, so BIRD never",
        "# competes with the interface routes the kernel made itself.",
        f"filter calico_kernel_programming {{\n  if ( net ~ {plan.pod_cidr} ) then accept;\n"
        "  reject;\n}",
        "",
        "protocol kernel {\n  learn;   # alien routes (the default route) resolve next hops\n"
        "  scan time 2;\n  ipv4 {\n    import all;\n"
        "    export filter calico_kernel_programming;\n  };\n  merge paths on;\n}",
        "",
        "protocol device {\n  scan time 2;\n}",
        "",
        "# interface routes, but not the pods' veths (upstream: -\"cali*\")",
        'protocol direct {\n  ipv4;\n  interface -"veth*", "*";\n}',
        "",
        f"template bgp bgp_template {{\n  local {node.ip} as {bgp.as_number};\n"
        f"  {_timers(bgp)}\n  ipv4 {{\n    import all;\n"
        "    export filter calico_export_to_bgp_peers;\n  };\n}",
    ]
    if bgp.node_to_node_mesh:
        for other in plan.nodes:
            if other.name == node.name:
                continue
            # one side waits for the other (Calico: "Mesh is unidirectional, peer will connect
            # to us"), so two nodes never race two connections
            passive = "\n  passive on;" if _ip_key(other.ip) > _ip_key(node.ip) else ""
            out += ["", f"# mesh with {other.name}",
                    f"protocol bgp Mesh_{_ident(other.ip)} from bgp_template {{\n"
                    f"  neighbor {other.ip} as {bgp.as_number};\n  multihop;{passive}\n}}"]
    if bgp.fabric_peer:
        out += ["", "# the fabric's speaker (Calico: a global BGPPeer, the top-of-rack)",
                f"protocol bgp Global_{_ident(bgp.speaker_ip)} from bgp_template {{\n"
                f"  neighbor {bgp.speaker_ip} as {bgp.fabric_as_number};\n  multihop;\n}}"]
    return "\n".join(out) + "\n"


def render_speaker(plan: Plan) -> str:
    """The fabric speaker's bird.conf: a session per node, everything imported, nothing
    exported (with the nodes' AS it is an iBGP route reflector and reflects their blocks)."""
    bgp = plan.bgp
    assert bgp is not None and bgp.fabric_peer
    ibgp = bgp.fabric_as_number == bgp.as_number
    export = "all" if ibgp else "none"
    out = [
        "# the VPC fabric's BGP speaker: rendered by cnlb from the plan",
        f"router id {bgp.speaker_ip};",
        'timeformat protocol "%s";',
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "",
        "protocol device {\n  scan time 2;\n}",
        "",
        "# learns the default route, through which the nodes' addresses (next hops) resolve",
        "protocol kernel {\n  learn;\n  scan time 2;\n  ipv4 {\n    import all;\n"
        "    export none;\n  };\n}",
        "",
        f"template bgp nodes {{\n  local {bgp.speaker_ip} as {bgp.fabric_as_number};\n"
        f"  {_timers(bgp)}\n  multihop;\n" + ("  rr client;\n" if ibgp else "") +
        f"  ipv4 {{\n    import all;\n    export {export};\n  }};\n}}",
    ]
    for node in plan.nodes:
        out += ["", f"protocol bgp {speaker_protocol(node.name)} from nodes {{\n"
                    f"  neighbor {node.ip} as {bgp.as_number};\n}}"]
    return "\n".join(out) + "\n"


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split("."))


@dataclass(frozen=True)
class Protocol:
    """One row of `birdc show protocols`.

    state: BIRD's protocol state (up, start, down, ...); info: for BGP the session state
        (Established, Active, Connect, ...); since: when the state last changed (unix seconds
        with the configs here, `timeformat protocol "%s"`)
    """
    name: str
    proto: str
    state: str
    since: str
    info: str

    @property
    def established(self) -> bool:
        return self.proto == "BGP" and self.info.startswith("Established")


def parse_protocols(text: str) -> list[Protocol]:
    """`birdc show protocols` output as rows (the banner and the header line skipped)."""
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or parts[0] in ("BIRD", "Name") or line[:1].isspace():
            continue
        rows.append(Protocol(parts[0], parts[1], parts[3], parts[4],
                             parts[5].strip() if len(parts) > 5 else ""))
    return rows


@dataclass(frozen=True)
class Route:
    """One BGP route of `birdc show route all`: the prefix, the session it came from, and the
    BGP next hop (the announcing node's address) and AS path."""
    prefix: str
    protocol: str
    next_hop: str
    as_path: str


# a route's first line: its prefix (left out when it is another route to the prefix above),
# its kind, and the protocol it came from
_ROUTE_HEAD = re.compile(r"^(\S+/\d+)?\s+(?:unicast|blackhole|unreachable|prohibit)\s+\[(\S+)")


def parse_routes(text: str) -> list[Route]:
    """The BGP routes in `birdc show route all` output (others, such as the kernel's default
    route, are skipped: they carry no BGP.next_hop)."""
    routes: list[Route] = []
    prefix = proto = ""
    attrs: dict[str, str] = {}

    def flush() -> None:
        if prefix and "BGP.next_hop" in attrs:
            routes.append(Route(prefix, proto, attrs["BGP.next_hop"].split()[0],
                                attrs.get("BGP.as_path", "")))

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("BIRD ", "Table ")):
            continue
        head = _ROUTE_HEAD.match(line)
        if head:
            flush()
            prefix = head.group(1) or prefix
            proto, attrs = head.group(2), {}
            continue
        key, sep, value = stripped.partition(":")
        if sep and key.startswith("BGP."):
            attrs[key] = value.strip()
    flush()
    return routes
