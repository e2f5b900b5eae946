#!/bin/sh
# Set-up for the testbed, idempotent: Debian packages, Open vSwitch running, the pod server
# built, and .venv (Debian's python3 with system site packages, where Debian's Mininet lives)
# with the project installed. Run as root from the repository (make setup).
set -eu
cd "$(dirname "$0")/.."

# Every program the project runs, by its package (tests/unit/test_setup_packages.py reads the
# source for the programs it starts and fails when one's package is missing here). Packages a
# Debian system always has (bash, coreutils, dash) are listed too: setup installs nothing for them.
PACKAGES="mininet openvswitch-switch openvswitch-common iproute2 iptables nftables ethtool
iperf iperf3 wrk curl tcpdump traceroute iputils-ping conntrack procps psmisc util-linux kmod
bash coreutils dash git gcc libc6-dev make python3-venv python3-pip haproxy
ipvsadm ipset bird2
clang llvm libbpf-dev bpftool mount"

if [ "$(id -u)" != 0 ]; then
    echo "setup: needs root (apt-get, Open vSwitch) — run: sudo make setup" >&2
    exit 3
fi

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in *"install ok installed"*) ;; *) missing="$missing $pkg" ;; esac
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

# bird2's package starts a system-wide BIRD where an init system runs services; the testbed
# runs its own per node, inside the cluster's namespaces, and wants no other. The init script
# stops only the daemon of its own pid file (/run/bird/bird.pid).
if [ -d /run/systemd/system ] && [ -e /lib/systemd/system/bird.service ]; then
    systemctl disable --now bird.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/bird ]; then
    /etc/init.d/bird stop >/dev/null 2>&1 || true
    update-rc.d bird disable >/dev/null 2>&1 || true
fi

# Open vSwitch: no systemd on these machines; start it the way its Debian scripts do.
if ! ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    echo "setup: starting Open vSwitch"
    /usr/share/openvswitch/scripts/ovs-ctl --system-id=random --no-monitor start >/dev/null
fi

# The pod's HTTP server and the measuring HTTP client (C): the Makefile rebuilds them when any
# of their sources or headers changed.
if ! make -q programs 2>/dev/null; then
    echo "setup: building the pod server and httpprobe"
    make -s programs
fi

# The Python environment.
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.cnlb-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing the project into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lint]'
    touch "$stamp"
fi
.venv/bin/python -c 'import mininet.net, os_ken, yaml, matplotlib' \
    || { echo "setup: the venv cannot import its dependencies" >&2; exit 3; }
