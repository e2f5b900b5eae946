"""`make setup` installs every program the project runs: each program found in the source
(tests.unit.program_calls) or in `cnlb doctor`'s list maps to the Debian package that provides
it, and that package is in tools/setup.sh's PACKAGES. A program the code starts calling fails
here until its package is added to setup.sh (and to PROGRAMS below)."""

import os
import re

import pytest

from testbed.emulation import machine
from testbed.kubernetes.dataplane.iptables import restore as kubeproxy
from testbed.paths import REPO
from tests.unit import program_calls as pc

SETUP = os.path.join(REPO, "tools", "setup.sh")
BUILD = os.path.join(REPO, "workloads", "build.sh")

# program -> the Debian 12 package that provides it (checked with `dpkg -S`)
PROGRAMS = {
    "bridge": "iproute2", "ip": "iproute2", "ss": "iproute2", "tc": "iproute2",
    "bash": "bash",
    "bpftool": "bpftool", "clang": "clang",   # the eBPF kube-proxy (bpf/build.sh)
    "bird": "bird2", "birdc": "bird2",   # cni.routing bgp (testbed.emulation.bgp)
    "cat": "coreutils", "dirname": "coreutils", "mkdir": "coreutils", "seq": "coreutils",
    "sleep": "coreutils", "uname": "coreutils",
    "cc": "gcc",                 # the alternative gcc registers
    "curl": "curl",
    "ethtool": "ethtool",
    "git": "git",                # the runner records the revision beside every result
    "haproxy": "haproxy",        # the L7 cloud load balancer (testbed.cloud.lb.l7)
    "iperf": "iperf", "iperf3": "iperf3",
    "ipset": "ipset", "ipvsadm": "ipvsadm",   # kube-proxy's IPVS mode
    "iptables": "iptables", "iptables-save": "iptables", "iptables-restore": "iptables",
    "iptables-legacy": "iptables", "iptables-legacy-save": "iptables",
    "iptables-legacy-restore": "iptables", "iptables-nft": "iptables",
    "iptables-nft-save": "iptables", "iptables-nft-restore": "iptables",
    "mnexec": "mininet",
    "modprobe": "kmod",
    "mount": "mount", "umount": "mount",   # the eBPF kube-proxy's bpffs
    "nft": "nftables",
    "nsenter": "util-linux", "taskset": "util-linux", "unshare": "util-linux",
    "ovs-appctl": "openvswitch-common", "ovs-ofctl": "openvswitch-common",
    "ovs-vsctl": "openvswitch-switch",
    "/usr/share/openvswitch/scripts/ovs-ctl": "openvswitch-switch",
    "ping": "iputils-ping",
    "python3": "python3-venv",   # sys.executable: .venv's, made from Debian's python3
    "sh": "dash",
    "sysctl": "procps",
    "tcpdump": "tcpdump",
    "traceroute": "traceroute",
    "wrk": "wrk",
}

# Words in command position that are no program to install: shell builtins (sh runs them
# itself; `true` and `kill` are also programs, but a script's `|| true` is the builtin).
BUILTINS = {"[", ":", "cd", "echo", "exec", "exit", "false", "kill", "printf", "pwd", "set",
            "test", "true", "wait"}

# The project's own: built by workloads/build.sh (build/...), its scripts, and the console
# script `make setup` installs into .venv (pip install -e).
PROJECT_PREFIXES = ("build/", "workloads/")
PROJECT = {"cnlb"}

# A part the source leaves open ("{}"), and what it may be.
TEMPLATES = {"iptables-{}": [b for b in kubeproxy.BACKENDS if b != "auto"]}

# Process starts whose program the source cannot tell: "path::function" -> why it is fine.
UNRESOLVED_OK: dict = {}


def setup_packages() -> set:
    with open(SETUP) as fh:
        found = re.search(r'^PACKAGES="([^"]*)"', fh.read(), re.MULTILINE)
    assert found, "tools/setup.sh has no PACKAGES=\"...\" line"
    return set(found.group(1).split())


@pytest.fixture(scope="module")
def scan():
    return pc.scan(REPO)


def expand(program: str) -> list[str]:
    for template, values in TEMPLATES.items():
        if program.startswith(template):
            return [program.replace(pc.HOLE, v) for v in values]
    return [program]


def needed(scan) -> dict:
    """program -> where it is started (doctor's list included)."""
    out: dict = {}
    for program, where in scan.programs().items():
        for p in expand(program):
            out.setdefault(p, []).extend(where)
    for tool in machine.TOOLS:
        out.setdefault(tool, []).append("testbed/emulation/machine.py: TOOLS (cnlb doctor)")
    return out


def test_the_scan_finds_the_calls_we_know_of(scan):
    found = set(needed(scan))
    known = {"nft", "iptables-restore", "iptables-legacy-save", "iptables-nft-restore",
             "ovs-vsctl", "ovs-appctl", "mnexec", "ip", "tc", "bridge", "ethtool", "ping",
             "curl", "wrk", "iperf", "seq", "ss", "nsenter", "cc", "git", "python3",
             "build/podserver", "build/httpprobe", "workloads/build.sh"}
    assert known <= found, sorted(known - found)
    where = scan.programs()
    # a CNI line rendered in testbed/kubernetes/cni/, run through Hosts.run_scripts
    assert any(w.startswith("testbed/emulation/hosts.py") for w in where["bridge"]), where["bridge"]
    # `cnlb exec HOST -- curl` in the detached-cluster test
    assert any(w.startswith("tests/integration/test_detached.py") for w in where["curl"])
    # kube-proxy's restore, through the runner passed to the iptables data plane's apply
    assert any(w.startswith("testbed/kubernetes/dataplane/iptables/restore.py")
               for w in where["iptables-restore"])


def test_every_program_maps_to_a_package_setup_installs(scan):
    packages = setup_packages()
    unmapped, uninstalled = [], []
    for program, where in sorted(needed(scan).items()):
        if program in BUILTINS or program in PROJECT or program.startswith(PROJECT_PREFIXES):
            continue
        if program not in PROGRAMS:
            unmapped.append(f"{program} (started at {', '.join(sorted(set(where))[:3])})")
        elif PROGRAMS[program] not in packages:
            uninstalled.append(f"{program}: package {PROGRAMS[program]}")
    assert not unmapped, ("programs with no package in PROGRAMS — find it with "
                          "`dpkg -S $(command -v PROG)`, add it here and to tools/setup.sh: "
                          + "; ".join(unmapped))
    assert not uninstalled, ("packages missing from tools/setup.sh's PACKAGES: "
                             + "; ".join(uninstalled))


def test_every_project_program_is_built_by_setup(scan):
    with open(SETUP) as fh:
        setup = fh.read()
    assert "make -s programs" in setup, "tools/setup.sh does not build the C programs"
    with open(os.path.join(REPO, "Makefile")) as fh:
        programs = re.search(r"^PROGRAMS := (.*)$", fh.read(), re.M).group(1).split()
    with open(BUILD) as fh:
        build = fh.read()
    for program in needed(scan):
        if program.startswith("build/"):
            name = program[len("build/"):]
            assert os.path.exists(os.path.join(REPO, "workloads", f"{name}.c")), program
            assert f"/build/{name}" in build, f"workloads/build.sh does not build {program}"
            assert program in programs, f"the Makefile's `programs` does not build {program}"
        elif program.startswith("workloads/"):
            assert os.path.exists(os.path.join(REPO, program)), program


def test_every_start_names_its_program(scan):
    left = {f"{path}::{func}": (where, what) for path, func, where, what in scan.unresolved}
    unknown = {k: v for k, v in left.items() if k not in UNRESOLVED_OK}
    assert not unknown, ("process starts whose program the source does not say — write the "
                         "argv so it can be read, or add to UNRESOLVED_OK with why: "
                         f"{unknown}")


def test_every_template_expands_to_mapped_programs():
    for template, values in TEMPLATES.items():
        assert values, template
        for v in values:
            assert template.replace(pc.HOLE, v) in PROGRAMS


# -- the scanner itself, on small made-up projects ---------------------------------------------

def write(root, files: dict) -> str:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def programs_in(tmp_path, files: dict) -> pc.Scan:
    return pc.scan(write(tmp_path, files))


def test_scan_follows_wrappers_renderers_and_prefixes(tmp_path):
    s = programs_in(tmp_path, {
        "testbed/__init__.py": "",
        "testbed/render.py": (
            "def sysctl(k, v):\n    return f'echo {v} > /proc/sys/{k}'\n"
            "def lines(dev):\n"
            "    cmds = [sysctl('x', 1)]\n"
            "    cmds += [f'tc qdisc add dev {dev} root netem']\n"
            "    cmds.append(f'[ -e /x ] && brctl show {dev} || true')\n"
            "    return cmds\n"),
        "testbed/run.py": (
            "import subprocess\nimport sys\n"
            "from . import render\n"
            "TOOL = 'ovs-vsctl'\n"
            "def sh(*argv):\n    return subprocess.run(argv)\n"
            "def in_ns(ns, argv):\n    return subprocess.run(['ip', 'netns', 'exec', ns, *argv])\n"
            "def orphan(script):\n"
            "    return subprocess.run(['bash', '-c', f'({script}) & echo $!'])\n"
            "class Cluster:\n"
            "    def exec(self, host, argv):\n        return self.host(host).popen(argv)\n"
            "    def shell(self, host, text):\n        return self.exec(host, ['sh', '-c', text])\n"
            "def main(c, host):\n"
            "    sh('nft', 'list', 'ruleset')\n"
            "    in_ns('x', ['conntrack', '-L'])\n"
            "    orphan('exec -a name sleep 1')\n"
            "    c.shell(host, 'for i in $(seq 3); do curl -s x; done | wc -l')\n"
            "    c.run_script(host, render.lines('eth0'))\n"
            "    subprocess.run([TOOL, 'show'])\n"
            "    subprocess.run(['nsenter', '--net=/x', '--', sys.executable, '-m', 'y'])\n"
            "    subprocess.run(['taskset', '-c', '1', '/usr/bin/wrk', 'x'])\n"
            "    subprocess.run(f'tcpdump -i {host} -c 1', shell=True)\n"),
        "workloads/build.sh": 'root=$(cd "$(dirname "$0")" && pwd)\nexec "${CC:-cc}" -o x x.c\n',
    })
    found = set(s.programs())
    assert {"nft", "ip", "conntrack", "sh", "seq", "curl", "wc", "tc", "brctl", "echo",
            "ovs-vsctl", "nsenter", "python3", "taskset", "wrk", "tcpdump", "cc",
            "dirname", "cd", "pwd", "bash", "sleep"} <= found, found
    assert not {"i", "x", "-s", "name"} & found, found
    assert not s.unresolved, s.unresolved


def test_scan_reports_a_start_it_cannot_read(tmp_path):
    s = programs_in(tmp_path, {"bench/x.py": (
        "import os, subprocess\n"
        "def go():\n    subprocess.run([os.environ['TOOL'], '-v'])\n")})
    assert [(u[0], u[1]) for u in s.unresolved] == [("bench/x.py", "go")]


@pytest.mark.parametrize("text,commands", [
    ("a && b; c | d || e &", ["a", "b", "c", "d", "e"]),
    ("X=1 a >/dev/null 2>&1", ["a"]),
    ("( ping -c 1 x >/dev/null 2>&1; echo \"x $?\" ) &\nwait\n", ["ping", "echo", "wait"]),
    ("for i in $(seq 3); do curl x; echo; done", ["seq", "curl", "echo"]),
    ("if [ -e /x ]; then ip link; fi", ["[", "ip"]),
    ("ip -batch - <<'END'\nlink set lo up\nEND\ntc qdisc", ["ip", "tc"]),
    ('echo "$(uname -r)" `hostname`', ["uname", "hostname", "echo"]),
    ("echo 'a; b' \"c && d\"  # e; f", ["echo"]),
])
def test_shell_commands(text, commands):
    assert sorted(c[0] for c in pc.shell_commands(text)) == sorted(commands)
