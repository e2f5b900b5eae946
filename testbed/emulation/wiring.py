"""What the kernel and Open vSwitch are asked for to wire a cluster, rendered as text (pure).

A cluster is wired the way a careful hand-written script would do it (and the way bench/floor.py
measures the kernel's floor): every namespace in one `ip -batch`, every veth in a second one,
created straight into the namespaces it joins (the root namespace only ever holds the switch
side of a fabric host's link), and every bridge and port in one `ovs-vsctl` transaction.
Switch-to-switch links are OVS patch ports, so a packet crosses the whole VPC fabric in one pass
of the datapath instead of leaving it for a kernel veth at every routed hop (Mininet's OVSLink
makes the same kind of link).

Each function returns lines for `ip -batch` or arguments for `ovs-vsctl`; running them is
testbed.emulation.hosts's job.
"""

from __future__ import annotations

from collections.abc import Iterable

from testbed.plan.addresses import Plan, PodPlan

NETNS_PREFIX = "cnlb-"
NETNS_DIR = "/run/netns"
CONTROLLER_BACKOFF_MS = 1000   # as Mininet's OVSSwitch: a restarted controller is found in ~1 s


def netns_name(host: str) -> str:
    """The named network namespace of a node, pod, client or the LB host."""
    return NETNS_PREFIX + host


def netns_file(host: str) -> str:
    """The file `ip netns` keeps for a host's namespace (what setns(2) opens)."""
    return f"{NETNS_DIR}/{netns_name(host)}"


def host_names(plan: Plan) -> list[str]:
    """Every host of the plan in the order Mininet lists them: fabric hosts, then pods."""
    return [a.host for a in plan.attachments] + [p.name for p in plan.pods]


def namespace_lines(hosts: Iterable[str]) -> list[str]:
    """`ip -batch` lines adding one named namespace per host."""
    return [f"netns add {netns_name(h)}" for h in hosts]


def pod_veth_lines(pod: PodPlan) -> list[str]:
    """The pod's veth pair: eth0 in the pod, its peer (the plan's veth name) in its node."""
    return [f"link add {pod.veth} netns {netns_name(pod.node)} address {pod.veth_mac} "
            f"type veth peer name eth0 netns {netns_name(pod.name)} address {pod.mac}"]


def veth_lines(plan: Plan) -> list[str]:
    """`ip -batch` lines for every veth of the plan: each fabric host's eth0 (its peer is the
    switch port, left in the root namespace without IPv6 link-local addresses, up), and each
    pod's pair."""
    lines = [f"link add {a.port} type veth peer name eth0 netns {netns_name(a.host)} "
             f"address {a.mac}" for a in plan.attachments]
    lines += [f"link set {a.port} addrgenmode none" for a in plan.attachments]
    lines += [f"link set {a.port} up" for a in plan.attachments]
    for pod in plan.pods:
        lines += pod_veth_lines(pod)
    return lines


def port_no(port_name: str) -> int:
    """The OpenFlow port number in a port's name (s-az-a-eth3 -> 3)."""
    return int(port_name.rsplit("eth", 1)[1])


def bridge_args(plan: Plan, label: str, cluster: str, userspace: bool,
                afxdp: bool = False) -> list[str]:
    """One `ovs-vsctl` transaction adding every bridge (secure fail mode: nothing flows until the
    controller says so), every host port, and the patch-port pairs joining each subnet switch to
    the core. label: the external_ids key marking a bridge as ours; cluster: its value;
    afxdp: host ports are AF_XDP sockets polled by a PMD thread (userspace datapath only)"""
    args: list[str] = []
    for sw in plan.switches:
        opts = [f"other_config:datapath-id={sw.dpid:016x}", "fail_mode=secure",
                "other-config:disable-in-band=true", "protocols=OpenFlow13",
                f"other-config:dp-desc={sw.name}", f"external_ids:{label}={cluster}"]
        if userspace or afxdp:
            opts.append("datapath_type=netdev")
        args += ["--", "add-br", sw.name, "--", "set", "bridge", sw.name, *opts]
    for att in plan.attachments:
        args += ["--", "add-port", att.switch, att.port,
                 "--", "set", "interface", att.port, f"ofport_request={port_no(att.port)}"]
        if afxdp:
            args += ["type=afxdp"]
    for sw in plan.switches:
        if sw.role != "subnet" or sw.uplink is None or sw.core_port is None:
            continue
        core = next(s.name for s in plan.switches if s.role == "core")
        for bridge, port, peer in ((sw.name, sw.uplink, sw.core_port),
                                   (core, sw.core_port, sw.uplink)):
            args += ["--", "add-port", bridge, port, "--", "set", "interface", port,
                     "type=patch", f"options:peer={peer}", f"ofport_request={port_no(port)}"]
    return args[1:]


def controller_args(plan: Plan, ofp_port: int) -> list[str]:
    """One `ovs-vsctl` transaction pointing every bridge at the VPC controller."""
    args: list[str] = []
    for i, sw in enumerate(plan.switches):
        args += ["--", f"--id=@c{i}", "create", "Controller",
                 f'target="tcp:127.0.0.1:{ofp_port}"', f"max_backoff={CONTROLLER_BACKOFF_MS}",
                 "--", "set", "bridge", sw.name, f"controller=[@c{i}]"]
    return args[1:]


def root_ports(plan: Plan) -> list[str]:
    """The switch ports that are kernel interfaces in the root namespace (patch ports are not)."""
    return [a.port for a in plan.attachments]


def tc_batch(cmds: Iterable[str]) -> list[str]:
    """`tc ...` command lines as `tc -batch` lines."""
    return [cmd.split(" ", 1)[1] for cmd in cmds if cmd.startswith("tc ")]


def ip_only(cmds: Iterable[str]) -> list[str] | None:
    """A script's lines as `ip -batch` lines when every line is a plain `ip` command (no shell
    needed to run it); None otherwise."""
    out = []
    for cmd in cmds:
        if not cmd.startswith("ip ") or any(c in cmd for c in "|><;&$`"):
            return None
        out.append(cmd[3:])
    return out
