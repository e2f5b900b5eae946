"""The pods' HTTP servers (build/podserver), started by one launcher process for the cluster.

`podserver --launch` reads one line per pod, the flags of that pod's server with --netns naming
the pod's network namespace, and forks the server into it: no process has to be inside a pod
before its server starts. It speaks testbed.emulation.launcher's protocol (workloads/podserver.c
has its side): started PID, ready PID (the server listens), exit PID CODE.

server_flags: the line one pod's server is started with: its container port and every
  targetPort (TCP or UDP) of the Services that select its deployment, all in one process.
Launcher: the `podserver --launch` process (a ServerLauncher of PodServers).
Launchers: a cluster's launchers (pods' servers; Python servers in the nodes), journaled.
PodServer: one pod's server (a LaunchedServer: pid, poll, wait, kill, terminate — graceful —,
  returncode), and set_ready (its /readyz) for the kubelet's readiness probe.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from testbed.emulation.journal import Journal, StateDir
from testbed.emulation.launcher import NOT_STARTED, LaunchedServer, ServerLauncher
from testbed.paths import PODSERVER
from testbed.plan.addresses import PodPlan, ServicePlan

__all__ = ["NOT_STARTED", "Launcher", "Launchers", "PodServer", "served_ports", "server_flags"]


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


class PodServer(LaunchedServer):
    """One pod's server, a child of the pod server launcher (name: the pod's name)."""

    @property
    def pod(self) -> str:
        """The pod's name."""
        return self.name

    def terminate(self) -> None:
        """SIGTERM, the kubelet's stop: it closes its listening sockets (new connections are
        refused), answers the requests it has already received, then exits with status 0."""
        self.send_signal(signal.SIGTERM)

    def set_ready(self, ready: bool) -> None:
        """Make its readiness endpoint (GET /readyz) answer 200 (ready) or 503 (not ready):
        SIGUSR2 / SIGUSR1. It keeps serving everything else either way."""
        self.send_signal(signal.SIGUSR2 if ready else signal.SIGUSR1)


class Launcher(ServerLauncher[PodServer]):
    """One `podserver --launch` process for the cluster's pods (see ServerLauncher)."""

    def __init__(self, log: str, on_launcher: Callable[[int], None],
                 on_started: Callable[[list[PodServer]], None]):
        super().__init__(log, on_launcher, on_started, PodServer, [PODSERVER, "--launch"],
                         log_prefix="podserver {name}: ")


class ClusterFiles(Protocol):
    """What Launchers uses of a cluster: its state directory, journal and namespaces."""

    state: StateDir
    journal: Journal | None

    @property
    def hosts(self) -> Any: ...   # Hosts: netns_file(name)


class Launchers:
    """A cluster's launchers, each started on first use and journaled with every server it
    starts (teardown and `cnlb clean` stop them by pid; a server dies with its launcher anyway,
    which covers the moment before): the pods' (`podserver --launch`) and the nodes' Python
    servers' (testbed.emulation.pylauncher, for kube-proxy's servers)."""

    def __init__(self, cluster: ClusterFiles):
        self.cluster = cluster
        self.pod_launcher: Launcher | None = None
        self.node_launcher: ServerLauncher[LaunchedServer] | None = None

    def pods(self) -> Launcher:
        """The pods' server launcher (started if it is not running)."""
        if self.pod_launcher is None or not self.pod_launcher.alive():
            self.pod_launcher = Launcher(self.cluster.state.file("podservers.log"),
                                         *self._journaling("pod server launcher", "podserver"))
        return self.pod_launcher

    def launch_node_servers(self, module: str, args_by_node: Mapping[str, Sequence[str]]
                            ) -> dict[str, LaunchedServer]:
        """Start `python -m module ARGS...` in each node's namespace, forked from one warm
        interpreter: at fifty nodes, fifty forks instead of fifty Python starts under
        `ip netns exec`. The module must be standard library only, with main(argv)."""
        if self.node_launcher is None or not self.node_launcher.alive():
            self.node_launcher = ServerLauncher(
                self.cluster.state.file("node-servers.log"),
                *self._journaling("node server launcher", "python server"), LaunchedServer,
                [sys.executable, "-S", "-m", "testbed.emulation.pylauncher"])
        hosts = self.cluster.hosts
        servers = self.node_launcher.launch(
            [(node, ["--netns", hosts.netns_file(node), module, *args])
             for node, args in args_by_node.items()])
        return dict(zip(args_by_node, servers, strict=True))

    def _journaling(self, launcher: str, server: str
                    ) -> tuple[Callable[[int], None], Callable[[list[Any]], None]]:
        journal = self.cluster.journal
        assert journal is not None   # a started cluster has one

        def started(servers: list[Any]) -> None:   # as Journal.process writes them
            journal.record_many("process", [
                {"pid": s.pid, "start": s.start_time, "what": f"{s.name}: {server}",
                 "gentle": True} for s in servers])
        return (lambda pid: journal.process(pid, launcher)), started
