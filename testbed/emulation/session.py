"""A cluster that stays up after `cnlb up --detach` returns.

The owner process (`cnlb up FILE --owner`, started in its own session) builds the cluster,
tells the waiting `cnlb up --detach` how it goes over a pipe, then holds the cluster until
SIGTERM (`cnlb down`). While it runs it answers requests on a Unix socket in the cluster's state
directory (pod lifecycle, status) and keeps `status.json` current, so any shell or notebook
can `exec` into a host, read the status, or change pods.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from typing import Optional

from testbed.errors import EnvironmentProblem, UsageError
from testbed.emulation.journal import STATE_ROOT, StateDir, alive, clean, owner_pid
from testbed.paths import REPO

SOCKET = "owner.sock"
LOG = "owner.log"


def current_state() -> StateDir:
    return StateDir.for_cluster("current")


# -- the owner process ---------------------------------------------------------------------

class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        try:
            request = json.loads(line)
            result = self.server.owner.dispatch(request)
            reply = {"ok": True, "result": result}
        except (KeyError, ValueError) as exc:
            reply = {"ok": False, "error": str(exc).strip("'\"")}
        except Exception as exc:   # report, keep serving: the cluster must stay up
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write((json.dumps(reply) + "\n").encode())


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class Owner:
    """Holds a running Cluster and serves lifecycle requests, one at a time."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.lock = threading.Lock()
        self.server: Optional[_Server] = None

    def dispatch(self, request: dict):
        op = request.get("op")
        c = self.cluster
        with self.lock:
            if op == "status":
                return status_of(c)
            if op == "add-pod":
                name = c.add_pod(request["deployment"], request.get("node"))
                c.wait_lb_ready()
                result = {"added": name}
            elif op == "remove-pod":
                c.remove_pod(request["pod"])
                result = {"removed": request["pod"]}
            elif op == "fail-pod":
                c.fail_pod(request["pod"])
                result = {"failed": request["pod"]}
            elif op == "fail-node":
                moved = c.fail_node(request["node"])
                c.wait_lb_ready()
                result = {"failed": request["node"], "rescheduled": moved}
            else:
                raise ValueError(f"unknown operation {op!r}")
            write_status(c)
            return result

    def serve(self) -> None:
        path = self.cluster.state.file(SOCKET)
        self.server = _Server(path, _Handler)
        self.server.owner = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def status_of(cluster) -> dict:
    """Everything `cnlb status` shows, from the running cluster itself."""
    from testbed.emulation.journal import proc_start_time
    plan = cluster.plan
    live = cluster.live_pods()
    pods = []
    for p in plan.pods:
        if p.name in cluster.removed_pods:
            continue
        proc = cluster.pod_servers.get(p.name)
        pods.append({"name": p.name, "node": p.node, "ip": p.ip, "port": p.port,
                     "server_running": bool(proc and proc.poll() is None),
                     "healthy": p.name in live and bool(proc and proc.poll() is None)})
    lbs = []
    for lb in plan.load_balancers:
        try:
            backends = cluster.controller.api("GET", f"/v1/lbs/{lb.service}/backends", timeout=3)
        except Exception as exc:
            backends = {"error": str(exc)}
        lbs.append({"service": lb.service, "vip": lb.vip, "port": lb.port,
                    "targets": lb.target_mode, "backends": backends})
    hosts = {h.name: [h.pid, proc_start_time(h.pid)] for h in cluster.net.hosts}
    return {
        "cluster": plan.cluster, "mode": plan.mode, "file": cluster.topo.file,
        "owner": {"pid": os.getpid(), "alive": True},
        "controller": {"pid": cluster.controller.proc.pid, "alive": cluster.controller.alive(),
                       "rest": f"http://127.0.0.1:{cluster.controller.rest_port}/v1/"},
        "nodes": [{"name": n.name, "ip": n.ip, "subnet": n.subnet, "pod_cidr": n.pod_cidr
                   if plan.mode == "nodeport" else None, "failed": n.name in cluster.failed_nodes}
                  for n in plan.nodes],
        "pods": pods,
        "services": [{"name": s.name, "type": s.type, "cluster_ip": s.cluster_ip, "port": s.port,
                      "node_port": s.node_port, "external_traffic_policy": s.external_traffic_policy,
                      "vip": s.vip} for s in plan.services],
        "load_balancers": lbs,
        "clients": plan.clients,
        "hosts": hosts,
        "rest_port": cluster.controller.rest_port,
        "timings": cluster.timings,
    }


def write_status(cluster) -> None:
    path = cluster.state.file("status.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(status_of(cluster), fh, indent=1)
    os.replace(path + ".tmp", path)


def run_owner(cluster, ready_fd: int) -> int:
    """The owner's life: build, report on the pipe, serve until SIGTERM/SIGINT, tear down."""
    pipe = os.fdopen(ready_fd, "w", buffering=1)

    def say(msg):
        try:
            pipe.write(f"progress {msg}\n")
        except (BrokenPipeError, ValueError):
            pass
    cluster.progress = say
    owner = Owner(cluster)
    try:
        cluster.start()
        owner.serve()
        write_status(cluster)
        pipe.write("ready\n")
        pipe.close()
        while True:
            time.sleep(1)
            if not cluster.controller.alive():
                print("owner: the VPC controller died; tearing the cluster down", flush=True)
                return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        try:
            pipe.write(f"error {exc}\n")
            pipe.close()
        except (BrokenPipeError, ValueError):
            pass
        raise
    finally:
        owner.stop()
        cluster.stop()


# -- the other side: commands against a detached cluster -------------------------------------

def start_detached(file: str, mode: str, say, iptables: str = "auto") -> dict:
    """Start the owner process and wait until the cluster is ready; return its status."""
    from testbed.emulation.journal import Lock
    Lock().refuse_if_held()
    os.makedirs(STATE_ROOT, exist_ok=True)
    log = open(os.path.join(STATE_ROOT, LOG), "w")
    r, w = os.pipe()
    argv = [sys.executable, "-m", "testbed.cli", "up", file, "--mode", mode, "--owner",
            "--iptables", iptables, "--ready-fd", str(w)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,),
                            start_new_session=True,
                            cwd=REPO)
    os.close(w)
    log.close()
    with os.fdopen(r) as pipe:
        for line in pipe:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "progress":
                say(rest)
            elif kind == "ready":
                return read_status()
            elif kind == "error":
                proc.wait(60)
                raise EnvironmentProblem(rest)
    proc.wait(60)
    raise EnvironmentProblem(f"the owner process exited ({proc.returncode}) before the cluster was ready; "
                             f"see {os.path.join(STATE_ROOT, LOG)}")


def read_status() -> dict:
    path = current_state().file("status.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise EnvironmentProblem("no cluster is running — start one with `cnlb up FILE --detach`") from None


def request(op: str, **args) -> dict:
    """One request to the owner process of the running cluster."""
    path = current_state().file(SOCKET)
    if not os.path.exists(path):
        raise EnvironmentProblem("no detached cluster is running — start one with `cnlb up FILE --detach`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(300)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise EnvironmentProblem("the cluster's owner process is not answering — "
                                     "`cnlb down` removes what it left") from None
        s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        reply = json.loads(s.makefile().readline())
    if not reply.get("ok"):
        raise UsageError(f"cnlb: {reply.get('error')}")
    return reply["result"]


def host_pid(name: str) -> int:
    status = read_status()
    entry = status["hosts"].get(name)
    if entry is None:
        raise UsageError(f"cnlb exec: no node, pod or client named {name!r} — one of "
                         f"{', '.join(sorted(status['hosts']))}")
    pid, start = entry
    if not alive(pid, start):
        raise EnvironmentProblem(f"{name}'s namespace is gone (its pod was removed, or the owner died)")
    return pid


def down(say) -> dict:
    """Stop the running cluster: ask its owner to tear down; clean from the journal if it died."""
    state = current_state()
    if not state.exists():
        return {}
    owner = owner_pid(state)
    if owner and alive(*owner):
        os.kill(owner[0], signal.SIGTERM)
        deadline = time.time() + 120
        while alive(*owner) and time.time() < deadline:
            time.sleep(0.1)
        if not alive(*owner) and not state.exists():
            _remove_log()
            return {"owner": "stopped"}
    say("the owner process is gone; removing what its journal names")
    removed = clean(state)
    _remove_log()
    return removed


def _remove_log():
    try:
        os.unlink(os.path.join(STATE_ROOT, LOG))
    except FileNotFoundError:
        pass

