"""A small model of nftables, enough to test kube-proxy's rendered transactions without root.

- `Ruleset.load(text)`: `nft -f`'s semantics for the commands kube-proxy writes (add / flush /
  delete of tables, chains, sets, maps, rules and elements), all or nothing, with the errors
  the kernel gives: a rule naming a chain or set that does not exist, deleting a chain that is
  still referenced or an element that is not there, a map key added again with another verdict;
- `Ruleset.dump()`: the state as upstream's knftables.Fake dumps it (the lines upstream's
  TestOverallNFTablesRules compares), sorted;
- `trace(ruleset, packet)`: upstream's helpers_test.go tracer: the packet through the base
  chains of its hooks in priority order, every `numgen` branch followed, DNAT and masquerade
  recorded; `NFTablesNode` is the NodeModel of tests/unit/dataplane_models.py;
- `check(text)`: every per-service chain is used and every jump lands on a chain with rules.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from tests.unit.traces import Packet, Trace

TABLE = "ip kube-proxy"


class ModelError(Exception):
    """The transaction would fail; `line` is its 1-based line number."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(f"line {line}: {message}")


@dataclass
class Chain:
    spec: str = ""          # "type filter hook input priority 0" for a base chain, or a comment
    rules: list[str] = field(default_factory=list)


@dataclass
class Container:
    kind: str               # "set" or "map"
    spec: str
    elements: dict[str, tuple[str, str]] = field(default_factory=dict)   # key -> (value, comment)


@dataclass
class State:
    exists: bool = False
    comment: str = ""
    chains: dict[str, Chain] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)


_JUMP = re.compile(r"\b(?:jump|goto) (\S+)")
_SETREF = re.compile(r"@(\S+)")


def _references(text: str) -> tuple[set[str], set[str]]:
    """Chains jumped to and sets named in a rule or a verdict."""
    chains = {m.rstrip(",") for m in _JUMP.findall(text)}
    return chains, set(_SETREF.findall(text))


def _braces(rest: str) -> tuple[str, str]:
    """"NAME { spec }" -> (NAME, spec without braces)."""
    name, _, spec = rest.partition(" ")
    spec = spec.strip()
    if spec.startswith("{") and spec.endswith("}"):
        spec = spec[1:-1].strip().rstrip(";").strip()
    return name, spec


def _split_elements(body: str) -> list[tuple[str, str, str]]:
    """"k1 comment "c" : v1 , k2 : v2" -> [(key, comment, value)]."""
    out = []
    for part in re.split(r" , ", body):
        part = part.strip()
        key, _, value = part.partition(" : ")
        comment = ""
        m = re.search(r' comment "([^"]*)"', key)
        if m:
            comment, key = m.group(1), key[:m.start()]
        out.append((key.strip(), comment, value.strip()))
    return out


class Ruleset:
    """The `ip kube-proxy` table of one node."""

    def __init__(self) -> None:
        self.state = State()

    def load(self, text: str) -> None:
        work = copy.deepcopy(self.state)
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                _command(work, n, line)
        self.state = work

    # --- reading it back ------------------------------------------------------------------------

    def chains(self) -> dict[str, Chain]:
        return self.state.chains

    def snapshot(self) -> dict:
        s = self.state
        return {
            "exists": s.exists,
            "chains": {n: (c.spec, list(c.rules)) for n, c in s.chains.items()},
            "containers": {n: (c.kind, c.spec, dict(c.elements)) for n, c in s.containers.items()},
        }

    def dump(self) -> list[str]:
        """Upstream's knftables Fake.Dump(), one line each, sorted."""
        s, out = self.state, []
        if s.exists:
            out.append(f'add table {TABLE} {{ comment "{s.comment}" ; }}')
        for name, c in s.containers.items():
            out.append(f"add {c.kind} {TABLE} {name} {{ {c.spec} ; }}")
            for key, (value, comment) in c.elements.items():
                com = f' comment "{comment}"' if comment else ""
                val = f" : {value}" if value else ""
                out.append(f"add element {TABLE} {name} {{ {key}{com}{val} }}")
        for name, ch in s.chains.items():
            out.append(f"add chain {TABLE} {name}" + (f" {{ {ch.spec} ; }}" if ch.spec else ""))
            out += [f"add rule {TABLE} {name} {r}" for r in ch.rules]
        return sorted(out)


def _command(s: State, n: int, line: str) -> None:
    verb, obj, rest = (line.split(" ", 2) + ["", ""])[:3]
    if not rest.startswith(TABLE):
        raise ModelError(n, f"not in table {TABLE}: {line!r}")
    rest = rest[len(TABLE):].strip()
    if obj == "table":
        _table(s, n, verb, rest)
        return
    if not s.exists:
        raise ModelError(n, "no such table")
    handler = {"chain": _chain_command, "set": _container_command, "map": _container_command,
               "rule": _rule_command, "element": _element_command}.get(obj)
    if handler is None:
        raise ModelError(n, f"unknown object {obj!r}")
    handler(s, n, verb, obj, rest)


def _table(s: State, n: int, verb: str, rest: str) -> None:
    if verb == "add":
        s.exists = True
        m = re.search(r'comment "([^"]*)"', rest)
        s.comment = m.group(1) if m else s.comment
    elif verb == "delete":
        if not s.exists:
            raise ModelError(n, "no such table")
        s.__init__()  # type: ignore[misc]


def _chain_command(s: State, n: int, verb: str, obj: str, rest: str) -> None:
    name, spec = _braces(rest)
    if verb == "add":
        chain = s.chains.setdefault(name, Chain())
        spec = spec.replace(" ;", "").strip()
        if spec and chain.spec and chain.spec != spec:
            raise ModelError(n, f"chain {name} exists with {chain.spec!r}")
        chain.spec = spec or chain.spec
    elif verb == "flush":
        _chain(s, n, name).rules.clear()
    elif verb == "delete":
        _chain(s, n, name)
        users = [c for c, ch in s.chains.items() if c != name
                 and any(name in _references(r)[0] for r in ch.rules)]
        users += [c for c, cont in s.containers.items()
                  if any(name in _references(v)[0] for v, _ in cont.elements.values())]
        if users:
            raise ModelError(n, f"chain {name} is busy (used by {users[0]})")
        del s.chains[name]
    else:
        raise ModelError(n, f"unknown command {verb} chain")


def _container_command(s: State, n: int, verb: str, obj: str, rest: str) -> None:
    name, spec = _braces(rest)
    if verb == "add":
        spec = " ; ".join(p.strip() for p in spec.split(";") if p.strip())
        c = s.containers.setdefault(name, Container(obj, spec))
        if c.spec != spec:
            raise ModelError(n, f"{obj} {name} exists with {c.spec!r}")
    elif verb == "flush":
        _container(s, n, name).elements.clear()
    elif verb == "delete":
        _container(s, n, name)
        for c, ch in s.chains.items():
            if any(name in _references(r)[1] for r in ch.rules):
                raise ModelError(n, f"{obj} {name} is busy (used by {c})")
        del s.containers[name]
    else:
        raise ModelError(n, f"unknown command {verb} {obj}")


def _rule_command(s: State, n: int, verb: str, obj: str, rest: str) -> None:
    name, _, rule = rest.partition(" ")
    chain = _chain(s, n, name)
    jumps, sets = _references(rule)
    for target in jumps:
        _chain(s, n, target)
    for ref in sets:
        _container(s, n, ref)
    if verb != "add":
        raise ModelError(n, f"unknown command {verb} rule")
    chain.rules.append(rule)


def _element_command(s: State, n: int, verb: str, obj: str, rest: str) -> None:
    name, body = _braces(rest)
    c = _container(s, n, name)
    for key, comment, value in _split_elements(body):
        if verb == "add":
            for target in _references(value)[0]:
                _chain(s, n, target)
            if key in c.elements and c.elements[key][0] != value:
                raise ModelError(n, f"{name} {{ {key} }} exists with another value")
            c.elements[key] = (value, comment)
        elif verb == "delete":
            if key not in c.elements:
                raise ModelError(n, f"{name} has no element {key}")
            del c.elements[key]
        else:
            raise ModelError(n, f"unknown command {verb} element")


def _chain(s: State, n: int, name: str) -> Chain:
    if name not in s.chains:
        raise ModelError(n, f"no such chain {name}")
    return s.chains[name]


def _container(s: State, n: int, name: str) -> Container:
    if name not in s.containers:
        raise ModelError(n, f"no such set or map {name}")
    return s.containers[name]


# --- packet tracing (upstream helpers_test.go's nftablesTracer) ----------------------------------


@dataclass
class _Ctx:
    pkt: Packet
    dst: str
    out: Trace


def _addr_match(spec: str, ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(spec, strict=False)


def _key(ctx: _Ctx, words: list[str]) -> str:
    """The value of a concatenation such as "ip daddr . meta l4proto . th dport"."""
    parts = []
    text = " ".join(words)
    for part in text.split(" . "):
        part = part.strip()
        if part == "ip daddr":
            parts.append(ctx.dst)
        elif part == "ip saddr":
            parts.append(ctx.pkt.src)
        elif part == "meta l4proto":
            parts.append(ctx.pkt.protocol)
        elif part == "th dport":
            parts.append(str(ctx.pkt.dport))
        else:
            raise AssertionError(f"tracer does not know {part!r}")
    return " . ".join(parts)


def _run_verdict(rs: Ruleset, verdict: str, ctx: _Ctx, depth: int) -> str | None:
    """Apply a verdict ("goto X", "jump X", "drop", ...); returns "done" when the packet's fate
    is decided, "goto" when control does not come back, None to continue."""
    word, _, target = verdict.partition(" ")
    if word == "drop":
        ctx.out.verdicts.append("DROP")
        return "done"
    if word == "reject":
        ctx.out.verdicts.append("REJECT")
        return "done"
    if word == "accept":
        return "done"
    if word == "return":
        return "return"
    if word in ("jump", "goto"):
        if target == "mark-for-masquerade":
            ctx.out.masquerade = True
            return None if word == "jump" else "return"
        result = _run_chain(rs, target, ctx, depth + 1)
        if result == "done":
            return "done"
        return "return" if word == "goto" else None
    raise AssertionError(f"tracer does not know verdict {verdict!r}")


_Match = bool | str | None   # a matcher's answer: words used (True), no match (False), a verdict


def _run_rule(rs: Ruleset, chain: str, rule: str, ctx: _Ctx, depth: int) -> str | None:
    """One rule: its matches left to right, then its verdict; None to go on to the next rule."""
    rule = re.sub(r' comment "[^"]*"$', "", rule)
    words = shlex.split(rule.replace("{", " { ").replace("}", " } "))
    i = 0
    while i < len(words):
        rest = words[i:]
        if rest[0] == "numgen":
            # "numgen random mod N vmap { 0 : goto A , 1 : goto B }": every branch
            body = rule[rule.index("vmap {") + 6:rule.rindex("}")]
            results = [_run_verdict(rs, value, ctx, depth)
                       for _, _, value in _split_elements(body)]
            ctx.out.matched.append(f"{chain}: {rule}")
            return "done" if all(r == "done" for r in results) else "return"
        if "vmap" in rest:
            return _lookup(rs, chain, rule, rest, ctx, depth)
        if rest[:2] == ["dnat", "to"]:
            ctx.out.matched.append(f"{chain}: {rule}")
            ctx.out.destinations.add(rest[2])
            return "done"
        if rest[0] in ("mark", "masquerade"):
            return None   # the masquerading chain: postrouting, not traced
        if rest[0] in ("jump", "goto", "drop", "reject", "accept", "return"):
            ctx.out.matched.append(f"{chain}: {rule}")
            verdict = " ".join(rest[:2]) if rest[0] in ("jump", "goto") else rest[0]
            return _run_verdict(rs, verdict, ctx, depth)
        used = _match(rs, rest, ctx)
        if not used:
            return None
        i += used
    return None


def _match(rs: Ruleset, rest: list[str], ctx: _Ctx) -> int:
    """How many words of `rest` one match took, or 0 when the packet does not match."""
    if rest[:3] == ["ct", "state", "new"]:
        return 3
    if rest[:3] == ["fib", "saddr", "type"]:
        local = ctx.pkt.src in ctx.pkt.local_ips | {"127.0.0.1"}
        return 4 if local == (rest[3] == "local") else 0
    if rest[0] == "ip" and rest[1] in ("daddr", "saddr"):
        value = ctx.dst if rest[1] == "daddr" else ctx.pkt.src
        neg = rest[2] == "!="
        spec = rest[3] if neg else rest[2]
        if spec == "{":   # an anonymous set: "ip saddr != { 10.0.0.0/8 , 1.2.3.4 }"
            start = 4 if neg else 3
            end = rest.index("}", start)
            hit = any(_addr_match(a, value) for a in rest[start:end] if a != ",")
            return end + 1 if hit != neg else 0
        if spec.startswith("@"):
            hit = value in rs.state.containers[spec[1:]].elements
        else:
            hit = _addr_match(spec, value)
        return (4 if neg else 3) if hit != neg else 0
    if rest[0] in ("tcp", "udp", "sctp") and rest[1] == "dport":
        return 3 if (ctx.pkt.protocol, ctx.pkt.dport) == (rest[0], int(rest[2])) else 0
    if rest[:2] == ["meta", "l4proto"]:
        return 3 if ctx.pkt.protocol == rest[2] else 0
    if rest[0] == "update":
        return 6   # update @set { ip saddr }: nothing to see on a first packet
    raise AssertionError(f"tracer does not know {' '.join(rest)!r}")


def _lookup(rs: Ruleset, chain: str, rule: str, rest: list[str], ctx: _Ctx,
            depth: int) -> str | None:
    """"KEY vmap @MAP", optionally after "ip daddr @SET": the verdict the map has for the
    packet's key, or None when it has none."""
    j = rest.index("vmap")
    words = rest[:j]
    if rest[2].startswith("@"):   # "ip daddr @SET meta l4proto . th dport vmap @MAP"
        if ctx.dst not in rs.state.containers[rest[2][1:]].elements:
            return None
        words = rest[3:j]
    hit = rs.state.containers[rest[j + 1].lstrip("@")].elements.get(_key(ctx, words))
    if hit is None:
        return None
    ctx.out.matched.append(f"{chain}: {rule} -> {hit[0]}")
    return _run_verdict(rs, hit[0], ctx, depth)


def _run_chain(rs: Ruleset, chain: str, ctx: _Ctx, depth: int = 0) -> str | None:
    """Walk one chain: "done" if the packet's fate was decided, else None (fell off or
    returned)."""
    if depth > 50:
        raise AssertionError(f"loop at {chain}")
    for rule in rs.chains()[chain].rules:
        result = _run_rule(rs, chain, rule, ctx, depth)
        if result == "done":
            return "done"
        if result == "return":
            return None
    return None


def _base_chains(rs: Ruleset, hook: str, kind: str) -> list[str]:
    found = []
    for name, ch in rs.chains().items():
        m = re.match(r"type (\w+) hook (\w+) priority (-?\d+)", ch.spec)
        if m and m.group(2) == hook and m.group(1) == kind:
            found.append((int(m.group(3)), name))
    return [name for _, name in sorted(found)]


def trace(rs: Ruleset, pkt: Packet) -> Trace:
    """Where the first packet of a connection can go, and whether it is masqueraded."""
    out = Trace()
    first = "output" if pkt.local_origin else "prerouting"
    ctx = _Ctx(pkt, pkt.dst, out)
    for chain in _base_chains(rs, first, "filter"):
        if _prio(rs, chain) < -100 and _run_chain(rs, chain, ctx) == "done":
            return out
    for chain in _base_chains(rs, first, "nat"):
        _run_chain(rs, chain, ctx)
    if out.destinations:
        ctx.dst = sorted(out.destinations)[0].rsplit(":", 1)[0]
    if pkt.local_origin:
        after = "output"
    else:
        after = "input" if ctx.dst in pkt.local_ips | {"127.0.0.1"} else "forward"
    for chain in _base_chains(rs, after, "filter"):
        if _prio(rs, chain) >= -100 and _run_chain(rs, chain, ctx) == "done":
            break
    return out


def _prio(rs: Ruleset, chain: str) -> int:
    m = re.search(r"priority (-?\d+)", rs.chains()[chain].spec)
    assert m, chain
    return int(m.group(1))


class NFTablesNode:
    """One node's `ip kube-proxy` table, every text loaded as `nft -f` loads it."""

    def __init__(self) -> None:
        self.ruleset = Ruleset()

    def load(self, text: str) -> None:
        self.ruleset.load(text)

    def snapshot(self) -> dict:
        return self.ruleset.snapshot()

    def trace(self, pkt: Packet) -> Trace:
        return trace(self.ruleset, pkt)

    @staticmethod
    def check(text: str) -> None:
        check_references(text)


def check_references(text: str) -> None:
    """Raise AssertionError if, after loading `text` on an empty node, a per-service chain is
    not used by any rule or map element, or a chain that is jumped to has no rules."""
    rs = Ruleset()
    rs.load(text)
    used: set[str] = set()
    for ch in rs.chains().values():
        for r in ch.rules:
            used |= _references(r)[0]
    for c in rs.state.containers.values():
        for value, _ in c.elements.values():
            used |= _references(value)[0]
    problems = []
    unused = sorted(c for c in rs.chains() if "/" in c and c not in used)
    if unused:
        problems.append(f"created but not used: {unused}")
    empty = sorted(c for c in used if not rs.chains()[c].rules)
    if empty:
        problems.append(f"jumped to but have no rules: {empty}")
    if problems:
        raise AssertionError("; ".join(problems))
