"""What upstream's e2e service jig does (test/e2e/framework/service), on an emulated cluster: build
a cluster from a small topology, ask a service from a pod, a node or a client, read which
endpoints kube-proxy programmed, and upstream's affinity check (test/e2e/network/service.go).

The upstream tests these helpers serve are listed, with how their thresholds were scaled, in
docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from testbed.emulation.cluster import Cluster
from testbed.paths import HTTPPROBE
from testbed.spec.topology import load_topology

# upstream's AffinityConfirmCount: this many answers in a row from one pod mean affinity holds
AFFINITY_CONFIRM_COUNT = 15
# curl exit statuses the tests tell apart: the answer, a refusal (REJECT: ICMP port unreachable
# or a TCP reset), and no answer at all (DROP)
CURL_OK, CURL_REFUSED, CURL_TIMEOUT = 0, 7, 28


@contextlib.contextmanager
def cluster_from(tmp: Path, name: str, text: str, mode: str = "nodeport") -> Iterator[Cluster]:
    """Write a topology into tmp and run a cluster of it; on the way out, assert that nothing
    the cluster made is left behind (the journal's processes, bridges, links, namespaces)."""
    from tests.integration.leftovers import snapshot
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    before = snapshot()
    with Cluster(load_topology(str(path), mode=mode)) as c:
        yield c
    left = snapshot().diff(before)
    assert not left, f"left behind: {left}"


def service(cluster: Cluster, name: str):
    """The plan of a service (its cluster IP, ports, node port, VIP)."""
    return next(s for s in cluster.plan.services if s.name == name)


def node_ip(cluster: Cluster, node: str) -> str:
    return cluster.plan.node(node).ip


def pod_ip(cluster: Cluster, pod: str) -> str:
    return cluster.plan.pod(pod).ip


def answers(cluster: Cluster, host: str, url: str, n: int, timeout_s: float = 2.0) -> list[dict]:
    """n requests from a host, a new connection each; the pod servers' JSON answers (a request
    that got no answer is left out)."""
    script = f"for i in $(seq {n}); do curl -s -m {timeout_s:g} {url}; echo; done"
    out = cluster.sh(host, script, timeout=n * (timeout_s + 1) + 10).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def hostnames(cluster: Cluster, host: str, url: str, n: int) -> list[str]:
    """The pod that answered each of n requests (upstream's /hostname)."""
    return [a["pod"] for a in answers(cluster, host, url, n)]


def curl_status(cluster: Cluster, host: str, url: str, timeout_s: float = 3.0) -> int:
    """curl's exit status for one request: CURL_OK, CURL_REFUSED, CURL_TIMEOUT or another."""
    cmd = f"curl -s -o /dev/null --connect-timeout {timeout_s:g} -m {timeout_s:g} {url}"
    return cluster.sh(host, cmd, timeout=timeout_s + 10).returncode


def wait_for(what: str, check, timeout_s: float, interval_s: float = 0.2):
    """Poll check() until it returns something true; that value. AssertionError naming what
    after timeout_s (upstream's wait.PollImmediate)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g}s (last: {got!r})")
        time.sleep(interval_s)


SEP_RE = re.compile(r'^-A KUBE-SEP-\S+ .*--comment "?default/(?P<svc>[^ ":]+)'
                    r'(?::(?P<port>[^ "]+))?"? .*-j DNAT --to-destination (?P<dest>\S+)$')


def programmed_endpoints(cluster: Cluster, node: str, svc: str, port: str | None = None) -> set:
    """The endpoints (ip:port) kube-proxy programmed on a node for a service (one named port of
    it, if given): what upstream's validateEndpointsPortsOrFail reads from the API, read from
    the node's nat table instead."""
    save = cluster.sh(node, "iptables-save -t nat").stdout
    got = set()
    for line in save.splitlines():
        m = SEP_RE.match(line)
        if m and m["svc"] == svc and (port is None or m["port"] == port):
            got.add(m["dest"])
    return got


def affinity_holds(trace: list[str], count: int = AFFINITY_CONFIRM_COUNT) -> bool:
    """upstream's affinityTracker.checkHostTrace: the last `count` answers came from one pod."""
    last = trace[-count:]
    return len(trace) >= count and len(set(last)) == 1


def check_affinity(cluster: Cluster, host: str, url: str, should_hold: bool,
                   rounds: int = 4) -> list[str]:
    """upstream's checkAffinity: ask AffinityConfirmCount+1 times a round until the trace says
    what is expected, at most `rounds` rounds; the trace (the test asserts on it)."""
    trace: list[str] = []
    for _ in range(rounds):
        trace += hostnames(cluster, host, url, AFFINITY_CONFIRM_COUNT + 1)
        if len(trace) >= AFFINITY_CONFIRM_COUNT and affinity_holds(trace) == should_hold:
            break
    return trace


def udp_answers(cluster: Cluster, host: str, ip: str, port: int, n: int,
                payload: str | None = None) -> list[dict]:
    """n datagrams from a host, a new source port each (upstream's `nc -u` dials); the pod
    servers' JSON answers (a datagram nobody answered within a second is left out). With a
    payload, a few lines of Python send it; else httpprobe sends its own."""
    if payload is None:
        out = cluster.exec(host, [HTTPPROBE, "--url", f"udp://{ip}:{port}", "--requests", str(n),
                                  "--timeout-ms", "1000"], timeout=n * 2 + 10).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [r for r in rows if not r.get("summary") and r.get("pod")]
    out = cluster.exec(host, [sys.executable, "-c", UDP_DIAL, ip, str(port), str(n), payload],
                       timeout=n * 2 + 10).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# one datagram per socket (a new source port each), its answer on a line; silence after 1 s
UDP_DIAL = """
import socket, sys
ip, port, n, payload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(n):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto((payload + "\\n").encode(), (ip, port))
        try:
            print(s.recv(65535).decode(errors="replace").strip(), flush=True)
        except OSError:
            print(flush=True)
"""


# -- services changed on a running cluster (`cnlb service apply | set | delete`) -------------

def apply(cluster: Cluster, text: str) -> dict:
    """Create or update the service a YAML text holds (`name: {type: ..., ...}`), as
    `cnlb service apply FILE` does; what the service now is."""
    from testbed.spec.yamldoc import parse_document
    return cluster.apply_service(parse_document("svc.yaml", text))


def verify_up(cluster: Cluster, hosts: tuple[str, ...], url: str, pods: set[str],
              timeout_s: float) -> None:
    """upstream's verifyServeHostnameServiceUp: from each host (a hostNetwork pod: a node; an
    exec pod), up to 50 requests per expected pod, retried until the pods that answered include
    every expected one; AssertionError naming the missing ones after timeout_s. The requests go
    in batches of 5 per pod and stop once every pod has answered (upstream sends all 50: the
    same verdict, minus the requests after it was known)."""
    batch = 5 * len(pods)
    for host in hosts:
        seen: set[str] = set()

        def every_pod(h: str = host, s: set[str] = seen) -> bool:
            for _ in range(10):   # 10 batches: upstream's 50 requests per pod
                s.update(hostnames(cluster, h, url, batch))
                if s >= pods:
                    return True
            return False
        try:
            wait_for(f"{url} answered by {sorted(pods)} from {host}", every_pod, timeout_s)
        except AssertionError as exc:   # what one request says, for the failure's message
            one = cluster.sh(host, f"curl -sS -m 2 -o /dev/null {url}", timeout=10)
            raise AssertionError(f"{exc}; seen {sorted(seen)}; one more request: curl exit "
                                 f"{one.returncode} {one.stderr.strip()}") from None


def verify_down(cluster: Cluster, host: str, url: str, timeout_s: float) -> None:
    """upstream's verifyServeHostnameServiceDown: a request (connect timeout 2 s) gets no
    answer, within timeout_s."""
    wait_for(f"{url} down from {host}",
             lambda: curl_status(cluster, host, url, timeout_s=2) != CURL_OK, timeout_s)


def endpoints_settle(cluster: Cluster, svc: str, want: set[str], timeout_s: float,
                     port: str | None = None) -> None:
    """upstream's validateEndpointsPortsOrFail, read from every node's rules: the endpoints
    (ip:port) kube-proxy programmed for a service (one named port of it) become `want`."""
    for node in cluster.plan.nodes:
        wait_for(f"{svc}{':' + port if port else ''} endpoints {sorted(want)} on {node.name}",
                 lambda n=node.name: programmed_endpoints(cluster, n, svc, port) == want,
                 timeout_s)


class UdpClient:
    """upstream's conntrack client (`nc -u -p 12345` in a loop, agnhost's UDP dialer): datagrams
    from one source port at `rate` a second, from a host, until stopped; its rows (httpprobe's:
    t_start, pod, local_port, ...) arrive in `rows` as they are answered or time out, so a test
    waits for what it checks (`answered_by`)."""

    def __init__(self, cluster: Cluster, host: str, ip: str, port: int, rate: float = 10):
        import threading
        self.rows: list[dict] = []
        self.proc = cluster.host(host).popen(
            [HTTPPROBE, "--url", f"udp://{ip}:{port}", "--keepalive", "--duration", "600",
             "--rate", f"{rate:g}", "--timeout-ms", "500"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                row = json.loads(line)
                if not row.get("summary"):
                    self.rows.append(row)

    def answered_by(self, pod: str, since: int = 0) -> bool:
        """Some datagram after row `since` was answered by pod."""
        return any(r.get("pod") == pod for r in self.rows[since:])

    def source_ports(self) -> set:
        return {r.get("local_port") for r in self.rows}

    def stop(self) -> None:
        """SIGINT: httpprobe finishes what is in flight and exits (its pid, started here)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)


@contextlib.contextmanager
def udp_client(cluster: Cluster, host: str, ip: str, port: int,
               rate: float = 10) -> Iterator[UdpClient]:
    """A UdpClient for the with-block; stopped at its end whatever happens."""
    client = UdpClient(cluster, host, ip, port, rate)
    try:
        yield client
    finally:
        client.stop()
