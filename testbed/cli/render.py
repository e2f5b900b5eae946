"""What `cnlb render kube-proxy` prints: a node's first kube-proxy sync as the running cluster
would apply it, pure text from the topology and its address plan.

The eBPF mode's maps depend on more than the mode: the topology's kubeProxy.loadBalancer
algorithm (random or Maglev: Maglev adds a lookup table per frontend) and mode (snat or dsr:
DSR flags the frontends reached from outside the cluster and drops the SNAT). The cluster's
EbpfKubeProxy reads both from the topology; so does this, or the output would show maps no node
ever holds.
"""

from __future__ import annotations

from testbed.kubernetes.dataplane.ebpf import maps
from testbed.kubernetes.dataplane.model import node_context, service_ports
from testbed.kubernetes.dataplane.registry import dataplane_for
from testbed.plan.addresses import Plan
from testbed.spec.model import KubeProxyConfiguration, Topology


def ebpf_options(kube_proxy: KubeProxyConfiguration) -> maps.Options:
    """The eBPF programs' options the topology's kubeProxy section gives every node (the
    topology reader has already refused any other algorithm or mode)."""
    return maps.Options(algorithm=kube_proxy.algorithm, mode=kube_proxy.lb_mode)


def kube_proxy_first_sync(topo: Topology, plan: Plan, node: str) -> str:
    """The node's first sync in the topology's kubeProxy.mode (`--proxy-mode` already applied):
    the eBPF mode's map entries with the topology's algorithm and SNAT/DSR, the other modes'
    render_first (iptables' with the jumps a fresh node installs)."""
    services, context = service_ports(plan), node_context(plan, node)
    if topo.kube_proxy.mode == "ebpf":   # EbpfKubeProxy's first sync: render with its options
        return maps.render(services, context, ebpf_options(topo.kube_proxy))
    return dataplane_for(topo.kube_proxy.mode).render_first(services, context)
