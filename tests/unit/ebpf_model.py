"""A model of the eBPF kube-proxy's maps and of cnlb_ingress / cnlb_host's first-packet path
(bpf/lb.c), at the byte level, for the behaviour suite (tests/unit/dataplane_models.py).

- `EbpfNode.load(text)`: the rendered text through maps.encode() into `bpftool batch`
  commands, applied to a dict of maps as the kernel would (a delete of a missing key fails, as
  bpftool's batch does);
- `trace(packet)`: the program's lookups on those bytes: the internal scope first for pods (the
  cluster CIDR in cnlb_config) and the node's own traffic, then the frontend for everyone;
  a source no prefix of a flagged frontend's cnlb_src_range holds (an LPM trie on frontend
  + source) is dropped first; no backend: REJECT (a RST), or DROP when flagged; the backends
  a random pick can reach (every slot, or every Maglev table entry); SNAT as the flags say,
  or for a pod reaching itself;
- `check(text)`: slots 0..n-1 exist for each service, each Maglev table has a prime size and
  points at existing slots only, drop only where there is no backend, source ranges exactly
  for the frontends flagged source-range.
"""

from __future__ import annotations

import ipaddress
import struct

from testbed.kubernetes.dataplane.ebpf import maps
from tests.unit.traces import Packet, Trace

MAPS_DIR = "/maps"
PROTO = {"tcp": 6, "udp": 17}


class BatchError(Exception):
    """bpftool batch would stop here."""


def _ip(data: bytes) -> str:
    return str(ipaddress.IPv4Address(data))


class EbpfNode:
    """One node's pinned maps: name -> {key bytes: value bytes}."""

    def __init__(self) -> None:
        self.maps: dict[str, dict[bytes, bytes]] = {name: {} for name in maps.MAPS}

    def load(self, text: str) -> None:
        for n, line in enumerate(maps.encode(text, MAPS_DIR).splitlines(), 1):
            words = line.split()
            assert words[:2] == ["map", words[1]] and words[2] == "pinned", line
            name = words[3].rsplit("/", 1)[1]
            hexes = words[words.index("key") + 2:]
            if "value" in words:
                k = words.index("value")
                key = bytes.fromhex("".join(words[words.index("key") + 2:k]))
                value = bytes.fromhex("".join(words[k + 2:]))
            else:
                key, value = bytes.fromhex("".join(hexes)), None
            if words[1] == "update":
                self.maps[name][key] = value or b""
            elif key in self.maps[name]:
                del self.maps[name][key]
            else:
                raise BatchError(f"line {n}: delete of a missing key in {name}")

    def snapshot(self) -> dict:
        return {name: dict(entries) for name, entries in self.maps.items()}

    # --- the program's first-packet path ---------------------------------------------------------

    def _config(self) -> tuple[str, ipaddress.IPv4Network | None]:
        raw = self.maps["cnlb_config"][struct.pack("<I", 0)]
        node_ip, net, mask = raw[:4], raw[4:8], raw[8:12]
        if mask == b"\0" * 4:
            return _ip(node_ip), None
        return _ip(node_ip), ipaddress.IPv4Network(f"{_ip(net)}/{_ip(mask)}")

    def _service(self, key: bytes) -> tuple[int, int, int, int] | None:
        raw = self.maps["cnlb_services"].get(key)
        if raw is None:
            return None
        count, flags, algorithm, _affinity, m, _ = struct.unpack("<HBBIHH", raw)
        return count, flags, algorithm, m

    def trace(self, pkt: Packet) -> Trace:
        out = Trace()
        if pkt.protocol not in PROTO:
            return out
        dst = ipaddress.IPv4Address(pkt.dst)
        # the node's own traffic to its own addresses or loopback never leaves by the uplink,
        # where cnlb_host sits
        if pkt.local_origin and (dst.is_loopback or pkt.dst in pkt.local_ips):
            return out
        _node_ip, cidr = self._config()
        from_pod = cidr is not None and ipaddress.IPv4Address(pkt.src) in cidr
        base = dst.packed + struct.pack(">H", pkt.dport) + bytes([PROTO[pkt.protocol]])
        key = base + b"\x01"
        svc = self._service(key) if from_pod or pkt.local_origin else None
        if svc is None:
            key = base + b"\x00"
            svc = self._service(key)
        if svc is None:
            return out
        count, flags, algorithm, m = svc
        out.matched.append(f"service {maps.Frontend(pkt.dst, pkt.dport, pkt.protocol.upper())} "
                           f"count={count} flags={flags} scope={key[-1]}")
        if flags & maps.FLAG_SOURCE_RANGE and not self._src_range_ok(base, pkt.src):
            out.verdicts.append("DROP")
            return out
        if count == 0:
            out.verdicts.append("DROP" if flags & maps.FLAG_DROP or pkt.protocol != "tcp"
                                else "REJECT")
            return out
        slots = range(count)
        if algorithm == 1:
            table = struct.unpack(f"<{maps.MAGLEV_M_MAX}H", self.maps["cnlb_maglev"][key])
            slots = sorted(set(table[:m]))
        for slot in slots:
            raw = self.maps["cnlb_backends"][key + struct.pack("<I", slot)]
            out.destinations.add(f"{_ip(raw[:4])}:{struct.unpack('>H', raw[4:6])[0]}")
        hairpin = any(d.rsplit(":", 1)[0] == pkt.src for d in out.destinations)
        out.masquerade = bool(
            flags & maps.FLAG_SNAT or hairpin
            or (flags & maps.FLAG_SNAT_HOST and pkt.local_origin)
            or (flags & maps.FLAG_SNAT_OUTSIDE and cidr is not None and not from_pod))
        return out

    def _src_range_ok(self, frontend: bytes, src: str) -> bool:
        """bpf/lb.c's src_range_ok: does an entry's prefix (the frontend's 64 bits, whole, and
        the CIDR's) hold this frontend and source?"""
        want = int.from_bytes(frontend + b"\0" + ipaddress.IPv4Address(src).packed, "big")
        for key in self.maps["cnlb_src_range"]:
            bits = struct.unpack("<I", key[:4])[0]
            have = int.from_bytes(key[4:], "big")
            if bits >= maps.SRC_RANGE_STATIC_PREFIX and (want ^ have) >> (96 - bits) == 0:
                return True
        return False

    @staticmethod
    def check(text: str) -> None:
        node = EbpfNode()
        node.load(text)
        services = node.maps["cnlb_services"]
        backends = node.maps["cnlb_backends"]
        for key, raw in services.items():
            count, flags, algorithm, _aff, m, _ = struct.unpack("<HBBIHH", raw)
            have = {k[8:] for k in backends if k[:8] == key}
            assert have == {struct.pack("<I", i) for i in range(count)}, (key, count)
            assert not (flags & maps.FLAG_DROP and count), key
            if algorithm == 1:
                assert maps.is_prime(m) and count < m <= maps.MAGLEV_M_MAX, (key, m)
                table = struct.unpack(f"<{maps.MAGLEV_M_MAX}H", node.maps["cnlb_maglev"][key])
                assert set(table[:m]) == set(range(count)), key
        assert set(node.maps["cnlb_maglev"]) <= set(services)
        flagged = {key[:7] for key, raw in services.items()
                   if struct.unpack("<HBBIHH", raw)[1] & maps.FLAG_SOURCE_RANGE}
        assert {key[4:11] for key in node.maps["cnlb_src_range"]} == flagged
