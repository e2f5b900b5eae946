"""kube-proxy's modes for integration tests: the params of a cluster fixture that runs a module's
behaviour tests once per registered mode, and what each mode's state on a node looks like.

A mode joins the tests by its registry entry. A mode this machine's kernel cannot run (its
unavailable() says "kernel lacks ...") is skipped as "not run: kernel lacks ip_vs"; tests/
conftest.py lets exactly that reason through CNLB_REQUIRE_INTEGRATION=1 and names such tests in
the summary.
"""

from __future__ import annotations

import pytest

from testbed.kubernetes.dataplane.registry import DATAPLANES, dataplane_for

MODES = sorted(DATAPLANES)
NOT_RUN = "not run: "
KERNEL_LACKS = "kernel lacks "

# the command that prints a mode's state on a node, where it holds every endpoint's ip:port
STATE_COMMANDS = {
    "iptables": "iptables-save -t nat",
    "nftables": "nft list table ip kube-proxy",
    "ipvs": "ipvsadm -S -n",
}


def skip_unless_runs(mode: str) -> None:
    """Skip as "not run: kernel lacks X" when the kernel lacks what `mode` needs; any other
    reason is left to fail where the cluster is built."""
    missing = dataplane_for(mode).unavailable()
    if missing and missing.startswith(KERNEL_LACKS):
        pytest.skip(NOT_RUN + missing)


def allowed_skip_reasons() -> set[str]:
    """The skip reasons CI accepts: "not run: kernel lacks ..." for a registered mode whose
    kernel really lacks it here (asked of the mode again, so no other skip passes)."""
    out = set()
    for dataplane in DATAPLANES.values():
        missing = dataplane.unavailable()
        if missing and missing.startswith(KERNEL_LACKS):
            out.add(NOT_RUN + missing)
    return out


def state_of(cluster, node: str) -> str | None:
    """The node's kube-proxy state as its mode's tool prints it (None: no command known for
    the mode; a test then leaves that check out)."""
    command = STATE_COMMANDS.get(cluster.proxy_mode)
    return cluster.sh(node, command).stdout if command else None
