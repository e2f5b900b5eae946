"""The host is the same before and after a run: its iptables/nftables rules, routes, addresses
and OVS bridges; no address of the emulated networks appears in the root namespace; the
controller and its REST API listen on 127.0.0.1 only."""

import ipaddress
import os
import subprocess

from testbed.emulation.cluster import Cluster
from testbed.paths import REPO
from testbed.spec.topology import load_topology

TALK = os.path.join(REPO, "topologies", "talk.yaml")
EMULATED = [ipaddress.IPv4Network(n) for n in
            ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "203.0.113.0/24", "198.51.100.0/24")]


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout


def host_view():
    return {
        "iptables": sh("iptables-save"),
        "iptables-legacy": sh("iptables-legacy-save"),
        "nft": sh("nft", "list", "ruleset"),
        "routes": sh("ip", "route", "show", "table", "all"),
        "addresses": sorted(line.split()[3] for line in sh("ip", "-o", "-4", "addr").splitlines()),
        "bridges": sh("ovs-vsctl", "list-br"),
        "namespaces": sh("ip", "netns", "list"),
    }


def strip_counters(text):
    import re
    return re.sub(r"\[\d+:\d+\]", "", text)


def test_host_unchanged_and_nothing_emulated_in_root_namespace(no_leftovers):
    before = host_view()
    with Cluster(load_topology(TALK, mode="container-native")) as c:
        during = sh("ip", "-o", "-4", "addr")
        for line in during.splitlines():
            addr = ipaddress.IPv4Interface(line.split()[3]).ip
            assert not any(addr in net for net in EMULATED), line
        routes = sh("ip", "route", "show", "table", "all")
        for net in ("192.168.", "10.244.", "203.0.113.", "198.51.100."):
            assert net not in routes
        listening = sh("ss", "-Hltnp")
        pid = str(c.controller.proc.pid)
        mine = [line for line in listening.splitlines() if f"pid={pid}," in line]
        assert len(mine) >= 2, listening          # OpenFlow and REST
        assert all(line.split()[3].startswith("127.0.0.1:") for line in mine), mine
        assert c.sh("client1", "curl -s -m 3 http://198.51.100.10/").returncode == 0
    after = host_view()
    for key in before:
        b, a = before[key], after[key]
        if key.startswith("iptables"):
            b, a = strip_counters(b), strip_counters(a)
            b = "\n".join(line for line in b.splitlines() if not line.startswith("#"))
            a = "\n".join(line for line in a.splitlines() if not line.startswith("#"))
        assert a == b, key
