"""The emulated cluster: Mininet hosts for nodes, pods, clients and the LB host, an Open vSwitch
fabric controlled by the VPC controller, and the workloads on top.

The only module (with owner.py) that touches the machine. It builds from the pure plan and the
pure renderers (cni, fabric, kube-proxy), in named stages, journaling every process, bridge
and root-namespace link before it exists, so teardown (and `cnlb clean` after a crash) removes
exactly what was made. Mininet's own stop() and `mn -c` are not used: teardown works from the
journal, which also makes it fast.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Host, OVSSwitch

from testbed.kubernetes import node as node_setup
from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.cni.base import OFFLOADS_OFF
from testbed.emulation import machine
from testbed.cloud.vpc_controller import ControllerProcess
from testbed.errors import EnvironmentProblem
from testbed.cloud.fabric import render_fabric
from testbed.emulation.journal import OVS_LABEL, Journal, Lock, StateDir, bridge_exists, clean, proc_start_time
from testbed.plan.addresses import CORE_SWITCH, LB_HOST, Plan, build_plan
from testbed.spec.topology import Topology
from testbed.paths import REPO

PODSERVER = os.path.join(REPO, "build", "podserver")
HOST_THREADS = 8


class OneShellAtATime:
    """A node's shell runs one command at a time: links are made from several threads, and
    two of them may need the same node (a node's eth0 and its pods' veths)."""

    def cmd(self, *args, **kwargs):
        with self._shell_lock:
            return super().cmd(*args, **kwargs)


class OwnedHost(OneShellAtATime, Host):
    """A Mininet host (node, pod, client or LB) whose processes are journaled as they start:
    its shell, whose namespace dies with it, and everything started with popen()."""

    def __init__(self, name, journal: Optional[Journal] = None, **params):
        self.journal = journal
        self._shell_lock = threading.RLock()
        super().__init__(name, **params)

    def _popen(self, cmd, **params):
        popen = super()._popen(cmd, **params)
        if self.journal:
            # the host's interactive bash ignores SIGTERM: it is killed outright
            shell = "bash" in cmd and "--norc" in cmd
            self.journal.process(popen.pid, f"{self.name}: {' '.join(map(str, cmd))[:120]}",
                                 gentle=not shell)
        return popen


class VpcSwitch(OneShellAtATime, OVSSwitch):
    """An OVS bridge of the VPC fabric, labelled as ours in OVSDB (external_ids) so cleanup can
    tell it from bridges the machine's owner made."""

    def __init__(self, name, journal: Optional[Journal] = None, cluster: str = "", **params):
        self.journal = journal
        self._shell_lock = threading.RLock()
        self.cluster = cluster
        super().__init__(name, **params)

    def _popen(self, cmd, **params):
        popen = super()._popen(cmd, **params)
        if self.journal:
            self.journal.process(popen.pid, f"{self.name}: switch shell", gentle=False)
        return popen

    def bridgeOpts(self):
        return super().bridgeOpts() + f" external_ids:{OVS_LABEL}={self.cluster}"


class ControllerRef:
    """What OVSSwitch.start() needs to know of a controller it does not start itself."""

    def __init__(self, port: int):
        self.name, self.protocol, self.port = "c0", "tcp", port

    def IP(self):
        return "127.0.0.1"


class Cluster:
    """One emulated cluster in one mode.

    topo: the validated topology (its mode decides classic vs container-native)
    progress: called with one line per stage (None: quiet)
    """

    def __init__(self, topo: Topology, progress: Optional[Callable[[str], None]] = None,
                 iptables: str = "auto"):
        self.topo = topo
        self.iptables = iptables   # kube-proxy's backend: auto (the machine's), nft or legacy
        self.plan: Plan = build_plan(topo)
        self.state = StateDir.for_cluster("current")
        self.progress = progress or (lambda msg: None)
        self.net: Optional[Mininet] = None
        self.controller: Optional[ControllerProcess] = None
        self.journal: Optional[Journal] = None
        self.lock = Lock()
        self.pod_servers: dict = {}
        self.failed_pods: set = set()
        self.removed_pods: set = set()
        self.failed_nodes: set = set()
        self.kube_proxy = None
        self.timings: dict = {}
        self.offloads_off = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Cluster":
        """Build everything; on any failure (or Ctrl-C) remove what was built and re-raise."""
        self._preflight()
        plan = self.plan
        self.progress(f"building {plan.cluster} ({plan.mode}): {len(plan.nodes)} nodes, "
                      f"{len(plan.pods)} pods, {len(plan.clients)} clients")
        try:
            t0 = time.time()
            self._stage("hosts", self._add_hosts)
            self._stage("fabric", self._add_fabric)
            self._stage("addresses", self._configure_hosts)
            self._stage("controller", self._start_controller)
            self._stage("switches", self._start_switches)
            self._stage("workloads", self._start_workloads)
            self.timings["total_s"] = round(time.time() - t0, 3)
            self._write_status()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> dict:
        """Remove everything this cluster made (idempotent)."""
        if self._stopped:
            return {}
        self._stopped = True
        t0 = time.time()
        if self.controller:
            self.controller.stop()
        removed = clean(self.state, log=self.progress) if self.journal else {}
        self._reap()
        if self.journal:
            self.journal.close()
        self.lock.release()
        self.timings["stop_s"] = round(time.time() - t0, 3)
        return removed

    def _reap(self) -> None:
        """Collect the exit status of our child processes (clean() killed them), so no zombies
        stay behind while a long-lived caller (a test session, a notebook) goes on."""
        procs = list(self.pod_servers.values())
        if self.kube_proxy is not None:
            procs += list(self.kube_proxy.health_servers.values())
        if self.net is not None:
            procs += [n.shell for n in self.net.hosts + self.net.switches if getattr(n, "shell", None)]
        for proc in procs:
            try:
                proc.wait(timeout=2)
            except Exception:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _stage(self, name: str, fn) -> None:
        self.progress(f"{name} ...")
        t0 = time.time()
        fn()
        self.timings[f"{name}_s"] = round(time.time() - t0, 3)

    # -- stages ----------------------------------------------------------------------------
    def _preflight(self) -> None:
        if not machine.is_root():
            raise EnvironmentProblem("cnlb up needs root (network namespaces, Open vSwitch) — run it with sudo")
        if not machine.start_ovs():
            raise EnvironmentProblem("Open vSwitch is not running and could not be started — run `make setup`")
        if not os.path.exists(PODSERVER):
            raise EnvironmentProblem(f"{PODSERVER} is missing — run `make setup` to build the pod server")
        if not self.lock.acquire():
            raise EnvironmentProblem(self.lock.busy_message())
        try:
            if self.state.exists():
                self.progress("removing what a crashed earlier run left ...")
                clean(self.state, log=self.progress)
            for sw in self.plan.switches:
                if bridge_exists(sw.name):
                    raise EnvironmentProblem(
                        f"an OVS bridge named {sw.name} exists and is not this testbed's — "
                        f"remove it (ovs-vsctl del-br {sw.name}) or run cnlb on another machine")
            for att in self.plan.attachments:
                if os.path.exists(f"/sys/class/net/{att.port}"):
                    raise EnvironmentProblem(f"an interface named {att.port} already exists in the root "
                                             "namespace — remove it first (ip link del ...)")
        except BaseException:
            self.lock.release()
            raise
        self.journal = Journal(self.state)
        self.journal.record("start", cluster=self.topo.name, mode=self.plan.mode, file=self.topo.file,
                            pid=os.getpid(), pid_start=proc_start_time(os.getpid()))
        setLogLevel("warning")
        self.offloads_off = not machine.kernel_datapath()
        self.net = Mininet(build=False, controller=None, autoSetMacs=False, autoStaticArp=False,
                           waitConnected=False, inNamespace=False)

    def _add_host(self, name: str):
        return self.net.addHost(name, cls=OwnedHost, journal=self.journal, ip=None)

    def _add_hosts(self) -> None:
        # Each host is a shell Mininet waits on until its prompt appears; waiting for several
        # at once overlaps those start-ups (the GIL is free while a thread waits on its pty).
        # Hosts are then put back in plan order, which Mininet's CLI and `nodes` show.
        names = [a.host for a in self.plan.attachments] + [p.name for p in self.plan.pods]
        with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:
            list(pool.map(self._add_host, names))
        order = {name: i for i, name in enumerate(names)}
        self.net.hosts.sort(key=lambda h: order[h.name])

    def _add_fabric(self) -> None:
        datapath = "kernel" if machine.kernel_datapath() else "user"
        for sw in self.plan.switches:
            self.journal.record("bridge", name=sw.name)
            self.net.addSwitch(sw.name, cls=VpcSwitch, journal=self.journal, cluster=self.topo.name,
                               dpid=f"{sw.dpid:016x}", datapath=datapath, failMode="secure",
                               protocols="OpenFlow13")
        core = self.net.get(CORE_SWITCH)
        for sw in self.plan.switches:
            if sw.role != "subnet":
                continue
            self.journal.record("link", name=sw.uplink)
            self.journal.record("link", name=sw.core_port)
            self.net.addLink(self.net.get(sw.name), core, port1=_port_no(sw.uplink),
                             port2=_port_no(sw.core_port), intfName1=sw.uplink, intfName2=sw.core_port)
        for att in self.plan.attachments:
            self.journal.record("link", name=att.port)
        # A link's commands run in its first node's shell: links of different switches or
        # nodes can be made at once, those of one switch or node one after the other.
        groups: dict = {}
        for att in self.plan.attachments:
            groups.setdefault(att.switch, []).append(
                lambda att=att: self.net.addLink(self.net.get(att.switch), self.net.get(att.host),
                                                 port1=_port_no(att.port), intfName1=att.port,
                                                 intfName2="eth0", addr2=att.mac))
        for pod in self.plan.pods:
            groups.setdefault(pod.node, []).append(
                lambda pod=pod: self.net.addLink(self.net.get(pod.node), self.net.get(pod.name),
                                                 intfName1=pod.veth, intfName2="eth0",
                                                 addr1=pod.veth_mac, addr2=pod.mac))
        with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:
            for future in [pool.submit(lambda g=g: [make() for make in g]) for g in groups.values()]:
                future.result()

    def _configure_hosts(self) -> None:
        scripts = {}
        for node in self.plan.nodes:
            scripts[node.name] = node_setup.node_setup(self.plan, node, self.offloads_off, self.topo.links)
        for att in self.plan.attachments:
            if att.kind != "node":
                scripts[att.host] = node_setup.host_fabric(att, self.offloads_off, self.topo.links)
        for pod in self.plan.pods:
            scripts[pod.name] = plugin_for(self.plan).pod(self.plan, pod)
        self.run_scripts(scripts)
        if self.offloads_off:
            ports = [a.port for a in self.plan.attachments]
            ports += [p for s in self.plan.switches if s.role == "subnet" for p in (s.uplink, s.core_port)]
            for port in ports:
                subprocess.run(["ethtool", "-K", port, *OFFLOADS_OFF.split()], capture_output=True)
        links = self.topo.links
        for att in self.plan.attachments:   # the switch side shapes traffic towards the host
            for cmd in node_setup.shaping(att.port, links.bw, links.delay_ms, links.loss_pct):
                subprocess.run(cmd.split(), capture_output=True, check=True)

    def _start_controller(self, ofp_port: Optional[int] = None, rest_port: Optional[int] = None) -> None:
        lb_pid = self.net.get(LB_HOST).pid
        fabric = render_fabric(self.plan, self.topo.load_balancer.health_check, lb_pid,
                               gone=frozenset(self.removed_pods))
        path = self.state.file("fabric.json")
        with open(path, "w") as fh:
            json.dump(fabric, fh, indent=1)
        self.controller = ControllerProcess(path, self.state.file("controller.log"), ofp_port, rest_port)
        self.controller.start(on_pid=lambda pid: self.journal.process(pid, "vpc controller"))

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
        ref = ControllerRef(self.controller.ofp_port)
        for sw in self.plan.switches:
            self.net.get(sw.name).start([ref])
        self.controller.wait_programmed([s.name for s in self.plan.switches])

    def _start_workloads(self) -> None:
        self.start_pod_servers(self.plan.pods)
        self.sync_kube_proxy()
        self.wait_lb_ready()

    def wait_lb_ready(self, timeout: float = 0.0) -> None:
        """Wait until the cloud LB has every backend that should serve in service (health
        checks need healthy_threshold good answers before a backend takes traffic).
        timeout: 0 = scaled to the checks: 30 s plus a few check intervals"""
        hc = self.topo.load_balancer.health_check
        timeout = timeout or 30 + 3 * hc.interval_s * (hc.healthy_threshold + 1)
        deadline = time.time() + timeout
        for lb in self.plan.load_balancers:
            want = self.expected_in_service(lb.service)
            while True:
                rows = self.controller.api("GET", f"/v1/lbs/{lb.service}/backends")
                serving = {r["name"] for r in rows if r.get("in_service")}
                if want <= serving:
                    break
                if time.time() > deadline:
                    missing = sorted(want - serving)
                    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
                    raise EnvironmentProblem(
                        f"load balancer {lb.service}: backends {shown} not healthy "
                        f"after {timeout:.0f}s; controller log ends with:\n" + self.controller.log_tail())
                time.sleep(0.2)

    def expected_in_service(self, service: str) -> set:
        """Backends a healthy LB serves from: every pod (ip targets), every node (instance
        targets, Cluster), or only nodes with a local endpoint (instance targets, Local)."""
        svc = next(s for s in self.plan.services if s.name == service)
        live = [p for p in self.plan.pods if p.name in svc.endpoints
                and p.name not in self.failed_pods | self.removed_pods]
        if self.plan.mode == "container-native":
            return {p.name for p in live}
        if svc.external_traffic_policy == "Local":
            return {p.node for p in live} - self.failed_nodes
        return {n.name for n in self.plan.nodes} - self.failed_nodes

    def sync_kube_proxy(self) -> None:
        """Render and apply kube-proxy's rules on every node (wired in proxy.py)."""
        from testbed.kubernetes.dataplane.iptables.proxier import KubeProxy
        if self.kube_proxy is None:
            self.kube_proxy = KubeProxy(self, backend=self.iptables)
        self.kube_proxy.sync_all()

    # -- workloads -------------------------------------------------------------------------
    def start_pod_servers(self, pods) -> None:
        """Start each pod's HTTP server and wait until every one listens."""
        waiting = {}

        def start(pod):
            r, w = os.pipe()
            try:
                proc = self.net.get(pod.name).popen(
                    [PODSERVER, "--port", str(pod.port), "--pod", pod.name, "--node", pod.node,
                     "--ready-fd", str(w)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, pass_fds=(w,))
            finally:
                os.close(w)
            return pod.name, proc, r
        with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:   # fork+exec overlap
            for name, proc, r in pool.map(start, pods):
                self.pod_servers[name] = proc
                waiting[name] = r
        deadline = time.time() + 30 + len(waiting) * 0.05
        try:
            for name, r in waiting.items():
                ready = b""
                while not ready.endswith(b"\n"):
                    left = deadline - time.time()
                    poller = select.poll()   # not select(): hosts' ptys push fds past 1024
                    poller.register(r, select.POLLIN)
                    if left <= 0 or not poller.poll(left * 1000):
                        raise EnvironmentProblem(f"pod {name}'s server did not say it was ready in time")
                    chunk = os.read(r, 16)
                    if not chunk:
                        break
                    ready += chunk
                if ready != b"ready\n":
                    raise EnvironmentProblem(f"pod {name}'s server did not start "
                                             f"(exit {self.pod_servers[name].poll()})")
        finally:
            for r in waiting.values():
                os.close(r)

    # -- pod lifecycle (what the Kubernetes control plane would do) --------------------------
    def add_pod(self, deployment: str, node: Optional[str] = None) -> str:
        """Schedule a new pod of a deployment (on the node with fewest pods unless given):
        namespace, veth, address, server; then endpoints everywhere (kube-proxy on every node,
        and in container-native mode the VPC route and the LB's ip target)."""
        from testbed.plan.addresses import allocate_pod, with_pod
        template = next((p for p in self.plan.pods if p.deployment == deployment), None)
        if template is None:
            raise KeyError(f"no deployment named {deployment}")
        healthy = [n.name for n in self.plan.nodes if n.name not in self.failed_nodes]
        if node is None:
            live = self.live_pods()
            node = min(healthy, key=lambda n: sum(1 for p in self.plan.pods if p.node == n and p.name in live))
        elif node not in healthy:
            raise KeyError(f"no healthy node named {node}")
        if self.plan.mode == "container-native":
            on_node = sum(1 for p in self.plan.pods if p.node == node and p.name in self.live_pods())
            if on_node >= self.topo.vpc.max_pods_per_node:
                raise ValueError(f"node {node} has no free ENI address slot (maxPodsPerNode="
                                 f"{self.topo.vpc.max_pods_per_node})")
        pod = allocate_pod(self.plan, deployment, node, template.port)
        self._add_host(pod.name)
        self.net.addLink(self.net.get(node), self.net.get(pod.name), intfName1=pod.veth,
                         intfName2="eth0", addr1=pod.veth_mac, addr2=pod.mac)
        with_pod(self.plan, pod)
        self.run_script(pod.name, plugin_for(self.plan).pod(self.plan, pod))
        self.run_script(node, plugin_for(self.plan).pod_on_node(self.plan, pod))
        self.start_pod_servers([pod])
        self._endpoints_changed()
        if self.plan.mode == "container-native":
            self.controller.api("POST", "/v1/pods", {"pod": pod.name, "ip": pod.ip, "node": node})
            for lb in self._lbs_selecting(pod.deployment):
                self.controller.api("POST", f"/v1/lbs/{lb}/backends",
                                    {"name": pod.name, "ip": pod.ip, "port": pod.port})
        return pod.name

    def remove_pod(self, name: str, deregister: bool = True) -> None:
        """Delete a pod the way Kubernetes does: endpoints go first (kube-proxy everywhere; the
        LB target and VPC route in container-native mode), then the pod and its namespace.
        deregister: False when nobody tells the cloud LB (a dead node): it finds out by health
        checks, as it does for the node itself in nodeport mode."""
        pod = self._pod(name)
        self.removed_pods.add(name)
        self.failed_pods.discard(name)
        if self.plan.mode == "container-native" and deregister:
            for lb in self._lbs_selecting(pod.deployment):
                self._api_quiet("DELETE", f"/v1/lbs/{lb}/backends/{pod.ip}/{pod.port}")
            self._api_quiet("DELETE", f"/v1/pods/{pod.name}")
        self._endpoints_changed()
        self._kill_server(name)
        if pod.node not in self.failed_nodes:
            self.run_script(pod.node, plugin_for(self.plan).pod_gone_from_node(self.plan, pod))
        host = self.net.get(name)
        os.kill(host.pid, 9)   # the pod's namespace, and its veth pair, go with its shell
        host.shell.wait(5)

    def fail_pod(self, name: str) -> None:
        """A pod's server crashes. Nothing else changes: the LB's health checks notice it in
        container-native mode; kube-proxy keeps sending to it until the endpoint is removed
        (as Kubernetes does until the readiness probe fails)."""
        self._pod(name)
        self._kill_server(name)
        self.failed_pods.add(name)

    def fail_node(self, name: str) -> list:
        """A node dies: its link goes down and its pods with it; the pods are rescheduled on
        the remaining nodes (Kubernetes evicts and recreates them). Returns the new pods."""
        if name not in {n.name for n in self.plan.nodes} or name in self.failed_nodes:
            raise KeyError(f"no healthy node named {name}")
        if len(self.failed_nodes) + 1 >= len(self.plan.nodes):
            raise ValueError("cannot fail the last healthy node")
        self.run_script(name, ["ip link set eth0 down"])
        self.failed_nodes.add(name)
        lost = [p for p in self.plan.pods if p.node == name and p.name in self.live_pods()]
        for pod in lost:
            self._kill_server(pod.name)
            self.remove_pod(pod.name, deregister=False)
        return [self.add_pod(pod.deployment) for pod in lost]

    def live_pods(self) -> set:
        return {p.name for p in self.plan.pods} - self.failed_pods - self.removed_pods

    def _pod(self, name: str):
        pod = next((p for p in self.plan.pods if p.name == name), None)
        if pod is None or name in self.removed_pods:
            raise KeyError(f"no pod named {name}")
        return pod

    def _lbs_selecting(self, deployment: str) -> list:
        return [lb.service for lb in self.plan.load_balancers
                if next(s for s in self.plan.services if s.name == lb.service).selector == deployment]

    def _endpoints_changed(self) -> None:
        if self.kube_proxy is not None:
            self.kube_proxy.sync_all()

    def _kill_server(self, name: str) -> None:
        proc = self.pod_servers.pop(name, None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)

    def _api_quiet(self, method: str, path: str) -> None:
        try:
            self.controller.api(method, path)
        except Exception:   # already gone (404) is fine: the goal is "not there"
            pass

    # -- running commands ------------------------------------------------------------------
    def host(self, name: str):
        try:
            return self.net.get(name)
        except KeyError:
            raise KeyError(f"no node, pod or client named {name}") from None

    def run_script(self, host: str, cmds: list[str]) -> str:
        """Run command lines in a host's namespace as one shell script; raise on the first failure."""
        path = self.state.file(f"{host}.sh")
        with open(path, "w") as fh:
            fh.write("set -e\n" + "\n".join(cmds) + "\n")
        out = self.host(host).cmd(f"sh {path} 2>&1; echo __rc=$?")
        os.unlink(path)
        body, _, rc = out.rpartition("__rc=")
        if rc.strip() != "0":
            raise EnvironmentProblem(f"setting up {host} failed: {body.strip()[-400:]}")
        return body

    def run_scripts(self, scripts: dict) -> None:
        """Run many hosts' scripts at once: every host's shell is sent its script, then each
        answer is collected (Mininet's sendCmd/waitOutput), so the namespaces work in parallel."""
        paths = {}
        for host, cmds in scripts.items():
            paths[host] = self.state.file(f"{host}.sh")
            with open(paths[host], "w") as fh:
                fh.write("set -e\n" + "\n".join(batched(cmds)) + "\n")
        failures = []
        for host, path in paths.items():
            self.host(host).sendCmd(f"sh {path} 2>&1; echo __rc=$?")
        for host, path in paths.items():
            out = self.host(host).waitOutput()
            os.unlink(path)
            body, _, rc = out.rpartition("__rc=")
            if rc.strip() != "0":
                failures.append(f"{host}: {body.strip()[-300:]}")
        if failures:
            raise EnvironmentProblem("setting up hosts failed: " + "; ".join(failures[:3]))

    def exec(self, host: str, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a command in a host's namespace and wait for it (output captured)."""
        proc = self.host(host).popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def sh(self, host: str, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.exec(host, ["sh", "-c", command], timeout)

    def _write_status(self) -> None:
        from testbed.emulation.session import write_status
        write_status(self)


def batched(cmds: list[str]) -> list[str]:
    """Runs of consecutive `ip ...` lines become one `ip -batch` (one process instead of one
    per line: a thousand pods' set-up is mostly process start-up). ip -batch stops at the
    first failing line and fails, as `set -e` would."""
    out, run = [], []
    for cmd in cmds + [None]:
        if cmd is not None and cmd.startswith("ip ") and "|" not in cmd and ">" not in cmd:
            run.append(cmd[3:])
            continue
        if len(run) == 1:
            out.append("ip " + run[0])
        elif run:
            out.append("ip -batch - <<'CNLB_IP'\n" + "\n".join(run) + "\nCNLB_IP")
        run = []
        if cmd is not None:
            out.append(cmd)
    return out


def _port_no(port_name: str) -> int:
    return int(port_name.rsplit("eth", 1)[1])

