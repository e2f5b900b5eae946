"""Calico-style BGP routing on a live cluster: a BIRD per node, the fabric's BGP speaker, and
the relay that turns what the speaker learned into the VPC controller's routes.

Every BIRD runs in its host's namespace (so BGP listens only there) in the foreground, as a
child journaled like every process (testbed.emulation.hosts.OwnedHost.popen), with its config,
control socket, pid file and log in the cluster's state directory under bird/ (removed with
it). `birdc -s <state>/bird/<host>.ctl` talks to one of them; `cnlb exec node1 -- birdc ...`
adds the -s itself (bird_socket).

Why a BIRD speaker and a relay rather than os-ken's BGP speaker inside the controller: the
controller listens on 127.0.0.1 in the root namespace, which no node can reach (and the root
namespace must not get a fabric address); a BIRD in its own host on the fabric is what a
top-of-rack or route reflector is, and the controller is told what it learned over its REST API
(PUT /v1/bgp), as an SDN controller reads its routers' RIB.

BgpRouting: start, reconfigure (a fresh block), read, relay, wait for convergence, stop
start_bgp: a started BgpRouting for a cluster with overlay bgp (None for other CNIs)
bird_socket: the control socket of a host's BIRD in a state directory (None: it has none)
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

from testbed.errors import EnvironmentProblem
from testbed.kubernetes.cni.bird import (
    Protocol,
    Route,
    parse_protocols,
    parse_routes,
    render_node,
    render_speaker,
    speaker_protocol,
)
from testbed.plan.calico_ipam import blocks_of

BIRD_DIR = "bird"
RELAY_POLL_S = 0.25      # how often the relay reads the speaker (a withdrawal shows this late)
RELAY_REFRESH_S = 5.0    # and pushes unchanged state anyway (a restarted controller forgot it)


def start_bgp(cluster: Any) -> BgpRouting | None:
    """BIRD on every node and the fabric's speaker, once the fabric routes (the sessions cross
    it), and the relay; returns when the VPC routes every block. None unless the cluster's plan
    has overlay bgp. The relay ends when the cluster stops (Cluster.stop sets its _stopped)."""
    if cluster.plan.overlay != "bgp":
        return None
    cluster.progress("bgp ...")
    cluster.bgp = routing = BgpRouting(cluster)   # before it starts: teardown reaps its BIRDs
    routing.start()
    return routing


def bird_socket(state_path: str, host: str) -> str | None:
    """The control socket of host's BIRD under a cluster's state directory, if it exists."""
    path = os.path.join(state_path, BIRD_DIR, f"{host}.ctl")
    return path if os.path.exists(path) else None


class BgpRouting:
    """The BGP side of a cluster with overlay bgp.

    cluster: the cluster (its plan, hosts, state directory, controller)
    relayed: the routes last given to the controller (prefix -> next hop)
    """

    def __init__(self, cluster: Any):   # a testbed.emulation.cluster.Cluster (which imports us)
        self.cluster = cluster
        self.plan = cluster.plan
        self.dir = cluster.state.file(BIRD_DIR)
        self.procs: dict[str, subprocess.Popen] = {}
        self.relayed: dict[str, str] = {}
        self._told: dict[str, Any] = {}   # the snapshot last given to the controller
        self.withdrawn_at: dict[str, float] = {}   # prefix -> when the controller lost it
        self.relay_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- files --------------------------------------------------------------------------------
    def conf(self, host: str) -> str:
        return os.path.join(self.dir, f"{host}.conf")

    def sock(self, host: str) -> str:
        return os.path.join(self.dir, f"{host}.ctl")

    def _write(self, host: str, text: str) -> None:
        with open(self.conf(host), "w") as fh:
            fh.write(text)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start BIRD on every node and on the fabric's speaker, then the relay; return once
        the VPC routes every block (the LB's checks of pod targets go by those routes)."""
        # journaled, so teardown (or `cnlb clean` after a crash) removes it and the leftover
        # check looks for it, sockets and all
        self.cluster.journal.record("file", path=self.dir)
        os.makedirs(self.dir, exist_ok=True)
        bgp = self.plan.bgp
        assert bgp is not None
        hosts = [n.name for n in self.plan.nodes]
        for node in self.plan.nodes:
            self._write(node.name, render_node(self.plan, node))
        if bgp.fabric_peer:
            self._write(bgp.speaker, render_speaker(self.plan))
            hosts.append(bgp.speaker)
        for host in hosts:
            self._start_bird(host)
        self._thread = threading.Thread(target=self._relay, name="bgp-relay", daemon=True)
        self._thread.start()
        self.wait_converged()

    def _start_bird(self, host: str) -> None:
        log = open(os.path.join(self.dir, f"{host}.log"), "ab")
        try:
            self.procs[host] = self.cluster.host(host).popen(
                ["bird", "-f", "-c", self.conf(host), "-s", self.sock(host),
                 "-P", os.path.join(self.dir, f"{host}.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.time() + 10
        while not os.path.exists(self.sock(host)):
            if self.procs[host].poll() is not None or time.time() > deadline:
                raise EnvironmentProblem(f"BIRD did not start in {host}: "
                                         + self._log_tail(host))
            time.sleep(0.02)

    def _log_tail(self, host: str) -> str:
        try:
            with open(os.path.join(self.dir, f"{host}.log"), errors="replace") as fh:
                return fh.read()[-400:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the relay and the BIRDs (a cluster's teardown need not call this: the BIRDs are
        journaled processes and the relay ends with the cluster)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
            proc.wait(5)

    def blocks_changed(self, node: str) -> None:
        """Re-render a node's config and have its BIRD load it (`birdc configure`) when the
        node claimed a block its config lacks: the new block's blackhole route and
        announcement."""
        text = render_node(self.plan, self.plan.node(node))
        try:
            with open(self.conf(node)) as fh:
                if fh.read() == text:
                    return
        except OSError:
            pass
        self._write(node, text)
        out = self.birdc(node, "configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise EnvironmentProblem(f"BIRD on {node} did not take its new blocks: {out.strip()}")

    # -- reading ------------------------------------------------------------------------------
    def birdc(self, host: str, *command: str, timeout: float = 5.0) -> str:
        """One birdc command against host's BIRD (over its control socket; no namespace
        needed); its output."""
        done = subprocess.run(["birdc", "-s", self.sock(host), *command], text=True,
                              capture_output=True, timeout=timeout)
        return done.stdout + done.stderr

    def protocols(self, host: str) -> list[Protocol]:
        """`show protocols` of host's BIRD."""
        return parse_protocols(self.birdc(host, "show", "protocols"))

    def learned(self, host: str | None = None) -> list[Route]:
        """The BGP routes host's BIRD holds (default: the fabric speaker's)."""
        bgp = self.plan.bgp
        assert bgp is not None
        return parse_routes(self.birdc(host or bgp.speaker, "show", "route", "all"))

    def expected_blocks(self) -> dict[str, str]:
        """Every block of a healthy node -> that node's address: what the fabric should learn."""
        failed = self.cluster.failed_nodes
        return {b: n.ip for n in self.plan.nodes if n.name not in failed
                for b in blocks_of(self.plan.blocks, n.name)}

    # -- the relay ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The speaker's neighbours and learned routes, as PUT /v1/bgp takes them."""
        bgp = self.plan.bgp
        assert bgp is not None
        names = {speaker_protocol(n.name): n for n in self.plan.nodes}
        neighbors = [{"name": p.name, "node": names[p.name].name,
                      "address": names[p.name].ip, "state": p.state, "info": p.info,
                      "since": p.since, "established": p.established}
                     for p in self.protocols(bgp.speaker) if p.name in names]
        routes = [{"prefix": r.prefix, "next_hop": r.next_hop, "protocol": r.protocol,
                   "as_path": r.as_path} for r in self.learned()]
        return {"neighbors": neighbors, "routes": routes}

    def relay_once(self, force: bool = False) -> bool:
        """Read the speaker; tell the controller when a route or a session changed (or force).
        Returns whether it told it."""
        snap = self.snapshot()
        if snap == self._told and not force:
            return False
        controller = self.cluster.controller
        if controller is None or not controller.alive():
            return False
        controller.api("PUT", "/v1/bgp", snap)
        self._told, old = snap, self.relayed
        self.relayed = {r["prefix"]: r["next_hop"] for r in snap["routes"]}
        now = time.time()
        self.withdrawn_at.update({p: now for p in old if p not in self.relayed})
        for prefix in self.relayed:
            self.withdrawn_at.pop(prefix, None)
        return True

    def withdrawn_since(self, node: str, start: float) -> float | None:
        """Seconds from start until the controller had lost the last of node's blocks (None:
        one of them is still routed, or the node has none)."""
        times = [self.withdrawn_at.get(b) for b in blocks_of(self.plan.blocks, node)]
        if not times or None in times:
            return None
        return max(t for t in times if t is not None) - start

    def _stopping(self) -> bool:
        return self._stop.is_set() or bool(getattr(self.cluster, "_stopped", False))

    def _relay(self) -> None:
        """Until the cluster stops: relay the speaker's state (testbed.emulation.cluster.reap
        collects the BIRDs teardown stopped)."""
        last, told = 0.0, None
        bgp = self.plan.bgp
        assert bgp is not None
        while not self._stop.wait(RELAY_POLL_S) and not self._stopping():
            if not bgp.fabric_peer:
                continue
            try:
                # a restarted controller (Cluster.restart_controller) knows nothing yet
                force = time.time() - last > RELAY_REFRESH_S or self.cluster.controller is not told
                if self.relay_once(force) or force:
                    last, told = time.time(), self.cluster.controller
                self.relay_error = ""
            except Exception as e:   # a busy machine, a controller restarting: try again
                self.relay_error = f"{type(e).__name__}: {e}"

    def wait_converged(self, timeout: float = 60.0) -> None:
        """Block until every session that should be up is Established and the controller has
        exactly the healthy nodes' blocks; EnvironmentProblem naming what is missing if not."""
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            try:
                if self._converged():
                    return
                state = f"controller routes {self.relayed}; relay: {self.relay_error or 'ok'}"
            except (OSError, subprocess.SubprocessError) as e:
                state = str(e)
            time.sleep(0.2)
        bgp = self.plan.bgp
        assert bgp is not None
        raise EnvironmentProblem(
            f"BGP did not converge within {timeout:.0f}s (expected {self.expected_blocks()}; "
            f"{state}); the speaker's protocols:\n" + self.birdc(bgp.speaker, "show", "protocols"))

    def _converged(self) -> bool:
        bgp = self.plan.bgp
        assert bgp is not None
        failed = self.cluster.failed_nodes
        if bgp.node_to_node_mesh:
            for node in self.plan.nodes:
                if node.name in failed:
                    continue
                mesh = [p for p in self.protocols(node.name) if p.name.startswith("Mesh_")]
                up = sum(p.established for p in mesh)
                if up < len(self.plan.nodes) - 1 - len(failed):
                    return False
        if not bgp.fabric_peer:
            return True
        healthy = {n.name for n in self.plan.nodes} - set(failed)
        sessions = {n["node"] for n in self._told.get("neighbors", []) if n["established"]}
        if self.relayed != self.expected_blocks() or not healthy <= sessions:
            return False
        return self.cluster.controller.api("GET", "/v1/bgp")["updates"] > 0
