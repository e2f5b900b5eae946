"""The `cnlb` commands: each parses nothing, calls the library and prints (kind's delete
command is the model). Flags are defined in testbed.cli.parser; errors become exit statuses in
testbed.cli.main.
"""

from __future__ import annotations

import json
import os
import sys
import time

from testbed.errors import EXIT_BAD_INPUT, EnvironmentProblem, InputError, UsageError

EXIT_FAILED = 1



def _progress(quiet: bool):
    t0 = time.time()

    def say(msg: str):
        if not quiet:
            print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
    return say


def _netem():
    from testbed.emulation import machine
    return machine.netem_available()


def _is_experiment(doc) -> bool:
    """Whether a parsed file is an experiment rather than a topology, by its top-level keys.

    Decided from the parsed data, so JSON files and quoted keys count like plain YAML. Only keys
    that belong to one kind count (`variants`, `workloads`, `kind`, `topology`... against
    `nodes`, `vpc`, `deployments`...); the kind with more of its own keys wins, and a tie (no
    keys of either, or a topology with a stray `kind:`) is read as a topology, whose messages
    say what a file starts with."""
    from testbed.spec.experiment import ALL_KEYS
    from testbed.spec.topology import TOP_KEYS
    if not isinstance(doc.data, dict):
        return False
    keys = set(doc.data)
    return len(keys & (ALL_KEYS - TOP_KEYS)) > len(keys & (TOP_KEYS - ALL_KEYS))


def cmd_validate(args) -> int:
    from testbed.spec.experiment import resolve_document
    from testbed.spec.topology import parse_topology
    from testbed.spec.yamldoc import read_document
    netem = None                      # probed once, when the first file has been read
    problems = []
    for f in args.files:
        try:
            doc = read_document(f)        # once: /dev/stdin and <(...) cannot be read twice
            if netem is None:
                netem = _netem()
            if _is_experiment(doc):
                resolve_document(doc, netem=netem)
            else:
                parse_topology(doc, mode=args.mode, netem=netem)
        except InputError as exc:
            problems.extend(exc.problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_BAD_INPUT
    for f in args.files:
        print(f"{f}: ok")
    return 0


def proxy_mode(raw: str) -> str:
    """--proxy-mode: one of the modes the data plane registry has."""
    import argparse

    from testbed.spec.kube_proxy import proxy_modes
    if raw not in proxy_modes():
        raise argparse.ArgumentTypeError(f"{raw!r} is not a kube-proxy mode the testbed has — "
                                         f"use one of {', '.join(proxy_modes())}")
    return raw


def cmd_render(args) -> int:
    from testbed.plan.addresses import build_plan
    from testbed.spec.topology import load_topology
    topo = load_topology(args.file, mode=args.mode, proxy_mode=args.proxy_mode)
    plan = build_plan(topo)
    if args.what == "plan":
        print(json.dumps(plan.to_dict(), indent=1))
    elif args.what == "fabric":
        from testbed.cloud.fabric import render_fabric
        print(json.dumps(render_fabric(plan, topo.load_balancer.health_check), indent=1))
    elif args.what == "cni":
        from testbed.kubernetes.node import node_setup
        node = _node_arg(args, plan)
        print("\n".join(node_setup(plan, plan.node(node), offloads_off=False)))
    elif args.what == "kube-proxy":   # the node's first sync in the topology's (or given) mode
        node = _node_arg(args, plan)
        from testbed.cli.render import kube_proxy_first_sync
        sys.stdout.write(kube_proxy_first_sync(topo, plan, node))
    return 0


def _node_arg(args, plan) -> str:
    names = [n.name for n in plan.nodes]
    if not args.node:
        raise UsageError(f"cnlb render {args.what}: --node is required — one of {', '.join(names)}")
    if args.node not in names:
        raise UsageError(f"cnlb render {args.what}: no node named {args.node!r} in {args.file} — "
                         f"one of {', '.join(names)}")
    return args.node


def cmd_up(args) -> int:
    from testbed.emulation import machine
    from testbed.emulation.cluster import Cluster
    from testbed.emulation.reachability import format_table, reachability
    from testbed.spec.model import with_cni_routing
    from testbed.spec.topology import load_topology
    topo = load_topology(args.file, mode=args.mode, netem=machine.netem_available(),
                         proxy_mode=args.proxy_mode)
    topo = with_cni_routing(topo, getattr(args, "cni", None))   # --cni bgp: cni.routing
    say = _progress(args.quiet)
    if args.owner:
        from testbed.emulation.session import run_owner
        if args.ready_fd is None:
            raise UsageError("cnlb up --owner is internal: it needs --ready-fd")
        return run_owner(Cluster(topo, iptables=args.iptables, datapath=args.datapath,
                                 load_balancer=args.lb), args.ready_fd)
    if args.detach:
        if args.check or args.cli:
            raise UsageError("cnlb up: --detach does not go with --check or --cli — "
                             "use `cnlb exec` and `cnlb status` on the detached cluster")
        from testbed.emulation.session import start_detached
        _print_next_steps(start_detached(topo.file, topo.mode, say, args.iptables,
                                         args.datapath, args.lb, args.proxy_mode, cni=args.cni))
        return 0
    cluster = Cluster(topo, progress=say, iptables=args.iptables, datapath=args.datapath,
                      load_balancer=args.lb)
    status = 0
    with cluster:
        say(f"ready in {cluster.timings['total_s']:.1f}s (kube-proxy {cluster.proxy_mode})")
        if args.check:
            rows = reachability(cluster)
            print(format_table(rows))
            status = 0 if all(r.ok for r in rows) else EXIT_FAILED
            if cluster.lb_kind == "l7":   # through HAProxy: who served, what the pod saw
                from testbed.emulation.l7check import check_l7, format_l7
                l7_rows = check_l7(cluster)
                print(format_l7(l7_rows))
                status = status if all(r.ok for r in l7_rows) else EXIT_FAILED
            print("reachability: " + ("all as expected" if status == 0 else "FAILED"))
        if args.cli:
            _mininet_cli(cluster)
        if not (args.check or args.cli):
            _hold(cluster, say)
        say("tearing down ...")
    say(f"removed in {cluster.timings.get('stop_s', 0):.1f}s")
    return status


def _mininet_cli(cluster) -> None:
    """Mininet's CLI on the cluster, accepting the cluster's names (pods are named web-0:
    Mininet's CLI would stop a host name at the '-')."""
    import cmd

    from mininet.cli import CLI
    from mininet.log import setLogLevel

    class ClusterCLI(CLI):
        identchars = cmd.Cmd.identchars + "-"

    setLogLevel("output")   # the CLI prints through Mininet's log at this level
    ClusterCLI(cluster.net)
    setLogLevel("warning")


def _hold(cluster, say) -> None:
    """Keep a foreground cluster up until Ctrl-C (or SIGTERM), watching the controller."""
    plan = cluster.plan
    vip = plan.load_balancers[0].vip if plan.load_balancers else None
    print(f"cluster {plan.cluster} is up ({plan.mode}); press Ctrl-C to tear it down", flush=True)
    if vip and plan.clients:
        print(f"  try: cnlb exec {plan.clients[0]} -- curl -s http://{vip}/", flush=True)
    while True:
        time.sleep(1)
        if not cluster.controller.alive():
            say("the VPC controller died; its log ends with:\n" + cluster.controller.log_tail())
            raise EnvironmentProblem("the VPC controller died; the cluster was torn down")


def _print_next_steps(status: dict) -> None:
    vip = next((lb["vip"] for lb in status["load_balancers"]), None)
    client = status["clients"][0] if status["clients"] else None
    pod = status["pods"][0] if status["pods"] else None
    svc = status["services"][0] if status["services"] else None
    print(f"cluster {status['cluster']} is up ({status['mode']}, kube-proxy "
          f"{status.get('proxy_mode', 'iptables')}), owner pid {status['owner']['pid']}")
    print("next:")
    print("  cnlb status")
    if vip and client:
        print(f"  cnlb exec {client} -- curl -s http://{vip}/")
    if pod and svc:
        print(f"  cnlb exec {pod['name']} -- curl -s http://{svc['cluster_ip']}:{svc['port']}/")
        print(f"  cnlb pod remove {pod['name']}")
    print("  cnlb down")


def cmd_status(args) -> int:
    from testbed.emulation.session import cluster_status, format_status
    status = cluster_status()
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print("\n".join(format_status(status)))
    return 0


def cmd_exec(args) -> int:
    from testbed.emulation.session import host_netns
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("cnlb exec: no command — write `cnlb exec NAME -- COMMAND ...`")
    netns = host_netns(args.name)
    if command[0] == "birdc" and "-s" not in command:   # the host's own BIRD (docs/bgp.md)
        from testbed.emulation.bgp import bird_socket
        from testbed.emulation.journal import StateDir
        sock = bird_socket(StateDir.for_cluster("current").path, args.name)
        command = ["birdc", "-s", sock, *command[1:]] if sock else command
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", netns, *command])


def cmd_down(args) -> int:
    from testbed.emulation.session import down
    removed = down(lambda m: print(m, file=sys.stderr), force=args.force)
    print("cluster removed" if removed else "no cluster is running")
    return 0


def cmd_pod(args) -> int:
    from testbed.emulation.session import request
    if args.action == "add":
        result = request("add-pod", deployment=args.name, node=args.node)
    else:
        if args.node:
            raise UsageError(f"cnlb pod {args.action}: --node only goes with add")
        result = request(f"{args.action}-pod", pod=args.name, instant=args.instant)
    print(json.dumps(result))
    return 0


def cmd_node(args) -> int:
    from testbed.emulation.session import request
    if args.action == "restart-kube-proxy":
        if args.instant:
            raise UsageError("cnlb node restart-kube-proxy: --instant only goes with fail")
        print(json.dumps(request("restart-kube-proxy", node=args.name)))
        return 0
    print(json.dumps(request("fail-node", node=args.name, instant=args.instant)))
    return 0


def int_or_percent(raw: str) -> int | str:
    """--max-surge / --max-unavailable: a count or a percentage, as the topology takes them."""
    import argparse

    from testbed.spec.sections import int_or_percent as convert
    try:
        return convert(int(raw) if raw.isdigit() else raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_rollout(args) -> int:
    """Start a rolling update on the detached cluster and, unless --no-wait, print its scaling
    events as they happen until every pod is new (status 1 if it failed)."""
    from testbed.emulation.session import request
    status = request("rollout", deployment=args.deployment, max_surge=args.max_surge,
                     max_unavailable=args.max_unavailable)
    resolved = status["resolved"]
    print(f"rolling out {args.deployment}: {status['replicas']} replicas, maxSurge "
          f"{status['maxSurge']} ({resolved['maxSurge']}), maxUnavailable "
          f"{status['maxUnavailable']} ({resolved['maxUnavailable']})", flush=True)
    shown = 0
    while not args.no_wait:
        for ev in status["events"][shown:]:
            print(f"+{ev['time'] - status['started']:7.2f}s  Scaled {ev['action'][7:]} replica "
                  f"set {ev['rs']} to {ev['replicas']} ({', '.join(ev['pods'])})", flush=True)
        shown = len(status["events"])
        if status["error"]:
            print(f"rollout failed: {status['error']}", file=sys.stderr)
            return EXIT_FAILED
        if status["completed"] is not None:
            print(f"rolled out in {status['duration_s']:.2f}s: {', '.join(status['new_pods'])}")
            break
        time.sleep(0.5)
        status = request("rollout-status", deployment=args.deployment)
    return 0


def cmd_run(args) -> int:
    from testbed.experiments.run import run_experiment
    result = run_experiment(args.experiment, args.topology, out=args.out, iptables=args.iptables,
                            datapath=args.datapath, progress=_progress(args.quiet), lb=args.lb,
                            proxy_mode=args.proxy_mode)
    print(f"{len(result.figures)} figures in {os.path.join(result.out, 'figures')}")
    print(f"report: {result.report}")
    return 0


def cmd_plot(args) -> int:
    from testbed.analysis.plots import plot_run
    _need_run_dir(args.run_dir)
    for line in plot_run(args.run_dir):
        print(line)
    return 0


def cmd_report(args) -> int:
    from testbed.analysis.report import write_report
    _need_run_dir(args.run_dir)
    print(write_report(args.run_dir))
    return 0


def cmd_agree(args) -> int:
    from testbed.analysis.agreement import agreement, format_agreement, why_nothing_to_compare
    _need_run_dir(args.run_a, args.run_b)
    rows = agreement(args.run_a, args.run_b)
    if not rows:   # "0/0 intervals overlap" would read as an answer
        raise UsageError(f"cnlb agree: {why_nothing_to_compare(args.run_a, args.run_b)}")
    print(format_agreement(rows))
    return 0


def _need_run_dir(*paths: str) -> None:
    """Refuse run directories whose meta.json or records.jsonl the readers cannot use (one line
    per problem, exit 2); print the warnings (a last record cut by a crash) and go on."""
    from testbed.analysis.rundir_check import check_run_dir
    problems = []
    for path in paths:
        check = check_run_dir(path)
        problems += check.problems
        for warning in check.warnings:
            print(warning, file=sys.stderr)
    if problems:
        raise InputError(problems)


def cmd_clean(args) -> int:
    from testbed.emulation.journal import Lock, alive, clean, owner_pid, state_dirs
    lock = Lock()
    if not lock.acquire():
        raise EnvironmentProblem(f"a cluster is running (owner pid {lock.holder()}) — stop it with "
                                 "Ctrl-C or `cnlb down`; clean is for what a crashed run left")
    try:
        found = 0
        for state in state_dirs():
            owner = owner_pid(state)
            if owner and alive(*owner):
                print(f"{state.path}: owner {owner[0]} still alive; left alone", file=sys.stderr)
                continue
            removed = clean(state, log=lambda m: print(m, file=sys.stderr))
            found += 1
            print(f"removed {removed['processes']} processes, {removed['bridges']} bridges, "
                  f"{removed['links']} links left by {state.path}")
        if not found:
            print("nothing to clean")
    finally:
        lock.release()
    return 0


def cmd_doctor(args) -> int:
    from testbed.emulation.machine import doctor
    bad = 0
    for check in doctor():
        mark = "ok " if check.ok else ("optional" if check.optional else "MISSING")
        line = f"{mark:<8} {check.what:<16} {check.detail}"
        if not check.ok:
            bad += not check.optional
            line += f"  — fix: {check.fix}"
        print(line)
    return EXIT_FAILED if bad else 0
