"""kube-proxy's nftables mode on the emulated nodes: the ServiceDataPlane called "nftables".

Renders with rules.py and loads each node's text with one `nft -f -` (one transaction: all of
it or nothing) in the node's namespace: the whole table at the first sync, upstream's partial
sync after. With the topology's kubeProxy.nftables.coldStartInSteps, a full sync into a node
that has no kube-proxy table yet is coldstart.py's several transactions instead, applied in
order. Everything around the load -- kube-proxy's servers (health-check node ports,
/healthz, /metrics), the node's state file, metrics, stale UDP conntrack entries, paced syncs --
is the same as in the iptables mode, so this class takes it from there (KubeProxy) and changes
only what is rendered and how it is loaded. iptables is not touched: no KUBE- chain and no jump
from the built-in chains is written (the CNI's own iptables rules stay, as in a real cluster).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Hashable, Sequence
from typing import ClassVar

from testbed.kubernetes.dataplane.base import ApplyError, ClusterView
from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
from testbed.kubernetes.dataplane.metrics import ProxyMetrics
from testbed.kubernetes.dataplane.model import NodeContext, ServicePort
from testbed.kubernetes.dataplane.nftables import coldstart, listing, rules
from testbed.kubernetes.dataplane.nftables.names import FAMILY, MARK_MASQ, TABLE

NFT_ARGV = ("nft", "-f", "-")
PROBE_ARGV = ("nft", "-c", "-f", "-")
PROBE = f"add chain {FAMILY} {TABLE} {MARK_MASQ}\n"   # has_table(): fails without the table


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
    cold_start_in_steps: a full sync into a node without the table as coldstart.py's steps
        (default: the topology's kubeProxy.nftables.coldStartInSteps, else off: upstream's
        one transaction)
    """

    mode: ClassVar[str] = "nftables"

    def __init__(self, cluster: ClusterView, backend: str = "auto",
                 min_sync_period_s: float | None = None,
                 cold_start_in_steps: bool | None = None):
        super().__init__(cluster, backend, min_sync_period_s)
        if cold_start_in_steps is None:
            kube_proxy = getattr(getattr(cluster, "topo", None), "kube_proxy", None)
            cold_start_in_steps = getattr(kube_proxy, "nftables_cold_start_in_steps", False)
        self.cold_start_in_steps = bool(cold_start_in_steps)
        self.cold_starts: dict[str, int] = {}   # node -> transactions of its cold start in steps

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
        """`nft -f -` of `text` on `node`, one transaction (a cold start in steps: one per
        step, in order, stopping at the first refused); raises NFTablesError."""
        for step in coldstart.split(text) if text else ():   # "": nothing changed
            code, err = self._runner(node)(list(NFT_ARGV), step.encode())
            if code != 0:
                raise NFTablesError(node, code, err)

    def existing_names(self, node: str) -> tuple[set[str], set[str]]:
        """The chains and the sets kube-proxy's table on `node` holds now (`nft -j -t list
        chains|sets ip`; none where nft fails: nothing stale is deleted then)."""
        found: list[set[str]] = []
        for what in ("chains", "sets"):
            code, out = self._output(node, ["nft", "-j", "-t", "list", what, FAMILY])
            found.append(listing.names(out, what[:-1]) if code == 0 else set())
        return found[0], found[1]

    def has_table(self, node: str) -> bool:
        """Whether `node` has kube-proxy's table: `nft -c` (check, nothing applied) of adding a
        chain to it, which fails with ENOENT without the table. Cheap either way: no cache to
        fetch, where `nft list tables` fetched the whole 10,000-service table in seconds."""
        code, err = self._runner(node)(list(PROBE_ARGV), PROBE.encode())
        # anything else than "no such table": upstream's one transaction is right either way
        return code == 0 or "No such file or directory" not in err

    def _texts(self, nodes: Sequence[str], services: list[ServicePort]
               ) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
        """node -> its transaction now, node -> "full" or "partial", node -> seconds its text
        took to render. The per-service part is rendered once for the nodes it is the same
        on (rules.render_key); a full sync adds the node's own setup (its NodePort address).
        A cold start in steps (the option on, the node without the table) is coldstart's."""
        texts, kinds, seconds = {}, {}, {}
        rendered: dict[Hashable, tuple[str, float]] = {}
        stepped: dict[Hashable, tuple[list[str], str, float]] = {}
        for node in nodes:
            old, ctx = self.applied.get(node), self.context(node)
            if old is None and self.cold_start_in_steps and not self.has_table(node):
                texts[node], seconds[node] = self._cold_start(stepped, services, ctx)
                kinds[node] = "full"
                self.cold_starts[node] = len(coldstart.split(texts[node]))
                continue
            # a full sync over a table in place (a restart, a failed sync) lists its chains
            # and sets, as upstream's sync does, so the per-service ones nothing uses any more
            # go: that node's text is its own
            existing = (self.existing_names(node) if old is None and node in self.existing_rules
                        else None)
            key = (id(old), node if existing else "",
                   rules.render_key([*(old or ()), *services], ctx))
            if key not in rendered:
                t0 = time.time()
                text = (rules.render_services(services, ctx, *(existing or ((), ())))
                        if old is None else rules.render_partial(old, services, ctx))
                rendered[key] = text, time.time() - t0
            text, seconds[node] = rendered[key]
            if old is None:
                text = "\n".join(rules.render_setup(ctx)) + "\n" + text
            texts[node], kinds[node] = text, "full" if old is None else "partial"
        return texts, kinds, seconds

    @staticmethod
    def _cold_start(stepped: dict[Hashable, tuple[list[str], str, float]],
                    services: list[ServicePort], ctx: NodeContext) -> tuple[str, float]:
        """The node's cold start in steps as one text (coldstart.join) and the seconds it took
        to render; the chain steps and the elements are rendered once for the nodes they are
        the same on (`stepped`, by rules.render_key), the last step's setup per node."""
        key = rules.render_key(services, ctx)
        if key not in stepped:
            t0 = time.time()
            chains = coldstart.render_chain_steps(services, ctx)
            elements = coldstart.render_elements(services, ctx)
            stepped[key] = chains, elements, time.time() - t0
        chains, elements, seconds = stepped[key]
        return coldstart.join([*chains, coldstart.render_last(ctx, elements)]), seconds

    @staticmethod
    def _count_rules(metrics: ProxyMetrics, text: str, full: bool) -> None:
        """The iptables rule counts have no meaning here (upstream's nftables mode does not
        export them either)."""
