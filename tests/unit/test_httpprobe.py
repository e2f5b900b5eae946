"""Tests for workloads/httpprobe.c, the per-request measuring HTTP client.

No namespaces: build/podserver and build/httpprobe (both built by workloads/build.sh) talk
over 127.0.0.1 on free ports. Servers are started and stopped with test_podserver's Server
(killed by pid); the few misbehaving servers (silent, hanging up, full backlog) are Python
sockets in this process, closed by their fixtures. Every probe runs with a timeout.

syn_ack_ttl needs CAP_NET_RAW (a raw socket): with it the loopback SYN-ACK has TTL 64 (no
routed hop); without it the field is null. In udp:// mode it is the answer datagram's TTL,
which needs no privilege (IP_RECVTTL).

HTTPPROBE_BIN=/path/to/binary runs the same tests against another build (e.g. one made with
-fsanitize=address,undefined); PODSERVER_BIN does the same for the server.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_podserver import BUILD_SH, HOST, Server, free_port, free_udp_port

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "build" / "httpprobe"
PODSERVER = ROOT / "build" / "podserver"
TIMEOUT = 10.0
CAP_NET_RAW = 13


def has_cap_net_raw():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    return False


EXPECTED_TTL = 64 if has_cap_net_raw() else None


@pytest.fixture(scope="session")
def binaries():
    """(httpprobe, podserver), built once per session; a compiler warning fails the build."""
    if not (os.environ.get("HTTPPROBE_BIN") and os.environ.get("PODSERVER_BIN")):
        proc = subprocess.run([str(BUILD_SH)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"build failed:\n{proc.stdout}{proc.stderr}"
    probe = Path(os.environ.get("HTTPPROBE_BIN", PROBE))
    server = Path(os.environ.get("PODSERVER_BIN", PODSERVER))
    assert os.access(probe, os.X_OK) and os.access(server, os.X_OK)
    return probe, server


@pytest.fixture
def probe_bin(binaries):
    return binaries[0]


@pytest.fixture
def server(binaries):
    srv = Server(binaries[1])
    yield srv
    srv.stop()


def run_probe(probe_bin, *args):
    """Run httpprobe; return (per-request records, summary record, completed process)."""
    proc = subprocess.run([str(probe_bin), *args], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records and records[-1].get("summary") is True
    return records[:-1], records[-1], proc


def url(port, path="/"):
    return f"http://{HOST}:{port}{path}"


# ---- against podserver ---------------------------------------------------------------------

def test_new_connection_per_request(probe_bin, server):
    lines, summary, _ = run_probe(probe_bin, "--url", url(server.port), "--requests", "20")
    assert len(lines) == 20
    assert summary["requests"] == 20 and summary["errors"] == 0 and summary["late"] == 0
    for i, rec in enumerate(lines):
        assert rec["i"] == i
        assert rec["status"] == 200 and rec["error"] is None
        assert (rec["pod"], rec["node"]) == ("web-0", "node1")
        assert rec["client"] == HOST and rec["server"] == HOST
        assert rec["client_port"] == rec["local_port"]  # no NAT on loopback
        assert rec["connect_ms"] > 0 and rec["total_ms"] >= rec["connect_ms"]
        assert rec["syn_ack_ttl"] == EXPECTED_TTL
    assert len({rec["local_port"] for rec in lines}) == 20  # a new connection each time
    starts = [rec["t_start"] for rec in lines]
    assert starts == sorted(starts) and summary["elapsed_s"] >= starts[-1]


def test_keepalive_reuses_one_connection(probe_bin, server):
    lines, summary, _ = run_probe(probe_bin, "--url", url(server.port, "/ka"), "--requests",
                                  "20", "--keepalive")
    assert len(lines) == 20 and summary["errors"] == 0
    for rec in lines:
        assert rec["status"] == 200 and rec["error"] is None
        assert rec["pod"] == "web-0" and rec["client"] == HOST
        assert rec["total_ms"] > 0
        assert rec["syn_ack_ttl"] == EXPECTED_TTL  # the TTL of the connection's SYN-ACK
    assert len({rec["local_port"] for rec in lines}) == 1
    assert lines[0]["connect_ms"] > 0 and lines[0]["total_ms"] >= lines[0]["connect_ms"]
    assert all(rec["connect_ms"] is None for rec in lines[1:])  # no connect: reused


def test_non_json_answer_still_names_the_pod_from_x_pod(probe_bin, server):
    lines, summary, _ = run_probe(probe_bin, "--url", url(server.port, "/fail"),
                                  "--requests", "2")
    assert [rec["status"] for rec in lines] == [503, 503]
    assert all(rec["pod"] == "web-0" and rec["node"] is None for rec in lines)
    assert summary["errors"] == 0  # an HTTP answer is not a transport error


def test_rate_paces_requests_open_loop(probe_bin, server):
    lines, summary, _ = run_probe(probe_bin, "--url", url(server.port), "--rate", "200",
                                  "--duration", "0.1")
    assert len(lines) == 20 == summary["requests"]  # due at 0, 5, ..., 95 ms
    for i, rec in enumerate(lines):
        assert rec["status"] == 200
        assert rec["t_start"] >= i / 200 - 1e-6  # never early
    assert lines[-1]["t_start"] < 0.1 + 0.05


def test_out_file(probe_bin, server, tmp_path):
    out = tmp_path / "probe.jsonl"
    proc = subprocess.run([str(probe_bin), "--url", url(server.port), "--requests", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.stdout == ""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and records[-1]["requests"] == 3


def test_sigterm_stops_with_a_summary(probe_bin, server):
    proc = subprocess.Popen([str(probe_bin), "--url", url(server.port), "--rate", "100",
                             "--duration", "60"], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # it is running
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert proc.returncode == 0
    summary = json.loads(out.splitlines()[-1])
    assert summary["summary"] is True and 1 <= summary["requests"] < 6000


# ---- errors --------------------------------------------------------------------------------

def test_closed_port_is_refused_and_counted(probe_bin):
    lines, summary, _ = run_probe(probe_bin, "--url", url(free_port()), "--requests", "3")
    assert len(lines) == 3
    for rec in lines:
        assert rec["status"] == 0 and rec["error"] == "refused"
        assert rec["connect_ms"] is None and rec["total_ms"] is None
        assert rec["pod"] is None and rec["syn_ack_ttl"] is None
    assert summary["requests"] == 3 and summary["errors"] == 3


class Misbehaving:
    """A listener on HOST whose connections are handled by HANDLE(conn) in a thread."""

    def __init__(self, handle, backlog=16, accept=True):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = None
        if accept:
            self.thread = threading.Thread(target=self._serve, args=(handle,), daemon=True)
            self.thread.start()

    def _serve(self, handle):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by close()
                return
            self.conns.append(conn)
            handle(conn)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.thread:
            self.thread.join(TIMEOUT)
        for conn in self.conns:
            conn.close()


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk


def test_silent_server_is_a_read_timeout(probe_bin):
    srv = Misbehaving(lambda conn: None)  # accepts, never answers
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", url(srv.port), "--requests", "2",
                                      "--timeout-ms", "100")
    finally:
        srv.close()
    for rec in lines:
        assert rec["status"] == 0 and rec["error"] == "read timeout"
        assert rec["connect_ms"] > 0 and rec["total_ms"] is None
        assert rec["syn_ack_ttl"] == EXPECTED_TTL  # the connection itself was made
    assert summary["errors"] == 2


def test_hang_up_before_answering_is_closed(probe_bin):
    def hang_up(conn):
        read_request(conn)
        conn.shutdown(socket.SHUT_WR)  # FIN without an answer

    srv = Misbehaving(hang_up)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", url(srv.port), "--requests", "2")
    finally:
        srv.close()
    assert [rec["error"] for rec in lines] == ["closed", "closed"]
    assert summary["errors"] == 2


def test_keepalive_reconnects_when_the_server_closed_the_connection(probe_bin):
    body = b'{"pod":"web-9","node":"node2","client":"127.0.0.1","server":"127.0.0.1"}\n'

    def one_answer_then_hang_up(conn):
        read_request(conn)
        # keep-alive by HTTP/1.1 default, yet the server closes right after: the probe must
        # see that before its next request and open a new connection, not report an error
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.shutdown(socket.SHUT_WR)

    srv = Misbehaving(one_answer_then_hang_up)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", url(srv.port), "--requests", "3",
                                      "--keepalive", "--rate", "50")  # 20 ms for the FIN
    finally:
        srv.close()
    assert summary["errors"] == 0
    assert [rec["pod"] for rec in lines] == ["web-9"] * 3
    assert all(rec["connect_ms"] > 0 for rec in lines)
    assert len({rec["local_port"] for rec in lines}) == 3


def test_garbage_answer_is_a_bad_response(probe_bin):
    def garbage(conn):
        read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)

    srv = Misbehaving(garbage)
    try:
        lines, _, _ = run_probe(probe_bin, "--url", url(srv.port), "--requests", "1")
    finally:
        srv.close()
    assert lines[0]["status"] == 0 and lines[0]["error"] == "bad response"


def test_full_accept_queue_is_a_connect_timeout(probe_bin):
    # listen(0) holds one connection in the accept queue; with the queue full the kernel drops
    # further SYNs, so the probe's connect never completes.
    srv = Misbehaving(None, backlog=0, accept=False)
    filler = socket.create_connection((HOST, srv.port), timeout=TIMEOUT)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", url(srv.port), "--requests", "1",
                                      "--timeout-ms", "150")
    finally:
        filler.close()
        srv.close()
    rec = lines[0]
    assert rec["status"] == 0 and rec["error"] == "connect timeout"
    assert rec["connect_ms"] is None and rec["syn_ack_ttl"] is None
    assert summary["errors"] == 1


# ---- UDP -------------------------------------------------------------------------------------

@pytest.fixture
def udp_server(binaries):
    """A podserver with a UDP port too; (server, its UDP port)."""
    udp = free_udp_port()
    srv = Server(binaries[1], extra=["--port", f"{udp}/udp"])
    yield srv, udp
    srv.stop()


def test_udp_one_datagram_per_request_from_a_new_source_port_each(probe_bin, udp_server):
    _, udp = udp_server
    lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{udp}", "--requests", "10")
    assert len(lines) == 10 and summary["errors"] == 0
    for i, rec in enumerate(lines):
        assert rec["i"] == i and rec["status"] == 200 and rec["error"] is None
        assert (rec["pod"], rec["node"], rec["client"], rec["server"]) == (
            "web-0", "node1", HOST, HOST)
        assert rec["connect_ms"] is None and rec["total_ms"] > 0
        assert rec["client_port"] == rec["local_port"]
        assert rec["syn_ack_ttl"] == 64   # the answer's TTL: loopback, no routed hop
    assert len({rec["local_port"] for rec in lines}) == 10   # a conntrack flow each


def test_udp_keepalive_keeps_one_socket_one_source_port(probe_bin, udp_server):
    _, udp = udp_server
    lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{udp}/", "--requests",
                                  "10", "--keepalive", "--rate", "1000")
    assert summary["errors"] == 0 and all(rec["pod"] == "web-0" for rec in lines)
    assert len({rec["local_port"] for rec in lines}) == 1
    assert len({rec["client_port"] for rec in lines}) == 1


def test_udp_to_the_http_port_number_of_a_tcp_only_server_is_refused(probe_bin, server):
    # the same number, but nothing bound for UDP: ICMP port unreachable
    lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{server.port}",
                                  "--requests", "2", "--keepalive")
    assert [rec["error"] for rec in lines] == ["refused", "refused"]
    assert all(rec["status"] == 0 and rec["total_ms"] is None for rec in lines)
    assert summary["errors"] == 2


class SilentUdp:
    """A UDP socket on HOST that reads datagrams and, through ANSWER(data, addr, sock), may
    answer some (in a thread); closed by close()."""

    def __init__(self, answer):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.closing = False
        self.thread = threading.Thread(target=self._serve, args=(answer,), daemon=True)
        self.thread.start()

    def _serve(self, answer):
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if self.closing:   # woken by close()'s shutdown
                return
            answer(data, addr, self.sock)

    def close(self):
        self.closing = True
        try:
            # wakes the thread's recvfrom; Linux does it even though an unconnected UDP
            # socket answers ENOTCONN
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(TIMEOUT)
        self.sock.close()


def test_udp_lost_datagram_is_a_timeout(probe_bin):
    srv = SilentUdp(lambda data, addr, sock: None)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{srv.port}",
                                      "--requests", "2", "--timeout-ms", "100")
    finally:
        srv.close()
    for rec in lines:
        assert rec["status"] == 0 and rec["error"] == "timeout"
        assert rec["total_ms"] is None and rec["connect_ms"] is None and rec["pod"] is None
        assert rec["local_port"] is not None
    assert summary["errors"] == 2


def test_udp_late_answer_on_a_kept_socket_is_not_taken_for_the_next(probe_bin):
    def late_first(data, addr, sock):
        n = data.split()[1].decode()
        if n == "0":
            time.sleep(0.25)   # past the probe's timeout: request 1 is waiting by now
        echo = data.decode().splitlines()[0]
        sock.sendto(json.dumps({"pod": f"answer-{n}", "echo": echo}).encode(), addr)

    srv = SilentUdp(late_first)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{srv.port}",
                                      "--requests", "2", "--timeout-ms", "150", "--keepalive")
    finally:
        srv.close()
    assert [(rec["error"], rec["pod"]) for rec in lines] == [("timeout", None),
                                                             (None, "answer-1")]


def test_udp_answer_that_is_not_json_still_counts_as_an_answer(probe_bin):
    srv = SilentUdp(lambda data, addr, sock: sock.sendto(data, addr))   # an echo server
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{srv.port}",
                                      "--requests", "1")
    finally:
        srv.close()
    assert (lines[0]["status"], lines[0]["error"], lines[0]["pod"]) == (200, None, None)


# ---- command line --------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [],
    ["--requests", "5"],                                        # no --url
    ["--url", "http://127.0.0.1:8080/"],                        # no --requests / --duration
    ["--url", "https://127.0.0.1/", "--requests", "1"],
    ["--url", "http://localhost:8080/", "--requests", "1"],     # no DNS
    ["--url", "http://127.0.0.1:99999/", "--requests", "1"],
    ["--url", "http://127.0.0.1/", "--requests", "0"],
    ["--url", "http://127.0.0.1/", "--requests", "ten"],
    ["--url", "http://127.0.0.1/", "--requests", "1", "--rate", "-3"],
    ["--url", "http://127.0.0.1/", "--duration", "nan"],
    ["--url", "http://127.0.0.1/", "--requests", "1", "--timeout-ms", "0"],
    ["--url", "http://127.0.0.1/", "--requests", "1", "--colour"],
    ["--url", "http://127.0.0.1/", "--requests"],               # flag without a value
    ["--url", "http://127.0.0.1/", "--requests", "1", "extra"],
    ["--url", "udp://127.0.0.1", "--requests", "1"],              # udp needs a port
    ["--url", "udp://127.0.0.1:53/path", "--requests", "1"],      # and has no path
    ["--url", "tcp://127.0.0.1:53", "--requests", "1"],
])
def test_bad_flags_exit_2_with_one_line(probe_bin, args):
    proc = subprocess.run([str(probe_bin), *args], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("httpprobe: ")
    assert "usage: httpprobe --url" in lines[0]


# ---- open loop against a dead backend ------------------------------------------------------
# A request to a black-holed backend is one failed request (a timeout) per request sent there;
# it must not hold up the requests scheduled after it (an open-loop load generator keeps
# several in flight: no coordinated omission). The lateness bound is half the timeout: a probe
# that waited behind a hanging request would be a whole timeout late.

RATE = 100
BLACKHOLE_TIMEOUT_MS = 300


def lateness(lines, rate):
    return max(rec["t_start"] - rec["i"] / rate for rec in lines)


def run_open_loop(probe_bin, port, seconds):
    lines, summary, _ = run_probe(probe_bin, "--url", url(port), "--rate", str(RATE),
                                  "--duration", str(seconds), "--timeout-ms",
                                  str(BLACKHOLE_TIMEOUT_MS))
    assert [rec["i"] for rec in lines] == list(range(len(lines)))   # in request order
    assert len(lines) == summary["requests"] == round(RATE * seconds)
    return lines, summary


def test_open_loop_counts_every_request_to_a_silent_server_as_one_timeout(probe_bin):
    srv = Misbehaving(lambda conn: None)  # accepts, never answers: every request hangs
    try:
        lines, summary = run_open_loop(probe_bin, srv.port, 1.0)
    finally:
        srv.close()
    assert summary["errors"] == len(lines) == RATE
    assert all(rec["error"] == "read timeout" for rec in lines)
    assert lateness(lines, RATE) < BLACKHOLE_TIMEOUT_MS / 2000
    # several were in flight at once: each has its own connection, the ports all different
    assert len({rec["local_port"] for rec in lines}) == RATE


def test_open_loop_counts_a_full_accept_queue_as_connect_timeouts(probe_bin):
    srv = Misbehaving(None, backlog=0, accept=False)   # SYNs dropped: connects never complete
    filler = socket.create_connection((HOST, srv.port), timeout=TIMEOUT)
    try:
        lines, summary = run_open_loop(probe_bin, srv.port, 0.5)
    finally:
        filler.close()
        srv.close()
    assert summary["errors"] == len(lines) == RATE // 2
    assert all(rec["error"] == "connect timeout" for rec in lines)
    assert lateness(lines, RATE) < BLACKHOLE_TIMEOUT_MS / 2000


def test_open_loop_errors_are_exactly_the_requests_a_black_hole_took(probe_bin):
    """Every third connection is black-holed (accepted, never answered), the others answered:
    the probe's errors are the black hole's connections, one each, and the answered ones keep
    to the schedule."""
    body = b'{"pod":"web-1","node":"node1","client":"127.0.0.1","server":"127.0.0.1"}\n'
    taken = []

    def every_third_silent(conn):
        taken.append(len(taken) % 3 == 0)
        if taken[-1]:
            return
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))
        conn.shutdown(socket.SHUT_WR)

    srv = Misbehaving(every_third_silent, backlog=256)
    try:
        lines, summary = run_open_loop(probe_bin, srv.port, 1.5)
    finally:
        srv.close()
    black_holed = sum(taken)
    assert len(taken) == len(lines)                     # every request reached the server
    assert summary["errors"] == black_holed == sum(rec["error"] == "read timeout"
                                                   for rec in lines)
    assert sum(rec["status"] == 200 and rec["pod"] == "web-1" for rec in lines) == (
        len(lines) - black_holed)
    assert lateness(lines, RATE) < BLACKHOLE_TIMEOUT_MS / 2000


def test_open_loop_keepalive_opens_a_connection_per_request_in_flight(probe_bin):
    """With --keepalive a hanging request keeps its connection; the next ones do not wait for it
    but open their own (and reuse them once idle)."""
    body = b'{"pod":"web-2"}\n'
    first = []

    def first_silent(conn):
        first.append(conn)
        if len(first) == 1:
            return          # the first connection never answers
        while True:
            try:
                read_request(conn)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            except OSError:
                return

    def serve(conn):
        threading.Thread(target=first_silent, args=(conn,), daemon=True).start()

    srv = Misbehaving(serve)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", url(srv.port), "--rate", "50",
                                      "--duration", "0.5", "--timeout-ms", "300",
                                      "--keepalive")
    finally:
        srv.close()
    assert [rec["error"] for rec in lines] == ["read timeout"] + [None] * 24
    assert summary["errors"] == 1
    assert lateness(lines, 50) < 0.15
    # the answered ones shared one kept connection, not the hanging one's
    assert len({rec["local_port"] for rec in lines[1:]}) == 1
    assert lines[1]["local_port"] != lines[0]["local_port"]


def test_udp_open_loop_on_a_kept_socket_tells_answers_apart_by_their_echo(probe_bin):
    """One socket, several datagrams in flight: the even ones are answered late (after the next
    request was sent) and the odd ones never; each answer reaches its own request."""
    pending = []

    def answer_evens_late(data, addr, sock):
        n = int(data.split()[1])
        if n % 2:
            return
        pending.append((n, data, addr))
        if len(pending) >= 2 or n >= 8:
            for k, d, a in pending:
                echo = d.decode().splitlines()[0]
                sock.sendto(json.dumps({"pod": f"answer-{k}", "echo": echo}).encode(), a)
            pending.clear()

    srv = SilentUdp(answer_evens_late)
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", f"udp://{HOST}:{srv.port}",
                                      "--requests", "10", "--rate", "100", "--timeout-ms",
                                      "300", "--keepalive")
    finally:
        srv.close()
    got = [(rec["error"], rec["pod"]) for rec in lines]
    assert got == [(None, f"answer-{i}") if i % 2 == 0 else ("timeout", None)
                   for i in range(10)]
    assert len({rec["local_port"] for rec in lines}) == 1 and summary["errors"] == 5
