"""What a test's clusters left on the machine: only what they made, never a name pattern.

A cluster writes down everything before it makes it (testbed.emulation.journal's journal:
processes by pid
and start time, OVS bridges, root-namespace links, files), and teardown deletes the journal. So
a watch keeps a hard link to every journal that appears while a test runs, and reads it at the
end; it also notes the processes that descend from the test or from a journaled process while
it runs (a child the journal does not name, such as the controller's health checker), and the
eBPF kube-proxy's bpffs mount, programs and maps (by id) and tc filters. A `cnlb validate` in
another terminal, the machine owner's bridges, namespaces and links are neither, so they are no
leftover.

Watch: started before a test; a thread follows the journals and the process tree.
Watch.leftovers(): what the watched journals name, and the processes seen made, that still exist.
snapshot() / Snapshot.diff(before): the same, in the before/after form a fixture can use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from testbed.emulation.journal import STATE_ROOT, alive, bridge_exists, owned_bridges

JOURNAL_POLL_S = 0.01   # a journal lives from a cluster's preflight to its teardown's end: seconds
TREE_EVERY = 10         # the process tree is read every 10th poll (it costs more)
# Open vSwitch's daemons: started by set-up or a test (ovs-ctl) and meant to stay running
OVS_PIDFILES = ("/var/run/openvswitch/ovs-vswitchd.pid", "/var/run/openvswitch/ovsdb-server.pid")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state letter, start time) of a process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()   # the name (field 2) may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
    except OSError:
        return "?"


def descendants(roots: dict[int, int | None]) -> set[tuple[int, int]]:
    """(pid, start time) of every live process below one of roots (pid -> start time, None:
    any); a root whose pid now belongs to another process (recycled) is passed over."""
    parent_of, start_of = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat and stat[1] != "Z":
                parent_of[int(name)], start_of[int(name)] = stat[0], stat[2]
    below: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        below.setdefault(ppid, []).append(pid)
    out, todo = set(), [r for r, start in roots.items()
                        if r in below and start in (None, start_of.get(r))]
    while todo:
        for child in below.pop(todo.pop(), []):
            out.add((child, start_of[child]))
            if child in below:
                todo.append(child)
    return out


def _pidfile(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Kept:
    """One watched journal: where it was, the hard link that keeps it, what was read of it."""
    path: str
    link: str
    entries: list = field(default_factory=list)
    offset: int = 0

    def read(self) -> None:
        """Read the lines appended since the last read (a cut last line waits)."""
        with open(self.link, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                self.entries.append(json.loads(line))
            except ValueError:
                continue          # a line cut by a kill mid-write


class Watch:
    """Follows, from now until leftovers(), the journals that appear under root and the
    processes the test and the journaled processes start.

    root: the state root, one directory per cluster (testbed.emulation.journal.STATE_ROOT)
    """

    def __init__(self, root: str = STATE_ROOT):
        self.root = root
        self.me = os.getpid()
        self.before_journals = set(self._journals())
        self.before_procs = descendants({self.me: None})
        self.made: set[tuple[int, int]] = set()
        self.kept: dict[tuple, Kept] = {}
        parent = os.path.dirname(os.path.abspath(root))     # a link needs the same file system
        self.dir = tempfile.mkdtemp(prefix=".cnlb-test-journals-",
                                    dir=parent if os.access(parent, os.W_OK) else None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leftover-watch", daemon=True)
        self._thread.start()

    def _journals(self) -> dict:
        """(device, inode) -> path of each journal under root now."""
        out = {}
        try:
            names = os.listdir(self.root)
        except OSError:
            return out
        for name in names:
            path = os.path.join(self.root, name, "journal.jsonl")
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[(st.st_dev, st.st_ino)] = path
        return out

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.poll(tree=n % TREE_EVERY == 0)
            n += 1
            self._stop.wait(JOURNAL_POLL_S)

    def poll(self, tree: bool = True) -> None:
        with self._lock:
            for key, path in self._journals().items():
                if key in self.before_journals or key in self.kept:
                    continue
                link = os.path.join(self.dir, f"{len(self.kept)}.jsonl")
                try:
                    os.link(path, link)
                except OSError:
                    continue        # gone between stat and link, or not linkable: next poll
                self.kept[key] = Kept(path, link)
            for kept in self.kept.values():
                kept.read()
            if tree:
                self.made |= descendants({self.me: None, **dict(self._journaled())})

    def _journaled(self) -> set[tuple[int, int]]:
        """(pid, start time) of the processes the watched journals name, the owner included;
        an entry without a start time was written after its process had gone."""
        out = set()
        for kept in self.kept.values():
            for e in kept.entries:
                if e.get("kind") == "process" and e.get("start") is not None:
                    out.add((e["pid"], e["start"]))
                elif e.get("kind") == "start" and e.get("pid_start") is not None:
                    out.add((e["pid"], e["pid_start"]))
        return out

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.poll()
            shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> dict:
        """What the watched clusters and this test made that still exists: kind -> names.
        Ends the watch; may be asked again (after a clean-up, say)."""
        self.close()
        ovs = {_pidfile(p) for p in OVS_PIDFILES}
        left: dict = {"processes": set(), "bridges": set(), "links": set(), "namespaces": set(),
                      "files": set(), "state": set(), "bpffs": set(), "tc filters": set(),
                      "bpf": set()}
        for pid, start in self._journaled() | (self.made - self.before_procs):
            if pid != self.me and pid not in ovs and alive(pid, start):
                left["processes"].add(f"{pid} {_cmdline(pid)}")
        for kept in self.kept.values():
            if os.path.isdir(os.path.dirname(kept.path)):
                left["state"].add(os.path.dirname(kept.path))
            for e in kept.entries:
                kind = e.get("kind")
                if kind == "bridge" and bridge_exists(e["name"]):
                    left["bridges"].add(e["name"])
                elif kind == "start" and e.get("cluster"):
                    left["bridges"] |= set(owned_bridges(e["cluster"]))
                elif kind == "link" and os.path.exists(f"/sys/class/net/{e['name']}"):
                    left["links"].add(e["name"])
                elif kind == "netns" and os.path.exists(f"/run/netns/{e['name']}"):
                    left["namespaces"].add(e["name"])
                elif kind == "file" and os.path.exists(e.get("path", "")):
                    left["files"].add(e["path"])
                elif kind == "bpffs" and os.path.ismount(e.get("path", "")):
                    left["bpffs"].add(e["path"])
                elif kind == "tc-filter" and _tc_filter_left(e):
                    left["tc filters"].add(f"{e['node']} {e['dev']}")
                elif kind == "bpf":
                    left["bpf"] |= _bpf_objects_left(e)
        return {k: sorted(v) for k, v in left.items() if v}


def _tc_filter_left(e: dict) -> bool:
    """An eBPF kube-proxy filter still on a node's interface (its namespace still there)."""
    netns = e.get("netns") or ""
    if not netns or not os.path.exists(f"/run/netns/{netns}"):
        return False
    out = subprocess.run(["ip", "netns", "exec", netns, "tc", "filter", "show", "dev", e["dev"],
                          "ingress"], capture_output=True, text=True)
    return "cnlb_ingress" in out.stdout


BPF_GONE_WAIT_S = 5.0   # a program goes when its netns's cleanup (asynchronous) drops the filter


def _bpf_objects_left(e: dict) -> set:
    """The journaled programs and maps of one node that the kernel still has, after waiting
    for the namespaces' cleanup to let them go."""
    wanted = [("prog", i) for i in e.get("prog_ids", [])] + \
        [("map", i) for i in e.get("map_ids", [])]
    deadline = time.time() + BPF_GONE_WAIT_S
    while True:
        left = {f"{e.get('node')} {kind} {i}" for kind, i in wanted
                if subprocess.run(["bpftool", kind, "show", "id", str(i)],
                                  capture_output=True).returncode == 0}
        if not left or time.time() > deadline:
            return left
        time.sleep(0.1)


class Snapshot:
    """A watch from now: `snapshot().diff(before)` is what before's watch saw made and is left."""

    def __init__(self, root: str = STATE_ROOT):
        self.watch = Watch(root)

    def diff(self, before: Snapshot) -> dict:
        if self is not before:
            self.watch.close()          # this one only marks the end
        return before.watch.leftovers()


def snapshot(root: str = STATE_ROOT) -> Snapshot:
    return Snapshot(root)
