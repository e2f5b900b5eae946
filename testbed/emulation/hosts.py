"""The cluster's Mininet network: a host (a network namespace with a shell) per node, pod,
client and the LB host, the VPC's Open vSwitch bridges and the links between them, built in
the cluster's host, fabric and address stages; and running command scripts in the hosts.

Every process, bridge and root-namespace link is journaled before it exists, so teardown (and
`cnlb clean` after a crash) removes exactly what was made.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Host, Node, OVSSwitch

from testbed.emulation import machine
from testbed.emulation.journal import OVS_LABEL, Journal, StateDir
from testbed.errors import EnvironmentProblem
from testbed.kubernetes.cni import plugin_for
from testbed.kubernetes.cni.base import OFFLOADS_OFF
from testbed.kubernetes.node import host_fabric, node_setup, shaping
from testbed.plan.addresses import CORE_SWITCH, Plan, PodPlan
from testbed.spec.model import Links

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

    def __init__(self, name, journal: Journal | None = None, **params):
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

    def __init__(self, name, journal: Journal | None = None, cluster: str = "", **params):
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


class Hosts:
    """The Mininet network of one cluster: its hosts, bridges and links.

    plan: the cluster's address plan (names, addresses, ports)
    journal: where every process, bridge and link is written down before it exists
    state: the cluster's state directory (scripts are written there to run)
    cluster: the cluster's name (the label of its OVS bridges)
    """

    def __init__(self, plan: Plan, journal: Journal, state: StateDir, cluster: str):
        self.plan, self.journal, self.state, self.cluster = plan, journal, state, cluster
        setLogLevel("warning")
        self.net = Mininet(build=False, controller=None, autoSetMacs=False, autoStaticArp=False,
                           waitConnected=False, inNamespace=False)

    # -- building ----------------------------------------------------------------------------
    def add_host(self, name: str) -> Node:
        """Add one host (its shell starts now). name: a node, pod, client or LB host name"""
        return self.net.addHost(name, cls=OwnedHost, journal=self.journal, ip=None)

    def add_hosts(self) -> None:
        """Add every host of the plan: its attachments' hosts, then its pods."""
        # Each host is a shell Mininet waits on until its prompt appears; waiting for several
        # at once overlaps those start-ups (the GIL is free while a thread waits on its pty).
        # Hosts are then put back in plan order, which Mininet's CLI and `nodes` show.
        names = [a.host for a in self.plan.attachments] + [p.name for p in self.plan.pods]
        with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:
            list(pool.map(self.add_host, names))
        order = {name: i for i, name in enumerate(names)}
        self.net.hosts.sort(key=lambda h: order[h.name])

    def add_fabric(self) -> None:
        """Add the VPC's bridges, the subnet switches' uplinks to the core, every host's link
        to its switch and every pod's veth to its node."""
        datapath = "kernel" if machine.kernel_datapath() else "user"
        for sw in self.plan.switches:
            self.journal.record("bridge", name=sw.name)
            self.net.addSwitch(sw.name, cls=VpcSwitch, journal=self.journal, cluster=self.cluster,
                               dpid=f"{sw.dpid:016x}", datapath=datapath, failMode="secure",
                               protocols="OpenFlow13")
        core = self.net.get(CORE_SWITCH)
        for sw in self.plan.switches:
            if sw.role != "subnet":
                continue
            uplink, core_port = sw.uplink, sw.core_port
            assert uplink is not None and core_port is not None   # a subnet switch has both
            self.journal.record("link", name=uplink)
            self.journal.record("link", name=core_port)
            self.net.addLink(self.net.get(sw.name), core, port1=port_no(uplink),
                             port2=port_no(core_port), intfName1=uplink,
                             intfName2=core_port)
        for att in self.plan.attachments:
            self.journal.record("link", name=att.port)
        # A link's commands run in its first node's shell: links of different switches or
        # nodes can be made at once, those of one switch or node one after the other.
        groups: dict[str, list[Callable[[], object]]] = {}
        for att in self.plan.attachments:
            groups.setdefault(att.switch, []).append(
                lambda att=att: self.net.addLink(self.net.get(att.switch), self.net.get(att.host),
                                                 port1=port_no(att.port), intfName1=att.port,
                                                 intfName2="eth0", addr2=att.mac))
        for pod in self.plan.pods:
            groups.setdefault(pod.node, []).append(lambda pod=pod: self.link_pod(pod))
        with ThreadPoolExecutor(max_workers=HOST_THREADS) as pool:
            for future in [pool.submit(lambda g=g: [make() for make in g])
                           for g in groups.values()]:
                future.result()

    def link_pod(self, pod: PodPlan) -> None:
        """The veth pair between a pod (eth0) and its node. pod: the pod's plan"""
        self.net.addLink(self.net.get(pod.node), self.net.get(pod.name), intfName1=pod.veth,
                         intfName2="eth0", addr1=pod.veth_mac, addr2=pod.mac)

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
        if offloads_off:
            for port in self._root_ports():
                subprocess.run(["ethtool", "-K", port, *OFFLOADS_OFF.split()],
                               capture_output=True)
        for att in self.plan.attachments:   # the switch side shapes traffic towards the host
            for cmd in shaping(att.port, links.bw, links.delay_ms, links.loss_pct):
                subprocess.run(cmd.split(), capture_output=True, check=True)

    def _root_ports(self) -> list[str]:
        ports = [a.port for a in self.plan.attachments]
        ports += [p for s in self.plan.switches if s.role == "subnet"
                  for p in (s.uplink, s.core_port)]
        return ports

    def start_switches(self, ofp_port: int) -> None:
        """Start every bridge, connected to the VPC controller. ofp_port: its OpenFlow port"""
        ref = ControllerRef(ofp_port)
        for sw in self.plan.switches:
            self.net.get(sw.name).start([ref])

    # -- using ---------------------------------------------------------------------------------
    def host(self, name: str) -> Node:
        """The host of a node, pod, client or the LB; KeyError naming it if there is none."""
        try:
            return self.net.get(name)
        except KeyError:
            raise KeyError(f"no node, pod or client named {name}") from None

    def netns_file(self, name: str) -> str:
        """The file naming a host's network namespace (what setns(2) opens to enter it)."""
        return f"/proc/{self.host(name).pid}/ns/net"

    def shells(self) -> list[subprocess.Popen]:
        """Every host's and bridge's shell process (to collect their exit status)."""
        return [n.shell for n in self.net.hosts + self.net.switches if getattr(n, "shell", None)]

    def run_script(self, host: str, cmds: Sequence[str]) -> str:
        """Run command lines in a host's namespace as one shell script; raise on the first
        failure."""
        path = self.state.file(f"{host}.sh")
        with open(path, "w") as fh:
            fh.write("set -e\n" + "\n".join(cmds) + "\n")
        out = self.host(host).cmd(f"sh {path} 2>&1; echo __rc=$?")
        os.unlink(path)
        body, _, rc = out.rpartition("__rc=")
        if rc.strip() != "0":
            raise EnvironmentProblem(f"setting up {host} failed: {body.strip()[-400:]}")
        return body

    def run_scripts(self, scripts: Mapping[str, Sequence[str]]) -> None:
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


def batched(cmds: Iterable[str]) -> list[str]:
    """Runs of consecutive `ip ...` lines become one `ip -batch` (one process instead of one
    per line: a thousand pods' set-up is mostly process start-up). ip -batch stops at the
    first failing line and fails, as `set -e` would."""
    out: list[str] = []
    run: list[str] = []
    for cmd in [*cmds, None]:
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


def port_no(port_name: str) -> int:
    """The OpenFlow port number in a port's name (s-az-a-eth3 -> 3)."""
    return int(port_name.rsplit("eth", 1)[1])
