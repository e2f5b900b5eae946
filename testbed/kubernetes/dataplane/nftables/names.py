"""The names kube-proxy's nftables mode gives its table, chains, sets and maps, as upstream does.

Everything lives in one table, `kube-proxy` of family ip, so no name needs a "kube-" prefix.
A service port's chains are "<prefix>" + HASH + "-" + "ns/name/protocol/port", an endpoint's
"<prefix>" + HASH + "-" + "ns/name/protocol/port__ip/port", where HASH is the first 8
characters of base32(sha256(the rest)) (upstream hashAndTruncate): the hash keeps truncated
names unique and makes near-identical names easy to tell apart. Only these per-service names
contain "/", which is how stale ones are found (upstream isServiceChainName).
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import NamedTuple

from testbed.kubernetes.dataplane.model import Endpoint, ServicePort

TABLE = "kube-proxy"
FAMILY = "ip"

# base chains: "${type}-${hook}", and the priority each is hooked at
FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"

# service dispatch
SERVICES = "services"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NODEPORT_IPS = "nodeport-ips"   # the addresses that accept NodePort traffic
CLUSTER_IPS = "cluster-ips"     # every active ClusterIP

# services without (usable) endpoints
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"

# loadBalancerSourceRanges: LB IP . proto . port -> goto the service's firewall- chain
FIREWALL_IPS = "firewall-ips"
FIREWALL_CHECK = "firewall-check"

# masquerading
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"

# 1 << 14: upstream's default --masquerade-bit=14, written with "%#08x".
MASQUERADE_MARK = "0x4000"

SERVICE_PREFIX = "service-"    # Cluster policy: every usable endpoint
LOCAL_PREFIX = "local-"        # Local policy: this node's usable endpoints
EXTERNAL_PREFIX = "external-"  # NodePort, LB IP and external IP destinations
FIREWALL_PREFIX = "firewall-"  # loadBalancerSourceRanges: drops sources outside them
ENDPOINT_PREFIX = "endpoint-"  # one endpoint
AFFINITY_PREFIX = "affinity-"  # one endpoint's ClientIP affinity set

NAME_LENGTH_MAX = 256          # knftables.NameLengthMax
CHAIN_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - 16   # 16: the longest prefix, with its hyphen


def hash_and_truncate(name: str) -> str:
    """Upstream hashAndTruncate: 8 base32 characters of sha256(name), "-", name; cut to fit."""
    # 8 base32 characters are 40 bits: the first 5 digest bytes give exactly them.
    digest = hashlib.sha256(name.encode()).digest()[:5]
    out = base64.b32encode(digest).decode() + "-" + name
    if len(out) > CHAIN_NAME_BASE_LENGTH_MAX:
        out = out[:CHAIN_NAME_BASE_LENGTH_MAX - 3] + "..."
    return out


@lru_cache(maxsize=1 << 18)
def service_port_chain_name_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """Upstream servicePortChainNameBase: "HASH-ns/name/protocol/port", e.g.
    "ULMVA6XW-ns1/svc1/tcp/p80"."""
    return hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name}")


@lru_cache(maxsize=1 << 20)
def endpoint_chain_name_base(namespace: str, name: str, protocol: str, port_name: str,
                             endpoint: str) -> str:
    """Upstream servicePortEndpointChainNameBase: "HASH-ns/name/protocol/port__ip/port";
    endpoint is "ip:port"."""
    ip, _, port = endpoint.rpartition(":")
    return hash_and_truncate(
        f"{namespace}/{name}/{protocol.lower()}/{port_name}__{ip.replace(':', '.')}/{port}")


class ServiceChains(NamedTuple):
    """The chains of one service port (upstream keeps them on its servicePortInfo)."""

    cluster: str   # service-...: the Cluster policy chain
    local: str     # local-...: the Local policy chain
    external: str  # external-...: where external destinations go first
    firewall: str  # firewall-...: loadBalancerSourceRanges


@lru_cache(maxsize=1 << 18)
def _service_chains(namespace: str, name: str, protocol: str, port_name: str) -> ServiceChains:
    base = service_port_chain_name_base(namespace, name, protocol, port_name)
    return ServiceChains(SERVICE_PREFIX + base, LOCAL_PREFIX + base, EXTERNAL_PREFIX + base,
                         FIREWALL_PREFIX + base)


def service_chains(svc: ServicePort) -> ServiceChains:
    """The service-, local-, external- and firewall- chains of the service port."""
    return _service_chains(svc.namespace, svc.name, svc.proto, svc.port_name)


def endpoint_chain(svc: ServicePort, endpoint: Endpoint) -> str:
    """The endpoint-... chain of one endpoint of the service port."""
    return ENDPOINT_PREFIX + endpoint_chain_name_base(
        svc.namespace, svc.name, svc.proto, svc.port_name, str(endpoint))


def affinity_set(svc: ServicePort, endpoint: Endpoint) -> str:
    """The affinity-... set of one endpoint: client addresses that stick to it (ClientIP)."""
    return AFFINITY_PREFIX + endpoint_chain_name_base(
        svc.namespace, svc.name, svc.proto, svc.port_name, str(endpoint))


def is_service_chain_name(chain: str) -> bool:
    """Upstream isServiceChainName: only per-service and per-endpoint chains contain "/"."""
    return "/" in chain


def is_affinity_set_name(name: str) -> bool:
    """Upstream isAffinitySetName."""
    return name.startswith(AFFINITY_PREFIX)
