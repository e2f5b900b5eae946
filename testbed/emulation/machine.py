"""What this machine can do: root, Open vSwitch, the OVS datapath, netem, iptables, tools;
and which datapath a cluster's bridges ran on.

Every probe is side-effect free for the host: the netem probe runs in a throwaway network
namespace (`unshare -n`) that disappears with the probe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from testbed.emulation.journal import OVS_LABEL
from testbed.kubernetes.dataplane.iptables.restore import detect_backend

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# What `cnlb doctor` looks for on PATH. Every program here must map to a package in
# tools/setup.sh (tests/unit/test_setup_packages.py checks). nsenter: the VPC controller's
# health checker runs in the LB host's namespace; ss: kube-proxy's health servers are awaited.
TOOLS = ("mnexec", "ovs-vsctl", "ovs-ofctl", "ip", "tc", "ethtool", "iptables-restore",
         "iptables-save", "curl", "ping", "iperf", "iperf3", "wrk", "traceroute", "tcpdump",
         "bridge", "nsenter", "ss", "bird", "birdc")   # bird, birdc: cni.routing bgp


def run(argv, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def is_root() -> bool:
    return os.geteuid() == 0


def ovs_running() -> bool:
    if not shutil.which("ovs-vsctl"):
        return False
    try:
        return run(["ovs-vsctl", "--timeout=3", "show"], timeout=5).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def start_ovs() -> bool:
    """Start ovsdb-server and ovs-vswitchd the way the Debian scripts do (no systemd here)."""
    if ovs_running():
        return True
    if not os.path.exists(OVS_CTL):
        return False
    run([OVS_CTL, "--system-id=random", "--no-monitor", "start"], timeout=60)
    return ovs_running()


def vswitchd_pid():
    try:
        with open("/var/run/openvswitch/ovs-vswitchd.pid") as fh:
            pid = int(fh.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def restart_vswitchd(timeout: float = 30.0) -> None:
    """Stop ovs-vswitchd (ports and bridges stay in OVSDB) and start it again: the fault a
    switch software upgrade or crash causes. Waits for the old process to be gone first, or
    ovs-ctl would find its pid file and start nothing."""
    import time
    old = vswitchd_pid()
    run(["ovs-appctl", "-t", "ovs-vswitchd", "exit"], timeout=timeout)
    deadline = time.time() + timeout
    while old and time.time() < deadline:
        try:
            os.kill(old, 0)
        except OSError:
            break
        time.sleep(0.05)
    run([OVS_CTL, "--no-ovsdb-server", "--no-monitor", "--system-id=random", "start"], timeout=60)
    if not vswitchd_pid():
        raise RuntimeError("ovs-vswitchd did not start again")


@cache
def kernel_datapath() -> bool:
    """True when the kernel has the openvswitch module (then OVS uses the fast kernel datapath)."""
    if os.path.isdir("/sys/module/openvswitch"):
        return True
    if shutil.which("modprobe"):
        run(["modprobe", "-q", "openvswitch"], timeout=10)
    return os.path.isdir("/sys/module/openvswitch")


# A bridge's datapath_type as OVSDB holds it -> how doctor and reports name it. An empty
# datapath_type is OVS's default, the kernel's.
DATAPATHS = {"system": "kernel (system)", "netdev": "userspace (netdev)"}
AFXDP_LABEL = "userspace (netdev), AF_XDP ports"

# What a user may ask the fabric to run on: "auto" is the kernel datapath where the module
# exists, else the userspace one with its ports read by ovs-vswitchd's main thread; "afxdp" is
# the userspace datapath with AF_XDP ports polled by a PMD thread, which busy-polls one CPU
# while the cluster is up and in exchange costs a packet a fraction of a main-thread wakeup.
FABRIC_DATAPATHS = ("auto", "afxdp")


@cache
def afxdp_ports() -> bool:
    """True when ovs-vswitchd offers AF_XDP ports (built with libxdp/libbpf)."""
    try:
        p = run(["ovs-vsctl", "--timeout=5", "get", "Open_vSwitch", ".", "iface_types"],
                timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and "afxdp" in p.stdout.replace("afxdp-nonpmd", "")


def fabric_datapath(asked: str) -> tuple[str, str]:
    """(what runs, why) for the fabric datapath a user asked for: "kernel", "userspace" or
    "afxdp". An afxdp request on an OVS without AF_XDP ports runs as "auto" would, and says so
    (the report records what ran)."""
    if asked not in FABRIC_DATAPATHS:
        raise ValueError(f"datapath {asked!r} is not one of {', '.join(FABRIC_DATAPATHS)}")
    if asked == "afxdp":
        if afxdp_ports():
            return "afxdp", ""
        fallback = "kernel" if kernel_datapath() else "userspace"
        return fallback, (f"this Open vSwitch has no AF_XDP ports (iface_types lacks afxdp): "
                          f"the fabric runs on the {fallback} datapath instead")
    return ("kernel" if kernel_datapath() else "userspace"), ""


def datapath_label(datapath_type: str) -> str:
    """How doctor and reports name a bridge's datapath_type."""
    return DATAPATHS.get(datapath_type or "system", datapath_type)


def bridge_datapaths(label: str | None = None) -> dict[str, str]:
    """bridge -> its datapath_type, for every bridge OVSDB has (with `label`: only those
    whose external_ids carry that key, e.g. the testbed's); {} when OVS does not answer."""
    try:
        p = run(["ovs-vsctl", "--timeout=5", "--format=json",
                 "--columns=name,datapath_type,external_ids", "list", "Bridge"], timeout=10)
        rows = json.loads(p.stdout).get("data", []) if p.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    out = {}
    for name, dp_type, ext in rows:
        ids = dict(ext[1]) if isinstance(ext, list) and ext and ext[0] == "map" else {}
        if label is None or label in ids:
            out[name] = dp_type if isinstance(dp_type, str) else ""
    return out


def afxdp_bridges(bridges: Iterable[str]) -> set[str]:
    """Those of the bridges with an AF_XDP port (the testbed names a bridge's ports
    <bridge>-ethN)."""
    bridges = set(bridges)
    try:
        p = run(["ovs-vsctl", "--timeout=5", "--format=json", "--columns=name",
                 "find", "Interface", "type=afxdp"], timeout=10)
        rows = json.loads(p.stdout).get("data", []) if p.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return set()
    return {str(row[0]).rsplit("-eth", 1)[0] for row in rows if row} & bridges


def datapath_of(bridges: Iterable[str]) -> str:
    """The datapath the named bridges run on, as reports name it (several joined by ' + ';
    'unknown' when OVSDB has none of them)."""
    bridges = list(bridges)
    types = bridge_datapaths()
    xdp = afxdp_bridges(bridges)
    found = sorted({AFXDP_LABEL if b in xdp else datapath_label(types[b])
                    for b in bridges if b in types})
    return " + ".join(found) if found else "unknown"


@cache
def netem_available() -> bool:
    """True when `tc ... netem` works (link delay/loss). Probed in a throwaway namespace."""
    if not (shutil.which("unshare") and shutil.which("tc")):
        return False
    try:
        probe = run(["unshare", "-n", "sh", "-c",
                     "ip link set lo up && tc qdisc add dev lo root netem delay 1ms"], timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return probe.returncode == 0


@cache
def iptables_backend() -> str:
    """'nft' or 'legacy': what the machine's `iptables` command uses ('missing' without one)."""
    try:
        out = run(["iptables", "-V"], timeout=5).stdout
    except OSError:
        return "missing"
    try:
        return detect_backend(out)
    except ValueError:
        return "legacy"   # iptables before 1.8 names no backend: it has only the legacy one


def tool_versions() -> dict:
    """Versions of the tools a run depends on (recorded beside every result)."""
    probes = {
        "kernel": ["uname", "-r"],
        "ovs": ["ovs-vsctl", "--version"],
        "iptables": ["iptables", "-V"],
        "iproute2": ["ip", "-V"],
        "curl": ["curl", "--version"],
        "iperf": ["iperf", "-v"],
        "wrk": ["wrk", "-v"],
    }
    out = {}
    for name, argv in probes.items():
        try:
            p = run(argv, timeout=5)
            text = (p.stdout or p.stderr).strip().splitlines()
            out[name] = text[0] if text else ""
        except (OSError, subprocess.TimeoutExpired):
            out[name] = "missing"
    try:
        import mininet.net  # noqa: F401
        from mininet.net import VERSION
        out["mininet"] = VERSION
    except Exception:
        out["mininet"] = "missing"
    try:
        from importlib.metadata import version
        out["os-ken"] = version("os-ken")
    except Exception:
        out["os-ken"] = "missing"
    return out


@dataclass
class Check:
    """One line of `cnlb doctor`."""
    what: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False   # missing only limits what topologies may ask for


def datapath_detail(ovs: bool) -> str:
    """Which datapath the testbed's bridges use here, and which a running cluster's ran on."""
    detail = (f"{DATAPATHS['system']}: the openvswitch module is loaded" if kernel_datapath()
              else f"{DATAPATHS['netdev']}: no openvswitch module — slower, offloads turned off "
                   "on veths")
    if ovs:
        detail += ("; AF_XDP ports available (datapath: afxdp)" if afxdp_ports()
                   else "; no AF_XDP ports (datapath: afxdp runs as auto)")
    running = bridge_datapaths(OVS_LABEL) if ovs else {}
    if running:
        xdp = afxdp_bridges(running)
        ran = sorted({AFXDP_LABEL if b in xdp else datapath_label(t)
                      for b, t in running.items()})
        detail += f"; the running cluster's {len(running)} bridges: {' + '.join(ran)}"
    return detail


def doctor() -> list[Check]:
    checks = [Check("root", is_root(), "running as root" if is_root() else "not root",
                    "run as root (sudo): namespaces and OVS need it")]
    ovs = ovs_running()
    checks.append(Check("Open vSwitch", ovs, "ovs-vswitchd answers" if ovs else "not running",
                        "make setup (or: " + OVS_CTL + " --system-id=random --no-monitor start)"))
    checks.append(Check("OVS datapath", True, datapath_detail(ovs)))
    net = netem_available()
    checks.append(Check("netem", net,
                        "link delay/loss available" if net
                        else "no sch_netem: links.delay/loss unavailable",
                        "use a kernel with sch_netem (a usual VM kernel has it) "
                        "or leave delay/loss out",
                        optional=True))
    checks.append(Check("iptables", iptables_backend() != "missing",
                        f"backend {iptables_backend()}", "apt-get install iptables"))
    try:
        import mininet.net  # noqa: F401
        checks.append(Check("mininet", True, "python module found"))
    except Exception:
        checks.append(Check("mininet", False, "python module missing",
                            "make setup (apt-get install mininet)"))
    try:
        import os_ken  # noqa: F401
        checks.append(Check("os-ken", True, "python module found"))
    except Exception:
        checks.append(Check("os-ken", False, "missing", "make setup (pip install os-ken in .venv)"))
    for tool in TOOLS:
        found = shutil.which(tool)
        checks.append(Check(tool, bool(found), found or "missing", "make setup"))
    return checks + proxy_mode_checks()


def proxy_mode_checks() -> list[Check]:
    """One line per kube-proxy mode: whether it runs here (its unavailable() reason if not).
    Optional: a cluster needs one mode, and iptables always runs."""
    from testbed.kubernetes.dataplane.registry import DATAPLANES
    checks = []
    for mode, dataplane in DATAPLANES.items():
        missing = dataplane.unavailable()
        others = ", ".join(m for m in DATAPLANES if m != mode)
        checks.append(Check(f"kube-proxy {mode}", missing is None,
                            "runs here" if missing is None else missing,
                            f"use a kernel that has it, or --proxy-mode {others}",
                            optional=True))
    return checks
