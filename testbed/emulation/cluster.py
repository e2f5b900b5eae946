"""The emulated cluster: Mininet hosts for nodes, pods, clients and the LB host, an Open vSwitch
fabric controlled by the VPC controller, the cloud load balancer, and the workloads on top.

Cluster is the lifecycle: it builds in named stages (hosts, fabric, addresses, pods, controller,
switches, workloads) from the pure plan and renderers, and tears down from the journal (every
process, bridge and root-namespace link is written down before it exists, so teardown and
`cnlb clean` after a crash remove exactly what was made; Mininet's stop() and `mn -c` are not
used). Its parts: the network (emulation.hosts), the control plane (emulation.control_plane),
the VPC controller and the load balancer (cloud), kube-proxy (kubernetes.dataplane).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from mininet.net import Mininet
from mininet.node import Node

from testbed.cloud.fabric import render_fabric
from testbed.cloud.lb import CloudLoadBalancer, L7LoadBalancer, load_balancer_kind, target_kind
from testbed.cloud.lb.haproxy import l7_fabric
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.emulation import machine, wiring
from testbed.emulation.background import Background
from testbed.emulation.bgp import start_bgp
from testbed.emulation.control_plane import ControlPlane
from testbed.emulation.hosts import Hosts
from testbed.emulation.journal import Journal, Lock, StateDir, bridge_exists, clean, proc_start_time
from testbed.emulation.launcher import LaunchedServer
from testbed.emulation.podservers import PodServer
from testbed.emulation.services import ServiceMethods
from testbed.emulation.status import write_status
from testbed.errors import EnvironmentProblem
from testbed.kubernetes.dataplane.base import ServerProcess, ServiceDataPlane
from testbed.kubernetes.dataplane.model import EndpointConditions, service_ports
from testbed.kubernetes.dataplane.registry import dataplane_for
from testbed.kubernetes.kubelet import KubeletIptables
from testbed.kubernetes.lifecycle import Step
from testbed.paths import PODSERVER
from testbed.plan.addresses import LB_HOST, Plan, build_plan
from testbed.spec.kube_proxy import with_proxy_mode
from testbed.spec.model import Topology


def refuse_unavailable(proxy_mode: str) -> None:
    """EnvironmentProblem when this machine cannot run kube-proxy's mode (its kernel lacks a
    module the mode needs): one line, naming the mode, the reason and the way out."""
    missing = dataplane_for(proxy_mode).unavailable()
    if missing:
        raise EnvironmentProblem(f"kube-proxy mode {proxy_mode} cannot run here: {missing} — "
                                 "use another --proxy-mode (cnlb doctor lists the modes this "
                                 "machine runs)")


class Cluster(ServiceMethods):   # apply_service, set_service, delete_service
    """One emulated cluster in one mode.

    topo: the validated topology (its mode decides classic vs container-native)
    progress: called with one line per stage (None: quiet)
    iptables: kube-proxy's backend: auto (the machine's), nft or legacy
    load_balancer: the cloud load balancer's kind (a key of testbed.cloud.lb.LOAD_BALANCERS;
        None: the topology's loadBalancer.kind)
    proxy_mode: kube-proxy's mode (a key of dataplane.registry's; None: the file's kubeProxy)
    datapath: what the fabric asks OVS for: auto or afxdp (machine.FABRIC_DATAPATHS)
    """

    def __init__(self, topo: Topology, progress: Callable[[str], None] | None = None,
                 iptables: str = "auto", load_balancer: str | None = None,
                 proxy_mode: str | None = None, datapath: str = "auto"):
        self.lb_kind = load_balancer or topo.load_balancer.kind
        self._make_lb = load_balancer_kind(self.lb_kind)   # an unknown kind fails here
        if self.lb_kind != topo.load_balancer.kind:   # the plan has an L7 host with l7
            topo = replace(topo, load_balancer=replace(topo.load_balancer, kind=self.lb_kind))
        self.topo = topo = with_proxy_mode(topo, proxy_mode)   # status, records read it
        self.iptables = iptables
        if datapath not in machine.FABRIC_DATAPATHS:
            raise ValueError(f"datapath {datapath!r} is not one of "
                             f"{', '.join(machine.FABRIC_DATAPATHS)}")
        self.datapath_asked = datapath
        self.datapath = ""   # what runs: kernel, userspace or afxdp (decided when it starts)
        self.proxy_mode = topo.kube_proxy.mode
        dataplane_for(self.proxy_mode)   # an unknown mode fails here, before anything is built
        self.plan: Plan = build_plan(topo)
        self.state = StateDir.for_cluster("current")
        self.progress = progress or (lambda msg: None)
        self.hosts: Hosts | None = None
        self.controller: ControllerProcess | None = None
        self.lb: CloudLoadBalancer | None = None
        self.journal: Journal | None = None
        self.lock = Lock()
        self.control = ControlPlane(self)
        self.kube_proxy: ServiceDataPlane | None = None
        self.kubelet_iptables: KubeletIptables | None = None   # the kubelets' own chains
        self.timings: dict[str, float] = {}
        self.offloads_off = False
        self._stopped = False
        self._first_sync: Background | None = None   # kube-proxy's, beside bring-up's stages

    # -- the parts' state, as the session and kube-proxy read it ------------------------------
    @property
    def net(self) -> Mininet | None:
        return self.hosts.net if self.hosts else None

    @property
    def failed_pods(self) -> set[str]:
        return self.control.states.failed_pods

    @property
    def removed_pods(self) -> set[str]:
        return self.control.states.removed_pods

    @property
    def failed_nodes(self) -> set[str]:
        return self.control.states.failed_nodes

    @property
    def pod_servers(self) -> dict[str, PodServer]:
        return self.control.pod_servers

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Cluster:
        """Build everything; on any failure (or Ctrl-C) remove what was built and re-raise."""
        self._preflight()
        plan = self.plan
        self.progress(f"building {plan.cluster} ({plan.mode}): {len(plan.nodes)} nodes, "
                      f"{len(plan.pods)} pods, {len(plan.clients)} clients")
        try:
            t0 = time.time()
            self._stage("hosts", self.hosts.add_hosts)
            self._stage("fabric", self.hosts.add_fabric)
            self._stage("addresses", lambda: self.hosts.configure(self.topo.links,
                                                                  self.offloads_off))
            # kube-proxy needs nothing of the VPC: its first sync runs beside the next stages
            self._first_sync = Background(self.sync_kube_proxy, "kube-proxy first sync")
            # Pods serve before the VPC controller registers them with the LB, as a cloud LB
            # controller registers a pod once it is running: its first checks find it up.
            self._stage("pods", lambda: self.control.start_pod_servers(self.plan.pods))
            self._stage("controller", self._start_controller)
            self._stage("switches", self._start_switches)
            if isinstance(self.lb, L7LoadBalancer):   # HAProxy in lb7, its targets registered
                self._stage("l7 load balancer", lambda: self.lb.start_in(self))
            self._stage("workloads", self._start_workloads)
            self.timings["total_s"] = round(time.time() - t0, 3)
            write_status(self)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> dict[str, int]:
        """Remove everything this cluster made (idempotent)."""
        if self._stopped:
            return {}
        self._stopped = True
        t0 = time.time()
        self.control.stop_clock()   # no step may act on what teardown is removing
        if self._first_sync is not None:   # a start that failed: its sync ends (or fails) first
            with contextlib.suppress(Exception):
                self._first_sync.join(60)
        if self.kube_proxy is not None:
            self.kube_proxy.stop_sync_runner()   # nor a paced sync on nodes being removed
        if self.kubelet_iptables is not None:   # the kubelets' KUBE-IPTABLES-HINT monitor
            self.kubelet_iptables.stop()
        if self.controller:
            self.controller.stop()
        removed = clean(self.state, log=self.progress) if self.journal else {}
        if isinstance(self.lb, L7LoadBalancer):
            self.lb.reap()
        reap(self)
        if self.journal:
            self.journal.close()
        self.lock.release()
        self.timings["stop_s"] = round(time.time() - t0, 3)
        return removed

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> bool:
        self.stop()
        return False

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        self.progress(f"{name} ...")
        t0 = time.time()
        fn()
        self.timings[f"{name}_s"] = round(time.time() - t0, 3)

    # -- stages ----------------------------------------------------------------------------
    def _preflight(self) -> None:
        if not machine.is_root():
            raise EnvironmentProblem("cnlb up needs root (network namespaces, Open vSwitch) — "
                                     "run it with sudo")
        refuse_unavailable(self.proxy_mode)   # before anything is built: nothing to tear down
        if not machine.start_ovs():
            raise EnvironmentProblem("Open vSwitch is not running and could not be started — "
                                     "run `make setup`")
        if not os.path.exists(PODSERVER):
            raise EnvironmentProblem(f"{PODSERVER} is missing — run `make setup` to build the "
                                     "pod server")
        if not self.lock.acquire():
            raise EnvironmentProblem(self.lock.busy_message())
        try:
            if self.state.exists():
                self.progress("removing what a crashed earlier run left ...")
                clean(self.state, log=self.progress)
            self._refuse_foreign_names()
        except BaseException:
            self.lock.release()
            raise
        self.journal = Journal(self.state)
        self.journal.record("start", cluster=self.topo.name, mode=self.plan.mode,
                            file=self.topo.file, pid=os.getpid(),
                            pid_start=proc_start_time(os.getpid()))
        self.datapath, why = machine.fabric_datapath(self.datapath_asked)
        if why:
            self.progress(f"note: {why}")
        if self.datapath == "afxdp" and self.topo.links.bw:
            # OVS writes to an AF_XDP socket, past the switch port's qdisc
            self.progress("note: with AF_XDP ports links.bw shapes what hosts send, not what "
                          "the switch sends them")
        self.offloads_off = self.datapath != "kernel"
        self.hosts = Hosts(self.plan, self.journal, self.state, self.topo.name, self.datapath)

    def _refuse_foreign_names(self) -> None:
        """Bridges, namespaces and root-namespace links we would make must not exist already."""
        for sw in self.plan.switches:
            if bridge_exists(sw.name):
                raise EnvironmentProblem(
                    f"an OVS bridge named {sw.name} exists and is not this testbed's — "
                    f"remove it (ovs-vsctl del-br {sw.name}) or run cnlb on another machine")
        for host in wiring.host_names(self.plan):
            if os.path.exists(wiring.netns_file(host)):
                raise EnvironmentProblem(
                    f"a network namespace named {wiring.netns_name(host)} exists and is not this "
                    f"testbed's — remove it (ip netns del {wiring.netns_name(host)}) first")
        for att in self.plan.attachments:
            if os.path.exists(f"/sys/class/net/{att.port}"):
                raise EnvironmentProblem(f"an interface named {att.port} already exists in the "
                                         "root namespace — remove it first (ip link del ...)")

    def _start_controller(self, ofp_port: int | None = None,
                          rest_port: int | None = None) -> None:
        lb_netns = self.hosts.netns_file(LB_HOST)
        fabric = render_fabric(self.plan, self.topo.load_balancer.health_check, lb_netns,
                               gone=frozenset(self.removed_pods), timing=self.topo.kubernetes)
        if self.lb_kind == "l7":   # the VPC routes the VIPs to HAProxy's host instead
            fabric = l7_fabric(fabric, self.plan)
        path = self.state.file("fabric.json")
        with open(path, "w") as fh:
            json.dump(fabric, fh, indent=1)
        self.controller = ControllerProcess(path, self.state.file("controller.log"), ofp_port,
                                            rest_port)
        self.controller.start(on_pid=lambda pid: self.journal.process(pid, "vpc controller"))
        if isinstance(self.lb, L7LoadBalancer):   # HAProxy outlives a controller restart
            self.lb.controller = self.controller
        else:
            self.lb = self._make_lb(self.controller, target_kind(self.plan.mode))

    def restart_controller(self, kill: bool = True) -> None:
        """Replace the VPC controller by a fresh process on the same ports (after it died, or
        to show the switches are reprogrammed in full); wait until traffic can flow again."""
        old = self.controller
        if kill and old.alive():
            old.proc.kill()
            old.proc.wait(10)
        self._start_controller(old.ofp_port, old.rest_port)
        self.controller.wait_programmed([s.name for s in self.plan.switches])
        self.wait_lb_ready()

    def _start_switches(self) -> None:
        self.hosts.start_switches(self.controller.ofp_port)
        self.controller.wait_programmed([s.name for s in self.plan.switches])
        self.bgp = start_bgp(self)   # cni.routing bgp: sessions open once the fabric routes

    def _start_workloads(self) -> None:
        """kube-proxy's first sync on every node, then the LB serving from every target (its
        checks began when the controller registered the targets: they run meanwhile)."""
        # timed apart (bench/bringup.py reports them inside workloads); kube-proxy's first
        # sync began after the addresses: what is left of it
        self._stage("kube-proxy", self._first_sync.join if self._first_sync
                    else self.sync_kube_proxy)
        self._stage("lb targets", self.wait_lb_ready)
        self.control.start_clock()   # the kubelets' probers, the control plane's scheduler
        self.kubelet_iptables = KubeletIptables.started(self, self.iptables)

    def sync_kube_proxy(self) -> None:
        """Render and apply kube-proxy's rules on every node."""
        if self.kube_proxy is None:
            self.kube_proxy = dataplane_for(self.proxy_mode)(self, backend=self.iptables)
            self.kube_proxy.source_lock = self.control.lock   # paced syncs lock as callers do
            self.kube_proxy.services_source = lambda: service_ports(   # the EndpointSlices
                self.plan, None, self.endpoint_conditions())
        self.kube_proxy.sync_all()

    # -- the control plane, as notebooks, tests and the detached session call it --------------
    def add_pod(self, deployment: str, node: str | None = None) -> str:
        """Schedule a new pod of a deployment; its name (see ControlPlane.add_pod)."""
        return self.control.add_pod(deployment, node)

    def remove_pod(self, name: str, deregister: bool = True,
                   instant: bool | None = None) -> list[Step]:
        """Delete a pod on the control plane's clock (instant: at once, endpoints first); the
        steps (see ControlPlane.remove_pod)."""
        return self.control.remove_pod(name, deregister, instant)

    def fail_pod(self, name: str, instant: bool | None = None) -> list[Step]:
        """Crash a pod's server; the steps that follow (see ControlPlane.fail_pod)."""
        return self.control.fail_pod(name, instant)

    def fail_node(self, name: str, instant: bool | None = None) -> list[str]:
        """Fail a node; the pods rescheduled elsewhere at once (instant), or [] when they will
        be after the not-ready toleration (see ControlPlane.fail_node)."""
        return self.control.fail_node(name, instant)

    def endpoint_conditions(self) -> dict[str, EndpointConditions]:
        """The endpoints as published: pod -> ready, serving, terminating (kube-proxy reads
        them; see ControlPlane.endpoint_conditions)."""
        return self.control.endpoint_conditions()

    def launch_node_servers(self, module: str, args_by_node: Mapping[str, Sequence[str]]
                            ) -> dict[str, LaunchedServer]:
        """Start a Python server module in each node (see ControlPlane.launch_node_servers)."""
        return self.control.launch_node_servers(module, args_by_node)

    def live_pods(self) -> set[str]:
        """Pods neither failed nor removed."""
        return self.control.live_pods()

    def wait_lb_ready(self, timeout: float = 0.0) -> None:
        """Wait until the cloud LB serves from every backend it should (see ControlPlane)."""
        self.control.wait_lb_ready(timeout)

    # -- running commands ------------------------------------------------------------------
    def host(self, name: str) -> Node:
        """The host of a node, pod, client or the LB; KeyError naming it if there is none."""
        return self.hosts.host(name)

    def exec(self, host: str, argv: Sequence[str],
             timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a command in a host's namespace and wait for it (output captured)."""
        proc = self.host(host).popen(list(argv), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def sh(self, host: str, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a shell command line in a host's namespace (output captured)."""
        return self.exec(host, ["sh", "-c", command], timeout)


def reap(cluster: Cluster) -> None:
    """Collect the exit status of a cluster's child processes (clean() killed them), so no
    zombies stay behind while a long-lived caller (a test session, a notebook) goes on."""
    procs: list[ServerProcess | subprocess.Popen] = list(cluster.control.pod_servers.values())
    if cluster.kube_proxy is not None:
        procs += list(cluster.kube_proxy.health_servers.values())
    if cluster.hosts is not None:
        procs += cluster.hosts.shells()
    if getattr(cluster, "bgp", None) is not None:   # set once the switches are up
        procs += list(cluster.bgp.procs.values())
    for proc in procs:
        try:
            proc.wait(timeout=2)
        except Exception:
            pass
