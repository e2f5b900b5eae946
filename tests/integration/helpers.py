"""Small helpers shared by the integration tests."""

import json

from testbed.paths import HTTPPROBE


def answers(cluster, host: str, url: str, n: int) -> list:
    """n requests from a host, a new connection each; the pod servers' JSON answers."""
    script = f"for i in $(seq {n}); do curl -s -m 2 {url}; echo; done"
    out = cluster.sh(host, script, timeout=n * 3 + 10).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def node_addresses(cluster, node: str) -> set:
    """Every address a node can SNAT to: its VPC address, cni0's and flannel.1's."""
    n = cluster.plan.node(node)
    import ipaddress
    return {n.ip, n.cni0_ip, str(ipaddress.IPv4Network(n.pod_cidr).network_address)}


VIP = "198.51.100.10"
PROBE = HTTPPROBE


def probe(cluster, n, host="client1"):
    """n requests through the VIP with httpprobe: per-request pod, client seen, SYN-ACK TTL."""
    out = cluster.exec(host, [PROBE, "--url", f"http://{VIP}/", "--requests", str(n)], timeout=120)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return [r for r in rows if not r.get("summary")]


def entry_node(cluster, seen_client):
    """The node a classic-mode request entered through, from the SNAT address the pod saw."""
    return next(n.name for n in cluster.plan.nodes
                if seen_client in node_addresses(cluster, n.name))


def wait_answering(cluster, host: str, url: str, timeout: float = 30.0,
                   in_a_row: int = 10) -> None:
    """Wait until `in_a_row` requests through url in a row get answers again (after a restart:
    one answer shows one path works, not that every node's path does yet)."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(answers(cluster, host, url, in_a_row)) == in_a_row:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {in_a_row} times in a row within {timeout:.0f}s")
