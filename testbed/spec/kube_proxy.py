"""The topology's `kubeProxy:` section: which kube-proxy mode every node runs (upstream's
KubeProxyConfiguration `mode`, --proxy-mode).

```yaml
kubeProxy:
  mode: iptables      # or nftables, ipvs: the modes testbed.kubernetes.dataplane.registry has
  loadBalancer: {algorithm: maglev}   # the ebpf mode's backend selection: random (default)
```

The modes are the registry's, so a mode that plugs in is accepted here with nothing else to
change. `cnlb up --proxy-mode` and an experiment variant's `proxyMode:` override the file's.
(The kube-proxy's sync pacing lives in `kubernetes: {kubeProxy: {minSyncPeriod}}` with the other
delays of the control plane's clock.)
"""

from __future__ import annotations

from dataclasses import replace

from testbed.spec.fields import Reader, choice
from testbed.spec.model import KubeProxyConfiguration, Topology

DEFAULT_MODE = KubeProxyConfiguration().mode
DEFAULT_ALGORITHM = KubeProxyConfiguration().algorithm
ALGORITHMS = ("random", "maglev")   # testbed.kubernetes.dataplane.ebpf.maps.ALGORITHMS


def proxy_modes() -> list[str]:
    """The kube-proxy modes the testbed has, sorted (the data plane registry's keys)."""
    # imported here: the registry brings in the data planes, which read the plan (built from
    # this package's model); a topology file's reader needs them only for this list
    from testbed.kubernetes.dataplane.registry import DATAPLANES
    return sorted(DATAPLANES)


def read_kube_proxy(r: Reader) -> KubeProxyConfiguration:
    """The `kubeProxy:` section (absent: iptables)."""
    path = ("kubeProxy",)
    r.mapping(path, {"mode", "loadBalancer"})
    modes = proxy_modes()
    mode = r.get(path, "mode", choice(*modes), default=DEFAULT_MODE,
                 fix=f"use one of {', '.join(modes)}")
    lb = (*path, "loadBalancer")
    r.mapping(lb, {"algorithm"})
    algorithm = r.get(lb, "algorithm", choice(*ALGORITHMS), default=DEFAULT_ALGORITHM,
                      fix=f"use one of {', '.join(ALGORITHMS)} (the ebpf mode's)")
    return KubeProxyConfiguration(mode or DEFAULT_MODE, algorithm or DEFAULT_ALGORITHM)


def read_variant_proxy_mode(r: Reader, path: tuple[str, ...]) -> str | None:
    """An experiment variant's `proxyMode:` (None: the topology's kubeProxy.mode)."""
    modes = proxy_modes()
    mode: str | None = r.get(path, "proxyMode", choice(*modes), default=None,
                             fix=f"use one of {', '.join(modes)}")
    return mode


def with_proxy_mode(topology: Topology, mode: str | None) -> Topology:
    """The topology with kubeProxy.mode set (None: as it is)."""
    if not mode:
        return topology
    return replace(topology, kube_proxy=replace(topology.kube_proxy, mode=mode))
