"""One launcher process forks many servers into the cluster's namespaces; this is its testbed
side: the process, the thread that reads its reports, and a Popen-like handle per server.

A launcher reads one line per server on its stdin and forks the server into the namespace the
line names, so a thousand servers cost a thousand fork()s of one warm process, not a thousand
process starts (and `ip netns exec`s) from here. It stays the servers' parent and reports on
its stdout, one line each: started PID, ready PID (the server listens; optional), exit PID CODE
(CODE: exit status, or -SIGNAL), error WHY (a line it could not start). Two programs speak
this: `podserver --launch` (the pods' servers, workloads/podserver.c) and
testbed.emulation.pylauncher (Python servers, e.g. kube-proxy's on every node).

LaunchedServer: one server, with the parts of subprocess.Popen the cluster uses (pid, poll,
  wait, send_signal, kill, terminate, returncode), answered from the launcher's reports.
ServerLauncher: the launcher process and its reader thread; launch(requests).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from testbed.emulation.journal import alive, proc_start_time
from testbed.errors import EnvironmentProblem
from testbed.paths import REPO

# A server that never forked (the launcher refused its line, or exited first) gets this exit
# status: podserver's own for "could not start".
NOT_STARTED = 1
POLL_S = 0.05   # how often a server whose launcher is gone is looked up in /proc
READ_SIZE = 65536   # the launcher's reports are read a pipeful at a time


class LaunchedServer:
    """One server, a child of a launcher.

    name: what it serves (a pod's name, a node's name)
    pid: its process id (0 until the launcher has forked it)
    start_time: its start time in clock ticks (with pid, tells a recycled pid apart)
    returncode: None while it runs; its exit status, or -SIGNAL, once it has exited
    """

    def __init__(self, name: str, launcher: ServerLauncher):
        self.name = name
        self.pid = 0
        self.start_time: int | None = None
        self.returncode: int | None = None
        self._launcher = launcher
        self._ready = threading.Event()    # it listens, or it is gone (then returncode says)
        self._exited = threading.Event()

    def exited(self, code: int) -> None:
        """The launcher reported its exit (or it never started). code: as returncode"""
        self.returncode = code
        self._exited.set()
        self._ready.set()

    def listening(self) -> None:
        """The server said it listens."""
        self._ready.set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until it listens (True) or has exited (False); False also after timeout."""
        self._ready.wait(max(timeout, 0))
        return self._ready.is_set() and self.poll() is None

    def poll(self) -> int | None:
        """Its exit status if it has exited, else None (Popen.poll)."""
        if self.returncode is None and self._launcher.gone \
                and not alive(self.pid, self.start_time):
            self.exited(-signal.SIGKILL)   # died with its launcher (PR_SET_PDEATHSIG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit; its exit status (Popen.wait). Raises subprocess.TimeoutExpired."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"server {self.name}", timeout or 0)
            # the launcher's exit report sets the event; without a launcher, /proc is polled
            self._exited.wait(POLL_S if left is None else min(left, POLL_S))
        return code

    def send_signal(self, sig: int) -> None:
        """Signal it if it still runs (checked by pid and start time: a recycled pid is left
        alone)."""
        if self.pid and self.poll() is None and alive(self.pid, self.start_time):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the server stops the way it does on SIGTERM."""
        self.send_signal(signal.SIGTERM)


S = TypeVar("S", bound=LaunchedServer)


class ServerLauncher(Generic[S]):
    """One launcher process and the thread that reads its reports.

    log: the file the servers' error messages go to (the launcher's stderr)
    on_launcher: called with the launcher's pid once it exists, to journal it
    on_started: called with the servers that have just started (pid and start time known),
        a batch at a time, to journal them (teardown and `cnlb clean` stop them by pid); a
        server dies with its launcher anyway, which covers the moment before
    kind: the handle class of its servers; command: the launcher program's argv
    log_prefix: how a server's messages in the log begin ("{name}" is the server's name)
    """

    def __init__(self, log: str, on_launcher: Callable[[int], None],
                 on_started: Callable[[list[S]], None], kind: type[S],
                 command: Sequence[str], log_prefix: str = "{name}: "):
        self.log = log
        self.kind = kind
        self.log_prefix = log_prefix
        self._on_started = on_started
        with open(log, "ab") as err:
            # its own session: Ctrl-C in the user's terminal is the owner's to handle
            self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err,
                                         start_new_session=True, cwd=REPO)
        on_launcher(self.proc.pid)
        self.gone = False                  # its stdout ended: every report has been read
        self._send = threading.Lock()      # one caller's lines go out together, in order
        self._lock = threading.Lock()      # _unforked, between callers and the reader
        self._unforked: collections.deque[S] = collections.deque()
        self._by_pid: dict[int, S] = {}   # the reader's alone
        self._early_ready: set[int] = set()       # "ready" read before its "started"
        threading.Thread(target=self._read, name=f"launcher-{self.proc.pid}",
                         daemon=True).start()

    def alive(self) -> bool:
        """Whether it still takes lines."""
        return not self.gone and self.proc.poll() is None

    def launch(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[S]:
        """Start servers: one per (name, words of its line) pair. Returns them at once; each
        says when it listens (wait_ready) if the launcher reports it."""
        for name, words in requests:
            for word in words:
                if not word or any(c.isspace() for c in word):
                    raise ValueError(f"{name}: {word!r} cannot go on a launcher line "
                                     "(words are separated by spaces)")
        servers = [self.kind(name, self) for name, _ in requests]
        text = "".join(" ".join(words) + "\n" for _, words in requests).encode()
        with self._send:
            with self._lock:
                if self.gone:
                    raise EnvironmentProblem(f"the server launcher has exited — see {self.log}")
                self._unforked.extend(servers)   # before the lines: reports match in order
            try:
                assert self.proc.stdin is not None   # Popen with stdin=PIPE
                self.proc.stdin.write(text)
                self.proc.stdin.flush()
            except OSError:
                pass   # it exited: the reader fails the servers it did not fork
        return servers

    def log_line(self, name: str) -> str:
        """The last message a server wrote to the log ("" if none)."""
        prefix = self.log_prefix.format(name=name)
        try:
            with open(self.log, errors="replace") as fh:
                lines = [line.strip() for line in fh if line.startswith(prefix)]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def close(self) -> None:
        """No more lines: the launcher exits once its last server has exited."""
        with self._send:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            except OSError:
                pass

    # -- the reader thread ---------------------------------------------------------------------
    def _read(self) -> None:
        assert self.proc.stdout is not None   # Popen with stdout=PIPE
        fd, rest = self.proc.stdout.fileno(), b""
        while chunk := os.read(fd, READ_SIZE):   # what is there, up to a pipeful
            *lines, rest = (rest + chunk).split(b"\n")
            started: list[S] = []
            for line in lines:
                try:
                    self._report(line.decode(errors="replace").split(), started)
                except (ValueError, IndexError):
                    continue   # not a report line (the launcher writes nothing else)
            if started:   # one journal write for what one read brought, not one per server
                try:
                    self._on_started(started)
                except (OSError, ValueError):
                    pass   # the journal is closed (the cluster stopped): they die with us
        self.proc.wait()   # collected here: no zombie once it is gone
        self.proc.stdout.close()
        self.close()
        with self._lock:
            self.gone = True
            unforked = list(self._unforked)
            self._unforked.clear()
        for server in unforked:
            server.exited(NOT_STARTED)
        for server in list(self._by_pid.values()):
            server.listening()   # wake a wait_ready: poll() now asks /proc

    def _report(self, words: list[str], started: list[S]) -> None:
        kind, pid = words[0], int(words[1]) if words[0] != "error" else 0
        if kind in ("started", "error"):
            with self._lock:
                server = self._unforked.popleft()
            if kind == "error":
                server.exited(NOT_STARTED)
                return
            server.pid, server.start_time = pid, proc_start_time(pid)
            self._by_pid[pid] = server
            if server.start_time is not None:   # else already gone: nothing to journal
                started.append(server)
            if pid in self._early_ready:
                self._early_ready.discard(pid)
                server.listening()
        elif kind == "ready":
            if pid in self._by_pid:
                self._by_pid[pid].listening()
            else:
                self._early_ready.add(pid)
        elif kind == "exit":
            exited = self._by_pid.pop(pid, None)
            if exited is not None:
                exited.exited(int(words[2]))
