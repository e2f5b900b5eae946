"""The pods' HTTP servers (build/podserver), started by one launcher process for the cluster.

`podserver --launch` reads one line per pod, the flags of that pod's server with --netns naming
the pod's network namespace, and forks the server into it: a thousand pods cost a thousand
fork()s of one small process instead of a thousand process starts from here, and no process
has to be inside a pod before its server starts. The launcher stays the servers' parent and
reports on its stdout (workloads/podserver.c has the protocol): started PID, ready PID (the
server listens), exit PID CODE.

server_flags: the line one pod's server is started with: its container port and every
  targetPort (TCP or UDP) of the Services that select its deployment, all in one process.
Launcher: the launcher process, the thread that reads its reports, launch().
PodServer: one pod's server, with the parts of subprocess.Popen the cluster uses (pid, poll,
  wait, kill, terminate — graceful —, returncode), answered from the launcher's reports, and
  set_ready (its /readyz) for the kubelet's readiness probe.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from testbed.emulation.journal import alive, proc_start_time
from testbed.errors import EnvironmentProblem
from testbed.paths import PODSERVER
from testbed.plan.addresses import PodPlan, ServicePlan

# A server that never forked (the launcher refused its line, or exited first) gets this exit
# status: podserver's own for "could not start".
NOT_STARTED = 1
POLL_S = 0.05   # how often a server whose launcher is gone is looked up in /proc
READ_SIZE = 65536   # the launcher's reports are read a pipeful at a time


def served_ports(pod: PodPlan, services: Sequence[ServicePlan] = ()) -> list[tuple[int, str]]:
    """(port, protocol) pairs a pod's server listens on: its container port (TCP), then each
    targetPort of the services whose selector is its deployment, in plan order, each once.
    A Service's port reaches only the pods that listen on its targetPort, so a pod serves
    them all, as a real pod's containers declare every port its Services use."""
    ports = [(pod.port, "TCP")]
    for svc in services:
        if svc.selector != pod.deployment:
            continue
        for port in svc.all_ports:
            if port.protocol not in ("TCP", "UDP"):
                raise ValueError(f"service {svc.name}: protocol {port.protocol!r} — the pod "
                                 "server speaks TCP and UDP")
            if (port.target_port, port.protocol) not in ports:
                ports.append((port.target_port, port.protocol))
    return ports


def server_flags(pod: PodPlan, netns: str, services: Sequence[ServicePlan] = ()) -> list[str]:
    """The flags of a pod's server, as a launcher line carries them.
    pod: the pod's plan; netns: the file naming its network namespace
    services: the plan's services (those selecting the pod's deployment add their targetPorts)"""
    flags = ["--netns", netns]
    for port, protocol in served_ports(pod, services):
        flags += ["--port", str(port) if protocol == "TCP" else f"{port}/udp"]
    flags += ["--pod", pod.name, "--node", pod.node]
    for flag in flags:
        if not flag or any(c.isspace() for c in flag):
            raise ValueError(f"pod {pod.name}: {flag!r} cannot go on a launcher line "
                             "(words are separated by spaces)")
    return flags


class PodServer:
    """One pod's server, a child of the launcher.

    pod: the pod's name
    pid: its process id (0 until the launcher has forked it)
    start_time: its start time in clock ticks (with pid, tells a recycled pid apart)
    returncode: None while it runs; its exit status, or -SIGNAL, once it has exited
    """

    def __init__(self, pod: str, launcher: Launcher):
        self.pod = pod
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
                raise subprocess.TimeoutExpired(f"podserver {self.pod}", timeout or 0)
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
        """SIGKILL: the pod's application crashes."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM, the kubelet's stop: it closes its listening sockets (new connections are
        refused), answers the requests it has already received, then exits with status 0."""
        self.send_signal(signal.SIGTERM)

    def set_ready(self, ready: bool) -> None:
        """Make its readiness endpoint (GET /readyz) answer 200 (ready) or 503 (not ready):
        SIGUSR2 / SIGUSR1. It keeps serving everything else either way."""
        self.send_signal(signal.SIGUSR2 if ready else signal.SIGUSR1)


class Launcher:
    """One `podserver --launch` process and the thread that reads its reports.

    log: the file the servers' error messages go to (the launcher's stderr)
    on_launcher: called with the launcher's pid once it exists, to journal it
    on_started: called with the servers that have just started (pid and start time known),
        a batch at a time, to journal them (teardown and `cnlb clean` stop them by pid); a
        server dies with its launcher anyway, which covers the moment before
    """

    def __init__(self, log: str, on_launcher: Callable[[int], None],
                 on_started: Callable[[list[PodServer]], None]):
        self.log = log
        self._on_started = on_started
        with open(log, "ab") as err:
            # its own session: Ctrl-C in the user's terminal is the owner's to handle
            self.proc = subprocess.Popen([PODSERVER, "--launch"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err,
                                         start_new_session=True)
        on_launcher(self.proc.pid)
        self.gone = False                  # its stdout ended: every report has been read
        self._send = threading.Lock()      # one caller's lines go out together, in order
        self._lock = threading.Lock()      # _unforked, between callers and the reader
        self._unforked: collections.deque[PodServer] = collections.deque()
        self._by_pid: dict[int, PodServer] = {}   # the reader's alone
        self._early_ready: set[int] = set()       # "ready" read before its "started"
        threading.Thread(target=self._read, name=f"podserver-launcher-{self.proc.pid}",
                         daemon=True).start()

    def alive(self) -> bool:
        """Whether it still takes lines."""
        return not self.gone and self.proc.poll() is None

    def launch(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[PodServer]:
        """Start servers: one per (pod name, server_flags) pair. Returns them at once; each
        says when it listens (PodServer.wait_ready)."""
        servers = [PodServer(pod, self) for pod, _ in requests]
        text = "".join(" ".join(flags) + "\n" for _, flags in requests).encode()
        with self._send:
            with self._lock:
                if self.gone:
                    raise EnvironmentProblem("the pod server launcher has exited — see "
                                             f"{self.log}")
                self._unforked.extend(servers)   # before the lines: reports match in order
            try:
                assert self.proc.stdin is not None   # Popen with stdin=PIPE
                self.proc.stdin.write(text)
                self.proc.stdin.flush()
            except OSError:
                pass   # it exited: the reader fails the servers it did not fork
        return servers

    def log_line(self, pod: str) -> str:
        """The last message a pod's server wrote to the log ("" if none)."""
        prefix = f"podserver {pod}: "
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
            started: list[PodServer] = []
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

    def _report(self, words: list[str], started: list[PodServer]) -> None:
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
