"""upstream's boom server (test/images/regression-issue-74839), the packet injector of the e2e
test "should drop INVALID conntrack entries": run in a server pod's namespace, it watches the
TCP segments that arrive for the pod's port on a raw socket and, when a connection's handshake
completes, sends the client one segment whose sequence number is far outside the window. A
node's conntrack marks that segment INVALID; if the node forwards it anyway, it is not
un-DNATed, so it reaches the client from the pod's own address, which the client does not
know: the client answers with a RST, which this program sees and reports as
"ERROR: RST received" (kubernetes#74839). kube-proxy's KUBE-FORWARD rule
`-m conntrack --ctstate INVALID -j DROP` is what stops it.

Unlike upstream's image it does not listen itself: the pod's own server accepts the
connections on the port; this program only watches and injects.

    python3 boom_server.py POD_IP PORT     (runs until killed; one line per event on stdout)
"""

from __future__ import annotations

import socket
import struct
import sys

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
OUT_OF_WINDOW = 100000   # upstream: seq = the client's ack - 100000


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
                window: int, payload: bytes) -> bytes:
    """A TCP segment (20-byte header, no options) with its checksum over the pseudo-header."""
    header = struct.pack("!HHIIHHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                         (5 << 12) | flags, window, 0, 0)
    pseudo = struct.pack("!4s4sBBH", socket.inet_aton(src), socket.inet_aton(dst), 0,
                         socket.IPPROTO_TCP, len(header) + len(payload))
    csum = checksum(pseudo + header + payload)
    return header[:16] + struct.pack("!H", csum) + header[18:] + payload


def say(line: str) -> None:
    print(line, flush=True)


def main(pod_ip: str, port: int) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    raw.bind((pod_ip, 0))
    say(f"probing {pod_ip}:{port}")
    pending: dict[str, int] = {}   # client address -> the ack our bad segment carries
    while True:
        packet, (client, _) = raw.recvfrom(65535)
        tcp = packet[(packet[0] & 0x0F) * 4:]
        sport, dport, seq, ack, offset_flags, window = struct.unpack("!HHIIHH", tcp[:16])
        if dport != port:
            continue
        flags = offset_flags & 0x1FF
        if flags & SYN:
            pending[client] = seq + 1
            continue
        if flags & RST:
            say(f"ERROR: RST received from {client}:{sport}")
        if flags & ACK and client in pending:
            say(f"connection established from {client}:{sport}")
            bad = tcp_segment(pod_ip, client, port, sport, ack - OUT_OF_WINDOW,
                              pending.pop(client), PSH | ACK, window, b"boom!!!")
            raw.sendto(bad, (client, 0))
            say("boom packet injected")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
