"""A cold start in steps: the nftables mode's full sync into a node that has no kube-proxy table
yet, as several `nft -f` transactions instead of one (opt-in: kubeProxy.nftables.coldStartInSteps).

Upstream's issue "Investigate nftables startup performance at scale" (kubernetes#139328)
proposes it: when the table does not exist, create the endpoint chains and affinity sets first,
then the service chains, then the rest, so that no single transaction holds everything. Here
the steps also carry the chains' rules, chunked: the kernel binds each anonymous set (the
`numgen random mod N vmap { ... }` of a service chain) by walking the whole transaction so far,
so one transaction of N services costs O(N^2) and chunks of at most K lines cost O(N * K).

Every intermediate state sends no packet anywhere new: the steps before the last create only
the table and regular chains nothing jumps to (no base chain, no map element names them). The
last transaction is what makes them reachable: rules.render_setup (base chains, fixed chains,
sets and maps) and every map and set element, as in the one-transaction full sync. The ruleset
it leaves is the one rules.render leaves, chain for chain and element for element.

Pure. The steps travel as one text, each step after a STEP comment line (valid nft input
whole), so the proxier's one-text-per-node plumbing carries them; split() takes them apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from testbed.kubernetes.dataplane.model import NodeContext, ServicePort
from testbed.kubernetes.dataplane.nftables import rules
from testbed.kubernetes.dataplane.nftables.names import MARK_MASQ, MASQUERADE_MARK

STEP = "# kube-proxy cold start: next transaction"
# Bounds of a transaction before the last: lines, and anonymous sets (service chains' numgen
# vmaps: binding each walks the transaction). At 10,000 services x 5 endpoints the full sync
# is about 250,000 lines and 10,000 vmaps; bench/kubeproxy_sync.py --backends nftables-steps
# measures the choice (--steps-max-lines, --steps-max-vmaps).
DEFAULT_MAX_LINES = 20_000
DEFAULT_MAX_VMAPS = 500
# Elements per `add element` command in the last transaction (render_elements).
ELEMENTS_PER_COMMAND = 1_000

_ENDPOINT_PREFIXES = ("endpoint-", "affinity-")


def _target(line: str) -> str:
    """The chain or set a per-service line writes: `add rule ip kube-proxy NAME ...`."""
    parts = line.split(" ", 5)
    return parts[4] if len(parts) > 4 else ""


def _split_service(lines: list[str]) -> tuple[list[str], list[str]]:
    """One service port's chain lines (rules' _write_chains) as (its endpoint chains and
    affinity sets, its service / local / external chains), each in the order written."""
    endpoint = [x for x in lines if _target(x).startswith(_ENDPOINT_PREFIXES)]
    service = [x for x in lines if not _target(x).startswith(_ENDPOINT_PREFIXES)]
    return endpoint, service


def _vmaps(lines: list[str]) -> int:
    """The anonymous verdict maps these lines write (`... vmap { ... }`)."""
    return sum(" vmap { " in line for line in lines)


def _chunks(units: Iterable[list[str]], max_lines: int, max_vmaps: int) -> list[str]:
    """Units (one service port's lines each, never split) packed into texts of at most
    max_lines lines and max_vmaps anonymous maps (a larger unit alone in its text)."""
    out: list[str] = []
    current: list[str] = []
    vmaps = 0
    for unit in units:
        n = _vmaps(unit)
        if current and (len(current) + len(unit) > max_lines or vmaps + n > max_vmaps):
            out.append("\n".join(current) + "\n")
            current, vmaps = [], 0
        current += unit
        vmaps += n
    if current:
        out.append("\n".join(current) + "\n")
    return out


def render_chain_steps(services: Iterable[ServicePort], node: NodeContext,
                       max_lines: int = DEFAULT_MAX_LINES,
                       max_vmaps: int = DEFAULT_MAX_VMAPS) -> list[str]:
    """The transactions before the last: the table and mark-for-masquerade (what endpoint
    chains jump to), then every endpoint chain and affinity set, then every service, local
    and external chain, with their rules; each transaction at most max_lines lines and
    max_vmaps anonymous maps (one service port's lines are never split). Nothing of it is
    reachable from a hook. The same on every node with the same rules.render_key."""
    if max_lines < 1 or max_vmaps < 1:
        raise ValueError(f"max_lines and max_vmaps must be at least 1, not {max_lines} and "
                         f"{max_vmaps}")
    endpoint_units, service_units = [], []
    for svc in rules._sorted_services(services):
        lines: list[str] = []
        rules._write_chains(lines, rules._plan(svc, node.node_name), node)
        endpoint, service = _split_service(lines)
        endpoint_units.append(endpoint)
        service_units.append(service)
    head = [f'add table {rules.T} {{ comment "rules for kube-proxy" ; }}',
            f"add chain {rules.T} {MARK_MASQ}", f"flush chain {rules.T} {MARK_MASQ}",
            f"add rule {rules.T} {MARK_MASQ} mark set mark or {MASQUERADE_MARK}"]
    return _chunks([head, *endpoint_units, *service_units], max_lines, max_vmaps)


def render_elements(services: Iterable[ServicePort], node: NodeContext,
                    per_command: int = ELEMENTS_PER_COMMAND) -> str:
    """Every service port's map and set elements (the last transaction's second half), the
    same elements rules.render writes, several to an `add element` command: the kernel finds
    the set of each command by walking the table's list of sets, which holds one anonymous set
    per service chain, so one command per element costs O(elements x services)."""
    elements: list[rules.Element] = []
    for svc in rules._sorted_services(services):
        elements += rules._elements_of(rules._plan(svc, node.node_name))
    by_container: dict[str, list[rules.Element]] = {}
    for e in rules._dedupe(elements):
        by_container.setdefault(e.container, []).append(e)
    out = []
    for container, items in by_container.items():
        for i in range(0, len(items), per_command):
            out.append(f"add element {rules.T} {container} {{ "
                       + " , ".join(_element(e) for e in items[i:i + per_command]) + " }\n")
    return "".join(out)


def _element(e: rules.Element) -> str:
    """One element inside an `add element` list, as rules.Element.add writes it alone."""
    comment = f' comment "{e.comment}"' if e.comment else ""
    value = f" : {e.value}" if e.value else ""
    return f"{e.key}{comment}{value}"


def render_last(node: NodeContext, elements: str) -> str:
    """The last transaction: the table's setup (base chains and their jumps, fixed chains,
    sets and maps, the node's NodePort address), then the elements that name the chains the
    earlier steps created: from here on traffic reaches them."""
    return "\n".join(rules.render_setup(node)) + "\n" + elements


def join(steps: Iterable[str]) -> str:
    """The steps as one text: each after a STEP line (an nft comment)."""
    return "".join(f"{STEP}\n{step}" for step in steps)


def split(text: str) -> list[str]:
    """join()'s steps back (a text without STEP lines: itself, one transaction)."""
    if not text.startswith(STEP + "\n"):
        return [text]
    return [part for part in text[len(STEP) + 1:].split(f"\n{STEP}\n") if part.strip()]


def render(services: Iterable[ServicePort], node: NodeContext,
           max_lines: int = DEFAULT_MAX_LINES, max_vmaps: int = DEFAULT_MAX_VMAPS) -> list[str]:
    """A cold start's transactions, in order: render_chain_steps, then render_last."""
    services = list(services)
    return [*render_chain_steps(services, node, max_lines, max_vmaps),
            render_last(node, render_elements(services, node))]
