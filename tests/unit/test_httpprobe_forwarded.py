"""httpprobe passes on the pod server's "forwarded_for" (the X-Forwarded-For an L7 LB added:
the client's address, the connection's peer being the proxy), and leaves the key out when the
answer has none. No root: fake servers on 127.0.0.1 (see test_httpprobe)."""

import socket

from tests.unit.test_httpprobe import (  # noqa: F401  (fixtures)
    Misbehaving,
    binaries,
    probe_bin,
    read_request,
    run_probe,
    server,
    url,
)


def answering(body: bytes):
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))
        conn.shutdown(socket.SHUT_WR)
    return handle


def test_the_answers_forwarded_for_is_in_the_record(probe_bin):   # noqa: F811
    body = (b'{"pod":"web-1","node":"node2","client":"198.51.100.3","client_port":4000,'
            b'"server":"10.244.2.2","forwarded_for":"198.51.100.7, 203.0.113.10"}\n')
    srv = Misbehaving(answering(body))
    try:
        lines, summary, _ = run_probe(probe_bin, "--url", url(srv.port), "--requests", "2")
    finally:
        srv.close()
    assert summary["errors"] == 0
    for rec in lines:
        assert rec["forwarded_for"] == "198.51.100.7, 203.0.113.10"
        assert rec["client"] == "198.51.100.3" and rec["client_port"] == 4000


def test_no_forwarded_for_no_key(probe_bin, server):   # noqa: F811
    lines, _, _ = run_probe(probe_bin, "--url", url(server.port), "--requests", "2")
    assert lines and all("forwarded_for" not in rec for rec in lines)
