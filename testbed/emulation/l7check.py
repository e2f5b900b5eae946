"""What `cnlb up --check` adds with the L7 load balancer: HTTP requests from every client to
every VIP through HAProxy, and what the pod server's JSON says of them (who served, the
client's address in X-Forwarded-For). Parsing and judging are pure; check_l7 runs curl.

Two probes per client and VIP:
  new connections   one curl per request: every answer must carry the client's address
                    as the last X-Forwarded-For entry (the pod's peer is the proxy)
  keep-alive        one curl, one connection, several requests: HAProxy balances each
                    request on its own, so they reach more than one pod when several serve
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from testbed.emulation.reachability import LiveCluster

REQUESTS = 8


@dataclass
class L7Row:
    """One probe's result.

    source: the client; target: VIP:port; probe: "new connections" or "keep-alive"
    pods: the pods that answered, in first-answer order
    forwarded: the X-Forwarded-For values the pods reported
    want_pods: how many distinct pods the probe must reach (per-request balancing)
    """
    source: str
    target: str
    probe: str
    client_ip: str
    total: int
    answered: int = 0
    pods: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    want_pods: int = 1

    @property
    def forwarded_ok(self) -> bool:
        """Every answer saw the client's address as the last X-Forwarded-For entry."""
        return len(self.forwarded) == self.answered and all(
            f.split(",")[-1].strip() == self.client_ip for f in self.forwarded)

    @property
    def ok(self) -> bool:
        return (self.answered == self.total and self.forwarded_ok
                and len(self.pods) >= self.want_pods)


def parse_answers(text: str) -> list[dict]:
    """The pod server's JSON lines in curl's output (anything else is skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def judge(row: L7Row, answers: Sequence[dict]) -> L7Row:
    """Fill a row from the answers its probe got."""
    row.answered = len(answers)
    for a in answers:
        if a.get("pod") not in row.pods:
            row.pods.append(a.get("pod", "?"))
        if "forwarded_for" in a:
            row.forwarded.append(str(a["forwarded_for"]))
    return row


def new_connections_command(url: str, n: int) -> str:
    """n requests, each on a connection of its own."""
    return f"for i in $(seq {n}); do curl -s -m 5 {shlex.quote(url)}; echo; done"


def keepalive_command(url: str, n: int) -> str:
    """n requests on one kept-alive connection (curl reuses it for the same host)."""
    return f"curl -s -m 10 {' '.join([shlex.quote(url)] * n)}"


def check_l7(cluster: LiveCluster, n: int = REQUESTS) -> list[L7Row]:
    """Probe every VIP from every client through the L7 LB."""
    plan = cluster.plan
    rows = []
    for lb in plan.load_balancers:
        live = [p for p in plan.pods if p.name in _live_endpoints(cluster, lb.service)]
        url = f"http://{lb.vip}:{lb.port}/"
        for client in plan.clients:
            ip = plan.attachment(client).ip
            for probe, command in (("new connections", new_connections_command(url, n)),
                                   ("keep-alive", keepalive_command(url, n))):
                out = cluster.sh(client, command, timeout=60).stdout
                want = min(2, len(live)) if probe == "keep-alive" else 1
                rows.append(judge(L7Row(client, f"{lb.vip}:{lb.port}", probe, ip, n,
                                        want_pods=want), parse_answers(out)))
    return rows


def _live_endpoints(cluster: LiveCluster, service: str) -> set[str]:
    svc = next(s for s in cluster.plan.services if s.name == service)
    live = getattr(cluster, "live_pods", None)
    names = set(svc.endpoints)
    return names & live() if callable(live) else names


def format_l7(rows: Sequence[L7Row]) -> str:
    """The table `cnlb up --check` prints under the reachability table."""
    lines = [f"{'from':<12} {'through the L7 LB':<22} {'probe':<16} {'answered':>9}  result"]
    for r in rows:
        xff = "X-Forwarded-For " + (r.client_ip if r.forwarded_ok else
                                    "WRONG: " + ", ".join(sorted(set(r.forwarded))[:3]))
        verdict = "ok" if r.ok else "FAIL"
        lines.append(f"{r.source:<12} {r.target:<22} {r.probe:<16} "
                     f"{r.answered:>4}/{r.total:<4}  {verdict}: {len(r.pods)} pods "
                     f"({', '.join(r.pods[:6])}), {xff}")
    return "\n".join(lines)
