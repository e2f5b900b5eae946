"""What this machine can do: root, Open vSwitch, the OVS datapath, netem, iptables, tools.

Every probe is side-effect free for the host: the netem probe runs in a throwaway network
namespace (`unshare -n`) that disappears with the probe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

from testbed.kubernetes.dataplane.iptables.restore import detect_backend

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# What `cnlb doctor` looks for on PATH. Every program here must map to a package in
# tools/setup.sh (tests/unit/test_setup_packages.py checks). nsenter: the VPC controller's
# health checker runs in the LB host's namespace; ss: kube-proxy's health servers are awaited.
TOOLS = ("mnexec", "ovs-vsctl", "ovs-ofctl", "ip", "tc", "ethtool", "iptables-restore",
         "iptables-save", "curl", "ping", "iperf", "iperf3", "wrk", "traceroute", "tcpdump",
         "bridge", "nsenter", "ss")


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


def doctor() -> list[Check]:
    checks = [Check("root", is_root(), "running as root" if is_root() else "not root",
                    "run as root (sudo): namespaces and OVS need it")]
    ovs = ovs_running()
    checks.append(Check("Open vSwitch", ovs, "ovs-vswitchd answers" if ovs else "not running",
                        "make setup (or: " + OVS_CTL + " --system-id=random --no-monitor start)"))
    kdp = kernel_datapath()
    checks.append(Check("OVS datapath", True,
                        "kernel (openvswitch module)" if kdp else
                        "userspace (netdev; no openvswitch module): slower, "
                        "offloads turned off on veths"))
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
    return checks
