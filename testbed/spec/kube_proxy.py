"""The topology's `kubeProxy:` section: which kube-proxy mode every node runs (upstream's
KubeProxyConfiguration `mode`, --proxy-mode).

```yaml
kubeProxy:
  mode: iptables      # or nftables, ipvs: the modes testbed.kubernetes.dataplane.registry has
  loadBalancer: {algorithm: maglev}   # the ebpf mode's backend selection: random (default)
  # loadBalancer: {mode: dsr}          # the ebpf mode's direct server return (default snat);
                                       # needs native routing: host-gw, bgp or container-native
  nftables: {coldStartInSteps: true}   # the nftables mode's first sync into a node without
                                       # its table as several transactions (default false: one,
                                       # as upstream; kubernetes#139328)
  conntrack: {tcpBeLiberal: true}      # kube-proxy sets nf_conntrack_tcp_be_liberal=1 on its
                                       # node (default false); the iptables mode then drops no
                                       # INVALID packets (kubernetes#117924)
```

The modes are the registry's, so a mode that plugs in is accepted here with nothing else to
change. `cnlb up --proxy-mode` and an experiment variant's `proxyMode:` override the file's.
(The kube-proxy's sync pacing lives in `kubernetes: {kubeProxy: {minSyncPeriod}}` with the other
delays of the control plane's clock.)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypedDict

from testbed.errors import Problem
from testbed.spec.fields import Reader, boolean, choice
from testbed.spec.model import KubeProxyConfiguration, Topology, with_cni_routing
from testbed.spec.sections import variant_cni

DEFAULT_MODE = KubeProxyConfiguration().mode
DEFAULT_ALGORITHM = KubeProxyConfiguration().algorithm
ALGORITHMS = ("random", "maglev")   # testbed.kubernetes.dataplane.ebpf.maps.ALGORITHMS
LB_MODES = ("snat", "dsr")          # testbed.kubernetes.dataplane.ebpf.maps.LB_MODES
DSR_FIX = ("use cni.routing: bgp (or overlay: host-gw, or loadBalancer.targets: "
           "container-native), or leave loadBalancer.mode at snat")


def proxy_modes() -> list[str]:
    """The kube-proxy modes the testbed has, sorted (the data plane registry's keys)."""
    # imported here: the registry brings in the data planes, which read the plan (built from
    # this package's model); a topology file's reader needs them only for this list
    from testbed.kubernetes.dataplane.registry import DATAPLANES
    return sorted(DATAPLANES)


def read_kube_proxy(r: Reader) -> KubeProxyConfiguration:
    """The `kubeProxy:` section (absent: iptables)."""
    path = ("kubeProxy",)
    r.mapping(path, {"mode", "loadBalancer", "nftables", "conntrack"})
    modes = proxy_modes()
    mode = r.get(path, "mode", choice(*modes), default=DEFAULT_MODE,
                 fix=f"use one of {', '.join(modes)}")
    lb = (*path, "loadBalancer")
    r.mapping(lb, {"algorithm", "mode"})
    algorithm = r.get(lb, "algorithm", choice(*ALGORITHMS), default=DEFAULT_ALGORITHM,
                      fix=f"use one of {', '.join(ALGORITHMS)} (the ebpf mode's)")
    lb_mode = r.get(lb, "mode", choice(*LB_MODES), default="snat",
                    fix="use snat (Cilium's default) or dsr (direct server return, the ebpf "
                        "mode's)")
    if lb_mode == "dsr" and mode and mode != "ebpf":
        r.problem((*lb, "mode"), f"direct server return is the ebpf mode's, kubeProxy.mode is "
                  f"{mode}", "set kubeProxy.mode: ebpf, or remove loadBalancer.mode")
    nft = (*path, "nftables")
    r.mapping(nft, {"coldStartInSteps"})
    in_steps = r.get(nft, "coldStartInSteps", boolean, default=False,
                     fix="use true or false (the nftables mode's cold start in steps)")
    conntrack = (*path, "conntrack")
    r.mapping(conntrack, {"tcpBeLiberal"})
    liberal = r.get(conntrack, "tcpBeLiberal", boolean, default=False,
                    fix="use true (kube-proxy sets nf_conntrack_tcp_be_liberal on its node) or "
                        "false")
    return KubeProxyConfiguration(mode or DEFAULT_MODE, algorithm or DEFAULT_ALGORITHM,
                                  lb_mode or "snat", bool(in_steps), bool(liberal))


def native_routing(topology: Topology) -> bool:
    """Whether a pod on another node is reached by plain routed IP, the packet's own addresses
    (what DSR needs: the request keeps the client's address and the reply leaves the pod's
    node for the client): container-native (VPC addresses), BGP or host-gw routes; not the
    VXLAN overlay."""
    return (topology.mode == "container-native" or topology.cni.routing == "bgp"
            or topology.cni.overlay == "host-gw")


def dsr_problem(topology: Topology) -> str | None:
    """Why the topology cannot run the ebpf mode's DSR it asks for (None: it can, or does not
    ask)."""
    if topology.kube_proxy.lb_mode != "dsr" or topology.kube_proxy.mode != "ebpf":
        return None
    if native_routing(topology):
        return None
    return (f"direct server return needs native routing (as Cilium's: the pod's node must get "
            f"the request as routed IP), this address plan has the {topology.cni.overlay} "
            f"overlay (mode {topology.mode})")


def check_dsr(r: Reader, topology: Topology) -> None:
    """kubeProxy.loadBalancer.mode dsr with an address plan without native routing."""
    why = dsr_problem(topology)
    if why:
        r.problem(("kubeProxy", "loadBalancer", "mode"), why, DSR_FIX)


def read_variant_proxy_mode(r: Reader, path: tuple[str, ...]) -> str | None:
    """An experiment variant's `proxyMode:` (None: the topology's kubeProxy.mode)."""
    modes = proxy_modes()
    mode: str | None = r.get(path, "proxyMode", choice(*modes), default=None,
                             fix=f"use one of {', '.join(modes)}")
    return mode


def read_variant_lb_mode(r: Reader, path: tuple[str, ...]) -> str | None:
    """An experiment variant's `bpfLbMode:` (Cilium's --bpf-lb-mode: snat or dsr; None: the
    topology's kubeProxy.loadBalancer.mode)."""
    lb_mode: str | None = r.get(path, "bpfLbMode", choice(*LB_MODES), default=None,
                                fix="use snat or dsr (the ebpf mode's direct server return)")
    return lb_mode


class VariantNetwork(TypedDict):
    """An experiment variant's `cni:`, `proxyMode:` and `bpfLbMode:` (None: the topology's),
    as the Variant's fields."""
    cni: str | None
    proxy_mode: str | None
    bpf_lb_mode: str | None


def variant_network(r: Reader, path: tuple[str, ...]) -> VariantNetwork:
    """An experiment variant's `cni:`, `proxyMode:` and `bpfLbMode:`."""
    return {"cni": variant_cni(r, path), "proxy_mode": read_variant_proxy_mode(r, path),
            "bpf_lb_mode": read_variant_lb_mode(r, path)}


def variant_dsr_problems(r: Reader, variant: str, lb_mode: str | None,
                         topology: Topology) -> list[Problem]:
    """A variant's bpfLbMode dsr that its topology cannot run: not the ebpf mode, or no
    native routing (dsr_problem)."""
    if lb_mode != "dsr":
        return []
    path = ("variants", variant, "bpfLbMode")
    if topology.kube_proxy.mode != "ebpf":
        return [r.doc.problem(path, f"direct server return is the ebpf mode's, variant "
                              f"'{variant}' runs {topology.kube_proxy.mode}",
                              "add 'proxyMode: ebpf' to the variant")]
    why = dsr_problem(topology)
    return [r.doc.problem(path, why, "add 'cni: bgp' to the variant, or use mode "
                          "container-native")] if why else []


def with_proxy_mode(topology: Topology, mode: str | None) -> Topology:
    """The topology with kubeProxy.mode set (None: as it is)."""
    if not mode:
        return topology
    return replace(topology, kube_proxy=replace(topology.kube_proxy, mode=mode))


def with_data_plane(topology: Topology, mode: str | None, lb_mode: str | None,
                    cni: str | None) -> Topology:
    """The topology with kubeProxy.mode, its loadBalancer.mode and cni.routing set (None: as
    they are): an experiment variant's proxyMode, bpfLbMode and cni."""
    kube_proxy = replace(topology.kube_proxy, mode=mode or topology.kube_proxy.mode,
                         lb_mode=lb_mode or topology.kube_proxy.lb_mode)
    return with_cni_routing(replace(topology, kube_proxy=kube_proxy), cni)
