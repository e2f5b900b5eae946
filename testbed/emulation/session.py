"""A cluster that stays up after `cnlb up --detach` returns, and what `cnlb status` and
`cnlb down` say and do about whichever process holds the cluster.

The owner process (`cnlb up FILE --owner`) builds the cluster, reports to the waiting
`up --detach` over a pipe, then holds it until SIGTERM, answering request()s (pod lifecycle,
status) on a Unix socket in the state directory and keeping `status.json` current. A foreground
`cnlb up`/`cnlb run` holds a cluster too but answers nothing: status names it from the lock
file, and down refuses it unless forced (it is someone's session). Usage: README.md.
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

from testbed.emulation.journal import (
    STATE_ROOT,
    Holder,
    StateDir,
    alive,
    clean,
    lock_holder,
    owner_pid,
    read_journal,
)
from testbed.emulation.rollout import ROLLOUT_OPS, progress_line, rollout_request
from testbed.emulation.services import document_from_wire
from testbed.emulation.status import status_of, write_status
from testbed.emulation.wiring import NETNS_DIR
from testbed.errors import EnvironmentProblem, InputError, UsageError
from testbed.paths import REPO

SOCKET = "owner.sock"
LOG = "owner.log"
OWNER_FLAG = "--owner"      # on the command line of the detached owner process (start_detached)
STOP_WAIT_S = 120           # how long down waits for a holder's own teardown


def current_state() -> StateDir:
    return StateDir.for_cluster("current")


# -- the owner process ---------------------------------------------------------------------

class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            request = json.loads(line)
            result = self.server.owner.dispatch(request)
            reply = {"ok": True, "result": result}
        except InputError as exc:   # one line per problem, as the CLI prints them (exit 2)
            reply = {"ok": False, "error": str(exc), "problems": [str(p) for p in exc.problems]}
        except UsageError as exc:
            reply = {"ok": False, "error": str(exc).removeprefix("cnlb: ")}
        except (KeyError, ValueError) as exc:
            reply = {"ok": False, "error": str(exc).strip("'\"")}
        except Exception as exc:   # report, keep serving: the cluster must stay up
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write((json.dumps(reply) + "\n").encode())


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    owner: Owner          # set by Owner.serve before the first request


def _clock(cluster, steps, request: dict) -> dict:
    """What a lifecycle answer says of the control plane's clock: the timing that applied and
    the steps planned (their times count from the request; timeline.jsonl has them as done)."""
    instant = request.get("instant") or cluster.topo.kubernetes.instant
    out: dict = {"timing": "instant" if instant else "realistic"}
    if steps and not instant:
        out["steps"] = [s.to_dict() for s in steps]
    return out


SERVICE_OPS = ("apply-service", "set-service", "delete-service")


def _service_request(cluster, op: str, request: dict) -> dict:
    """`cnlb service apply | set | delete` (testbed.emulation.services; InputError when the
    file or the fields are wrong, and nothing changed)."""
    if op == "apply-service":
        return cluster.apply_service(document_from_wire(request["document"]))
    if op == "set-service":
        return cluster.set_service(request["service"], [str(a) for a in request["fields"]])
    return cluster.delete_service(request["service"])


class Owner:
    """Holds a running Cluster and serves lifecycle requests, one at a time."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.lock = threading.Lock()
        self.rollouts: dict = {}   # deployment -> its latest rolling update (rollout_request)
        self.server: _Server | None = None

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
                steps = c.remove_pod(request["pod"], instant=request.get("instant"))
                result = {"removed": request["pod"], **_clock(c, steps, request)}
            elif op == "fail-pod":
                steps = c.fail_pod(request["pod"], instant=request.get("instant"))
                result = {"failed": request["pod"], **_clock(c, steps, request)}
            elif op == "fail-node":
                moved = c.fail_node(request["node"], instant=request.get("instant"))
                c.wait_lb_ready()
                result = {"failed": request["node"], "rescheduled": moved,
                          **_clock(c, [], request)}
            elif op == "restart-kube-proxy":   # kube-proxy.md: a new process on the node
                result = {"restarted": c.kube_proxy.restart([request["node"]])}
            elif op in SERVICE_OPS:
                result = _service_request(c, op, request)
            elif op in ROLLOUT_OPS:
                result = rollout_request(c, op, request, self.rollouts)
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


def _refresh_status(owner: Owner, seen: int) -> int:
    """Rewrite status.json when the control plane's clock applied steps since `seen` (pods
    terminate and are replaced after the request that started it returned); the count now."""
    clock = owner.cluster.control.clock
    ran = len(clock.ran) if clock is not None else 0
    if ran != seen:
        with owner.lock:
            write_status(owner.cluster)
    return ran


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
        steps_seen = 0
        while True:
            time.sleep(1)
            steps_seen = _refresh_status(owner, steps_seen)
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

def start_detached(file: str, mode: str, say, iptables: str = "auto",
                   datapath: str = "auto", lb: str | None = None,
                   proxy_mode: str | None = None, cni: str | None = None) -> dict:
    """Start the owner process and wait until the cluster is ready; return its status."""
    from testbed.emulation.journal import Lock
    Lock().refuse_if_held()
    os.makedirs(STATE_ROOT, exist_ok=True)
    log = open(os.path.join(STATE_ROOT, LOG), "w")
    r, w = os.pipe()
    argv = [sys.executable, "-m", "testbed.cli", "up", file, "--mode", mode, OWNER_FLAG,
            "--iptables", iptables, "--datapath", datapath, "--ready-fd", str(w)]
    argv += ["--lb", lb] if lb else []
    argv += ["--cni", cni] if cni else []
    argv += ["--proxy-mode", proxy_mode] if proxy_mode else []
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,),
                            start_new_session=True,
                            cwd=REPO)
    os.close(w)
    log.close()
    try:
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
    except KeyboardInterrupt:
        # The owner is in its own session, so Ctrl-C did not reach it: stop it and wait for its
        # teardown, so that "everything the testbed made was removed" is true when we say it.
        proc.terminate()
        proc.wait(STOP_WAIT_S)
        raise
    proc.wait(60)
    raise EnvironmentProblem(f"the owner process exited ({proc.returncode}) before the cluster "
                             f"was ready; see {os.path.join(STATE_ROOT, LOG)}")


def read_status() -> dict:
    path = current_state().file("status.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise EnvironmentProblem("no cluster is running — "
                                 "start one with `cnlb up FILE --detach`") from None


def request(op: str, **args) -> dict:
    """One request to the owner process of the running cluster."""
    path = current_state().file(SOCKET)
    if not os.path.exists(path):
        held = lock_holder()
        if held is not None and not is_detached_owner(held):
            raise EnvironmentProblem(f"the cluster is held by a foreground process, "
                                     f"{held.describe()}, which answers no requests — start it "
                                     "with `cnlb up FILE --detach` to change it from other shells")
        raise EnvironmentProblem("no detached cluster is running — "
                                 "start one with `cnlb up FILE --detach`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(300)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise EnvironmentProblem("the cluster's owner process is not answering — "
                                     "`cnlb down` removes what it left") from None
        s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        reply = json.loads(s.makefile().readline())
    if reply.get("problems"):
        raise UsageError("\n".join(reply["problems"]))
    if not reply.get("ok"):
        raise UsageError(f"cnlb: {reply.get('error')}")
    return reply["result"]


def host_netns(name: str) -> str:
    """The named network namespace of a running cluster's host (for `cnlb exec`)."""
    status = read_status()
    netns = status["hosts"].get(name)
    if netns is None:
        raise UsageError(f"cnlb exec: no node, pod or client named {name!r} — one of "
                         f"{', '.join(sorted(status['hosts']))}")
    if not os.path.exists(f"{NETNS_DIR}/{netns}"):
        raise EnvironmentProblem(f"{name}'s namespace is gone "
                                 "(its pod was removed, or the owner died)")
    return netns


def is_detached_owner(holder: Holder) -> bool:
    """Whether the lock's holder is a detached owner process (it answers on the socket)."""
    return OWNER_FLAG in holder.argv and "up" in holder.argv


def holder_kind(holder: Holder) -> str:
    return "detached" if is_detached_owner(holder) else "foreground"


def foreground_refusal(holder: Holder) -> str:
    """The one line `cnlb down` answers when a foreground process holds the cluster."""
    return (f"the cluster is held by a foreground process, {holder.describe()} — stop it with "
            f"Ctrl-C in its terminal, or `cnlb down --force` to send it SIGTERM and wait for its "
            "teardown")


def cluster_status() -> dict:
    """What `cnlb status` shows, with "holder" ({pid, start, argv, command, since, kind}, or None
    when the owner died):

    - a detached owner: its live answer on the socket;
    - a detached owner still building, or a foreground holder: who holds it, the cluster's
      name, mode and file from the journal, and (foreground, once built) the status.json it
      wrote when it was built, with "as_built": true, live LB backends from the controller's
      REST API and the controller's liveness from the journal;
    - an owner that died: its last status.json with owner.alive false.

    Raises EnvironmentProblem when no cluster is running."""
    held = lock_holder()
    if held is not None and not is_detached_owner(held):
        return _foreground_status(held)
    try:
        status = request("status")
    except EnvironmentProblem:
        status = None
    if status is not None:
        status["holder"] = _holder_dict(held) if held else None
        return status
    if held is not None:
        return {**_journal_facts(), "state": "building", "holder": _holder_dict(held)}
    status = read_status()
    status["owner"]["alive"] = False
    status["holder"] = None
    return status


def _holder_dict(holder: Holder) -> dict:
    return {**holder.to_dict(), "kind": holder_kind(holder)}


def _journal_facts() -> dict:
    """cluster, mode and file as the holder wrote them in the journal (None before it did)."""
    start = next((e for e in read_journal(current_state()) if e.get("kind") == "start"), {})
    return {"cluster": start.get("cluster"), "mode": start.get("mode"), "file": start.get("file")}


def _foreground_status(held: Holder) -> dict:
    facts = {**_journal_facts(), "holder": _holder_dict(held)}
    try:
        with open(current_state().file("status.json")) as fh:
            built = json.load(fh)
    except (OSError, ValueError):
        built = None
    # status.json is written once the cluster is up; one left by an earlier holder is not this one's
    if not isinstance(built, dict) or built.get("owner", {}).get("pid") != held.pid:
        return {**facts, "state": "building"}
    built.update(facts, state="running", as_built=True)
    built["owner"] = {"pid": held.pid, "alive": True}
    if isinstance(built.get("controller"), dict):
        built["controller"]["alive"] = _controller_alive()
    for lb in built.get("load_balancers", []):
        lb["backends"] = _live_backends(built.get("rest_port"), lb.get("service"))
    return built


def _controller_alive() -> bool:
    for e in read_journal(current_state()):
        if e.get("kind") == "process" and e.get("what") == "vpc controller":
            return alive(e["pid"], e.get("start"))
    return False


def _live_backends(port, service):
    from testbed.cloud.vpc_controller import rest
    try:
        return rest(int(port), "GET", f"/v1/lbs/{service}/backends", timeout=3)
    except Exception as exc:   # the controller may be going away with its cluster
        return {"error": str(exc)}


def format_status(status: dict) -> list[str]:
    """The lines `cnlb status` prints for cluster_status()'s answer."""
    holder = status.get("holder")
    lines = []
    if status.get("cluster"):   # not before the holder wrote its journal (or between variants)
        proxy = f", kube-proxy {status['proxy_mode']}" if status.get("proxy_mode") else ""
        lines.append(f"cluster {status['cluster']} ({status.get('mode') or '?'}{proxy}) "
                     f"from {status.get('file') or '?'}")
    if holder and holder["kind"] == "foreground":
        held = Holder(holder["pid"], holder["start"], tuple(holder["argv"]), holder["since"])
        lines.append(f"held by a foreground process: {held.describe()}")
        lines.append("  it answers no requests (`cnlb pod` and `cnlb node` need "
                     "`cnlb up --detach`); stop it with Ctrl-C in its terminal, or "
                     "`cnlb down --force`")
    elif holder:
        held = Holder(holder["pid"], holder["start"], tuple(holder["argv"]), holder["since"])
        lines.append(f"held by the detached owner process: {held.describe()}")
    if status.get("state") == "building":
        lines.append("no cluster is up yet: nothing more to show")
        return lines
    if status.get("as_built"):
        lines.append("nodes and pods as built (the holder may have changed them since); "
                     "load-balancer backends live:")
    owner, ctl = status["owner"], status["controller"]
    controller = (f"controller pid {ctl['pid']} {'alive' if ctl['alive'] else 'DEAD'} "
                  f"({ctl['rest']})")
    if status.get("as_built"):   # the holder line above already named the owner
        lines.append(controller)
    else:
        alive_ = "alive" if owner["alive"] else "DEAD"
        lines.append(f"owner pid {owner['pid']} {alive_}; {controller}")
    lines.append("nodes:")
    for n in status["nodes"]:
        lines.append(f"  {n['name']:<10} {n['ip']:<15} {n['subnet']:<8} "
                     f"{'FAILED' if n['failed'] else 'ready'}"
                     + (f"  blocks {' '.join(n['blocks'])}" if n.get("blocks") else ""))
    lines.append("pods:")
    for p in status["pods"]:
        lines.append(f"  {p['name']:<12} {p['node']:<10} {p['ip']:<15} "
                     f"{'healthy' if p['healthy'] else 'NOT healthy'}")
    lines.append("services:")
    for s in status["services"]:
        np_ = f" nodePort {s['node_port']}" if s["node_port"] else ""
        lines.append(f"  {s['name']:<10} {s['type']:<13} {s['cluster_ip']}:{s['port']}{np_} "
                     f"externalTrafficPolicy={s['external_traffic_policy']}")
        if s.get("external_ips"):   # routed by the VPC, on no node's interface
            lines.append(f"    externalIPs {' '.join(s['external_ips'])} "
                         f"(the VPC routes them to {s.get('external_ips_via') or '?'})")
    for lb in status["load_balancers"]:
        lines.append(f"load balancer {lb['vip']}:{lb['port']} -> {lb['service']} "
                     f"({lb['targets']} targets, {status.get('load_balancer_kind', 'l4')}):")
        backends = lb["backends"] if isinstance(lb["backends"], list) else []
        if isinstance(lb["backends"], dict) and "error" in lb["backends"]:
            lines.append(f"  backends unknown: {lb['backends']['error']}")
        for b in backends:
            state = "in service" if b.get("in_service") else b.get("state", "out of service")
            lines.append(f"  {b.get('name', '?'):<12} {b['ip']}:{b['port']:<6} {state}")
    lines += bgp_lines(status.get("bgp"))
    lines += [progress_line(r) for r in status.get("rollouts") or []]
    return lines


def bgp_lines(bgp: dict | None) -> list[str]:
    """`cnlb status`'s BGP part: the fabric's sessions with the nodes, the routes it learned."""
    if not bgp:
        return []
    if "error" in bgp:
        return [f"bgp: the controller did not answer ({bgp['error']})"]
    lines = ["bgp (the VPC fabric's speaker):"]
    for n in bgp.get("neighbors", []):
        lines.append(f"  neighbour {n.get('node', '?'):<10} {n.get('address', '?'):<15} "
                     f"{n.get('state', '?')} {n.get('info', '')}".rstrip())
    for r in bgp.get("routes", []):
        lines.append(f"  learned   {r['prefix']:<18} via {r.get('node', '?')} ({r['next_hop']})")
    return lines


def down(say, force: bool = False) -> dict:
    """Stop the running cluster: ask its owner to tear down; clean from the journal if it died.

    A foreground holder (`cnlb up` or `cnlb run` in another terminal) is refused with
    EnvironmentProblem naming it, unless force: then it gets SIGTERM (checked by pid and start
    time) and down waits for its own teardown."""
    held = lock_holder()
    if held is not None and not is_detached_owner(held):
        if not force:
            raise EnvironmentProblem(foreground_refusal(held))
        return _stop_foreground(held, say)
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


def _stop_foreground(held: Holder, say) -> dict:
    say(f"stopping the foreground holder, {held.describe()} ...")
    try:
        if held.alive():   # pid and start time: a recycled pid is left alone
            os.kill(held.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise EnvironmentProblem(f"not allowed to signal pid {held.pid} — run "
                                 "`cnlb down --force` with sudo") from None
    deadline = time.time() + STOP_WAIT_S
    while held.alive() and time.time() < deadline:
        time.sleep(0.1)
    if held.alive():
        raise EnvironmentProblem(f"pid {held.pid} did not finish its teardown within "
                                 f"{STOP_WAIT_S} s of SIGTERM — look at its terminal; once it "
                                 "is gone, `cnlb clean` removes what it left")
    state = current_state()
    if state.exists():   # it died without tearing down (a notebook, a test run): the journal can
        say("the holder left its cluster; removing what its journal names")
        return clean(state)
    return {"holder": "stopped"}


def _remove_log():
    try:
        os.unlink(os.path.join(STATE_ROOT, LOG))
    except FileNotFoundError:
        pass

