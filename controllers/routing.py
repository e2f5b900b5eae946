"""The VPC router: ARP answers, /32 routes to hosts, pods and Services' external IPs, L2
forwarding, the pipeline glue.

Router: the routing flows of a switch, and the container-native pod routes that change at run
    time (add_pod / remove_pod return the messages; routes_view is what GET /v1/routes shows);
    the flows every switch gets alike are built once (shared_flows)
"""

from __future__ import annotations

from collections.abc import Mapping

from os_ken.ofproto import ether
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from controllers.config import (
    ConfigError,
    ExternalIpRoute,
    Fabric,
    Host,
    PodRoute,
    Subnet,
    check_pod,
)
from controllers.openflow import (
    COOKIE_BASE,
    COOKIE_EXTERNAL_IP,
    COOKIE_GATEWAY,
    COOKIE_HOST,
    COOKIE_POD,
    CT_ZONE_DNAT,
    P_ARP,
    P_DEFAULT,
    P_L2_HAIRPIN,
    P_MISS,
    T_ARP,
    T_DISPATCH,
    T_INGRESS,
    T_L2,
    T_LB_PICK,
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
    flow,
    hex_cookie,
    nat_reverse,
    nexthop_flow,
)
from controllers.topology import Topology


class Router:
    """Routing and bridging of the VPC (everything but the load balancer).

    fabric: the validated fabric.json
    topology: port lookups over the fabric's links
    pods: container-native pod routes by pod name (fabric's pod_routes + REST additions)
    """

    def __init__(self, fabric: Fabric, topology: Topology):
        self.fabric = fabric
        self.topology = topology
        self.pods: dict[str, PodRoute] = {p.pod: p for p in fabric.pod_routes}
        # A pod's flows, and a host's ARP answer and /32, are the same on every switch: built
        # once, they go to all of them (and openflow.encode serializes each message once).
        # 1000 pods x 11 switches of building and serializing was most of a 1000-pod
        # cluster's programming time.
        self._pod_msgs: dict[str, list] = {}
        self._host_msgs: dict[str, list] = {}

    def shared_flows(self) -> list:
        """The flows every switch gets alike (host and pod routes), built once and kept."""
        msgs = [m for host in self.fabric.hosts for m in self._host_routes(host)]
        msgs += [m for e in self.fabric.external_ips for m in self._external_ip_flows(e)]
        return msgs + [m for pod in self.pods.values() for m in self._pod_flows(pod)]

    def flows(self, switch: str, ports: Ports) -> list:
        """The routing part of a full program: pipeline glue, gateways, hosts, pods."""
        msgs = self._base_flows(switch)
        for subnet in self.fabric.subnets:
            msgs += self._gateway_flows(subnet)
        for host in self.fabric.hosts:
            msgs += self._host_flows(switch, ports, host)
        for e in self.fabric.external_ips:
            msgs += self._external_ip_flows(e)
        for pod in self.pods.values():
            msgs += self._pod_flows(pod)
        return msgs

    def gateway_for(self, ip: str, fallback: Subnet) -> Subnet:
        """The subnet whose gateway routes to ip: ip's own subnet, else fallback."""
        return self.fabric.subnet_of_ip(ip) or fallback

    def _base_flows(self, switch: str) -> list:
        c = cookie(COOKIE_BASE, "pipeline")
        ip = {"eth_type": ether.ETH_TYPE_IP}
        msgs = [
            flow(T_INGRESS, P_ARP, c, {"eth_type": ether.ETH_TYPE_ARP}, goto=T_ARP),
            flow(T_INGRESS, P_MISS, c, goto=T_DISPATCH),
            flow(T_ARP, P_MISS, c),                      # unanswered ARP: dropped, never flooded
            flow(T_DISPATCH, P_MISS, c, goto=T_L2),      # not to a gateway MAC: bridged
            # dec_ttl first, so an invalid-TTL packet-in carries the frame as it arrived.
            flow(T_ROUTE, P_DEFAULT, c, ip, [ofpp.OFPActionDecNwTtl()], goto=T_NEXTHOP),
            flow(T_ROUTE, P_MISS, c),                    # non-IP to a gateway MAC
            flow(T_NEXTHOP, P_MISS, c),                  # no route: dropped
            flow(T_L2, P_MISS, c),                       # unknown MAC: dropped, never flooded
        ]
        if switch == self.fabric.core.name:
            msgs += [flow(T_LB_SELECT, P_MISS, c), flow(T_LB_SNAT, P_MISS, c),
                     flow(T_LB_UNNAT, P_DEFAULT, c, ip,
                          [ct(CT_ZONE_DNAT, T_NEXTHOP, nat=nat_reverse())]),
                     flow(T_LB_UNNAT, P_MISS, c), flow(T_LB_PICK, P_MISS, c)]
        return msgs

    def _gateway_flows(self, subnet: Subnet) -> list:
        c = cookie(COOKIE_GATEWAY, subnet.name)
        return [arp_flow(c, subnet.gateway, subnet.gateway_mac, subnet.cidr),
                flow(T_DISPATCH, P_DEFAULT, c, {"eth_dst": subnet.gateway_mac}, goto=T_ROUTE)]

    def _host_routes(self, host: Host) -> list:
        """The host's ARP answer and /32 route: the same on every switch."""
        msgs = self._host_msgs.get(host.name)
        if msgs is None:
            c = cookie(COOKIE_HOST, host.name)
            subnet = self.fabric.subnet(host.subnet)
            msgs = self._host_msgs[host.name] = [
                arp_flow(c, host.ip, host.mac, subnet.cidr),
                nexthop_flow(c, host.ip, subnet.gateway_mac, host.mac)]
        return msgs

    def _host_flows(self, switch: str, ports: Ports, host: Host) -> list:
        c = cookie(COOKIE_HOST, host.name)
        msgs = list(self._host_routes(host))
        out = ports.get(self.topology.host_port(switch, host) or "")
        if out is None:
            return msgs
        msgs.append(flow(T_L2, P_DEFAULT, c, {"eth_dst": host.mac}, [ofpp.OFPActionOutput(out)]))
        if switch == self.fabric.core.name:
            # The LB (or the router) on the core may send a frame back down the link it came
            # up (node1 -> VIP -> node3, both in az-a); OpenFlow drops output to the in_port
            # unless it is spelled IN_PORT.
            msgs.append(flow(T_L2, P_L2_HAIRPIN, c, {"in_port": out, "eth_dst": host.mac},
                             [ofpp.OFPActionOutput(ofp.OFPP_IN_PORT)]))
        return msgs

    def _node(self, pod: PodRoute) -> Host:
        node = self.fabric.host(pod.node)
        assert node is not None, "check_pod lets only pods on a node in"
        return node

    def _pod_flows(self, pod: PodRoute) -> list:
        msgs = self._pod_msgs.get(pod.pod)
        if msgs is None:
            c = cookie(COOKIE_POD, pod.pod)
            node = self._node(pod)
            subnet = self.gateway_for(pod.ip, self.fabric.subnet(node.subnet))
            msgs = self._pod_msgs[pod.pod] = [
                arp_flow(c, pod.ip, node.mac, subnet.cidr),
                nexthop_flow(c, pod.ip, subnet.gateway_mac, node.mac)]
        return msgs

    def _external_ip_flows(self, route: ExternalIpRoute) -> list:
        """A Service's external IP: the /32 next hop to its node, as a cluster admin's static
        route. No ARP answer: it is outside every subnet (the testbed checks), so hosts reach
        it through their gateway. The node does not own it; kube-proxy's rules there DNAT it."""
        node = self.fabric.host(route.node)
        assert node is not None, "parse_fabric lets only nodes in as next hops"
        subnet = self.fabric.subnet(node.subnet)
        return [nexthop_flow(cookie(COOKIE_EXTERNAL_IP, route.ip), route.ip,
                             subnet.gateway_mac, node.mac)]

    # ---- run-time changes (each returns the messages for the switches in ports_by_switch)

    def add_pod(self, pod: PodRoute, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Container-native: route pod.ip via its node (replaces a pod of the same name)."""
        if self.fabric.mode != "container-native":
            raise ConfigError(f"pod routes are unknown to the VPC in {self.fabric.mode} mode")
        check_pod(self.fabric, pod, "pod")
        clash = next((p for p in self.pods.values() if p.ip == pod.ip and p.pod != pod.pod), None)
        if clash:
            raise ConfigError(f"pod.ip: {pod.ip} is already pod {clash.pod}'s")
        old = self.pods.get(pod.pod)
        self.pods[pod.pod] = pod
        self._pod_msgs.pop(pod.pod, None)
        pre = [delete_by_cookie(cookie(COOKIE_POD, pod.pod))] if old else []
        return {sw: pre + self._pod_flows(pod) for sw in ports_by_switch}

    def remove_pod(self, name: str, ports_by_switch: Mapping[str, Ports]) -> Messages:
        """Forget pod `name`'s route (KeyError if unknown)."""
        del self.pods[name]
        self._pod_msgs.pop(name, None)
        return {sw: [delete_by_cookie(cookie(COOKIE_POD, name))] for sw in ports_by_switch}

    def routes_view(self) -> list[dict]:
        """Every /32 the router knows: hosts, then pods."""
        rows = []
        for h in self.fabric.hosts:
            s = self.fabric.subnet(h.subnet)
            rows.append({"prefix": f"{h.ip}/32", "kind": "host", "name": h.name,
                         "next_hop_mac": h.mac, "via": h.name, "subnet": s.name,
                         "eth_src": s.gateway_mac,
                         "cookie": hex_cookie(cookie(COOKIE_HOST, h.name))})
        for p in sorted(self.pods.values(), key=lambda p: p.pod):
            node = self._node(p)
            s = self.gateway_for(p.ip, self.fabric.subnet(node.subnet))
            rows.append({"prefix": f"{p.ip}/32", "kind": "pod", "name": p.pod,
                         "next_hop_mac": node.mac, "via": node.name, "subnet": s.name,
                         "eth_src": s.gateway_mac,
                         "cookie": hex_cookie(cookie(COOKIE_POD, p.pod))})
        for e in self.fabric.external_ips:
            via = self.fabric.host(e.node)
            assert via is not None, "parse_fabric lets only nodes in as next hops"
            s = self.fabric.subnet(via.subnet)
            rows.append({"prefix": f"{e.ip}/32", "kind": "external-ip",
                         "name": ",".join(e.services) or e.ip, "next_hop_mac": via.mac,
                         "via": via.name, "subnet": s.name, "eth_src": s.gateway_mac,
                         "cookie": hex_cookie(cookie(COOKIE_EXTERNAL_IP, e.ip))})
        return rows
