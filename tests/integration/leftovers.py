"""What of the testbed exists on the machine right now: namespaces, bridges, links, processes,
state files. Two snapshots compare equal when nothing was left behind."""

import os
import subprocess
from dataclasses import dataclass

from testbed.emulation.journal import STATE_ROOT, owned_bridges

MARKERS = ("mininet:", "podserver", "controllers.run", "testbed.kubernetes.dataplane.healthserver", "cnlb")


@dataclass(frozen=True)
class Snapshot:
    named_netns: frozenset
    bridges: frozenset
    root_links: frozenset
    processes: frozenset
    state: frozenset

    def diff(self, other):
        return {k: sorted(getattr(self, k) - getattr(other, k)) for k in self.__dataclass_fields__
                if getattr(self, k) - getattr(other, k)}


def _processes():
    me = os.getpid()
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in MARKERS) and "pytest" not in cmd:
            out.add(f"{pid} {cmd[:80]}")
    return frozenset(out)


def snapshot() -> Snapshot:
    netns = [line.split()[0] for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line.strip()]
    links = frozenset(l for l in os.listdir("/sys/class/net")
                      if l.startswith("vpc") or l.startswith("veth") or l.startswith("flannel"))
    state = frozenset(d for d in (os.listdir(STATE_ROOT) if os.path.isdir(STATE_ROOT) else [])
                      if d != "lock")
    return Snapshot(frozenset(netns), frozenset(owned_bridges()),
                    links, _processes(), state)
