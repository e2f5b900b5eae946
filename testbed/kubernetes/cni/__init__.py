"""CNI plugins: what a node and a pod get (addresses, devices, routes), one module each.

base       the interface every plugin implements (CniPlugin)
bridge     flannel's node bridge, shared by its backends
vxlan      flannel's vxlan backend (classic mode's overlay)
hostgw     flannel's host-gw backend (routes via the other nodes, one L2 subnet)
vpcnative  aws-vpc-cni's model (container-native mode: pods have VPC addresses)
bgp        Calico's BGP networking (cni.routing bgp: blocks per node announced by BIRD, no overlay)
bird       BIRD 2 configs in the shape of Calico's confd templates; reading birdc's output
"""

from __future__ import annotations

from testbed.kubernetes.cni.base import CniPlugin
from testbed.kubernetes.cni.bgp import CalicoBgp
from testbed.kubernetes.cni.hostgw import HostGw
from testbed.kubernetes.cni.vpcnative import VpcNative
from testbed.kubernetes.cni.vxlan import Vxlan
from testbed.plan.addresses import Plan

PLUGINS: dict[str, CniPlugin] = {p.name: p for p in (Vxlan(), HostGw(), VpcNative(),
                                                     CalicoBgp())}


def plugin_for(plan: Plan) -> CniPlugin:
    """The CNI plugin a plan asks for (its `overlay`: vxlan, host-gw, vpc-native or bgp)."""
    try:
        return PLUGINS[plan.overlay]
    except KeyError:
        raise ValueError(f"no CNI plugin named {plan.overlay!r} "
                         f"(known: {', '.join(sorted(PLUGINS))})") from None
