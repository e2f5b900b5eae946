"""The CNI seam: what a CNI plugin tells a node and a pod, as shell command lines (pure).

A plugin is chosen by the plan's `overlay` (vxlan, host-gw, vpc-native); adding one is adding a
module with a `CniPlugin` subclass and an entry in `testbed.kubernetes.cni.PLUGINS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from testbed.plan.addresses import NodePlan, Plan, PodPlan

# Offloads the OVS userspace datapath cannot complete: without this, TCP segments leave veths
# with partial checksums and are dropped (DESIGN: "TCP only flows after ethtool -K ...").
OFFLOADS_OFF = "tx off tso off gso off"


def sysctl(key: str, value: object) -> str:
    """A shell line setting one sysctl inside the namespace it runs in."""
    return f"echo {value} > /proc/sys/{key.replace('.', '/')}"


class CniPlugin(ABC):
    """A pod network plugin: addresses, devices and routes for nodes and pods.

    name: the plan's `overlay` value this plugin serves
    Every method is pure and returns shell command lines, run later as one script per namespace.
    """

    name: str = ""

    @abstractmethod
    def setup_node(self, plan: Plan, node: NodePlan, pods: Sequence[PodPlan],
                   offloads_off: bool) -> list[str]:
        """The node's half: its devices and routes for its pods and the other nodes' pods.
        pods: the pods placed on this node
        offloads_off: the fabric is OVS's userspace datapath (tunnel devices need offloads off)"""

    @abstractmethod
    def setup_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        """The pod's eth0: address, MTU, routes."""

    @abstractmethod
    def attach_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        """The node's half of one pod added while the cluster runs."""

    def pod_eth0(self, plan: Plan, pod: PodPlan) -> list[str]:
        """The pod's eth0 up with its address and the plan's MTU (routes are the plugin's)."""
        return ["ip link set lo up", f"ip link set eth0 mtu {plan.mtu}",
                f"ip addr add {pod.ip}/{pod.prefixlen} dev eth0", "ip link set eth0 up"]

    def detach_pod(self, plan: Plan, pod: PodPlan) -> list[str]:
        """What a node must forget when one of its pods goes away (nothing by default: the
        veth goes with the pod's namespace)."""
        return []
