"""Ownership: everything the testbed creates is written down before it exists, so it can be
removed after a normal exit, an error, Ctrl-C, or a kill -9 followed by `cnlb clean`.

The record is a journal (one JSON object per line, flushed and fsynced as it is written) in the
cluster's state directory. Cleanup removes exactly what the journal names, never by a broad
pattern: processes by pid *and* start time (a recycled pid is left alone), OVS bridges by name
only when they carry our `external_ids:cnlb-cluster` label, root-namespace links by name.
Unnamed namespaces (Mininet hosts) vanish when their last process is gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from testbed.emulation.wiring import NETNS_DIR
from testbed.errors import EnvironmentProblem

STATE_ROOT = os.environ.get("CNLB_STATE_DIR", "/run/cnlb")
OVS_LABEL = "cnlb-cluster"


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    now = proc_start_time(pid)
    if now is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split(")")[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return start is None or now == start


@dataclass
class StateDir:
    """The directory that holds one cluster's journal, lock, rendered files and logs."""
    path: str

    @classmethod
    def for_cluster(cls, name: str) -> StateDir:
        return cls(os.path.join(STATE_ROOT, name))

    @property
    def journal(self) -> str:
        return os.path.join(self.path, "journal.jsonl")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def exists(self) -> bool:
        return os.path.exists(self.journal)


class Journal:
    """Appends what is about to be created; read back by `clean`."""

    def __init__(self, state: StateDir):
        self.state = state
        os.makedirs(state.path, exist_ok=True)
        self._fh = open(state.journal, "a")
        self._lock = threading.Lock()   # hosts are created from several threads

    def record(self, kind: str, **data) -> None:
        entry = {"kind": kind, "t": round(time.time(), 3), **data}
        with self._lock:
            self._fh.write(json.dumps(entry) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def record_many(self, kind: str, items: Iterable[dict]) -> None:
        """Several entries of one kind written with one sync (a thousand namespaces)."""
        t = round(time.time(), 3)
        text = "".join(json.dumps({"kind": kind, "t": t, **data}) + "\n" for data in items)
        with self._lock:
            self._fh.write(text)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def process(self, pid: int, what: str, gentle: bool = True) -> None:
        """gentle: ask with SIGTERM first (servers, the controller); shells are killed outright."""
        self.record("process", pid=pid, start=proc_start_time(pid), what=what, gentle=gentle)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_journal(state: StateDir) -> list[dict]:
    entries = []
    try:
        with open(state.journal) as fh:
            for line in fh:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue   # a line cut by a crash mid-write
    except FileNotFoundError:
        pass
    return entries


@dataclass(frozen=True)
class Holder:
    """The process that holds the cluster lock, as it wrote itself into the lock file.

    pid: its process id
    start: its start time in clock ticks since boot (tells a recycled pid apart; None if unknown)
    argv: its command line
    since: when it took the lock (Unix time; None if unknown)
    """

    pid: int
    start: int | None
    argv: tuple[str, ...]
    since: float | None

    def alive(self) -> bool:
        return alive(self.pid, self.start)

    def command(self) -> str:
        """The command line as a user typed it: `cnlb up FILE` rather than the interpreter's
        `/path/python /path/cnlb up FILE` (argv has the exact one)."""
        argv = list(self.argv)
        if len(argv) >= 2 and os.path.basename(argv[0]).startswith("python"):
            if os.path.basename(argv[1]) == "cnlb":
                argv = ["cnlb"] + argv[2:]
            elif argv[1:3] == ["-m", "testbed.cli"]:
                argv = ["cnlb"] + argv[3:]
        return shlex.join(argv) if argv else "?"

    def to_dict(self) -> dict:
        return {"pid": self.pid, "start": self.start, "argv": list(self.argv),
                "command": self.command(), "since": self.since}

    def describe(self) -> str:
        """pid, command and since when, in one phrase for messages."""
        since = ""
        if self.since is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
            since = f", since {when}, {_age(time.time() - self.since)} ago"
        command = "".join(c if c.isprintable() else repr(c)[1:-1] for c in self.command())
        return f"pid {self.pid} (`{command}`{since})"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _argv_of(pid) -> tuple[str, ...]:
    """A process's command line from /proc (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return ()
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def _own_argv() -> tuple[str, ...]:
    return _argv_of("self") or tuple(sys.argv)


def parse_holder(text: str) -> Holder | None:
    """The lock file's content: one JSON object (pid, start, argv, since), or a bare pid as
    written by earlier versions. None when empty or unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, int) and not isinstance(data, bool) and data > 0:
        return Holder(data, None, _argv_of(data), None)
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or data["pid"] <= 0:
        return None
    start = data.get("start")
    argv = data.get("argv")
    since = data.get("since")
    return Holder(data["pid"], start if isinstance(start, int) else None,
                  tuple(str(a) for a in argv) if isinstance(argv, list) else (),
                  float(since) if isinstance(since, (int, float)) else None)


def lock_holder() -> Holder | None:
    """Who holds the cluster lock now, or None when nobody does. Reads only (no root needed,
    nothing is created).

    Decided from the lock file's content and /proc, not by trying the flock: a probe would
    take the lock for a moment and could turn away a `cnlb up` starting at that instant.
    A holder killed with -9 leaves its content behind; it is not alive, so it holds nothing."""
    path = os.path.join(STATE_ROOT, "lock")
    for _ in range(20):
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            return None
        holder = parse_holder(text)
        if holder is not None:
            return holder if holder.alive() else None
        if not text.strip():
            return None
        time.sleep(0.05)   # a write caught half-way: read again
    return None


class Lock:
    """One cluster per machine at a time: an flock on STATE_ROOT/lock held by the owner process.

    The holder writes who it is into the lock file (see Holder), so that `cnlb status` and
    `cnlb down` can name it; the content is cleared when the lock is released."""

    def __init__(self):
        os.makedirs(STATE_ROOT, exist_ok=True)
        self.path = os.path.join(STATE_ROOT, "lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        self._write_holder(fd)
        return True

    def _write_holder(self, fd: int) -> None:
        pid = os.getpid()
        me = {"pid": pid, "start": proc_start_time(pid), "argv": list(_own_argv()),
              "since": round(time.time(), 3)}
        data = (json.dumps(me) + "\n").encode()
        # write, then cut to length: a reader never sees the file empty while it is held
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def holder_info(self) -> Holder | None:
        """Who holds the lock now, or None when nobody does (see lock_holder)."""
        return lock_holder()

    def holder(self) -> int | None:
        """The pid written in the lock file (None if empty)."""
        try:
            with open(self.path) as fh:
                info = parse_holder(fh.read())
        except OSError:
            return None
        return info.pid if info else None

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def busy_message(self) -> str:
        info = self.holder_info()
        who = f"held by {info.describe()}" if info else f"owner pid {self.holder()}"
        return (f"another cluster is running ({who}) — "
                "stop it with `cnlb down` (one cluster per machine)")

    def refuse_if_held(self) -> None:
        """Raise the one-line refusal if a cluster runs now (checked before making anything)."""
        if not self.acquire():
            raise EnvironmentProblem(self.busy_message())
        self.release()

    def inherit(self) -> None:
        """Keep the lock across a fork (the detached owner process takes it over)."""
        if self._fd is not None:
            self._write_holder(self._fd)


def _kill(pid: int, start: int | None, sig=signal.SIGKILL) -> bool:
    if not alive(pid, start):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _stop_processes(procs: list[tuple[int, int | None]], gentle: set[tuple[int, int | None]],
                    asked: float) -> None:
    """Wait up to 3 s from `asked` for the processes to exit, then SIGKILL the rest and wait
    up to 3 s more."""
    while time.time() < asked + 3 and any(alive(p, s) for p, s in gentle):
        time.sleep(0.05)
    for pid, start in procs:
        _kill(pid, start, signal.SIGKILL)
    deadline = time.time() + 3
    while time.time() < deadline and any(alive(p, s) for p, s in procs):
        time.sleep(0.05)


def clean(state: StateDir, log=lambda msg: None) -> dict:
    """Remove everything the journal of one cluster names. Returns counts of what was removed."""
    entries = read_journal(state)
    removed = {"processes": 0, "bridges": 0, "links": 0, "namespaces": 0, "files": 0}
    # Processes are asked to stop (servers: SIGTERM; shells: SIGKILL) and exit while the
    # bridges and namespaces below are deleted (a namespace outlives its removal until its last
    # process has gone); then whoever is still there is killed.
    procs = [(e["pid"], e.get("start")) for e in entries if e["kind"] == "process"]
    gentle = {(e["pid"], e.get("start")) for e in entries
              if e["kind"] == "process" and e.get("gentle", True)}
    for pid, start in procs:
        if _kill(pid, start, signal.SIGTERM if (pid, start) in gentle else signal.SIGKILL):
            removed["processes"] += 1
    asked = time.time()
    bridges = [e["name"] for e in entries if e["kind"] == "bridge"]
    cluster = next((e.get("cluster") for e in entries if e["kind"] == "start"), None)
    owned = set(owned_bridges(cluster)) if cluster else set()
    existing = set(all_bridges()) if bridges else set()
    doomed = []
    for br in sorted(set(bridges) | owned):
        if br in owned:
            doomed.append(br)
        elif br in existing:
            log(f"bridge {br} is in the journal but not labelled as ours; left alone")
    deleting_bridges = None
    if doomed:   # OVS removes the bridges while the kernel removes the namespaces below
        args = [a for br in doomed for a in ("--", "--if-exists", "del-br", br)]
        deleting_bridges = subprocess.Popen(["ovs-vsctl", "--timeout=30", *args[1:]],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        removed["bridges"] += len(doomed)
    # The root-namespace ends first (deleting one end of a veth removes both at once, while a
    # namespace's interfaces go asynchronously after it), then the namespaces, each in one batch.
    links = [e["name"] for e in entries
             if e["kind"] == "link" and os.path.exists(f"/sys/class/net/{e['name']}")]
    namespaces = [e["name"] for e in entries
                  if e["kind"] == "netns" and os.path.exists(f"{NETNS_DIR}/{e['name']}")]
    lines = [f"link delete {name}" for name in links]
    lines += [f"netns delete {name}" for name in namespaces]
    if lines:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                       text=True, capture_output=True)
    if deleting_bridges is not None:
        deleting_bridges.wait()
    _stop_processes(procs, gentle, asked)
    removed["links"] += len(links)
    removed["namespaces"] += len(namespaces)
    # A bpffs the cluster mounted (the eBPF kube-proxy's pins): unmounting drops every pin;
    # the programs go with the last tc filter, which went with its namespace above.
    for e in entries:
        if e["kind"] == "bpffs" and os.path.ismount(e["path"]):
            subprocess.run(["umount", "--lazy", e["path"]], capture_output=True)
            removed["files"] += 1
    for e in entries:
        if e["kind"] == "file" and os.path.exists(e["path"]):
            if os.path.isdir(e["path"]):
                shutil.rmtree(e["path"], ignore_errors=True)
            else:
                os.unlink(e["path"])
            removed["files"] += 1
    shutil.rmtree(state.path, ignore_errors=True)
    return removed


def bridge_exists(name: str) -> bool:
    p = subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", name], capture_output=True)
    return p.returncode == 0


def all_bridges() -> list[str]:
    p = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True)
    return p.stdout.split() if p.returncode == 0 else []


def owned_bridges(cluster: str | None = None) -> list[str]:
    """OVS bridges carrying our label (of one cluster, or of any)."""
    p = subprocess.run(["ovs-vsctl", "--timeout=5", "--format=json", "--columns=name,external_ids",
                        "list", "Bridge"], capture_output=True, text=True)
    if p.returncode != 0:
        return []
    out = []
    for name, ext in json.loads(p.stdout).get("data", []):
        labels = dict(ext[1]) if isinstance(ext, list) and ext and ext[0] == "map" else {}
        if OVS_LABEL in labels and (cluster is None or labels[OVS_LABEL] == cluster):
            out.append(name)
    return out


def state_dirs() -> list[StateDir]:
    if not os.path.isdir(STATE_ROOT):
        return []
    return [StateDir(os.path.join(STATE_ROOT, d)) for d in sorted(os.listdir(STATE_ROOT))
            if os.path.isdir(os.path.join(STATE_ROOT, d))]


def owner_pid(state: StateDir) -> tuple[int, int | None] | None:
    for e in read_journal(state):
        if e["kind"] == "start":
            return e["pid"], e.get("pid_start")
    return None
