"""kube-proxy's nftables mode on the emulated nodes: the ServiceDataPlane called "nftables".

Renders with rules.py and loads each node's text with one `nft -f -` (one transaction: all of
it or nothing) in the node's namespace: the whole table at the first sync, upstream's partial
sync after. Everything around the load -- kube-proxy's servers (health-check node ports,
/healthz, /metrics), the node's state file, metrics, stale UDP conntrack entries, paced syncs --
is the same as in the iptables mode, so this class takes it from there (KubeProxy) and changes
only what is rendered and how it is loaded. iptables is not touched: no KUBE- chain and no jump
from the built-in chains is written (the CNI's own iptables rules stay, as in a real cluster).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import ClassVar

from testbed.kubernetes.dataplane.base import ApplyError
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.metrics import ProxyMetrics
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort
from testbed.kubernetes.dataplane.nftables import rules

NFT_ARGV = ("nft", "-f", "-")


class NFTablesError(ApplyError):
    """`nft -f` rejected the transaction (nothing of it was applied).

    stderr: what nft printed (it names the failing line of the input and marks the spot)
    """

    def __init__(self, node: str, returncode: int, stderr: str):
        self.stderr = stderr
        self.returncode = returncode
        super().__init__(f"nft -f - on {node} failed (exit {returncode}): {stderr.strip()}")


class NFTablesProxy(KubeProxy):
    """kube-proxy in nftables mode on every node of a running cluster.

    cluster: the Cluster (for namespaces, the plan and which pods are alive)
    backend: not used (nft has one flavour); taken for the same constructor as every mode
    """

    mode: ClassVar[str] = "nftables"

    @staticmethod
    def render(services: Sequence[ServicePort], node: NodeContext) -> str:
        return rules.render(services, node)

    @staticmethod
    def render_partial(old: Sequence[ServicePort], new: Sequence[ServicePort],
                       node: NodeContext) -> str:
        return rules.render_partial(old, new, node)

    @classmethod
    def render_first(cls, services: Sequence[ServicePort], node: NodeContext) -> str:
        """A fresh node's first sync is the full sync: the table comes with it (no jumps from
        built-in chains to add, unlike the iptables mode this class takes its servers from)."""
        return rules.render(services, node)

    @classmethod
    def unavailable(cls) -> str | None:
        return None if shutil.which("nft") else "nft not found (Debian package nftables)"

    def apply_text(self, node: str, text: str) -> None:
        """`nft -f -` of `text` on `node`, one transaction; raises NFTablesError."""
        if not text:   # a partial sync with nothing changed
            return
        code, err = self._runner(node)(list(NFT_ARGV), text.encode())
        if code != 0:
            raise NFTablesError(node, code, err)

    def _texts(self, nodes: Sequence[str], services: list[ServicePort]
               ) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
        """node -> its transaction now, node -> "full" or "partial", node -> seconds its text
        took to render. The per-service part is rendered once for the nodes it is the same
        on (rules.render_key); a full sync adds the node's own setup (its NodePort address)."""
        texts, kinds, seconds = {}, {}, {}
        rendered: dict[tuple[int, tuple[str | None, bool, str]], tuple[str, float]] = {}
        for node in nodes:
            old, ctx = self.applied.get(node), self.context(node)
            key = (id(old), rules.render_key([*(old or ()), *services], ctx))
            if key not in rendered:
                t0 = time.time()
                text = (rules.render_services(services, ctx) if old is None
                        else rules.render_partial(old, services, ctx))
                rendered[key] = text, time.time() - t0
            text, seconds[node] = rendered[key]
            if old is None:
                text = "\n".join(rules.render_setup(ctx)) + "\n" + text
            texts[node], kinds[node] = text, "full" if old is None else "partial"
        return texts, kinds, seconds

    @staticmethod
    def _count_rules(metrics: ProxyMetrics, text: str, full: bool) -> None:
        """The iptables rule counts have no meaning here (upstream's nftables mode does not
        export them either)."""
