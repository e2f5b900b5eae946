"""The two-service example every kube-proxy test uses: nodes, services, their pods.

web is externalTrafficPolicy=Cluster with three pods on node1 and node2; api is Local with
ClientIP affinity and a healthCheckNodePort, one pod on node1 and two on node2.
"""

from __future__ import annotations

from typing import Any

from testbed.kubernetes.dataplane.model import Endpoint, NodeContext, ServicePort

NODE1 = NodeContext("node1", "192.168.0.11", "10.244.0.0/16")
NODE2 = NodeContext("node2", "192.168.1.11", "10.244.0.0/16")
NODE3 = NodeContext("node3", "192.168.2.11", "10.244.0.0/16")  # no pod of either service
CLIENT = "203.0.113.7"
WEB_VIP, API_VIP = "198.51.100.10", "198.51.100.11"

WEB = ServicePort(
    "default", "web", "http", "TCP", "10.96.0.10", 80, 8080, node_port=30080,
    load_balancer_ips=(WEB_VIP,), external_traffic_policy="Cluster",
    endpoints=(Endpoint("10.244.1.2", 8080, "node1"), Endpoint("10.244.2.2", 8080, "node2"),
               Endpoint("10.244.1.3", 8080, "node1")),
)
API = ServicePort(
    "default", "api", "http", "TCP", "10.96.0.20", 80, 8080, node_port=30081,
    load_balancer_ips=(API_VIP,), external_traffic_policy="Local",
    session_affinity_seconds=10800, health_check_node_port=32000,
    endpoints=(Endpoint("10.244.2.4", 8080, "node2"), Endpoint("10.244.1.4", 8080, "node1"),
               Endpoint("10.244.2.3", 8080, "node2")),
)
WEB_PODS = {"10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.2:8080"}
API_PODS = {"10.244.1.4:8080", "10.244.2.3:8080", "10.244.2.4:8080"}


def replace_port(svc: ServicePort, **changes: Any) -> ServicePort:
    """`svc` with some fields changed, checked again."""
    fields = {f: getattr(svc, f) for f in ServicePort.__dataclass_fields__}
    return ServicePort(**{**fields, **changes})
