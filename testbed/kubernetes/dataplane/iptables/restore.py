"""Loading kube-proxy's rules into a node's tables: iptables-restore, the backends, the jumps.

The one effect of the iptables mode, `apply()`, takes the command runner as an argument (it
decides where commands run), so everything here is tested with a fake runner. Also here: the
jumps from the built-in chains into kube-proxy's (upstream EnsureRule, not part of the restore
input), the backends (legacy, nft) and how to tell them apart, the errors iptables-restore
reports, and reading which chains `iptables-save` lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from testbed.kubernetes.dataplane.base import ApplyError, CommandRunner
from testbed.kubernetes.dataplane.iptables.names import (
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
)

BACKENDS = ("auto", "legacy", "nft")


@dataclass(frozen=True)
class JumpRule:
    """A rule in a built-in chain that leads into kube-proxy's chains (upstream EnsureRule).

    These are not part of the restore input: with --noflush, "-A PREROUTING" would add a copy on
    every sync. They are checked with -C and inserted with -I when missing.
    """

    table: str
    chain: str
    target: str
    comment: str
    extra: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return [*self.extra, "-m", "comment", "--comment", self.comment, "-j", self.target]

    def rule_text(self) -> str:
        """The rule as iptables-save / iptables-restore writes it."""
        extra = " ".join(self.extra)
        return (f'-A {self.chain} {extra + " " if extra else ""}'
                f'-m comment --comment "{self.comment}" -j {self.target}')


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("filter", "INPUT", KUBE_EXTERNAL_SERVICES,
             "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_EXTERNAL_SERVICES,
             "kubernetes externally-visible service portals", _NEW),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    *(JumpRule("filter", chain, KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW)
      for chain in ("INPUT", "OUTPUT", "FORWARD")),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
)


def with_jump_rules(text: str) -> str:
    """The restore input with the jumps from the built-in chains added before each table's
    COMMIT (for a fresh namespace, whose built-in chains are empty)."""
    out: list[str] = []
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if line == "COMMIT" and table:
            out += [r.rule_text() for r in JUMP_RULES if r.table == table]
        out.append(line)
    return "\n".join(out) + "\n"


class RestoreError(ApplyError):
    """iptables-restore rejected the input.

    line: the failing line number in the input (None if the tool did not say)
    context: the numbered input lines around it
    stderr: what the tool printed
    """

    def __init__(self, argv: Sequence[str], text: str, returncode: int, stderr: str):
        self.line = failing_line(stderr)
        self.context = lines_around(text, self.line) if self.line else ""
        self.stderr = stderr
        self.returncode = returncode
        where = f" at input line {self.line}" if self.line else ""
        message = f"{' '.join(argv)} failed{where} (exit {returncode}): {stderr.strip()}"
        if self.context:
            message += "\n" + self.context
        super().__init__(message)


class IptablesCommandError(ApplyError):
    """An iptables command other than the restore failed."""


def _tool(backend: str, tool: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    return tool if backend == "auto" else tool.replace("iptables", f"iptables-{backend}", 1)


def save_argv(backend: str = "auto", table: str = "nat") -> list[str]:
    """iptables-save (or its legacy / nft flavour) of one table."""
    return [_tool(backend, "iptables-save"), "-t", table]


def restore_argv(backend: str = "auto", noflush: bool = True) -> list[str]:
    """iptables-restore / iptables-legacy-restore / iptables-nft-restore with its flags."""
    argv = [_tool(backend, "iptables-restore")]
    if noflush:
        argv.append("--noflush")
    argv.append("--wait")
    return argv


_LINE_PATTERNS = (re.compile(r"Error occurred at line: (\d+)"), re.compile(r"line (\d+) failed"))


def failing_line(stderr: str) -> int | None:
    """The input line iptables-restore names in its error ("line N failed" and the like)."""
    for pattern in _LINE_PATTERNS:
        found = pattern.search(stderr)
        if found:
            return int(found.group(1))
    return None


def lines_around(text: str, line: int, count: int = 3) -> str:
    """Numbered input lines line-count..line+count, the failing one marked with ">"."""
    lines = text.splitlines()
    out = []
    for n in range(max(1, line - count), min(len(lines), line + count) + 1):
        out.append(f"{'>' if n == line else ' '} {n:6d}: {lines[n - 1]}")
    return "\n".join(out)


def ensure_jump_rules(run: CommandRunner, backend: str = "auto") -> None:
    """Create kube-proxy's top-level chains and the jumps into them, if missing (upstream's
    EnsureChain / EnsureRule with Prepend, done on every full sync)."""
    iptables = _tool(backend, "iptables")
    for rule in JUMP_RULES:
        argv = [iptables, "-w", "-t", rule.table, "-N", rule.target]
        code, err = run(argv, None)
        if code != 0 and "exists" not in err:
            raise IptablesCommandError(f"{' '.join(argv)} failed (exit {code}): {err.strip()}")
        check = [iptables, "-w", "-t", rule.table, "-C", rule.chain, *rule.args()]
        if run(check, None)[0] == 0:
            continue
        insert = [iptables, "-w", "-t", rule.table, "-I", rule.chain, *rule.args()]
        code, err = run(insert, None)
        if code != 0:
            raise IptablesCommandError(f"{' '.join(insert)} failed (exit {code}): {err.strip()}")


def apply(
    run: CommandRunner, text: str, backend: str = "auto", noflush: bool = True,
    ensure_jumps: bool = True,
) -> None:
    """Load `text` with iptables-restore through `run(argv, stdin_bytes) -> (code, stderr)`.

    backend: "auto" (whatever `iptables-restore` points at), "legacy" or "nft"
    noflush: keep rules and chains the input does not mention (always, for kube-proxy)
    ensure_jumps: first make sure the built-in chains jump into kube-proxy's (upstream does this
        on full syncs; a partial sync may skip it)
    Raises RestoreError with the failing line and the lines around it.
    """
    if ensure_jumps:
        ensure_jump_rules(run, backend)
    argv = restore_argv(backend, noflush)
    code, err = run(argv, text.encode())
    if code != 0:
        raise RestoreError(argv, text, code, err)


def detect_backend(version_text: str) -> str:
    """"nft" or "legacy", from what `iptables -V` prints ("iptables v1.8.9 (nf_tables)")."""
    if "(nf_tables)" in version_text:
        return "nft"
    if "(legacy)" in version_text:
        return "legacy"
    raise ValueError(f"cannot tell the iptables backend from {version_text.strip()!r}")


def nat_chains_in_save(save_text: str) -> set[str]:
    """Chain names declared in the *nat part of `iptables-save` output."""
    chains: set[str] = set()
    in_nat = False
    for line in save_text.splitlines():
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif in_nat and line.startswith(":"):
            chains.add(line[1:].split()[0])
    return chains
