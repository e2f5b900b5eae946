"""Tests for workloads/podserver.c, the pod's HTTP server.

No root needed: the server is built with workloads/build.sh into build/ and run on 127.0.0.1
on a free port. Each test gets its own server (start-up takes about a millisecond), so the
request counter and the /fail state start fresh. Every server started here is killed by its
pid in the fixture's finalizer.

PODSERVER_BIN=/path/to/binary runs the same tests against another build (e.g. one made with
-fsanitize=address,undefined) instead of building build/podserver.
"""

import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = ROOT / "workloads" / "build.sh"
BINARY = ROOT / "build" / "podserver"
HOST = "127.0.0.1"
TIMEOUT = 5.0


@pytest.fixture(scope="session")
def podserver_bin():
    """Build the server once per session; a compiler warning fails the build (-Werror)."""
    if os.environ.get("PODSERVER_BIN"):
        return Path(os.environ["PODSERVER_BIN"])
    proc = subprocess.run([str(BUILD_SH)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout}{proc.stderr}"
    assert os.access(BINARY, os.X_OK)
    return BINARY


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def udp_ask(port, payload=b"hello\n", timeout=TIMEOUT):
    """One datagram to HOST:port from a fresh socket; (answer's JSON, our source port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((HOST, port))
        s.send(payload)
        return json.loads(s.recv(4096)), s.getsockname()[1]


def wait_for(check, what):
    """Poll check() until it is true (a signal is handled asynchronously)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"not within {TIMEOUT} s: {what}")


def wait_ready(read_fd, proc):
    """Wait for "ready\\n" on the --ready-fd pipe; return False if the server exited first."""
    deadline = time.monotonic() + TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], 0.1)
        if ready:
            chunk = os.read(read_fd, 64)
            if not chunk:  # the server closed its end: ready was written, or it died
                break
            data += chunk
        elif proc.poll() is not None:
            break
    return data == b"ready\n"


class Server:
    """One running podserver.

    proc: the subprocess (stdout and stderr captured)
    port: the TCP port it listens on (on HOST)
    """

    def __init__(self, binary, pod="web-0", node="node1", extra=()):
        for _ in range(3):  # the free port can be taken between free_port() and bind()
            self.port = free_port()
            read_fd, write_fd = os.pipe()
            args = [str(binary), "--port", str(self.port), "--pod", pod, "--node", node,
                    "--bind", HOST, "--ready-fd", str(write_fd), *extra]
            self.proc = subprocess.Popen(args, pass_fds=(write_fd,), stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
            os.close(write_fd)
            try:
                if wait_ready(read_fd, self.proc):
                    return
            finally:
                os.close(read_fd)
            self.stop()
        raise RuntimeError(f"podserver did not start: {self.proc.stderr.read()!r}")

    def stop(self):
        """Kill this server (by its pid) and reap it; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def connect(self):
        return Conn(socket.create_connection((HOST, self.port), timeout=TIMEOUT))


@pytest.fixture
def server(podserver_bin):
    srv = Server(podserver_bin)
    yield srv
    srv.stop()


class Conn:
    """A client socket that reads whole HTTP responses (by Content-Length)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def response(self, head=False):
        """Return (status, headers with lower-case names, body bytes)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def get(self, path="/", extra=""):
        self.send(f"GET {path} HTTP/1.1\r\nHost: pod\r\n{extra}\r\n".encode())
        return self.response()

    def at_eof(self):
        """True when the server has closed the connection (and sent nothing more)."""
        return self.buf == b"" and self.sock.recv(65536) == b""


def get_json(conn, path="/"):
    status, headers, body = conn.get(path)
    assert status == 200
    return json.loads(body)


def get_json_from(conn):
    """Read the next response (already requested) and parse its JSON body."""
    status, _, body = conn.response()
    assert status == 200
    return json.loads(body)


# ---- the answer ----------------------------------------------------------------------------

def test_json_answer_says_who_answered_and_whom_it_saw(server):
    conn = server.connect()
    status, headers, body = conn.get("/")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-pod"] == "web-0"
    assert body.endswith(b"\n") and body.count(b"\n") == 1  # one line
    doc = json.loads(body)
    assert doc == {
        "pod": "web-0",
        "node": "node1",
        "client": "127.0.0.1",
        "client_port": conn.sock.getsockname()[1],
        "server": "127.0.0.1",
        "server_port": server.port,
        "requests": 1,
    }
    conn.close()


def test_any_other_path_and_query_get_the_json_answer(server):
    conn = server.connect()
    assert get_json(conn, "/some/path?x=1")["pod"] == "web-0"
    assert get_json(conn, "http://pod/abs-form")["requests"] == 2
    conn.close()


def test_head_sends_headers_only(server):
    conn = server.connect()
    conn.send(b"HEAD / HTTP/1.1\r\n\r\n")
    status, headers, body = conn.response(head=True)
    assert status == 200 and int(headers["content-length"]) > 0
    assert get_json(conn)["requests"] == 2  # nothing stray was left on the wire
    conn.close()


def test_healthz(server):
    conn = server.connect()
    status, headers, body = conn.get("/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["x-pod"] == "web-0"
    assert get_json(conn)["requests"] == 1  # health checks are not counted
    conn.close()


# ---- connections ---------------------------------------------------------------------------

def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = server.connect()
    first = get_json(conn)
    second = get_json(conn)
    assert second["client_port"] == first["client_port"]
    assert second["requests"] == first["requests"] + 1
    conn.close()


def test_pipelined_requests_in_one_send_get_two_answers_in_order(server):
    conn = server.connect()
    conn.send(b"GET /a HTTP/1.1\r\nHost: pod\r\n\r\nGET /healthz HTTP/1.1\r\nHost: pod\r\n\r\n"
              b"GET /b HTTP/1.1\r\nHost: pod\r\n\r\n")
    status1, _, body1 = conn.response()
    status2, _, body2 = conn.response()
    status3, _, body3 = conn.response()
    assert (status1, status2, status3) == (200, 200, 200)
    assert body2 == b"ok\n"
    assert json.loads(body3)["requests"] == json.loads(body1)["requests"] + 1
    conn.close()


def test_many_pipelined_requests_survive_output_backpressure(server):
    conn = server.connect()
    n = 200  # far more answers than one connection's output buffer holds
    conn.send(b"GET / HTTP/1.1\r\n\r\n" * n)
    counts = [json.loads(conn.response()[2])["requests"] for _ in range(n)]
    assert counts == list(range(1, n + 1))
    conn.close()


def test_request_split_across_sends_is_buffered(server):
    conn = server.connect()
    for piece in (b"GET / HT", b"TP/1.1\r\nHo", b"st: pod\r\n", b"\r\n"):
        conn.send(piece)
        time.sleep(0.02)  # let each piece arrive as its own read
    status, _, body = conn.response()
    assert status == 200 and json.loads(body)["requests"] == 1
    conn.close()


def test_connection_close_is_honoured(server):
    conn = server.connect()
    status, headers, _ = conn.get("/", extra="Connection: close\r\n")
    assert status == 200
    assert headers["connection"].lower() == "close"
    assert conn.at_eof()
    conn.close()


def test_http10_closes_unless_keep_alive_asked(server):
    conn = server.connect()
    conn.send(b"GET / HTTP/1.0\r\n\r\n")
    status, headers, _ = conn.response()
    assert status == 200 and headers["connection"].lower() == "close"
    assert conn.at_eof()
    conn.close()

    conn = server.connect()
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = conn.response()
    assert headers["connection"].lower() == "keep-alive"
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert conn.response()[0] == 200
    conn.close()


def test_request_body_is_skipped_so_the_next_request_parses(server):
    conn = server.connect()
    conn.send(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n")
    status, headers, _ = conn.response()
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert get_json_from(conn)["requests"] == 1
    conn.close()



def test_head_larger_than_8k_gets_431_and_close(server):
    conn = server.connect()
    conn.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    status, headers, _ = conn.response()
    assert status == 431 and headers["connection"].lower() == "close"
    assert conn.at_eof()
    conn.close()


def test_garbage_gets_400_and_close(server):
    conn = server.connect()
    conn.send(b"this is not http\r\n\r\n")
    status, _, _ = conn.response()
    assert status == 400
    assert conn.at_eof()
    conn.close()


# ---- failure emulation ---------------------------------------------------------------------

def test_fail_makes_everything_503_until_recover(server):
    conn = server.connect()
    assert conn.get("/")[0] == 200
    status, headers, _ = conn.get("/fail")
    assert status == 503 and headers["x-pod"] == "web-0"
    assert conn.get("/")[0] == 503
    assert conn.get("/healthz")[0] == 503
    other = server.connect()  # the state is the server's, not the connection's
    assert other.get("/healthz")[0] == 503
    status, _, body = conn.get("/recover")
    assert (status, body) == (200, b"recovered\n")
    assert conn.get("/healthz")[0] == 200
    assert get_json(conn)["requests"] == 2  # 503 answers were not counted
    conn.close()
    other.close()


# ---- UDP and several ports ------------------------------------------------------------------

def test_udp_port_answers_a_datagram_with_the_json_line(podserver_bin):
    udp = free_udp_port()
    srv = Server(podserver_bin, extra=["--port", f"{udp}/udp"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            s.connect((HOST, udp))
            s.send(b"httpprobe 7\n")
            raw, sender = s.recvfrom(4096)
            assert sender == (HOST, udp)   # from the address the datagram went to
            assert raw.endswith(b"\n") and raw.count(b"\n") == 1
            assert json.loads(raw) == {
                "pod": "web-0", "node": "node1", "client": HOST,
                "client_port": s.getsockname()[1], "server": HOST, "server_port": udp,
                "requests": 1, "echo": "httpprobe 7"}
        # the counter is the pod's, over both protocols; HTTP's answer has no echo
        doc = get_json(srv.connect())
        assert doc["requests"] == 2 and "echo" not in doc
    finally:
        srv.stop()


def test_udp_echo_only_for_a_short_plain_first_line(podserver_bin):
    udp = free_udp_port()
    srv = Server(podserver_bin, extra=["--port", f"{udp}/udp"])
    try:
        assert udp_ask(udp, b"x:1-2 a.b_c\r\nsecond line")[0]["echo"] == "x:1-2 a.b_c"
        for payload in (b"", b"\n", b'a"b', b"a\\b", b"x" * 65, b"\xff\xfe"):
            assert "echo" not in udp_ask(udp, payload)[0], payload
        assert udp_ask(udp, b"x" * 64)[0]["echo"] == "x" * 64
    finally:
        srv.stop()


def test_several_ports_tcp_and_udp_in_one_process(podserver_bin):
    other, udp = free_port(), free_udp_port()
    srv = Server(podserver_bin, extra=["--port", str(other), "--port", f"{udp}/udp",
                                       "--port", f"{other}/udp"])
    try:
        by_http = get_json(Conn(socket.create_connection((HOST, other), timeout=TIMEOUT)))
        assert (by_http["pod"], by_http["server_port"]) == ("web-0", other)
        assert get_json(srv.connect())["server_port"] == srv.port
        assert udp_ask(udp)[0]["server_port"] == udp
        assert udp_ask(other)[0]["server_port"] == other   # the same number, TCP and UDP
        assert udp_ask(other)[0]["requests"] == 5
    finally:
        srv.stop()


def test_failing_pod_answers_no_datagram_until_recover(podserver_bin):
    udp = free_udp_port()
    srv = Server(podserver_bin, extra=["--port", f"{udp}/udp"])
    try:
        conn = srv.connect()
        assert conn.get("/fail")[0] == 503
        with pytest.raises(TimeoutError):
            udp_ask(udp, timeout=0.3)
        assert conn.get("/recover")[0] == 200
        assert udp_ask(udp)[0]["pod"] == "web-0"
        conn.close()
    finally:
        srv.stop()


def test_udp_port_in_use_is_a_startup_error_naming_it(podserver_bin):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind((HOST, 0))
    port = busy.getsockname()[1]
    try:
        proc = subprocess.run([str(podserver_bin), "--port", str(free_port()), "--port",
                               f"{port}/udp", "--pod", "p", "--node", "n", "--bind", HOST],
                              capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert f"bind {HOST} port {port}/udp: Address already in use" in proc.stderr


# ---- readiness -------------------------------------------------------------------------------

def test_readyz_follows_sigusr1_and_sigusr2_and_nothing_else_changes(server):
    conn = server.connect()
    assert conn.get("/readyz")[0::2] == (200, b"ready\n")

    def readyz():
        return conn.get("/readyz")[0]

    server.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: readyz() == 503, "SIGUSR1 makes /readyz 503")
    status, headers, body = conn.get("/readyz")
    assert (status, body, headers["x-pod"]) == (503, b"not ready\n", "web-0")
    assert conn.get("/healthz")[0::2] == (200, b"ok\n")   # alive, only not ready
    assert get_json(conn)["requests"] == 1                   # still serves what reaches it
    server.proc.send_signal(signal.SIGUSR1)                  # twice: still not ready
    server.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: readyz() == 200, "SIGUSR2 makes /readyz 200 again")
    assert server.proc.poll() is None                        # no restart
    assert get_json(conn)["requests"] == 2
    conn.close()


def test_a_failing_pod_is_not_ready_either(server):
    conn = server.connect()
    conn.get("/fail")
    assert conn.get("/readyz")[0] == 503
    conn.get("/recover")
    assert conn.get("/readyz")[0] == 200
    conn.close()


# ---- graceful termination ----------------------------------------------------------------------

def test_sigterm_refuses_new_work_answers_the_request_in_flight_then_exits_0(podserver_bin):
    udp = free_udp_port()
    srv = Server(podserver_bin, extra=["--port", f"{udp}/udp"])
    try:
        idle = srv.connect()
        get_json(idle)                         # a keep-alive connection, idle now
        busy = srv.connect()
        busy.send(b"GET /in-flight HT")        # half a request
        time.sleep(0.05)                       # let it be read before the signal
        srv.proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection((HOST, srv.port), timeout=TIMEOUT).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_for(refused, "SIGTERM closes the listening socket")
        assert idle.at_eof()                   # nothing asked on it: closed
        with pytest.raises(ConnectionRefusedError):   # the UDP port is closed too
            udp_ask(udp, timeout=1)
        assert srv.proc.poll() is None         # still finishing the request in flight

        busy.send(b"TP/1.1\r\nHost: pod\r\n\r\n")
        status, headers, body = busy.response()
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["requests"] == 2
        assert busy.at_eof()
        busy.close()
        idle.close()
        assert srv.proc.wait(TIMEOUT) == 0
        assert srv.proc.stderr.read() == b""
    finally:
        srv.stop()


def test_sigterm_finishes_a_request_body_still_arriving(server):
    conn = server.connect()
    conn.send(b"GET / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc")
    time.sleep(0.05)                           # the head is answered, the body is not all in
    status, headers, _ = conn.response()
    assert status == 200 and "connection" not in headers
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    assert server.proc.poll() is None          # the rest of the body is still due
    conn.send(b"def")
    with pytest.raises(EOFError):              # no more answers: closed once the body is in
        conn.response()
    assert server.proc.wait(TIMEOUT) == 0
    conn.close()


def test_readyz_is_503_while_terminating(server):
    conn = server.connect()
    conn.send(b"GET /readyz HTTP/1.1\r\n")
    time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    conn.send(b"\r\n")
    assert conn.response()[0::2] == (503, b"not ready\n")
    assert server.proc.wait(TIMEOUT) == 0
    conn.close()


# ---- command line and lifecycle ------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [],
    ["--pod", "web-0", "--node", "node1"],                          # no --port
    ["--port", "8080", "--node", "node1"],                          # no --pod
    ["--port", "http", "--pod", "web-0", "--node", "node1"],
    ["--port", "70000", "--pod", "web-0", "--node", "node1"],
    ["--port", "8080", "--pod", "web-0", "--node", "node1", "--colour"],
    ["--port", "8080", "--pod", "web-0", "--node"],                 # flag without a value
    ["--port", "8080", "--pod", 'we"b', "--node", "node1"],         # would break the JSON
    ["--port", "8080", "--pod", "web-0", "--node", "node1", "--bind", "localhost"],
    ["--port", "8080", "--pod", "web-0", "--node", "node1", "--ready-fd", "987"],
    ["--port", "8080", "--pod", "web-0", "--node", "node1", "extra"],
    ["--port", "53/sctp", "--pod", "web-0", "--node", "node1"],
    ["--port", "/udp", "--pod", "web-0", "--node", "node1"],
    ["--port", "8080/", "--pod", "web-0", "--node", "node1"],
    ["--port", "0/udp", "--pod", "web-0", "--node", "node1"],
    ["--port", "8080", "--port", "8080/tcp", "--pod", "web-0", "--node", "node1"],   # twice
    ["--port", "53/udp", "--port=53/udp", "--pod", "web-0", "--node", "node1"],
    [*[f"--port={p}" for p in range(1000, 1033)], "--pod", "web-0", "--node", "node1"],
])
def test_bad_flags_exit_2_with_one_line(podserver_bin, args):
    proc = subprocess.run([str(podserver_bin), *args], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("podserver: ")
    assert "usage: podserver --port PORT" in lines[0]


def test_port_in_use_is_a_startup_error(server, podserver_bin):
    proc = subprocess.run([str(podserver_bin), "--port", str(server.port), "--pod", "p",
                           "--node", "n", "--bind", HOST],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert "Address already in use" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_promptly_and_silently(server, sig):
    conn = server.connect()  # an open keep-alive connection must not delay the exit
    conn.get("/")
    server.proc.send_signal(sig)
    assert server.proc.wait(2) == 0
    assert server.proc.stdout.read() == b""
    assert server.proc.stderr.read() == b""
    conn.close()


# ---- --netns and the launcher ----------------------------------------------------------------

def test_netns_that_cannot_be_entered_is_a_startup_error_naming_it(podserver_bin, tmp_path):
    missing = tmp_path / "no-such-namespace"
    proc = subprocess.run([str(podserver_bin), "--port", str(free_port()), "--pod", "p",
                           "--node", "n", "--bind", HOST, "--netns", str(missing)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"podserver: --netns {missing}: ")


@pytest.mark.skipif(os.geteuid() != 0, reason="setns(2) needs CAP_SYS_ADMIN")
def test_netns_enters_the_namespace_before_binding(podserver_bin):
    # our own namespace: the server must then answer here, where the test connects
    srv = Server(podserver_bin, extra=["--netns", f"/proc/{os.getpid()}/ns/net"])
    try:
        assert get_json(srv.connect())["pod"] == "web-0"
    finally:
        srv.stop()


class Launcher:
    """`podserver --launch` with its report lines read back as (kind, pid, rest...) tuples."""

    def __init__(self, binary):
        self.proc = subprocess.Popen([str(binary), "--launch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.reports = []
        self._rest = b""

    def send(self, *lines):
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
        self.proc.stdin.flush()

    def read_until(self, done):
        """Read reports until done(reports) holds (or the launcher's stdout ends)."""
        deadline = time.monotonic() + TIMEOUT
        fd = self.proc.stdout.fileno()   # raw reads: a buffered reader would hide lines
        while not done(self.reports) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, self._rest = (self._rest + chunk).split(b"\n")
                for line in lines:
                    words = line.decode().split()
                    self.reports.append((words[0], *map(int, words[1:]))
                                        if words[0] != "error" else tuple(words))
        return self.reports

    def until_ready(self, n):
        """Read until n servers reported both "started" (written by the launcher) and "ready"
        (written by the server itself): either line may reach the pipe first."""
        return self.read_until(lambda r: sum(x[0] == "ready" for x in r) >= n
                               and sum(x[0] == "started" for x in r) >= n)

    def pids(self, kind):
        return [r[1] for r in self.reports if r[0] == kind]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # its own session: it and its servers
        self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def launcher(podserver_bin):
    lch = Launcher(podserver_bin)
    yield lch
    lch.stop()


def pod_line(port, pod, node="node1"):
    return f"--port {port} --pod {pod} --node {node} --bind {HOST}"


def test_launcher_starts_one_server_per_line_and_reports_each(launcher):
    ports = [free_port() for _ in range(3)]
    launcher.send(*(pod_line(port, f"web-{i}") for i, port in enumerate(ports)))
    reports = launcher.until_ready(3)
    started = launcher.pids("started")
    assert len(started) == 3 and sorted(launcher.pids("ready")) == sorted(started)
    assert all(len(r) == 2 for r in reports)
    for i, port in enumerate(ports):   # line order is started order
        conn = Conn(socket.create_connection((HOST, port), timeout=TIMEOUT))
        assert get_json(conn)["pod"] == f"web-{i}"
        conn.close()
    assert launcher.proc.poll() is None


def test_launcher_lines_take_several_ports_and_sigterm_drains_before_the_exit_report(launcher):
    tcp, udp = free_port(), free_udp_port()
    launcher.send(f"{pod_line(tcp, 'web-0')} --port {udp}/udp --port={tcp}/udp")
    launcher.until_ready(1)
    (pid,) = launcher.pids("started")
    assert udp_ask(udp)[0]["pod"] == "web-0" and udp_ask(tcp)[0]["server_port"] == tcp
    conn = Conn(socket.create_connection((HOST, tcp), timeout=TIMEOUT))
    conn.send(b"GET / HTTP/1.1\r\n")        # a request in flight
    time.sleep(0.05)
    os.kill(launcher.proc.pid, signal.SIGTERM)   # the launcher passes it on
    time.sleep(0.1)
    assert launcher.proc.poll() is None and _running(pid)
    conn.send(b"\r\n")
    assert get_json_from(conn)["requests"] == 3
    conn.close()
    assert launcher.proc.wait(TIMEOUT) == 0
    launcher.read_until(lambda r: False)
    assert [r for r in launcher.reports if r[0] == "exit"] == [("exit", pid, 0)]


def test_launcher_reports_each_exit_with_its_status_and_keeps_the_others(launcher):
    port = free_port()
    launcher.send(pod_line(port, "web-0"), pod_line(free_port(), "web-1"))
    launcher.until_ready(2)
    first, second = launcher.pids("started")
    os.kill(first, signal.SIGKILL)
    os.kill(second, signal.SIGTERM)
    launcher.read_until(lambda r: len([x for x in r if x[0] == "exit"]) == 2)
    assert sorted(r for r in launcher.reports if r[0] == "exit") == sorted(
        [("exit", first, -signal.SIGKILL), ("exit", second, 0)])
    launcher.send(pod_line(port, "web-0"))   # a restart, on the same port
    launcher.until_ready(3)
    assert len(launcher.pids("ready")) == 3 and launcher.proc.poll() is None


def test_a_line_that_cannot_start_is_started_then_exits_with_the_reason_on_stderr(launcher):
    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen()
    try:
        launcher.send(pod_line(busy.getsockname()[1], "web-0"), "--port x --pod web-1 --node n")
        launcher.read_until(lambda r: len([x for x in r if x[0] == "exit"]) == 2)
    finally:
        busy.close()
    bind_failed, bad_flags = launcher.pids("started")
    exits = {r[1]: r[2] for r in launcher.reports if r[0] == "exit"}
    assert exits == {bind_failed: 1, bad_flags: 2} and launcher.pids("ready") == []
    os.kill(launcher.proc.pid, signal.SIGTERM)
    assert launcher.proc.wait(TIMEOUT) == 0
    err = launcher.proc.stderr.read().decode()
    assert "podserver web-0: bind 127.0.0.1 port" in err and "Address already in use" in err
    assert "podserver: --port: 'x' is not a whole number" in err


def test_sigterm_stops_every_server_then_the_launcher(launcher):
    launcher.send(*(pod_line(free_port(), f"web-{i}") for i in range(3)))
    launcher.until_ready(3)
    os.kill(launcher.proc.pid, signal.SIGTERM)
    assert launcher.proc.wait(TIMEOUT) == 0
    launcher.read_until(lambda r: False)   # to the end of its stdout
    assert sorted((r[1], r[2]) for r in launcher.reports if r[0] == "exit") == sorted(
        (pid, 0) for pid in launcher.pids("started"))


def test_closed_stdin_keeps_the_launcher_until_its_last_server_exits(launcher):
    launcher.send(pod_line(free_port(), "web-0"))
    launcher.until_ready(1)
    launcher.proc.stdin.close()
    time.sleep(0.2)
    assert launcher.proc.poll() is None          # its server still runs
    os.kill(launcher.pids("started")[0], signal.SIGTERM)
    assert launcher.proc.wait(TIMEOUT) == 0


def test_servers_die_with_a_killed_launcher(launcher):
    launcher.send(pod_line(free_port(), "web-0"))
    launcher.until_ready(1)
    (pid,) = launcher.pids("started")
    os.kill(launcher.proc.pid, signal.SIGKILL)
    launcher.proc.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.02)
    assert not _running(pid)


def _running(pid):
    """pid exists and is no zombie (an orphan waits for init to collect it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_launcher_takes_no_other_flags(podserver_bin):
    proc = subprocess.run([str(podserver_bin), "--launch", "--port", "1"], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "unknown flag '--launch'" in proc.stderr
