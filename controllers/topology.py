"""Where things are in the fabric: which port of a switch leads toward a switch or a host.

Topology: shortest-path next-hop ports over the switch links, and the ports a switch's flows use
identify_switch: which fabric switch a connecting datapath is
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from controllers.config import Fabric, Host, Switch


class Topology:
    """The fabric's switch graph.

    fabric: the validated fabric.json; its links are the graph's edges
    """

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self._next_hop_port = _next_hop_ports(fabric)

    def port_toward(self, switch: str, target_switch: str) -> str | None:
        """Name of `switch`'s port on the path to `target_switch` (None if unreachable)."""
        return self._next_hop_port.get((switch, target_switch))

    def host_port(self, switch: str, host: Host) -> str | None:
        """Name of `switch`'s port toward the host interface `host`."""
        if host.switch == switch:
            return host.port
        return self.port_toward(switch, host.switch)

    def wanted_ports(self, switch: str) -> set[str]:
        """Every port name this switch's flows refer to (status shows the missing ones)."""
        names = [self.host_port(switch, h) for h in self.fabric.hosts]
        names.append(self.port_toward(switch, self.fabric.core.name))
        return {name for name in names if name is not None}


def _next_hop_ports(fabric: Fabric) -> dict[tuple[str, str], str]:
    """(switch, target switch) -> switch's port on a shortest path, by BFS over the links."""
    adj: dict[str, list[tuple[str, str]]] = {s.name: [] for s in fabric.switches}
    for link in fabric.links:
        adj[link.a].append((link.b, link.a_port))
        adj[link.b].append((link.a, link.b_port))
    result = {}
    for src in adj:
        seen = {src}
        queue = deque((nbr, port) for nbr, port in adj[src])
        while queue:
            node, first_port = queue.popleft()
            if node in seen:
                continue
            seen.add(node)
            result[(src, node)] = first_port
            queue.extend((nbr, first_port) for nbr, _ in adj[node] if nbr not in seen)
    return result


def identify_switch(fabric: Fabric, dpid: int, port_names: Iterable[str]) -> Switch | None:
    """Which fabric switch this datapath is: by dpid, else by its LOCAL port's name."""
    by_dpid = next((s for s in fabric.switches if s.dpid == dpid), None)
    if by_dpid is not None:
        return by_dpid
    names = set(port_names)
    return next((s for s in fabric.switches if s.name in names), None)
