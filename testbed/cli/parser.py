"""`cnlb`'s flags: one small function per group of subcommands, each pointing at its command."""

from __future__ import annotations

import argparse

from testbed.cli import commands as c
from testbed.cli.service_commands import cmd_service
from testbed.emulation.machine import FABRIC_DATAPATHS
from testbed.errors import UsageError
from testbed.spec.model import LB_KINDS

MODES = ("nodeport", "container-native")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit status 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} — see `{self.prog} --help`")


def build_parser() -> Parser:
    """The whole command line: `cnlb COMMAND ...`."""
    p = Parser(prog="cnlb", description="Container-native load-balancing testbed: an emulated "
               "Kubernetes cluster on real namespaces, classic NodePort vs container-native paths.")
    sub = p.add_subparsers(dest="command", parser_class=Parser)
    _files(sub)
    _cluster(sub)
    _lifecycle(sub)
    _runs(sub)
    _machine(sub)
    return p


def _files(sub) -> None:
    """Commands that read files and build nothing."""
    v = sub.add_parser("validate", help="check topology files; nothing is built")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--mode", choices=MODES)
    v.set_defaults(func=c.cmd_validate)

    r = sub.add_parser("render", help="print what would be applied, without building anything")
    r.add_argument("what", choices=("plan", "fabric", "cni", "kube-proxy"))
    r.add_argument("file", metavar="FILE")
    r.add_argument("--mode", choices=MODES)
    r.add_argument("--node", help="the node (kube-proxy, cni)")
    _proxy_mode_option(r)
    r.set_defaults(func=c.cmd_render)


def _cluster(sub) -> None:
    """Building a cluster, and the commands that look at or tear down the running one."""
    u = sub.add_parser("up", help="build the cluster from a topology file")
    u.add_argument("file", metavar="FILE")
    u.add_argument("--mode", choices=MODES)
    u.add_argument("--check", action="store_true", help="print a reachability table, tear down, "
                   "exit non-zero if anything expected failed")
    u.add_argument("--cli", action="store_true", help="open Mininet's CLI on the cluster")
    _iptables_option(u)
    _datapath_option(u, default="auto")
    _lb_option(u)
    _proxy_mode_option(u)
    u.add_argument("--cni", choices=("bgp",), default=None,
                   help="the pod network's routing: bgp (Calico-style: blocks per node announced "
                        "by BIRD, no overlay; docs/bgp.md); default: the topology's cni.routing")
    u.add_argument("--detach", action="store_true", help="return once the cluster is ready; "
                   "it stays up (cnlb status / exec / down)")
    u.add_argument("--quiet", action="store_true")
    u.add_argument("--owner", action="store_true", help=argparse.SUPPRESS)
    u.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u.set_defaults(func=c.cmd_up)

    s = sub.add_parser("status", help="what is running: nodes, pods, services, the LB's backends")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=c.cmd_status)

    e = sub.add_parser("exec", help="run a command in a node, pod or client: "
                       "cnlb exec NAME -- CMD...")
    e.add_argument("name", metavar="NAME")
    e.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    e.set_defaults(func=c.cmd_exec)

    dn = sub.add_parser("down", help="tear the running cluster down")
    dn.add_argument("--force", action="store_true", help="also stop a foreground `cnlb up` or "
                    "`cnlb run` holding the cluster (SIGTERM, then wait for its teardown)")
    dn.set_defaults(func=c.cmd_down)


def _lifecycle(sub) -> None:
    """Pods and nodes of a running cluster."""
    pod = sub.add_parser("pod", help="pod lifecycle on a running cluster: add, remove, fail")
    pod.add_argument("action", choices=("add", "remove", "fail"))
    pod.add_argument("name", metavar="NAME", help="a pod (remove, fail) or a deployment (add)")
    pod.add_argument("--node", help="add: the node to place the pod on")
    _instant_option(pod)
    pod.set_defaults(func=c.cmd_pod)

    _services(sub)

    node = sub.add_parser("node", help="node lifecycle on a running cluster: fail, or "
                          "restart-kube-proxy (a new process, its first sync over the rules in "
                          "place)")
    node.add_argument("action", choices=("fail", "restart-kube-proxy"))
    node.add_argument("name", metavar="NAME")
    _instant_option(node)
    node.set_defaults(func=c.cmd_node)

    ro = sub.add_parser("rollout", help="replace every pod of a deployment as a rolling update "
                        "does (new pods Ready first, then old ones terminate)")
    ro.add_argument("deployment", metavar="DEPLOYMENT")
    ro.add_argument("--max-surge", type=c.int_or_percent, metavar="N",
                    help="pods over replicas while updating: a count or N%% "
                         "(default: the deployment's strategy.rollingUpdate, else 25%%)")
    ro.add_argument("--max-unavailable", type=c.int_or_percent, metavar="M",
                    help="pods under replicas that may be unavailable: a count or N%% "
                         "(default: the deployment's, else 25%%)")
    ro.add_argument("--no-wait", action="store_true", help="return once it has started")
    ro.set_defaults(func=c.cmd_rollout)


def _services(sub) -> None:
    """Services of a running cluster: cnlb service apply | set | delete."""
    svc = sub.add_parser("service", help="change a service of a running cluster: apply FILE, "
                         "set NAME field=value ..., delete NAME")
    actions = svc.add_subparsers(dest="action", parser_class=Parser, required=True)
    a = actions.add_parser("apply", help="create or update the one service a file holds "
                           "(`web: {type: NodePort, port: 80}`, as under services:)")
    a.add_argument("file", metavar="FILE")
    s = actions.add_parser("set", help="change fields of a service (values are YAML: "
                           "type=NodePort, 'ports=[{name: http, port: 80}]')")
    s.add_argument("name", metavar="NAME")
    s.add_argument("fields", nargs="+", metavar="FIELD=VALUE")
    d = actions.add_parser("delete", help="delete a service: its node ports and VIP are freed")
    d.add_argument("name", metavar="NAME")
    svc.set_defaults(func=cmd_service)


def _instant_option(parser) -> None:
    parser.add_argument("--instant", action="store_true",
                        help="remove, fail: every step at once, endpoints first, whatever the "
                             "topology's kubernetes timing says (the picture without a clock)")


def _runs(sub) -> None:
    """Experiments and what is made from their results."""
    rn = sub.add_parser("run", help="run an experiment: every variant, repetition and workload")
    rn.add_argument("experiment", metavar="EXPERIMENT")
    rn.add_argument("--topology", metavar="FILE", help="use this topology instead of the file's")
    rn.add_argument("--out", metavar="DIR", help="results directory (default results/<run-id>)")
    rn.add_argument("--quiet", action="store_true", help="no progress lines")
    _iptables_option(rn)
    _datapath_option(rn, default=None)
    _lb_option(rn)
    _proxy_mode_option(rn)
    rn.set_defaults(func=c.cmd_run)

    pl = sub.add_parser("plot", help="draw the figures of a run (PNG and PDF)")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.set_defaults(func=c.cmd_plot)

    rp = sub.add_parser("report", help="write a one-page report (Markdown and HTML) of a run")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.set_defaults(func=c.cmd_report)

    ag = sub.add_parser("agree", help="do two runs of one experiment agree within their "
                        "intervals?")
    ag.add_argument("run_a", metavar="RUN_A")
    ag.add_argument("run_b", metavar="RUN_B")
    ag.set_defaults(func=c.cmd_agree)


def _machine(sub) -> None:
    """The machine: leftovers and what it can do."""
    cl = sub.add_parser("clean", help="remove everything a crashed run left behind")
    cl.set_defaults(func=c.cmd_clean)

    d = sub.add_parser("doctor", help="what this machine can do, and the fix for what it cannot")
    d.set_defaults(func=c.cmd_doctor)


def _datapath_option(parser, default: str | None) -> None:
    parser.add_argument("--datapath", choices=FABRIC_DATAPATHS, default=default,
                        help="the fabric's OVS datapath: auto (kernel with the openvswitch "
                             "module, else userspace) or afxdp (userspace with AF_XDP ports "
                             "polled by a PMD thread: cheaper hops, one CPU kept busy)"
                             + ("" if default else "; default: the experiment's datapath:"))


def _lb_option(parser) -> None:
    parser.add_argument("--lb", choices=LB_KINDS, default=None,
                        help="the cloud load balancer: l4 (the VPC's OpenFlow NLB-like "
                             "balancer) or l7 (HAProxy as an HTTP proxy LB, ALB/GCLB-like); "
                             "default: the topology's loadBalancer.kind")


def _proxy_mode_option(parser) -> None:
    parser.add_argument("--proxy-mode", type=c.proxy_mode, default=None, metavar="MODE",
                        help="kube-proxy's mode on every node: iptables, nftables, ipvs, ... "
                             "(the modes the testbed has; default: the topology's "
                             "kubeProxy.mode, else iptables; for run, the variants that name "
                             "no proxyMode)")


def _iptables_option(parser) -> None:
    parser.add_argument("--iptables", choices=("auto", "nft", "legacy"), default="auto",
                        help="kube-proxy's iptables backend "
                             "(auto: what the machine's iptables uses)")


