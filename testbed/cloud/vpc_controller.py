"""The VPC controller as seen from the testbed: a child process and its REST API.

The controller (controllers/, an os-ken app) listens for OpenFlow and REST on 127.0.0.1 only.
The testbed starts it (returning once it listens for OpenFlow), waits until every switch is
connected and programmed, notices if it dies, and stops it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from testbed.errors import EnvironmentProblem
from testbed.paths import REPO


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControllerProcess:
    """The os-ken VPC controller, run as our child with its log in the state directory.

    config: path of fabric.json
    log: path of the controller's log file
    """

    POLL_S = 0.05        # start and wait_programmed look this often (a local connect is cheap)

    def __init__(self, config: str, log: str, ofp_port: int | None = None,
                 rest_port: int | None = None):
        self.config, self.log = config, log
        self.ofp_port = ofp_port or free_port()
        self.rest_port = rest_port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, on_pid=lambda pid: None, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the controller and, with wait, return once it listens (see wait_listening).

        wait: False to return at once -- to overlap its start-up (about a second of imports
            and building its flows) with other work, then call wait_listening before starting
            any switch"""
        env = dict(os.environ, OSKEN_HUB_TYPE="eventlet", PYTHONPATH=REPO + os.pathsep +
                   os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "controllers.run", "--config", self.config,
                "--ofp-port", str(self.ofp_port), "--rest-port", str(self.rest_port),
                "--log", self.log]
        # stderr (a crash's traceback, the health checker's) goes beside the log
        with open(self.log + ".stderr", "ab") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        on_pid(self.proc.pid)
        if wait:
            self.wait_listening(timeout)

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Block until the OpenFlow port accepts connections; EnvironmentProblem with the log
        if the controller exits or does not listen within timeout seconds.

        Why wait: a switch started before the controller listens is refused, and Open vSwitch
        backs off a whole second before it tries again.
        """
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                raise EnvironmentProblem("the VPC controller exited during start-up; its log "
                                         "ends with:\n" + self.log_tail())
            try:
                socket.create_connection(("127.0.0.1", self.ofp_port), timeout=1).close()
                return
            except OSError:
                time.sleep(self.POLL_S)
        raise EnvironmentProblem(f"the VPC controller did not listen on 127.0.0.1:"
                                 f"{self.ofp_port} within {timeout:.0f}s; its log ends with:\n"
                                 + self.log_tail())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        out = ""
        for path in (self.log, self.log + ".stderr"):
            try:
                with open(path, errors="replace") as fh:
                    out += "".join(fh.readlines()[-lines:])
            except OSError:
                pass
        return out

    def api(self, method: str, path: str, body=None, timeout: float = 5.0):
        return rest(self.rest_port, method, path, body, timeout)

    def add_pod_route(self, pod: str, ip: str, node: str) -> None:
        """Tell the VPC a pod's address lives on a node (container-native mode)."""
        self.api("POST", "/v1/pods", {"pod": pod, "ip": ip, "node": node})

    def remove_pod_route(self, pod: str) -> None:
        """Make the VPC forget a pod's address; one it does not know is fine."""
        try:
            self.api("DELETE", f"/v1/pods/{pod}")
        except Exception:   # already gone (404) is fine: the goal is "not there"
            pass

    def wait_programmed(self, switches: list[str], timeout: float = 60.0) -> None:
        """Block until every switch is connected and programmed; raise with the log if not."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if not self.alive():
                raise EnvironmentProblem("the VPC controller exited during start-up; its log "
                                         "ends with:\n" + self.log_tail())
            try:
                status = self.api("GET", "/v1/status", timeout=2)
                sw = {s["name"]: s for s in status.get("switches", [])}
                last = {n: (s.get("connected"), s.get("programmed"), s.get("last_error"))
                        for n, s in sw.items()}
                if all(sw.get(name, {}).get("programmed") for name in switches):
                    return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(self.POLL_S)
        raise EnvironmentProblem(f"switches not programmed by the controller within {timeout:.0f}s "
                                 f"(status: {last}); controller log ends with:\n" + self.log_tail())

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None or not self.alive():
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rest(port: int, method: str, path: str, body=None, timeout: float = 5.0):
    """One JSON call to a controller's REST API on 127.0.0.1."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None
