"""The names kube-proxy's iptables mode gives its chains, hashed exactly as upstream hashes them.

<hash> is the first 16 characters of base32(sha256("ns/name:port" + protocol)), and for
KUBE-SEP sha256("ns/name:port" + protocol + "ip:port"); iptables limits chain names to 28
characters. Everything kube-proxy owns starts with KUBE-, so it can be found and removed safely.
Also the mark kube-proxy sets for masquerading, which every chain that reads it must agree on.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import NamedTuple

from testbed.kubernetes.dataplane.model import Endpoint, ServicePort

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
# filter: drops what a KUBE-FW- chain let through un-DNATed (loadBalancerSourceRanges)
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"

SVC_PREFIX = "KUBE-SVC-"  # Cluster policy: all ready endpoints
SVL_PREFIX = "KUBE-SVL-"  # Local policy: this node's ready endpoints
EXT_PREFIX = "KUBE-EXT-"  # external destinations (NodePort, LB IP, external IP)
FW_PREFIX = "KUBE-FW-"  # loadBalancerSourceRanges: the allowed sources of the LB IPs
SEP_PREFIX = "KUBE-SEP-"  # one endpoint
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

# 1 << 14: upstream's default --iptables-masquerade-bit=14, written with "%#08x".
MASQUERADE_MARK = "0x4000"


def _hash16(text: str) -> str:
    # 16 base32 characters are 80 bits: encoding the first 10 digest bytes gives exactly the
    # first 16 characters of upstream's base32 of the whole digest, 3x faster.
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


@lru_cache(maxsize=1 << 18)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """Upstream's portProtoHash: 16 chars of base32(sha256(name + lower-case protocol))."""
    return _hash16(service_port_name + protocol.lower())


def service_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVC-...: upstream servicePortPolicyClusterChain."""
    return SVC_PREFIX + port_proto_hash(service_port_name, protocol)


def service_local_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-SVL-...: upstream servicePortPolicyLocalChainName."""
    return SVL_PREFIX + port_proto_hash(service_port_name, protocol)


def service_external_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-EXT-...: upstream serviceExternalChainName."""
    return EXT_PREFIX + port_proto_hash(service_port_name, protocol)


def service_firewall_chain(service_port_name: str, protocol: str) -> str:
    """KUBE-FW-...: upstream serviceFirewallChainName."""
    return FW_PREFIX + port_proto_hash(service_port_name, protocol)


@lru_cache(maxsize=1 << 18)
def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP-...: upstream servicePortEndpointChainName; endpoint is "ip:port"."""
    return SEP_PREFIX + _hash16(service_port_name + protocol.lower() + endpoint)


def is_service_chain(chain: str) -> bool:
    """True for the per-service chains kube-proxy owns (and may delete)."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


# --- one service port's chains (upstream keeps them on its servicePortInfo) ---------------------


class ServiceChains(NamedTuple):
    """The chains of one service port, named once per sync (renders look them up often)."""

    svc: str  # KUBE-SVC: every ready endpoint in the cluster
    svl: str  # KUBE-SVL: this node's ready endpoints (Local policy)
    ext: str  # KUBE-EXT: its NodePort, LB and external IP destinations
    fw: str  # KUBE-FW: LB IP traffic from its loadBalancerSourceRanges goes on to KUBE-EXT


@lru_cache(maxsize=1 << 18)
def _service_chains(service_port_name: str, protocol: str) -> ServiceChains:
    h = port_proto_hash(service_port_name, protocol)
    return ServiceChains(SVC_PREFIX + h, SVL_PREFIX + h, EXT_PREFIX + h, FW_PREFIX + h)


def service_chains(svc: ServicePort) -> ServiceChains:
    """The KUBE-SVC, KUBE-SVL, KUBE-EXT and KUBE-FW chains of the service port."""
    return _service_chains(svc.port_name_string, svc.proto)


def svc_chain(svc: ServicePort) -> str:
    """The service port's KUBE-SVC chain: every ready endpoint in the cluster."""
    return service_chains(svc).svc


def sep_chain(svc: ServicePort, endpoint: Endpoint) -> str:
    """The KUBE-SEP chain of one endpoint of the service port."""
    return endpoint_chain(svc.port_name_string, svc.proto, str(endpoint))
