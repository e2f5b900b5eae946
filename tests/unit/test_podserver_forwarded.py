"""The pod server reports X-Forwarded-For as "forwarded_for" in its JSON answer: the client's
address as an L7 load balancer (HAProxy's `option forwardfor`) passes it on, the connection's
peer being the proxy. No root: the server runs on 127.0.0.1 (see test_podserver)."""

import json

from tests.unit.test_podserver import podserver_bin, server  # noqa: F401  (fixtures)


def ask(srv, headers: str = "") -> dict:
    conn = srv.connect()
    try:
        status, _, body = conn.get("/", headers)
    finally:
        conn.close()
    assert status == 200
    return json.loads(body)


def test_no_header_no_field(server):   # noqa: F811
    assert "forwarded_for" not in ask(server)


def test_the_proxys_header_is_reported(server):   # noqa: F811
    doc = ask(server, "X-Forwarded-For: 203.0.113.10\r\n")
    assert doc["forwarded_for"] == "203.0.113.10"
    assert doc["client"] == "127.0.0.1"            # the peer stays the proxy's address


def test_header_name_is_case_insensitive_and_lines_join(server):   # noqa: F811
    doc = ask(server, "x-forwarded-for: 198.51.100.7\r\nX-FORWARDED-FOR: 203.0.113.10\r\n")
    assert doc["forwarded_for"] == "198.51.100.7, 203.0.113.10"


def test_ipv6_and_a_chain_are_kept(server):   # noqa: F811
    doc = ask(server, "X-Forwarded-For: 2001:db8::1, 203.0.113.10\r\n")
    assert doc["forwarded_for"] == "2001:db8::1, 203.0.113.10"


def test_characters_json_would_escape_drop_the_field(server):   # noqa: F811
    doc = ask(server, 'X-Forwarded-For: 1.2.3.4", "evil": "x\r\n')
    assert "forwarded_for" not in doc and "evil" not in doc


def test_too_long_drops_the_field_and_the_answer_stays_json(server):   # noqa: F811
    doc = ask(server, "X-Forwarded-For: " + ", ".join(["203.0.113.10"] * 20) + "\r\n")
    assert "forwarded_for" not in doc and doc["pod"] == "web-0"


def test_each_request_on_a_connection_has_its_own(server):   # noqa: F811
    conn = server.connect()
    try:
        first = json.loads(conn.get("/", "X-Forwarded-For: 203.0.113.10\r\n")[2])
        second = json.loads(conn.get("/")[2])
    finally:
        conn.close()
    assert first["forwarded_for"] == "203.0.113.10" and "forwarded_for" not in second
