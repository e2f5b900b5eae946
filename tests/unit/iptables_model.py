"""A small model of iptables, enough to test kube-proxy's rendered rules without root.

- `Tables.restore(text)`: iptables-restore's semantics for what kube-proxy uses ("*table",
  ":CHAIN" creates or, with --noflush, flushes; "-A", "-I", "-F", "-X"; COMMIT all or nothing);
- `trace(tables, packet)`: upstream's tracePacket (every probabilistic branch followed), then
  the filter chains kube-proxy owns; `IptablesNode` is a node with kube-proxy's jumps in place;
- `check_jumps(text)`: upstream's checkIPTablesRuleJumps (no jump to a missing or empty chain,
  no chain created and never used); `sort_like_upstream`: upstream's test ordering.
"""

from __future__ import annotations

import copy
import ipaddress
import shlex
from dataclasses import dataclass, field

from testbed.kubernetes.dataplane.iptables.restore import JUMP_RULES
from tests.unit.traces import Packet, Trace

BUILTIN = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
TERMINAL = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MASQUERADE", "MARK", "SNAT"}
KUBE_TOP_LEVEL = {
    "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-FORWARD",
    "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-PROXY-FIREWALL",
}


class ModelError(Exception):
    """The restore input would fail; `line` is its 1-based line number."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(f"line {line}: {message}")


class Tables:
    """table -> chain -> list of rule specs (the text after "-A CHAIN ")."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN.items()
        }

    def restore(self, text: str, noflush: bool = True) -> None:
        table_name, work = None, None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table_name = line[1:]
                work = copy.deepcopy(self.tables.setdefault(table_name, {}))
                if not noflush:
                    work = {c: [] for c in BUILTIN.get(table_name, ())}
            elif work is None:
                raise ModelError(n, f"{line!r} outside a table")
            elif line == "COMMIT":
                self.tables[table_name] = work
                table_name, work = None, None
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                if chain not in BUILTIN.get(table_name, ()):
                    work[chain] = []  # create, or flush an existing chain
            else:
                _apply_command(work, table_name, n, line)
        if work is not None:
            raise ModelError(len(text.splitlines()), "no COMMIT at the end")

    def chains(self, table: str) -> dict[str, list[str]]:
        return self.tables[table]

    def snapshot(self) -> dict[str, dict[str, list[str]]]:
        return copy.deepcopy(self.tables)


def _apply_command(work: dict[str, list[str]], table: str, n: int, line: str) -> None:
    op, _, rest = line.partition(" ")
    chain, _, spec = rest.partition(" ")
    if op in ("-A", "-I", "-F", "-X") and chain not in work:
        raise ModelError(n, f"chain {chain} does not exist in {table}")
    if op == "-A":
        target = parse_rule(spec).target
        if target not in TERMINAL and target is not None and target not in work:
            raise ModelError(n, f"jump to {target}, which does not exist")
        work[chain].append(spec)
    elif op == "-I":
        work[chain].insert(0, spec)
    elif op == "-F":
        work[chain].clear()
    elif op == "-X":
        if chain in BUILTIN.get(table, ()):
            raise ModelError(n, f"cannot delete built-in chain {chain}")
        if work[chain]:
            raise ModelError(n, f"chain {chain} is not empty")
        for other, rules in work.items():
            if any(parse_rule(r).target == chain for r in rules):
                raise ModelError(n, f"chain {chain} is still referenced from {other}")
        del work[chain]
    else:
        raise ModelError(n, f"unknown command {op}")


# --- rules ----------------------------------------------------------------------------------------


@dataclass
class Addr:
    value: str
    negated: bool = False

    def matches(self, ip: str) -> bool:
        hit = ipaddress.ip_address(ip) in ipaddress.ip_network(self.value, strict=False)
        return hit != self.negated


@dataclass
class Rule:
    raw: str
    source: Addr | None = None
    destination: Addr | None = None
    protocol: str | None = None
    dport: int | None = None
    src_type: tuple[str, bool] | None = None  # (type, negated)
    dst_type: tuple[str, bool] | None = None
    probability: float | None = None
    recent_check: bool = False
    mark_check: bool = False
    ctstate: str | None = None
    comment: str | None = None
    target: str | None = None
    to_destination: str | None = None
    extra: list[str] = field(default_factory=list)


# Options whose value is copied into a Rule field (with its type); "-s", "-d", "--src-type" and
# "--dst-type" also take a preceding "!".
_VALUES = {
    "-p": ("protocol", str), "--dport": ("dport", int), "--probability": ("probability", float),
    "--ctstate": ("ctstate", str), "--comment": ("comment", str), "-j": ("target", str),
    "--to-destination": ("to_destination", str),
}
_NEGATABLE = {
    "-s": "source", "-d": "destination", "--src-type": "src_type", "--dst-type": "dst_type",
}
# Module names and values that do not affect matching here.
_IGNORED = {"-m", "--mode", "--name", "--seconds", "--or-mark", "--xor-mark"}


def parse_rule(spec: str) -> Rule:
    """Parse the part of a rule after "-A CHAIN"."""
    tokens = shlex.split(spec)
    rule = Rule(raw=spec)
    neg = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok == "!":
            neg = True
            i += 1
            continue
        if tok in _NEGATABLE:
            name = _NEGATABLE[tok]
            setattr(rule, name, Addr(nxt, neg) if name in ("source", "destination") else (nxt, neg))
        elif tok in _VALUES:
            name, kind = _VALUES[tok]
            setattr(rule, name, kind(nxt) if nxt is not None else None)
        elif tok == "--mark":
            rule.mark_check = True
        elif tok == "--rcheck" or tok not in _IGNORED:  # flags without a value
            if tok == "--rcheck":
                rule.recent_check = True
            else:
                rule.extra.append(tok)
            i += 1
            neg = False
            continue
        i += 2
        neg = False
    return rule


# --- packet tracing -------------------------------------------------------------------------------


def _rule_matches(rule: Rule, pkt: Packet, dst: str) -> bool:
    local = pkt.local_ips | {"127.0.0.1"}
    if rule.source and not rule.source.matches(pkt.src):
        return False
    if rule.destination and not rule.destination.matches(dst):
        return False
    if rule.protocol and rule.protocol != pkt.protocol:
        return False
    if rule.dport is not None and rule.dport != pkt.dport:
        return False
    if rule.src_type and ((pkt.src in local) == rule.src_type[1]):
        return False
    if rule.dst_type and ((dst in local) == rule.dst_type[1]):
        return False
    # History-dependent matches (affinity, marks, conntrack state) never match a first packet
    # in this model, as in upstream's tracer.
    if rule.recent_check or rule.mark_check:
        return False
    if rule.ctstate and "NEW" not in rule.ctstate.split(","):
        return False
    return True


def _run_chain(tables: Tables, table: str, chain: str, pkt: Packet, dst: str, out: Trace) -> bool:
    """Walk one chain; True if the packet reached a terminal verdict on every path."""
    for spec in tables.chains(table).get(chain, []):
        rule = parse_rule(spec)
        if rule.target is None or not _rule_matches(rule, pkt, dst):
            continue
        out.matched.append(f"{chain}: {spec}")
        if rule.target == "KUBE-MARK-MASQ":
            out.masquerade = True
        elif rule.target == "DNAT":
            out.destinations.add(rule.to_destination)
            return True
        elif rule.target in ("ACCEPT", "DROP", "REJECT"):
            out.verdicts.append(rule.target)
            return True
        elif rule.target == "RETURN":
            return False
        elif rule.target in TERMINAL:
            continue
        else:
            done = _run_chain(tables, table, rule.target, pkt, dst, out)
            if done and rule.probability is None:
                return True
    return False


def trace(tables: Tables, pkt: Packet, filter_chains: tuple[str, ...] = (
        "KUBE-PROXY-FIREWALL", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"),
          ) -> Trace:
    """Where the first packet of a connection can go, and whether it is masqueraded."""
    out = Trace()
    entry = "OUTPUT" if pkt.local_origin else "PREROUTING"
    _run_chain(tables, "nat", entry, pkt, pkt.dst, out)
    dst = pkt.dst
    if out.destinations:
        dst = sorted(out.destinations)[0].rsplit(":", 1)[0]
    for chain in filter_chains:
        _run_chain(tables, "filter", chain, pkt, dst, out)
    return out


class IptablesNode:
    """One node's tables as kube-proxy's iptables mode keeps them: the jumps from the built-in
    chains in place (what ensure_jump_rules() inserts), then every text loaded with --noflush."""

    def __init__(self) -> None:
        self.tables = Tables()
        for rule in JUMP_RULES:
            self.tables.chains(rule.table).setdefault(rule.target, [])
            self.tables.chains(rule.table)[rule.chain].insert(0, rule.rule_text().split(" ", 2)[2])

    def load(self, text: str) -> None:
        self.tables.restore(text)

    def snapshot(self) -> dict[str, dict[str, list[str]]]:
        return self.tables.snapshot()

    def trace(self, pkt: Packet) -> Trace:
        return trace(self.tables, pkt)

    @staticmethod
    def check(text: str) -> None:
        check_jumps(text)


# --- consistency (upstream checkIPTablesRuleJumps) -----------------------------------------------


def check_jumps(text: str) -> None:
    """Raise AssertionError if a rendered nat table jumps to a chain it does not create or
    fill, or creates a chain nothing jumps to."""
    created, filled, jumped = set(), set(), set()
    in_nat = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat:
            continue
        elif line.startswith(":"):
            created.add(line[1:].split()[0])
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            filled.add(chain)
            target = parse_rule(spec).target
            if target and target not in TERMINAL:
                jumped.add(target)
        elif line.startswith("-X "):
            created.discard(line.split()[1])
    problems = []
    if jumped - created:
        problems.append(f"jumped to but not created: {sorted(jumped - created)}")
    empty = jumped - filled - {"KUBE-NODEPORTS"}  # may be empty: the jump is always written
    if empty:
        problems.append(f"jumped to but have no rules: {sorted(empty)}")
    if filled - created:
        problems.append(f"used but not created: {sorted(filled - created)}")
    unused = created - jumped - KUBE_TOP_LEVEL
    if unused:
        problems.append(f"created but not used: {sorted(unused)}")
    if problems:
        raise AssertionError("; ".join(problems))


# --- upstream's test ordering (sortIPTablesRules) ------------------------------------------------


def _chain_order(name: str) -> tuple:
    if name == "KUBE-NODEPORTS":
        return (0, "")
    if name == "KUBE-SERVICES":
        return (1, "")
    return (2 if name.startswith("KUBE-") else 3, name)


def _service_of(spec: str) -> str:
    comment = parse_rule(spec).comment or ""
    for sep in (" ", ":"):
        comment = comment.split(sep)[0]
    return comment


def sort_like_upstream(text: str) -> str:
    """Reorder restore text the way upstream's tests do before comparing: tables by name,
    chains KUBE-NODEPORTS, KUBE-SERVICES, then by name; rules grouped per chain in order,
    KUBE-SERVICES/KUBE-NODEPORTS rules stably by service name (the NodePorts rule last)."""
    tables: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("*"):
            name = line[1:]
            tables[name] = ([], {})
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            tables[name][0].append(line)
            tables[name][1].setdefault(chain, [])
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            tables[name][1].setdefault(chain, []).append(spec)
    out = []
    for name in sorted(tables):
        decls, rules = tables[name]
        order = sorted(rules, key=_chain_order)
        out.append(f"*{name}")
        declared = {d[1:].split()[0]: d for d in decls}
        out += [declared[c] for c in order if c in declared]
        for chain in order:
            specs = rules[chain]
            if chain in ("KUBE-SERVICES", "KUBE-NODEPORTS"):
                specs = sorted(specs, key=lambda s: (
                    "must be the last rule" in (parse_rule(s).comment or ""), _service_of(s)))
            out += [f"-A {chain} {s}" for s in specs]
        out.append("COMMIT")
    return "\n".join(out) + "\n"
