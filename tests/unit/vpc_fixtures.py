"""The VPC the controller tests share: fabric.json for three switches, their ports, packets.

fabric_dict: three nodes in two subnets, a client, lb0, one LB "web" (nodeport or
    container-native); PORTS: each switch's port map; make(): a Vpc and its FakeFabric
"""

from controllers.config import parse_fabric
from controllers.vpc import Vpc

from .fakeswitch import FakeFabric

GW_A, GW_B = "02:cb:fe:00:00:01", "02:cb:fe:00:00:02"
GW_NET, GW_LB = "02:cb:fe:00:00:fe", "02:cb:fe:00:00:fd"
NODE1, NODE2, NODE3 = "02:cb:01:00:00:01", "02:cb:01:00:00:02", "02:cb:01:00:00:03"
CLIENT1, LB0 = "02:cb:03:00:00:01", "02:cb:04:00:00:01"
VIP = "198.51.100.10"


def fabric_dict(mode="nodeport", preserve=True):
    """Three nodes in two subnets (node1, node3 in az-a; node2 in az-b), a client, lb0."""
    backends = ([{"name": "node1", "ip": "192.168.0.10", "port": 30080},
                 {"name": "node2", "ip": "192.168.1.10", "port": 30080}]
                if mode == "nodeport" else
                [{"name": "web-0", "ip": "192.168.0.100", "port": 8080},
                 {"name": "web-1", "ip": "192.168.1.100", "port": 8080}])
    return {
        "cluster": "t", "mode": mode,
        "switches": [{"name": "vpc0", "dpid": 1, "role": "core"},
                     {"name": "vpc1", "dpid": 2, "role": "subnet", "subnet": "az-a"},
                     {"name": "vpc2", "dpid": 3, "role": "subnet", "subnet": "az-b"}],
        "links": [{"a": "vpc1", "a_port": "vpc1-up", "b": "vpc0", "b_port": "vpc0-az-a"},
                  {"a": "vpc2", "a_port": "vpc2-up", "b": "vpc0", "b_port": "vpc0-az-b"}],
        "subnets": [
            {"name": "az-a", "cidr": "192.168.0.0/24", "gateway": "192.168.0.1",
             "gateway_mac": GW_A, "switch": "vpc1", "kind": "vpc"},
            {"name": "az-b", "cidr": "192.168.1.0/24", "gateway": "192.168.1.1",
             "gateway_mac": GW_B, "switch": "vpc2", "kind": "vpc"},
            {"name": "internet", "cidr": "203.0.113.0/24", "gateway": "203.0.113.1",
             "gateway_mac": GW_NET, "switch": "vpc0", "kind": "internet"},
            {"name": "lb", "cidr": "198.51.100.0/24", "gateway": "198.51.100.1",
             "gateway_mac": GW_LB, "switch": "vpc0", "kind": "lb"}],
        "hosts": [
            {"name": "node1", "kind": "node", "ip": "192.168.0.10", "mac": NODE1,
             "subnet": "az-a", "switch": "vpc1", "port": "vpc1-node1"},
            {"name": "node3", "kind": "node", "ip": "192.168.0.11", "mac": NODE3,
             "subnet": "az-a", "switch": "vpc1", "port": "vpc1-node3"},
            {"name": "node2", "kind": "node", "ip": "192.168.1.10", "mac": NODE2,
             "subnet": "az-b", "switch": "vpc2", "port": "vpc2-node2"},
            {"name": "client1", "kind": "client", "ip": "203.0.113.10", "mac": CLIENT1,
             "subnet": "internet", "switch": "vpc0", "port": "vpc0-client1"},
            {"name": "lb0", "kind": "lb", "ip": "198.51.100.2", "mac": LB0,
             "subnet": "lb", "switch": "vpc0", "port": "vpc0-lb0"}],
        "pod_routes": ([{"pod": "web-0", "ip": "192.168.0.100", "node": "node1"},
                        {"pod": "web-1", "ip": "192.168.1.100", "node": "node2"}]
                       if mode == "container-native" else []),
        "load_balancers": [{
            "name": "web", "vip": VIP, "port": 80, "protocol": "tcp",
            "target_mode": mode, "preserve_client_ip": preserve, "backends": backends,
            "health_check": {"port": None, "path": "/healthz", "interval_s": 1.0,
                             "timeout_s": 0.5, "healthy_threshold": 2,
                             "unhealthy_threshold": 2}}],
        "health_checker": {"host": "lb0", "netns": "/run/netns/cnlb-lb0"},
    }


PORTS = {
    "vpc0": {"vpc0-az-a": 1, "vpc0-az-b": 2, "vpc0-client1": 3, "vpc0-lb0": 4, "vpc0": 0xfffffffe},
    "vpc1": {"vpc1-up": 1, "vpc1-node1": 2, "vpc1-node3": 3},
    "vpc2": {"vpc2-up": 1, "vpc2-node2": 2},
}



def make(mode="nodeport", preserve=True, checks=True, healthy=True):
    """A Vpc and its programmed FakeFabric; healthy: every backend passed its checks."""
    vpc = Vpc(parse_fabric(fabric_dict(mode, preserve)), checks_enabled=checks)
    fab = FakeFabric(vpc, PORTS)
    if checks and healthy:
        for lb in vpc.fabric.load_balancers:
            for ip, port in list(vpc.balancer.backends[lb.name]):
                for _ in range(2):
                    fab.apply(vpc.observe_health(lb.name, ip, port, True, {}, PORTS))
    return vpc, fab


def ip_pkt(eth_src, eth_dst, src, dst, sport=40000, dport=80, ttl=64):
    return {"eth_type": 0x0800, "eth_src": eth_src, "eth_dst": eth_dst, "ipv4_src": src,
            "ipv4_dst": dst, "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport, "ttl": ttl}


def arp_req(sha, spa, tpa):
    return {"eth_type": 0x0806, "eth_src": sha, "eth_dst": "ff:ff:ff:ff:ff:ff", "arp_op": 1,
            "arp_sha": sha, "arp_spa": spa, "arp_tha": "00:00:00:00:00:00", "arp_tpa": tpa}

