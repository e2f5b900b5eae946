"""Backend health: the state machine, and the health checker's parent and child sides.

Health, observe: one backend's state (initial, healthy, unhealthy, unchecked) and its update
CheckResult, backend_id, parse_result: one check's outcome; the 'lb/ip:port' id its line carries
HealthChecker: the controller's side -- runs the child in the LB host's netns, feeds it targets
checker_main, probe: the child (`python -m controllers.run --checker`), JSON lines in and out
Standard library only at import time: the child and the launcher import this module before
os-ken's hub may be imported (HealthChecker imports the hub when it runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controllers.config import HealthCheck

LOG = logging.getLogger("cnlb.vpc")

INITIAL, HEALTHY, UNHEALTHY, UNCHECKED = "initial", "healthy", "unhealthy", "unchecked"
# A deregistered backend whose established connections still work (no Health: not checked).
DRAINING = "draining"


@dataclass
class Health:
    """Health of one backend.

    state: initial (not yet decided, out of service), healthy, unhealthy, or unchecked (no
           check configured or no checker running: always in service)
    ok_streak / fail_streak: consecutive successes / failures so far
    last: the checker's last result line (status, ms, error)
    """
    state: str = INITIAL
    ok_streak: int = 0
    fail_streak: int = 0
    checks: int = 0
    last: dict = field(default_factory=dict)

    @property
    def in_service(self) -> bool:
        return self.state in (HEALTHY, UNCHECKED)


def observe(h: Health, ok: bool, hc: HealthCheck) -> bool:
    """Record one check result; returns True when the state changed."""
    h.checks += 1
    if ok:
        h.ok_streak, h.fail_streak = h.ok_streak + 1, 0
        new = HEALTHY if h.ok_streak >= hc.healthy_threshold else h.state
    else:
        h.fail_streak, h.ok_streak = h.fail_streak + 1, 0
        new = UNHEALTHY if h.fail_streak >= hc.unhealthy_threshold else h.state
    changed, h.state = new != h.state, new
    return changed


@dataclass(frozen=True)
class CheckResult:
    """One health check of one backend.

    lb, ip, port: the backend (its LB's name, its address and port)
    ok: the check passed
    detail: the checker's result line (id, ok, status or error, ms)
    """
    lb: str
    ip: str
    port: int
    ok: bool
    detail: dict


def backend_id(lb: str, ip: str, port: int) -> str:
    """The id a checker result carries: 'lb/ip:port'."""
    return f"{lb}/{ip}:{port}"


def parse_backend_id(text: str) -> tuple[str, str, int]:
    """'lb/ip:port' -> (lb, ip, port)."""
    lb, _, rest = text.rpartition("/")
    ip, _, port = rest.rpartition(":")
    return lb, ip, int(port)


def parse_result(line: dict) -> CheckResult:
    """A checker result line {"id", "ok", ...} as a CheckResult."""
    lb, ip, port = parse_backend_id(line["id"])
    return CheckResult(lb, ip, port, bool(line.get("ok")), line)


# The longest the first checks wait for the fabric (see wait_until): a switch that never
# connects must not keep the LB from checking the targets it can reach.
FABRIC_WAIT_MAX_S = 60.0


def wait_until(ready: Callable[[], bool], max_s: float, sleep: Callable[[float], Any],
               clock: Callable[[], float] = time.monotonic, poll_s: float = 0.2) -> bool:
    """Sleep in poll_s steps until ready() or max_s have passed; returns ready()'s last word.

    The controller holds the LB's first checks until every switch is programmed: a cloud LB
    starts checking a target once its registration is complete, and checks sent into a fabric
    still being programmed are all lost. At 5,000 targets those lost checks (each SYN sent
    again) met the switches' programming in the one OVS thread that also reads the LB host's
    port, and the health flapping that followed did not settle (README, 5,000 pods).
    """
    deadline = clock() + max_s
    while not (ok := ready()) and clock() < deadline:
        sleep(poll_s)
    return ok


# --------------------------------------------------------------------------------------------
# The parent: the controller's end of the checker
# --------------------------------------------------------------------------------------------

class HealthChecker:
    """Runs `python -m controllers.run --checker` inside the LB host's network namespace.

    Why a child process and not setns() here: setns() moves the calling OS thread, and with
    eventlet every green thread -- OpenFlow, REST, everything -- is that one thread, so sockets
    created afterwards would all land in lb0's namespace. The controller must stay in the root
    namespace (127.0.0.1 only) and lb0's namespace has the only route to the backends, so the
    checks run in a separate process entered with nsenter: its sockets live in lb0's namespace
    from the start, it dies with us (PR_SET_PDEATHSIG, and EOF on its stdin), and it speaks JSON
    lines: targets in on stdin, one result per check out on stdout.

    netns: the LB host's network namespace file, e.g. /run/netns/cnlb-lb0 (fabric.json
        health_checker.netns); None: no checker
    on_results: called with the result dicts {"id", "ok", "status"|"error", "ms"} read at once
        (as many as the pipe held: a backlog is handled as one batch)
    """

    RESTART_S = 2.0
    READ_MAX = 1 << 16

    def __init__(self, netns: str | None, on_results: Callable[[list[dict]], None]):
        self.netns = netns
        self.on_results = on_results
        self.proc: Any = None               # the child: an eventlet.green.subprocess.Popen
        self.targets: list = []
        self.stopping = False
        self.last_error: str | None = None
        self.results = 0
        self.starts = 0

    def command(self) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--",
                sys.executable, "-m", "controllers.run", "--checker"]

    def start(self, targets: list) -> None:
        from os_ken.lib import hub  # see the module docstring
        self.targets = targets
        hub.spawn(self._run)

    def update(self, targets: list) -> None:
        self.targets = targets
        self._write_targets()

    def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def status(self) -> dict:
        return {"enabled": self.netns is not None, "netns": self.netns,
                "running": self.proc is not None and self.proc.poll() is None,
                "pid": self.proc.pid if self.proc else None, "starts": self.starts,
                "results": self.results, "last_error": self.last_error}

    def _write_targets(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write((json.dumps({"targets": self.targets}) + "\n").encode())
            proc.stdin.flush()
        except OSError as e:
            self.last_error = f"writing targets: {e}"

    def _run(self) -> None:
        from eventlet.green import subprocess  # green pipes; imported here, not at load
        from os_ken.lib import hub
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        while not self.stopping:
            self.starts += 1
            try:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, cwd=root, env=env,
                                             preexec_fn=_die_with_parent)
            except OSError as e:
                self.last_error = f"cannot start checker: {e}"
                LOG.error("%s", self.last_error)
                hub.sleep(self.RESTART_S)
                continue
            LOG.info("health checker pid %d started in network namespace %s", self.proc.pid,
                     self.netns)
            self._write_targets()
            self._read_results()
            code = self.proc.wait()
            if not self.stopping:
                self.last_error = f"checker exited with {code}"
                LOG.error("health checker exited with %s; restarting in %.0fs", code,
                          self.RESTART_S)
                hub.sleep(self.RESTART_S)

    def _read_results(self) -> None:
        """Hand the child's result lines to on_results, all those read at once together, until
        its stdout closes."""
        partial = b""
        while chunk := self.proc.stdout.read(self.READ_MAX):   # what the pipe holds, >= 1 byte
            *lines, partial = (partial + chunk).split(b"\n")
            results = [r for r in map(self._parse, lines) if r is not None]
            if results:
                self.results += len(results)
                self.on_results(results)

    def _parse(self, line: bytes) -> dict | None:
        """A result line as a dict; events are logged, and None returned for them."""
        try:
            result = json.loads(line)
        except ValueError:
            LOG.warning("checker said %r", line[:200])
            return None
        if "id" in result:
            return result
        if result.get("event"):
            LOG.info("checker: %s", result)
        return None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the controller dies (survives exec)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# The child: runs in the LB host's network namespace, standard library only
# --------------------------------------------------------------------------------------------

def checker_main() -> int:
    """Check the targets read from stdin until stdin closes; one JSON line per check."""
    try:
        asyncio.run(_checker())
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


Emit = Callable[[dict], None]


async def _checker() -> None:
    loop = asyncio.get_running_loop()
    # One line lists every target: 1000 pods exceed the 64 KiB default.
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Results go out through the event loop, buffered here if the controller reads slowly: a
    # blocking write to a full pipe would stop every check in flight and time them all out.
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)

    def emit(obj: dict) -> None:
        out.write((json.dumps(obj) + "\n").encode())

    emit({"event": "ready", "pid": os.getpid(), "netns": os.readlink("/proc/self/ns/net")})
    tasks: dict[str, tuple[dict, asyncio.Task]] = {}
    while True:
        line = await reader.readline()
        if not line:                          # the controller is gone
            return
        try:
            targets = {t["id"]: t for t in json.loads(line)["targets"]}
        except (ValueError, KeyError, TypeError) as e:
            emit({"event": "bad-input", "error": str(e)})
            continue
        for tid in list(tasks):
            if tasks[tid][0] != targets.get(tid):
                tasks.pop(tid)[1].cancel()
        new = [t for tid, t in targets.items() if tid not in tasks]
        for t, delay in zip(new, first_check_delays(new), strict=True):
            tasks[t["id"]] = (t, asyncio.create_task(_check_forever(t, delay, emit)))
        emit({"event": "targets", "count": len(tasks)})


def first_check_delays(new: list[dict]) -> list[float]:
    """When each of the targets registered together is first checked, in seconds from now.

    The first round is spread evenly over the interval, as a cloud LB spreads its checks:
    one target is checked at once, 1000 registered together one every interval/1000 -- not
    1000 connections in the same instant, whose CPU burst on a small machine can push checks
    past their timeout and fail healthy backends.
    """
    return [i * t["interval_s"] / len(new) for i, t in enumerate(new)]


async def _check_forever(t: dict, delay: float, emit: Emit) -> None:
    """Check t after delay, then every interval_s (from the start of one check to the next)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    while True:
        start = loop.time()
        emit(await probe(t["ip"], t["port"], t["path"], t["timeout_s"], t["id"]))
        await asyncio.sleep(max(0.0, t["interval_s"] - (loop.time() - start)))


async def probe(ip: str, port: int, path: str, timeout_s: float, tid: str = "") -> dict:
    """One HTTP GET; ok when the status is 200-399 within timeout_s."""
    t0 = time.monotonic()
    result: dict = {"id": tid, "ok": False}
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\n"
                         f"User-Agent: cnlb-lb-health-checker\r\nConnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
            status_line = await reader.readline()
        status = int(status_line.split()[1])
        result.update(ok=200 <= status < 400, status=status)
    except TimeoutError:
        result["error"] = "timeout"
    except OSError as e:
        result["error"] = os.strerror(e.errno) if e.errno else (str(e) or type(e).__name__)
    except (ValueError, IndexError):
        result["error"] = "not an HTTP response"
    finally:
        if writer is not None:
            writer.close()
    result["ms"] = round((time.monotonic() - t0) * 1000, 2)
    return result
