"""Stale UDP conntrack entries after a sync, as upstream's pkg/proxy/conntrack/cleanup.go
(CleanStaleEntries, the release that runs the `conntrack` tool) deletes them. Pure: the
commands are rendered here; the data plane runs them on each node.

UDP has no connection to close: a client that keeps sending keeps its conntrack entry, and with
it the DNAT to a pod that is gone, or the "no endpoint" verdict it met before the service had
one. So after each sync:
- a UDP service port that went away, or went from no serving endpoint to some ("newly active"),
  gets its entries to each service IP:port (cluster IP, external IPs, LB IPs) and its NodePort
  deleted (deleteStaleServiceConntrackEntries);
- "newly active" is judged by what the node itself can use: under internalTrafficPolicy or
  externalTrafficPolicy Local a node without a local endpoint drops the traffic (and conntrack
  remembers the drop) while other nodes serve it. Upstream 1.28-1.31 judged it across the
  cluster and so left such a node's entries in place when its first local endpoint came
  (kubernetes#126934; 1.32 replaced the judgment by a scan of the table that deletes every
  entry whose reply source is not a serving endpoint). Here the cluster IP is judged by the
  node's internal endpoints, the NodePort and the external and LB IPs by its external ones;
  without a node the old cluster-wide judgment stays (the pure tests of upstream's cases).
- an endpoint that was serving and is not any more (gone, or no longer serving) gets the entries
  NATed to it from each service IP and from the NodePort deleted
  (deleteStaleEndpointConntrackEntries).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from testbed.kubernetes.dataplane.model import ServicePort, categorize_endpoints

CONNTRACK = "conntrack"
Key = tuple[str, str]   # (ServicePortName string, protocol)


def clear_entries_for_ip_port(ip: str, port: int, protocol: str = "udp") -> list[str]:
    """Upstream ClearEntriesForIPPort: flows to a service IP:port."""
    return [CONNTRACK, "-D", "--orig-dst", ip, "-p", protocol, "--dport", str(port)]


def clear_entries_for_port(port: int, protocol: str = "udp") -> list[str]:
    """Upstream ClearEntriesForPort: flows to a (node) port on any address."""
    return [CONNTRACK, "-D", "-p", protocol, "--dport", str(port)]


def clear_entries_for_nat(origin: str, dest: str, protocol: str = "udp") -> list[str]:
    """Upstream ClearEntriesForNAT: flows to `origin` DNATed to the endpoint `dest`."""
    return [CONNTRACK, "-D", "--orig-dst", origin, "--dst-nat", dest, "-p", protocol]


def clear_entries_for_port_nat(dest: str, port: int, protocol: str = "udp") -> list[str]:
    """Upstream ClearEntriesForPortNAT: flows to a NodePort DNATed to the endpoint `dest`."""
    return [CONNTRACK, "-D", "-p", protocol, "--dport", str(port), "--dst-nat", dest]


def _udp(services: Iterable[ServicePort]) -> dict[Key, ServicePort]:
    return {(s.port_name_string, s.proto): s for s in services
            if s.protocol == "UDP" and s.proxied}


def _serving_ips(svc: ServicePort | None) -> set[str]:
    return {ep.ip for ep in svc.endpoints if ep.is_serving} if svc else set()


def _service_ips(svc: ServicePort) -> list[str]:
    assert svc.cluster_ip is not None   # proxied
    return [svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips]


def _active(svc: ServicePort | None, node: str | None) -> tuple[bool, bool]:
    """(internal, external): whether traffic to the cluster IP, and to the NodePort and the
    external and LB IPs, finds an endpoint on `node` (anywhere when `node` is None)."""
    if svc is None:
        return False, False
    if node is None:
        serving = bool(_serving_ips(svc))
        return serving, serving
    usable = categorize_endpoints(svc, node)
    return usable.has_internal_endpoints, usable.has_external_endpoints


def stale_entries_commands(old: Sequence[ServicePort], new: Sequence[ServicePort],
                           node: str | None = None) -> list[list[str]]:
    """The `conntrack -D` commands that remove what the change from `old` to `new` left stale
    on `node`, in upstream's order: services first (IP:ports, then NodePorts), then
    endpoints."""
    before, after = _udp(old), _udp(new)
    gone = [before[k] for k in sorted(before.keys() - after.keys())]
    out = [clear_entries_for_ip_port(ip, svc.port) for svc in gone for ip in _service_ips(svc)]
    node_ports = {svc.node_port for svc in gone if svc.node_port}
    for key in sorted(after):
        svc = after[key]
        was, now = _active(before.get(key), node), _active(svc, node)
        internal, external = now[0] and not was[0], now[1] and not was[1]
        assert svc.cluster_ip is not None   # proxied
        ips = ([svc.cluster_ip] if internal else []) + (
            [*svc.external_ips, *svc.load_balancer_ips] if external else [])
        out += [clear_entries_for_ip_port(ip, svc.port) for ip in ips]
        if external and svc.node_port:
            node_ports.add(svc.node_port)
    out += [clear_entries_for_port(port) for port in sorted(node_ports)]
    for key in sorted(before.keys() & after.keys()):
        svc = after[key]
        for ip in sorted(_serving_ips(before[key]) - _serving_ips(svc)):
            if svc.node_port:
                out.append(clear_entries_for_port_nat(ip, svc.node_port))
            out += [clear_entries_for_nat(origin, ip) for origin in _service_ips(svc)]
    return out


def script(commands: Sequence[Sequence[str]]) -> str:
    """One shell line running every command; each may find nothing to delete (conntrack then
    says "0 flow entries have been deleted" and exits 1, which upstream ignores too)."""
    return "; ".join(" ".join(argv) + " >/dev/null 2>&1" for argv in commands) + "; true"
