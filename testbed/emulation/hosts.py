"""The cluster's network: a named network namespace per node, pod, client and the LB host, the
VPC's Open vSwitch bridges and the links between them, built in the cluster's host, fabric and
address stages; and running command scripts in the namespaces.

Each host is a Mininet node, so Mininet's API and CLI work on it, but its shell starts only when
something first runs in it (as `ip netns exec` enters a namespace only when asked): a thousand
pods need a thousand namespaces, not a thousand idle shells. The kernel objects are made in
batches (testbed.emulation.wiring renders them), and every namespace, process, bridge and
root-namespace link is journaled before it exists, so teardown (and `cnlb clean` after a crash)
removes exactly what was made.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from mininet.link import Intf
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Host, Node, OVSSwitch

from testbed.emulation import wiring
from testbed.emulation.journal import OVS_LABEL, Journal, StateDir
from testbed.errors import EnvironmentProblem
from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.cni.base import OFFLOADS_OFF
from testbed.kubernetes.node import host_fabric, node_setup, shaping
from testbed.plan.addresses import Plan, PodPlan
from testbed.spec.model import Links

HOST_THREADS = max(2, os.cpu_count() or 1)   # namespaces configured at once (CPU-bound work)


class ShellOnDemand:
    """A Mininet node whose shell starts the first time a command runs in it, and runs one
    command at a time (scripts reach a node from several threads)."""

    _deferred = True

    def startShell(self, mnopts=None):
        if self._deferred:   # Node.__init__'s call: wait until the shell is needed
            return
        super().startShell(mnopts)

    def ensure_shell(self) -> None:
        with self._shell_lock:
            if self.shell is None:
                self._deferred = False
                self.startShell()

    @property
    def pid(self):
        """The shell's pid, as Mininet's nodes have one (starts the shell)."""
        if self._pid is None and not self._deferred_init:
            self.ensure_shell()
        return self._pid

    @pid.setter
    def pid(self, value):
        self._pid = value

    def cmd(self, *args, **kwargs):
        if self._deferred_init:   # Mininet's Switch() brings `lo` up: nothing to do in the root
            return ""
        self.ensure_shell()
        with self._shell_lock:
            return super().cmd(*args, **kwargs)

    def sendCmd(self, *args, **kwargs):
        self.ensure_shell()
        return super().sendCmd(*args, **kwargs)

    def shell_started(self) -> bool:
        return self.shell is not None

    def __repr__(self):   # Mininet's, without starting a shell to show its pid
        intfs = ",".join(f"{i.name}:{i.IP()}" for i in self.intfList())
        pid = self._pid if self._pid is not None else "(no shell yet)"
        return f"<{self.__class__.__name__} {self.name}: {intfs} pid={pid}> "


class OwnedHost(ShellOnDemand, Host):
    """A node, pod, client or the LB host: a named network namespace (made in a batch before
    this object exists) with a shell on demand. Its processes are journaled as they start:
    its shell, killed outright at teardown, and everything started with popen()."""

    def __init__(self, name, netns: str = "", journal: Journal | None = None, **params):
        self.netns, self.journal = netns, journal
        self._shell_lock = threading.RLock()
        self._pid = None
        self._deferred_init = True
        super().__init__(name, **params)
        self._deferred_init = False

    def startShell(self, mnopts=None):
        # The namespace exists already: mnexec must not make one (inNamespace off for the
        # call), and the shell is started inside it (_popen prefixes `ip netns exec`).
        if self._deferred:
            return
        self.inNamespace = False
        try:
            super().startShell(mnopts)
        finally:
            self.inNamespace = True

    def _popen(self, cmd, **params):
        shell = "bash" in cmd and "--norc" in cmd
        if shell:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        popen = super()._popen(cmd, **params)
        if self.journal:
            # the host's interactive bash ignores SIGTERM: it is killed outright
            self.journal.process(popen.pid, f"{self.name}: {' '.join(map(str, cmd))[:120]}",
                                 gentle=not shell)
        return popen

    def popen(self, *args, **kwargs):
        """A process in this host's namespace, entered with `ip netns exec` (Mininet's popen
        would enter the shell's namespace, starting a shell only for that).
        args: a command list, a string, or the command's words; kwargs: Popen's"""
        cmd = args[0] if len(args) == 1 else list(args)
        if isinstance(cmd, str):
            cmd = [os.environ.get("SHELL", "sh"), "-c", cmd] if kwargs.pop("shell", False) \
                else cmd.split()
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return self._popen(["ip", "netns", "exec", self.netns, *cmd], **kwargs)

    def addIntf(self, intf, port=None, moveIntfFn=None):
        # interfaces are created inside the namespace: nothing to move
        return super().addIntf(intf, port=port, moveIntfFn=lambda *a: None)


class VpcSwitch(ShellOnDemand, OVSSwitch):
    """An OVS bridge of the VPC fabric (made, with its ports, in one ovs-vsctl transaction for
    all bridges; labelled as ours in OVSDB so cleanup can tell it from the machine owner's)."""

    def __init__(self, name, journal: Journal | None = None, cluster: str = "", **params):
        self.journal = journal
        self._shell_lock = threading.RLock()
        self._pid = None
        self._deferred_init = True
        self.cluster = cluster
        super().__init__(name, **params)
        self._deferred_init = False

    def _popen(self, cmd, **params):
        popen = super()._popen(cmd, **params)
        if self.journal:
            self.journal.process(popen.pid, f"{self.name}: switch shell", gentle=False)
        return popen

    def bridgeOpts(self):
        return super().bridgeOpts() + f" external_ids:{OVS_LABEL}={self.cluster}"


class Hosts:
    """The network of one cluster: its namespaces (as Mininet hosts), bridges and links.

    plan: the cluster's address plan (names, addresses, ports)
    journal: where every namespace, process, bridge and link is written down before it exists
    state: the cluster's state directory
    cluster: the cluster's name (the label of its OVS bridges)
    datapath: what the fabric runs on: "kernel", "userspace" or "afxdp" (machine.fabric_datapath)
    """

    def __init__(self, plan: Plan, journal: Journal, state: StateDir, cluster: str,
                 datapath: str = "userspace"):
        self.plan, self.journal, self.state, self.cluster = plan, journal, state, cluster
        self.datapath = datapath
        setLogLevel("warning")
        self.net = Mininet(build=False, controller=None, autoSetMacs=False, autoStaticArp=False,
                           waitConnected=False, inNamespace=False)

    # -- building ----------------------------------------------------------------------------
    def add_host(self, name: str) -> Node:
        """Add one host: its namespace, then its Mininet node (no shell yet).
        name: a node, pod, client or LB host name"""
        self.add_namespaces([name])
        return self.net.get(name)

    def add_namespaces(self, names: Sequence[str]) -> None:
        """Make the hosts' namespaces in one batch and their Mininet nodes."""
        self.journal.record_many("netns", ({"name": wiring.netns_name(n)} for n in names))
        ip_batch(wiring.namespace_lines(names))
        for name in names:
            self.net.addHost(name, cls=OwnedHost, netns=wiring.netns_name(name),
                             journal=self.journal, ip=None)

    def add_hosts(self) -> None:
        """Add every host of the plan: its fabric hosts, then its pods."""
        self.add_namespaces(wiring.host_names(self.plan))

    def add_fabric(self) -> None:
        """Add every veth (each fabric host's link to its switch, each pod's to its node) in one
        batch, then the VPC's bridges, their ports and the subnet switches' patch-port uplinks
        to the core in one ovs-vsctl transaction."""
        self.journal.record_many("link", ({"name": p} for p in wiring.root_ports(self.plan)))
        ip_batch(wiring.veth_lines(self.plan))
        self.journal.record_many("bridge", ({"name": sw.name} for sw in self.plan.switches))
        vsctl(wiring.bridge_args(self.plan, OVS_LABEL, self.cluster,
                                 userspace=self.datapath != "kernel",
                                 afxdp=self.datapath == "afxdp"))
        for sw in self.plan.switches:
            self.net.addSwitch(sw.name, cls=VpcSwitch, journal=self.journal, cluster=self.cluster,
                               dpid=f"{sw.dpid:016x}", failMode="secure", protocols="OpenFlow13",
                               datapath="kernel" if self.datapath == "kernel" else "user")
        for att in self.plan.attachments:
            self._intf(att.switch, att.port, wiring.port_no(att.port))
            self._intf(att.host, "eth0", 0, att.ip, att.prefixlen, att.mac)
        for sw in self.plan.switches:
            if sw.uplink and sw.core_port:
                self._intf(sw.name, sw.uplink, wiring.port_no(sw.uplink))
                core = next(s.name for s in self.plan.switches if s.role == "core")
                self._intf(core, sw.core_port, wiring.port_no(sw.core_port))
        for pod in self.plan.pods:
            self._pod_intfs(pod)

    def _intf(self, host: str, name: str, port: int, ip: str | None = None,
              prefixlen: int | None = None, mac: str | None = None) -> None:
        """Tell Mininet of an interface that exists (no command runs)."""
        intf = Intf(name, node=self.net.get(host), port=port, moveIntfFn=lambda *a: None,
                    up=None)   # up=None: Mininet would run `ifconfig up` in the node's shell
        intf.ip, intf.prefixLen, intf.mac = ip, prefixlen, mac

    def _pod_intfs(self, pod: PodPlan) -> None:
        node = self.net.get(pod.node)
        self._intf(pod.node, pod.veth, node.newPort(), mac=pod.veth_mac)
        self._intf(pod.name, "eth0", 0, pod.ip, pod.prefixlen, pod.mac)

    def link_pod(self, pod: PodPlan) -> None:
        """The veth pair between a pod (eth0) and its node. pod: the pod's plan"""
        ip_batch(wiring.pod_veth_lines(pod))
        self._pod_intfs(pod)

    def configure(self, links: Links, offloads_off: bool) -> None:
        """Give every namespace its addresses and routes (the CNI's node and pod halves, the
        fabric legs of clients and the LB host), then tune and shape the switch ports.
        links: the topology's link shaping
        offloads_off: the fabric is OVS's userspace datapath (veths need offloads off)"""
        scripts = {}
        for node in self.plan.nodes:
            scripts[node.name] = node_setup(self.plan, node, offloads_off, links)
        for att in self.plan.attachments:
            if att.kind != "node":
                scripts[att.host] = host_fabric(att, offloads_off, links)
        for pod in self.plan.pods:
            scripts[pod.name] = plugin_for(self.plan).setup_pod(self.plan, pod)
        self.run_scripts(scripts)
        ports = wiring.root_ports(self.plan)
        if offloads_off:
            with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:
                list(pool.map(lambda port: subprocess.run(
                    ["ethtool", "-K", port, *OFFLOADS_OFF.split()], capture_output=True), ports))
        # the switch side shapes traffic towards the host
        lines = wiring.tc_batch(cmd for att in self.plan.attachments
                                for cmd in shaping(att.port, links.bw, links.delay_ms,
                                                   links.loss_pct))
        if lines:
            run_batch(["tc", "-batch", "-"], lines)

    def start_switches(self, ofp_port: int) -> None:
        """Point every bridge at the VPC controller. ofp_port: its OpenFlow port"""
        vsctl(wiring.controller_args(self.plan, ofp_port))

    def remove_host(self, name: str) -> None:
        """Delete a host's namespace (its veths go with it) and end its shell if it has one;
        its Mininet node stays, as a stopped Mininet host does."""
        host = self.net.get(name)
        if host.shell_started() and host.shell.poll() is None:
            host.shell.kill()
            host.shell.wait(5)
        if os.path.exists(wiring.netns_file(name)):
            ip_batch([f"netns delete {wiring.netns_name(name)}"])

    # -- using ---------------------------------------------------------------------------------
    def host(self, name: str) -> Node:
        """The host of a node, pod, client or the LB; KeyError naming it if there is none."""
        try:
            return self.net.get(name)
        except KeyError:
            raise KeyError(f"no node, pod or client named {name}") from None

    def netns_file(self, name: str) -> str:
        """The file naming a host's network namespace (what setns(2) opens to enter it)."""
        self.host(name)
        return wiring.netns_file(name)

    def shells(self) -> list[subprocess.Popen]:
        """Every started host and bridge shell (to collect their exit status)."""
        return [n.shell for n in self.net.hosts + self.net.switches if n.shell_started()]

    def run_script(self, host: str, cmds: Sequence[str]) -> str:
        """Run command lines in a host's namespace as one script; raise on the first failure."""
        rc, out = run_in(wiring.netns_name(self.host(host).name), cmds,
                         self.state.file(f"{host}.sh"))
        if rc != 0:
            raise EnvironmentProblem(f"setting up {host} failed: {out.strip()[-400:]}")
        return out

    def run_scripts(self, scripts: Mapping[str, Sequence[str]]) -> None:
        """Run many hosts' scripts at once, from as many threads as there are CPUs."""
        def one(item: tuple[str, Sequence[str]]) -> str | None:
            host, cmds = item
            rc, out = run_in(wiring.netns_name(host), cmds, self.state.file(f"{host}.sh"))
            return None if rc == 0 else f"{host}: {out.strip()[-300:]}"
        with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:
            failures = [f for f in pool.map(one, scripts.items()) if f]
        if failures:
            raise EnvironmentProblem("setting up hosts failed: " + "; ".join(failures[:3]))


def run_in(netns: str, cmds: Sequence[str], script: str) -> tuple[int, str]:
    """Run command lines in a namespace: one `ip -n NS -batch` when they are all plain `ip`
    commands, else the lines written to `script` and run by one shell under `ip netns exec`
    (with runs of `ip` lines batched). Returns the exit status and the output."""
    lines = wiring.ip_only(cmds)
    if lines is not None:
        done = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n",
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return done.returncode, done.stdout
    with open(script, "w") as fh:
        fh.write("\n".join(batched(cmds)) + "\n")
    try:
        done = subprocess.run(["ip", "netns", "exec", netns, "sh", "-e", script],
                              stdin=subprocess.DEVNULL, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    finally:
        os.unlink(script)
    return done.returncode, done.stdout


def run_batch(argv: list[str], lines: Iterable[str]) -> None:
    """Feed lines to a batch-mode program (ip, tc); raise with its error if it fails."""
    done = subprocess.run(argv, input="\n".join(lines) + "\n", text=True, capture_output=True)
    if done.returncode:
        raise EnvironmentProblem(f"{' '.join(argv)} failed: {done.stderr.strip()[-400:]}")


def ip_batch(lines: Iterable[str]) -> None:
    """One `ip -batch` in the root namespace."""
    run_batch(["ip", "-batch", "-"], lines)


def vsctl(args: list[str]) -> None:
    """One ovs-vsctl transaction."""
    done = subprocess.run(["ovs-vsctl", "--timeout=60", *args], text=True, capture_output=True)
    if done.returncode:
        raise EnvironmentProblem(f"ovs-vsctl failed: {done.stderr.strip()[-400:]}")


BATCHING = ("ip", "bridge", "tc")   # tools with a -batch mode


def batched(cmds: Iterable[str]) -> list[str]:
    """Runs of consecutive `ip ...` (or `bridge ...`, `tc ...`) lines become one `-batch` of
    that tool (one process instead of one per line: a thousand pods' set-up is mostly process
    start-up). A batch stops at the first failing line and fails, as `set -e` would."""
    out: list[str] = []
    run: list[str] = []
    tool = ""
    for line in [*cmds, None]:
        cmd = line or ""
        word = cmd.split(" ", 1)[0]
        plain = word in BATCHING and not any(c in cmd for c in "|><;&$`")
        if plain and word == tool:
            run.append(cmd[len(word) + 1:])
            continue
        if len(run) == 1:
            out.append(f"{tool} {run[0]}")
        elif run:
            out.append(f"{tool} -batch - <<'CNLB_BATCH'\n" + "\n".join(run) + "\nCNLB_BATCH")
        run, tool = [], ""
        if plain:
            run, tool = [cmd[len(word) + 1:]], word
        elif line is not None:
            out.append(line)
    return out


port_no = wiring.port_no
