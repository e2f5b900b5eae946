"""The plain veth a compare run measures beside every variant: two network namespaces joined by
one veth (no bridge, no Open vSwitch, no iptables rule), the pod server in one and the probe in
the other — the same binaries, request count and warm-up as the `latency` workload. What a
request costs there is the machine's floor; testbed.analysis.overhead sets each variant's
latency against it.

The namespaces are named like the cluster's (`cnlb-` and a dot no host name has, NAMESPACES)
and written in the cluster's journal (kind `netns`) before they exist, as the cluster's own
are, so the cluster's teardown and `cnlb clean` after a crash remove them too; VethPair.stop
removes them as soon as the variant is done. Their addresses are from TEST-NET-1 and exist only
inside the pair: nothing reaches the root namespace or the cluster.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from testbed.emulation.journal import Journal
from testbed.errors import EnvironmentProblem
from testbed.paths import HTTPPROBE, PODSERVER

CLIENT_NS = "cnlb-veth.client"
SERVER_NS = "cnlb-veth.server"
NAMESPACES = (CLIENT_NS, SERVER_NS)
NETNS_DIR = "/run/netns"
CLIENT_IP, SERVER_IP, PREFIX = "192.0.2.1", "192.0.2.2", 30
PORT = 8080
READY_TIMEOUT_S = 30.0

Row = dict[str, Any]


def setup_lines() -> dict[str | None, list[str]]:
    """`ip -batch` lines: the root namespace's (None: the namespaces and the veth, created
    straight into them) and each namespace's (loopback, address, link up)."""
    return {
        None: [f"netns add {ns}" for ns in NAMESPACES]
        + [f"link add eth0 netns {CLIENT_NS} type veth peer name eth0 netns {SERVER_NS}"],
        CLIENT_NS: ["link set lo up", f"addr add {CLIENT_IP}/{PREFIX} dev eth0",
                    "link set eth0 up"],
        SERVER_NS: ["link set lo up", f"addr add {SERVER_IP}/{PREFIX} dev eth0",
                    "link set eth0 up"],
    }


def rows_of(probe_rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    """httpprobe's rows as sample rows (as testbed.experiments.client.request_rows gives for a
    cluster; no pod, node or entry node: the server is not a pod)."""
    out = []
    for r in probe_rows:
        if r.get("summary"):
            continue
        ttl = r.get("syn_ack_ttl")
        out.append({"t": r.get("t_start"), "latency_ms": r.get("total_ms"),
                    "connect_ms": r.get("connect_ms"),
                    "ok": r.get("status") == 200 and r.get("error") is None, "pod": None,
                    "node": None, "entry_node": None, "source_ip": r.get("client"),
                    "hops": 64 - ttl if ttl else None, "error": r.get("error")})
    return out


def _ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    cmd = ["ip", "-n", netns, "-batch", "-"] if netns else ["ip", "-batch", "-"]
    done = subprocess.run(cmd, input="\n".join(lines) + "\n", text=True, capture_output=True,
                          timeout=30)
    if done.returncode:
        raise EnvironmentProblem(f"the veth baseline: {' '.join(cmd)}: {done.stderr.strip()}")


class VethPair:
    """Two namespaces and a veth, with the pod server listening in one of them.

    journal: where each namespace and process is written down before it exists (the
        cluster's; None: nowhere, for a caller that removes them itself)
    """

    def __init__(self, journal: Journal | None = None):
        self.journal = journal
        self.server: subprocess.Popen | None = None
        self.made: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{SERVER_IP}:{PORT}/"

    def start(self) -> VethPair:
        """Make the pair and start the server; on any failure remove what was made."""
        taken = [ns for ns in NAMESPACES if os.path.exists(os.path.join(NETNS_DIR, ns))]
        if taken:
            raise EnvironmentProblem(f"network namespace {taken[0]} exists already (a run that "
                                     f"was killed?) — `cnlb clean`, or `ip netns delete "
                                     f"{taken[0]}` if no cnlb run is using it")
        try:
            lines = setup_lines()
            for ns in NAMESPACES:
                if self.journal:
                    self.journal.record("netns", name=ns)
                self.made.append(ns)
            _ip_batch(lines[None])
            for ns in NAMESPACES:
                _ip_batch(lines[ns], netns=ns)
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        r, w = os.pipe()
        try:
            self.server = subprocess.Popen(
                ["ip", "netns", "exec", SERVER_NS, PODSERVER, "--port", str(PORT), "--pod",
                 "veth", "--node", "veth", "--bind", SERVER_IP, "--ready-fd", str(w)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(w,))
        finally:
            os.close(w)
        try:
            if self.journal:
                self.journal.process(self.server.pid, "veth baseline: pod server")
            if _read_line(r, time.time() + READY_TIMEOUT_S) != b"ready\n":
                raise EnvironmentProblem(f"the veth baseline's pod server did not start "
                                         f"(exit {self.server.poll()})")
        finally:
            os.close(r)

    def exec(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        """Run a command in the client's namespace (output captured)."""
        return subprocess.run(["ip", "netns", "exec", CLIENT_NS, *argv], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def warmup(self, seconds: float) -> None:
        """Discarded requests at 200/s, as the cluster's workloads warm up; none for 0."""
        if seconds:
            self.exec([HTTPPROBE, "--url", self.url, "--duration", f"{seconds:g}", "--rate",
                       "200"], timeout=seconds + 30)

    def probe(self, requests: int) -> list[Row]:
        """`requests` requests, a new connection each, as sample rows."""
        out = self.exec([HTTPPROBE, "--url", self.url, "--requests", str(requests)],
                        timeout=requests * 3 + 30)
        return rows_of([json.loads(line) for line in out.stdout.splitlines()
                        if line.startswith("{")])

    def stop(self) -> None:
        """Stop the server and remove the namespaces (their veth goes with them)."""
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)
        here = [ns for ns in self.made if os.path.exists(os.path.join(NETNS_DIR, ns))]
        if here:
            subprocess.run(["ip", "-force", "-batch", "-"],
                           input="".join(f"netns delete {ns}\n" for ns in here), text=True,
                           capture_output=True, timeout=30)
        self.made = []

    def __enter__(self) -> VethPair:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(fd: int, deadline: float) -> bytes:
    """What the server writes on its ready pipe, up to its first newline (or its exit)."""
    got = b""
    while not got.endswith(b"\n"):
        left = deadline - time.time()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if left <= 0 or not poller.poll(left * 1000):
            raise EnvironmentProblem("the veth baseline's pod server did not say it was ready")
        chunk = os.read(fd, 16)
        if not chunk:
            break
        got += chunk
    return got
