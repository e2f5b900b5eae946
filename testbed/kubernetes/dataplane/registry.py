"""The service data planes (kube-proxy modes) the testbed knows, by the name a user gives.

A new mode is one module with a ServiceDataPlane subclass and one entry in DATAPLANES.
"""

from __future__ import annotations

from testbed.kubernetes.dataplane.base import ServiceDataPlane
from testbed.kubernetes.dataplane.ebpf.proxier import EbpfKubeProxy
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.ipvs.proxier import IpvsProxy
from testbed.kubernetes.dataplane.nftables.proxier import NFTablesProxy

DATAPLANES: dict[str, type[ServiceDataPlane]] = {
    KubeProxy.mode: KubeProxy,
    IpvsProxy.mode: IpvsProxy,
    NFTablesProxy.mode: NFTablesProxy,
    EbpfKubeProxy.mode: EbpfKubeProxy,
}


class UnknownDataPlane(ValueError):
    """A kube-proxy mode the testbed does not have."""


def dataplane_for(mode: str) -> type[ServiceDataPlane]:
    """The ServiceDataPlane class of kube-proxy mode `mode` ("iptables").

    Raises UnknownDataPlane, naming the modes there are.
    """
    try:
        return DATAPLANES[mode]
    except KeyError:
        known = ", ".join(sorted(DATAPLANES))
        raise UnknownDataPlane(
            f"kube-proxy mode {mode!r} is not one the testbed has — use one of: {known}"
        ) from None
