"""`cnlb validate` ok means everything downstream works: a property test.

Valid topologies (the shipped ones and the tests' own) are mutated the way people and attackers
edit files — a field dropped, retyped, duplicated, renamed or moved, a value swapped for a nasty
one — and every mutant must either

- be valid, and then the plan, the fabric config, every node's CNI script and kube-proxy rules
  render, and the plan is buildable (interface names fit the kernel, addresses are unique and in
  their ranges, host and switch names do not collide...: what `cnlb up` would trip over), or
- be refused with InputError, every problem one line naming the file, the line and the field,
  and `cnlb validate` exit 2.

CNLB_HYPOTHESIS_EXAMPLES raises the number of examples for a long local run; a plain loop can
also drive the mutator with random.Random(seed) in place of hypothesis (`mutant(rng)`, then
`outcome(text, tmpdir)`), which finds many distinct failures in one run instead of the first.
"""

from __future__ import annotations

import copy
import glob
import io
import ipaddress
import json
import math
import os
import re
import tempfile
from contextlib import redirect_stderr
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers.config import parse_fabric
from testbed.cli.main import main
from testbed.cloud.fabric import render_fabric
from testbed.errors import InputError
from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.dataplane.iptables.proxier import render_node_rules
from testbed.kubernetes.node import host_fabric, node_setup
from testbed.paths import REPO
from testbed.plan.addresses import CORE_SWITCH, LB_HOST, build_plan
from testbed.spec.model import INTERNET_CIDR, LB_CIDR, Topology
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import parse_document

SEEDS = sorted(glob.glob(os.path.join(REPO, "topologies", "*.yaml"))) + [
    os.path.join(REPO, "tests", "data", "services.yaml")]
MODES = (None, "nodeport", "container-native")
IFNAMSIZ = 15          # usable characters of a Linux interface name
EXAMPLES = int(os.environ.get("CNLB_HYPOTHESIS_EXAMPLES", "200"))
PROBLEM_RE = re.compile(r"^mutant\.yaml:\d+: \S.*: .+ — .+$")

NASTY = [0, -1, 1, 2, 16, 28, 1280, 1500, 5000, 250, 251, 65535, 65536, 30000, 32767, 32768,
         16777215, 99999999, 10**12, 0.5, 1e300, math.nan, math.inf, -math.inf, True, False, None,
         "", " ", "lb0", "vpc0", "vpc1", "vpc2", "vpc9", "client1", "node1", "node2", "web",
         "web-0", "web-1", "az-a", "az-b", "internet", "lb", "default", "node1\n", "a" * 13,
         "x" * 21, "Node1", "127.0.0.0/8", "224.0.0.0/4", "169.254.0.0/16", "0.0.0.0/0",
         "0.0.0.0/8", "10.0.0.0/8", "10.244.0.0/16", "10.96.0.0/12", "192.168.0.0/16",
         "192.168.0.0/24", "192.168.0.0/25", "192.168.0.0/28", "192.168.0.0/30",
         "192.168.0.0/32", "192.168.5.0/24", "100.64.0.0/10", "240.0.0.0/4",
         "255.255.255.255/32", "198.51.100.0/24", "198.51.100.0", "198.51.100.1",
         "198.51.100.2", "198.51.100.10", "198.51.100.250", "198.51.100.251", "198.51.100.255",
         "203.0.113.10", "0ms", "0", "1us", "1ms", "100ms", "10s", "11s", "spread", "Spread",
         "host-gw", "vxlan", "Local", "Cluster", "ClientIP", "ClusterIP", "NodePort",
         "LoadBalancer", "loadbalancer", "container-native", "nodeport", "TCP", "UDP",
         [], {}, [1], ["spread"], {"node1": 1}, {"node1": 1, "node2": 1}, {"az-a": "x"}]

# Plausible values per kind of field: most of them valid, so that mutants get past the
# checks and reach the renderers; the edges of every range are here.
CIDRS = ["10.0.0.0/8", "10.0.0.0/16", "10.1.0.0/16", "10.244.0.0/16", "10.96.0.0/12",
         "172.16.0.0/12", "172.20.0.0/16", "192.168.0.0/16", "192.168.0.0/24", "192.168.1.0/24",
         "192.168.2.0/24", "192.168.0.0/25", "192.168.0.128/25", "192.168.0.0/26",
         "192.168.0.0/30", "100.64.0.0/10", "100.64.0.0/16", "10.244.0.0/28", "10.96.0.0/24",
         "10.96.0.0/27", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
         "0.0.0.0/8", "8.8.0.0/16", "198.51.100.0/24", "203.0.113.0/24"]
PORTS = [1, 80, 8080, 8472, 30000, 30080, 30081, 32767, 32768, 65535, 65536, 0, -1]
COUNTS = [0, 1, 2, 3, 4, 17, 29, 54, 55, 64, 250, 251, 1000, 4999, 5000, 5001]
NAMES = ["node1", "node2", "node3", "node20", "node21", "web", "web-0", "web-1", "web-7",
         "api", "client1", "client2", "lb0", "vpc0", "vpc1", "vpc7", "lb", "internet",
         "default", "az-a", "az-b", "az-z", "node1\n", "a" * 12, "a" * 13]
DURATIONS = ["0ms", "1us", "9ms", "10ms", "99ms", "100ms", "250ms", "300ms", "499ms", "500ms",
             "1s", "2s", "10s", "11s", 0, 5, 100, 1000, math.nan]
ADDRESSES = ["198.51.100.0", "198.51.100.1", "198.51.100.2", "198.51.100.9", "198.51.100.10",
             "198.51.100.11", "198.51.100.249", "198.51.100.250", "198.51.100.251",
             "198.51.100.255", "203.0.113.10", "192.168.0.10", "10.96.0.10"]
POOLS = {
    "name": NAMES, "cidr": CIDRS, "subnet": CIDRS, "podCIDR": CIDRS, "serviceCIDR": CIDRS,
    "maxPodsPerNode": COUNTS, "nodePrefix": [15, 16, 20, 24, 25, 26, 27, 28, 29],
    "overlay": ["vxlan", "host-gw", "Host-gw", "flannel"], "vxlanPort": PORTS,
    "vni": [0, 1, 4096, 9999999, 10000000, 16777215, 16777216],
    "mtu": [1279, 1280, 1450, 1500, 9000],
    "nodes": [{}, {"subnet": "az-a"}, {"subnet": "az-b"}, None, "az-a"],
    "replicas": COUNTS, "port": PORTS, "targetPort": PORTS, "nodePort": PORTS,
    "healthCheckNodePort": PORTS,
    "placement": ["spread", "Spread", "spred", ["node1"], {}, {"node1": 1},
                  {"node1": 2, "node2": 1}, {"node1": 0}, {"node9": 1}, None],
    "deployments": [{}, {"replicas": 2}, {"replicas": 5000, "placement": "spread"}, None],
    "type": ["ClusterIP", "NodePort", "LoadBalancer", "loadbalancer", "ExternalName"],
    "selector": ["web", "api", "nothing", ""],
    "externalTrafficPolicy": ["Cluster", "Local", "local"],
    "sessionAffinity": ["None", "ClientIP", "clientip"],
    "sessionAffinityTimeout": [0, 1, 86400, 86401],
    "loadBalancerIP": ADDRESSES, "vip": ADDRESSES, "protocol": ["TCP", "UDP", "tcp", "SCTP"],
    "ports": [[{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "UDP"}],
              [{"port": 53, "protocol": "UDP"}], [{"port": 80}, {"port": 81}], [], "80",
              [{"name": "a", "port": 80, "nodePort": 30080},
               {"name": "b", "port": 80, "protocol": "UDP", "nodePort": 30080}],
              [{"name": "a", "port": 80}, {"name": "a", "port": 80}], [80], [None]],
    "internalTrafficPolicy": ["Cluster", "Local", "local"],
    "publishNotReadyAddresses": [True, False, "yes"], "address": ["ip", "hostname", "dns"],
    "kubernetes": [{}, None, {"timing": "instant"}, [], "instant"],
    "timing": ["realistic", "instant", "fast"],
    "periodSeconds": [0, 0.1, 1, 10, 3600, 3601], "initialDelaySeconds": [0, 5, -1],
    "failureThreshold": [0, 1, 3, 101], "successThreshold": [0, 1, 100],
    "terminationGracePeriodSeconds": [0, 30, 3601], "preStopSeconds": [0, 10, 31, 3600],
    "minSyncPeriod": ["0", "0s", "1s", "10m", "11m", 1], "endpointUpdatesBatchPeriod": DURATIONS,
    "nodeMonitorGracePeriod": ["40s", "50s", "1h", "61m", "5"],
    "notReadyTolerationSeconds": [0, 300, 86401], "registrationDelay": ["0s", "10s", "2h"],
    "deregistrationLag": ["0s", "5s"], "deregistrationDelay": ["0s", "300s", "3600s", "3601s"],
    "services": [{}, {"type": "ClusterIP"}, {"type": "LoadBalancer", "selector": "web"},
                 {"type": "NodePort", "selector": "web", "nodePort": 30080}, None],
    "targets": ["nodeport", "container-native", "container", "ip"],
    "preserveClientIP": [True, False, "yes"], "mode": ["nodeport", "container-native"],
    "interval": DURATIONS, "timeout": DURATIONS,
    "healthyThreshold": [0, 1, 10, 11], "unhealthyThreshold": [0, 1, 10, 11],
    "clients": [{}, None, {"x": 1}], "bw": [0, 0.1, 1, 1000, 100000, 100001, math.nan, math.inf],
    "delay": DURATIONS, "loss": [0, 0.5, 100, 101, math.nan],
}

# Values that are valid on their own, for edits that keep a file valid (most of the time), so
# that mutants reach the renderers with both modes, host-gw, Local services, big deployments...
VALID = {
    "cidr": ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12"], "subnet": ["192.168.7.0/24"],
    "podCIDR": ["10.244.0.0/16", "100.64.0.0/10", "172.20.0.0/16", "10.244.0.0/20"],
    "serviceCIDR": ["10.96.0.0/12", "10.96.0.0/24", "172.31.0.0/16", "100.127.0.0/16"],
    "nodePrefix": [16, 20, 24, 26, 28], "overlay": ["vxlan", "host-gw"],
    "vxlanPort": [1, 4789, 65535], "vni": [1, 4096, 9999999], "mtu": [1280, 1500],
    "maxPodsPerNode": [1, 17, 250], "replicas": [0, 1, 2, 17, 54, 200, 1000, 3000],
    "placement": ["spread"], "port": [1, 80, 8080, 65535],
    "nodes": [{}, {"subnet": "az-a"}],
    "deployments": [{"replicas": 2}, {}, {"replicas": 1000, "placement": "spread"}],
    "type": ["ClusterIP", "NodePort", "LoadBalancer"],
    "externalTrafficPolicy": ["Cluster", "Local"],
    "healthCheckNodePort": [30090, 32767], "sessionAffinity": ["None", "ClientIP"],
    "sessionAffinityTimeout": [1, 86400],
    "protocol": ["TCP", "UDP"], "internalTrafficPolicy": ["Cluster", "Local"],
    "publishNotReadyAddresses": [True, False], "address": ["ip", "hostname"],
    "ports": [[{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "UDP"}],
              [{"port": 53, "protocol": "UDP"}],
              [{"name": "t", "port": 53, "protocol": "TCP", "targetPort": 5353},
               {"name": "u", "port": 53, "protocol": "UDP", "targetPort": 5353}]],
    "timing": ["realistic", "instant"], "periodSeconds": [0.1, 10],
    "failureThreshold": [1, 3], "terminationGracePeriodSeconds": [0, 30],
    "minSyncPeriod": ["0s", "1s"], "nodeMonitorGracePeriod": ["40s", "50s"],
    "deregistrationDelay": ["0s", "300s"],
    "loadBalancerIP": ["198.51.100.10", "198.51.100.20", "198.51.100.250"],
    "services": [{"selector": "web", "type": "NodePort"}, {"selector": "web", "type": "ClusterIP"},
                 {"selector": "web"}],
    "vip": ["198.51.100.10", "198.51.100.200", "198.51.100.250"],
    "targets": ["nodeport", "container-native"], "preserveClientIP": [True, False],
    "interval": ["100ms", "500ms", "5s", "10s"], "timeout": ["10ms", "50ms", "99ms"],
    "healthyThreshold": [1, 10], "unhealthyThreshold": [1, 10], "clients": [{}],
    "bw": [0.1, 1000, 100000], "delay": ["0ms", "1us", "10s"], "loss": [0, 0.001, 100],
}
VALID_NAMES = ["node3", "node30", "web-x", "web-01", "c0", "s1", "h1", "vpc", "lb", "lb1",
               "eth0", "lo", "client9", "az-q"]

# Fields the mutator may set even where the file does not have them: "*" is an existing name,
# "+" a new one; the value comes from POOLS by the field's (or section's) name.
FIELDS = [("name",), ("mode",), ("vpc", "cidr"), ("vpc", "maxPodsPerNode"), ("vpc", "subnets", "*"),
          ("vpc", "subnets", "+"), *[("cni", k) for k in ("overlay", "podCIDR", "nodePrefix",
                                                        "serviceCIDR", "vxlanPort", "vni", "mtu")],
          ("nodes", "*", "subnet"), ("nodes", "*"), ("nodes", "+"),
          ("deployments", "*", "replicas"), ("deployments", "*", "port"),
          ("deployments", "*", "placement"), ("deployments", "*", "placement", "*"),
          ("deployments", "+"),
          *[("services", "*", k) for k in ("type", "selector", "port", "targetPort", "nodePort",
                                           "externalTrafficPolicy", "sessionAffinity",
                                           "sessionAffinityTimeout", "healthCheckNodePort",
                                           "loadBalancerIP", "protocol", "ports",
                                           "internalTrafficPolicy", "publishNotReadyAddresses")],
          ("services", "+"),
          *[("loadBalancer", k) for k in ("vip", "targets", "preserveClientIP", "mode",
                                          "address")],
          ("kubernetes",), ("kubernetes", "timing"),
          *[("kubernetes", k) for k in ("terminationGracePeriodSeconds", "preStopSeconds",
                                        "endpointUpdatesBatchPeriod", "nodeMonitorGracePeriod",
                                        "notReadyTolerationSeconds")],
          *[("kubernetes", "readinessProbe", k) for k in ("periodSeconds", "initialDelaySeconds",
                                                          "failureThreshold", "successThreshold")],
          ("kubernetes", "kubeProxy", "minSyncPeriod"),
          *[("kubernetes", "loadBalancer", k) for k in ("registrationDelay", "deregistrationLag",
                                                        "deregistrationDelay")],
          *[("loadBalancer", "healthCheck", k) for k in ("interval", "timeout",
                                                         "healthyThreshold", "unhealthyThreshold")],
          ("clients", "+"), ("clients", "*"), *[("links", k) for k in ("bw", "delay", "loss")]]
NEW_NAMES = ["node3", "node9", "web-1", "web-0", "lb0", "vpc0", "vpc1", "vpc4", "client1",
             "client2", "internet", "lb", "default", "az-z", "api", "mode", "node1\n", "Web"]


def _seed(path: str) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


SEED_TREES = {os.path.basename(p): _seed(p) for p in SEEDS}


# -- the mutator ----------------------------------------------------------------------------

def _paths(tree, path=()):
    """Every field path of a tree (mappings and lists), the root excluded."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield path + (i,)
            yield from _paths(v, path + (i,))


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _retype(value, which: int):
    """The value as another YAML type: int, str, list, mapping, bool, null, nan."""
    if which == 0:
        if isinstance(value, str):
            digits = re.sub(r"\D", "", value)
            return int(digits[:9]) if digits else len(value)
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 1
    if which == 1:
        return str(value)
    if which == 2:
        return [value]
    if which == 3:
        return {str(value): value}
    if which == 4:
        return not bool(value)
    if which == 5:
        return None
    return math.nan


def _resolve(rng, tree, template):
    """A concrete path for a FIELDS template: '*' is an existing key, '+' a new name."""
    path, node = (), tree
    for part in template:
        if part in ("*", "+"):
            if not isinstance(node, dict) or (part == "*" and not node):
                return None
            part = rng.choice(sorted(node, key=str) if part == "*" else NEW_NAMES)
        path += (part,)
        node = node.get(part) if isinstance(node, dict) else None
    return path


def _set(tree, path, value) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node, dict):
            return
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(node, dict):
        node[path[-1]] = value


class Drawer:
    """Hypothesis's draws behind random.Random's names, so a plain seeded loop can drive the
    same mutator for a long local search (see the module docstring)."""

    def __init__(self, data):
        self.data = data

    def choice(self, seq):
        return self.data.draw(st.sampled_from(seq))

    def randint(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))


def tweak(rng, tree) -> None:
    """One edit that keeps each value valid on its own (combinations may still be wrong)."""
    template = rng.choice([f for f in FIELDS if any(p in VALID for p in f)])
    path, node = (), tree
    for part in template:
        if part in ("*", "+"):
            if not isinstance(node, dict) or (part == "*" and not node):
                return
            part = rng.choice(sorted(node, key=str) if part == "*" else VALID_NAMES)
        path += (part,)
        node = node.get(part) if isinstance(node, dict) else None
    key = next(p for p in reversed(template) if p in VALID)
    _set(tree, path, copy.deepcopy(rng.choice(VALID[key])))


def mutate(rng, tree) -> None:
    """One edit, in place. rng: random.Random or a Drawer."""
    action = rng.choice(["drop", "retype", "duplicate", "rename", "move", "nasty"] + ["field"] * 6)
    if action == "field":
        template = rng.choice(FIELDS)
        path = _resolve(rng, tree, template)
        if path:
            named = [p for p in reversed(template) if p in POOLS]
            pool = POOLS[named[0]] if named and rng.randint(0, 3) else NASTY
            _set(tree, path, copy.deepcopy(rng.choice(pool)))
        return
    paths = list(_paths(tree))
    if not paths:
        return
    path = rng.choice(paths)
    parent, key = _get(tree, path[:-1]), path[-1]
    if action == "drop":
        del parent[key]
    elif action == "retype":
        parent[key] = _retype(parent[key], rng.randint(0, 6))
    elif action == "nasty":
        parent[key] = copy.deepcopy(rng.choice(NASTY))
    elif action == "duplicate" and isinstance(parent, dict):
        parent[rng.choice(NEW_NAMES)] = copy.deepcopy(parent[key])
    elif action == "duplicate":
        parent.append(copy.deepcopy(parent[key]))
    elif action == "rename" and isinstance(parent, dict):
        new = rng.choice(NEW_NAMES + [str(key).upper(), str(key) + "s", str(key)[:-1]])
        parent[new] = parent.pop(key)
    elif action == "move":
        value = parent.pop(key)
        targets = [p for p in _paths(tree) if isinstance(_get(tree, p), dict)] + [()]
        dest = rng.choice(targets)
        _get(tree, dest)[key if isinstance(key, str) else "moved"] = value


# -- what "everything downstream works" means -----------------------------------------------

def _net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def check_buildable(topo: Topology) -> None:
    """Render everything `cnlb render` and `cnlb up` render, and check what the kernel, Mininet
    and the controller would refuse: names, addresses, ports."""
    plan = build_plan(topo)
    plan.to_dict()
    fabric = render_fabric(plan, topo.load_balancer.health_check, lb_netns="/run/netns/cnlb-lb0")
    parse_fabric(json.loads(json.dumps(fabric)))   # what the controller reads at start
    hc = fabric["load_balancers"][0]["health_check"] if fabric["load_balancers"] else None
    if hc:
        assert 0 < hc["timeout_s"] < hc["interval_s"], hc
    for node in plan.nodes:
        script = node_setup(plan, node, offloads_off=True, links=topo.links)
        assert all("nan" not in line and "inf" not in line for line in script), script
        render_node_rules(plan, node.name)
    for att in plan.attachments:
        host_fabric(att, True, topo.links)
    for pod in plan.pods:
        plugin_for(plan).setup_pod(plan, pod)

    # names: Mininet keeps hosts and switches in one namespace of names
    hosts = [a.host for a in plan.attachments] + [p.name for p in plan.pods]
    names = hosts + [s.name for s in plan.switches]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert LB_HOST in hosts and CORE_SWITCH in names
    assert all(re.fullmatch(r"[a-z0-9-]+", n) for n in names), names
    ifnames = [a.port for a in plan.attachments] + [p.veth for p in plan.pods]
    ifnames += [p for s in plan.switches if s.role == "subnet" for p in (s.uplink, s.core_port)]
    ifnames += [f"flannel.{plan.vxlan_vni}"]
    assert all(len(n) <= IFNAMSIZ for n in ifnames), [n for n in ifnames if len(n) > IFNAMSIZ]
    assert len(ifnames) == len(set(ifnames))
    for node in plan.nodes:
        veths = [p.veth for p in plan.pods_on(node.name)]
        assert len(veths) == len(set(veths))
    assert len({g.subnet for g in plan.gateways}) == len(plan.gateways)

    # addresses: unique, inside their networks, never a network, broadcast or gateway address
    ips = ([a.ip for a in plan.attachments] + [p.ip for p in plan.pods]
           + [g.ip for g in plan.gateways])
    assert len(ips) == len(set(ips)), sorted(i for i in ips if ips.count(i) > 1)
    macs = [a.mac for a in plan.attachments] + [p.mac for p in plan.pods] + \
        [p.veth_mac for p in plan.pods] + [g.mac for g in plan.gateways]
    assert len(macs) == len(set(macs))
    gateways = {g.subnet: g for g in plan.gateways}
    for att in plan.attachments:
        net = _net(gateways[att.subnet].cidr)
        ip = ipaddress.IPv4Address(att.ip)
        assert ip in net and ip not in (net.network_address, net.broadcast_address), att
        assert att.gateway == gateways[att.subnet].ip and att.prefixlen == net.prefixlen
    for pod in plan.pods:
        ip = ipaddress.IPv4Address(pod.ip)
        net = _net(plan.node(pod.node).pod_cidr) if plan.mode == "nodeport" else \
            _net(gateways[plan.node(pod.node).subnet].cidr)
        assert ip in net and ip not in (net.network_address, net.broadcast_address), pod
        assert 1 <= pod.port <= 65535
    for node in plan.nodes:
        assert _net(node.pod_cidr).subnet_of(_net(plan.pod_cidr))
    vpc = topo.vpc.cidr
    for net in (_net(plan.pod_cidr), _net(plan.service_cidr), vpc):
        assert not net.overlaps(INTERNET_CIDR) and not net.overlaps(LB_CIDR)
        assert not net.is_multicast and not net.is_loopback and not net.is_link_local
        assert not net.is_reserved and not net.is_unspecified
    assert not _net(plan.pod_cidr).overlaps(vpc) and not _net(plan.service_cidr).overlaps(vpc)
    if plan.overlay == "host-gw":
        assert len({n.subnet for n in plan.nodes}) <= 1

    # services: ClusterIPs in the service range, VIPs in the LB range and not the LB's own
    used_vips = set()
    service_net = _net(plan.service_cidr)
    for svc in plan.services:
        ip = ipaddress.IPv4Address(svc.cluster_ip)
        assert ip in service_net and ip not in (service_net.network_address,
                                                service_net.broadcast_address)
        if svc.vip:
            vip = ipaddress.IPv4Address(svc.vip)
            assert vip in LB_CIDR and int(vip) - int(LB_CIDR.network_address) in range(10, 251), svc
            assert svc.vip not in used_vips
            used_vips.add(svc.vip)
        if svc.health_check_node_port:
            assert svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local"
    check_service_ports(plan)
    links = topo.links
    for value in (links.bw or 1.0, links.delay_ms, links.loss_pct):
        assert math.isfinite(value)


def check_service_ports(plan) -> None:
    """Node ports: each belongs to one service; within it, one per protocol (TCP and UDP of one
    service may share one, as upstream's allocator lets them); health check ports alone. Port
    names unique; the LB has one listener per port."""
    owner: dict[int, str] = {}
    for svc in plan.services:
        pairs = [(p.node_port, p.protocol) for p in svc.all_ports if p.node_port]
        assert len(pairs) == len(set(pairs)), svc
        for port in {p for p, _ in pairs} | {svc.health_check_node_port or 0} - {0}:
            assert 30000 <= port <= 32767 and owner.setdefault(port, svc.name) == svc.name
        assert svc.health_check_node_port not in {p for p, _ in pairs}
        assert svc.all_ports[0].port == svc.port and svc.all_ports[0].protocol == svc.protocol
        names = [p.name for p in svc.all_ports]
        assert len(names) == len(set(names)) and (len(names) == 1 or all(names))
    for lb in plan.load_balancers:
        svc = next(s for s in plan.services if s.name == lb.service)
        assert len(lb.listeners) == len(svc.all_ports) and lb.port == lb.listeners[0].port
        assert all(1 <= listener.backend_port <= 65535 for listener in lb.listeners)


def outcome(text: str, tmpdir: str) -> str:
    """'valid' or 'invalid' for a mutant's text (in any mode); fails the test on anything else:
    a crash, an accepted file that does not render or build, a problem that is not one line."""
    verdicts = {}
    for mode in MODES:
        try:
            topo = parse_topology(parse_document("mutant.yaml", text), mode=mode)
        except InputError as exc:
            assert exc.problems
            for problem in exc.problems:
                line = str(problem)
                assert PROBLEM_RE.match(line), line
                # a field, except for YAML that does not parse (it has a line, and no fields)
                assert problem.path or problem.what.startswith("YAML"), line
            verdicts[mode] = len(exc.problems)
            continue
        check_buildable(topo)
        verdicts[mode] = 0
    bad = [m for m, n in verdicts.items() if n]
    if bad:   # the command line says the same, exit 2, one line per problem
        with open(os.path.join(tmpdir, "mutant.yaml"), "w") as fh:
            fh.write(text)
        err = io.StringIO()
        cwd = os.getcwd()
        os.chdir(tmpdir)
        try:
            with mock.patch("testbed.cli.commands._netem", return_value=None), redirect_stderr(err):
                status = main(["validate", "mutant.yaml"] + (["--mode", bad[0]] if bad[0] else []))
        finally:
            os.chdir(cwd)
        assert status == 2
        assert len(err.getvalue().splitlines()) == verdicts[bad[0]], err.getvalue()
    return "invalid" if bad else "valid"


def mutant(rng) -> str:
    """A seed file with a few valid edits and up to two wild ones, as YAML text; sometimes a
    line of the text is duplicated (a key given twice), dropped or re-indented as well."""
    tree = copy.deepcopy(SEED_TREES[rng.choice(sorted(SEED_TREES))])
    for _ in range(rng.randint(0, 4)):
        tweak(rng, tree)
    for _ in range(rng.randint(0, 2)):
        mutate(rng, tree)
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    edit = rng.randint(0, 11)
    if edit < 3:
        lines = text.splitlines()
        i = rng.randint(0, len(lines) - 1)
        if edit == 0:
            lines.insert(i, lines[i])
        elif edit == 1:
            del lines[i]
        else:
            lines[i] = "  " + lines[i]
        text = "\n".join(lines) + "\n"
    return text


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutants_are_valid_and_buildable_or_refused_in_one_line_each(data):
    rng = Drawer(data)
    text = mutant(rng)
    with tempfile.TemporaryDirectory() as tmpdir:
        outcome(text, tmpdir)


@pytest.mark.parametrize("seed", sorted(SEED_TREES))
def test_seeds_are_valid_and_buildable(seed, tmp_path):
    text = yaml.safe_dump(SEED_TREES[seed], sort_keys=False)
    assert outcome(text, str(tmp_path)) == "valid"
