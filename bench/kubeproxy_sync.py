#!/usr/bin/env python3
"""How long kube-proxy's syncs take: iptables mode on both backends, and nftables mode (root).

Everything runs in ONE scratch network namespace, cnlb-bench-<pid>, deleted at the end (also on
Ctrl-C or SIGTERM); every iptables command runs inside it through `ip netns exec`, so the
machine's own rules are never read or touched.

For each backend (iptables-legacy-restore, iptables-nft-restore, "nftables": kube-proxy's
nftables mode, testbed.kubernetes.dataplane.nftables, loaded with one `nft -f -`, and
"nftables-steps": the same mode's cold start in steps, nftables/coldstart.py, its full sync
into the empty namespace as several `nft -f -` in order) and each size
(1,000 and 10,000 services x 5 endpoints, cluster IPs in 10.96.0.0/12, endpoints in 10.244.0.0/16, every
fifth service also a NodePort):

- full sync: render everything with rules.render() (testbed.kubernetes.dataplane.iptables)
  and load it with restore.apply() (the jump rules checked, then one iptables-restore
  --noflush) into empty tables; median of 3;
- full resync: the same into the already-populated tables (upstream does this periodically);
- one-endpoint change: one endpoint of one service replaced, rendered with render_partial()
  and applied without the jump-rule checks, as upstream's partial sync; 3 changes, median;
- checks: after every apply, `iptables-save -t nat` must list exactly the expected KUBE-SEP
  chains; after the partial changes, the whole nat+filter state must equal a full render of
  the final services applied to empty tables (nftables: the endpoint- chains, and the table as
  `nft -j list table ip kube-proxy` lists it, handles left out).

Before that, a small example (Cluster and Local policy, ClientIP affinity, a service without
endpoints) goes through several partial transitions on the real tools, each compared with a
full render: the same check the unit tests make on a model of iptables.

Writes bench/results/kubeproxy_sync.json (raw timings and metadata) and prints a Markdown table.

    sudo .venv/bin/python bench/kubeproxy_sync.py [--sizes 1000 10000] [--reps 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.kubernetes.dataplane.iptables import names, restore, rules  # noqa: E402
from testbed.kubernetes.dataplane.model import Endpoint, NodeContext, ServicePort  # noqa: E402
from testbed.kubernetes.dataplane.nftables import coldstart, listing  # noqa: E402
from testbed.kubernetes.dataplane.nftables import rules as nft_rules  # noqa: E402

NS = f"cnlb-bench-{os.getpid()}"
BACKENDS = ("legacy", "nft", "nftables", "nftables-steps")   # iptables' two, nftables mode's
NFTABLES = "nftables"
STEPS = "nftables-steps"   # nftables mode, a cold start in steps (coldstart.py)
NFT_MODES = (NFTABLES, STEPS)
STEP_LIMITS = {"max_lines": coldstart.DEFAULT_MAX_LINES, "max_vmaps": coldstart.DEFAULT_MAX_VMAPS}
# services -> the table one transaction leaves (nft_state), kept from the nftables backend's
# first full sync for the steps backend's check (or loaded by it when nftables did not run)
ONE_TRANSACTION_STATE: dict = {}
NODE = NodeContext("node1", "192.168.0.11", "10.244.0.0/16")
NODES = ("node1", "node2", "node3")
TARGET_FULL_S = 3.0  # 10,000 x 5 full sync
TARGET_CHANGE_S = 0.1  # one-endpoint change
# A size whose first full sync takes longer than this is measured once, without the optional
# populated resync (iptables-nft-restore at 10,000 x 5 takes minutes per restore).
SLOW_SYNC_S = 60.0
OUT = ROOT / "bench" / "results" / "kubeproxy_sync.json"


# --- running commands: only `ip netns add/del` outside the scratch namespace ----------------------


def ns_run(argv: list, stdin: bytes | None = None) -> tuple[int, str]:
    """restore.apply()'s command runner: every command inside the scratch namespace."""
    proc = subprocess.run(["ip", "netns", "exec", NS, *argv], input=stdin, capture_output=True)
    return proc.returncode, proc.stderr.decode(errors="replace")


def ns_output(argv: list) -> str:
    proc = subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, check=True)
    return proc.stdout.decode()


def clean(backend: str) -> None:
    """Empty the filter and nat tables of this backend (nftables: remove the kube-proxy
    table), in the scratch namespace only."""
    if backend in NFT_MODES:
        nft_clean()
        return
    restore.apply(ns_run, "*filter\nCOMMIT\n*nat\nCOMMIT\n", backend, noflush=False,
                  ensure_jumps=False)


def save_state(backend: str) -> dict:
    """table -> chain -> rules, from iptables-save (counters and comments lines dropped);
    nftables: nft_state()."""
    if backend in NFT_MODES:
        return nft_state()
    text = ns_output([f"iptables-{backend}-save", "-t", "filter"])
    text += ns_output([f"iptables-{backend}-save", "-t", "nat"])
    state: dict = {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = state.setdefault(line[1:], {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            table.setdefault(chain, []).append(line)
    return state


def sep_chains(backend: str) -> set:
    if backend in NFT_MODES:
        return {c for c in nft_state()["chain"] if c.startswith(ENDPOINT)}
    save = ns_output([f"iptables-{backend}-save", "-t", "nat"])
    return {c for c in restore.nat_chains_in_save(save) if c.startswith(names.SEP_PREFIX)}


# --- nftables mode: one `nft -f -` per sync ------------------------------------------------------

ENDPOINT = "endpoint-"


def nft_apply(text: str) -> None:
    code, err = ns_run(["nft", "-f", "-"], text.encode())
    if code != 0:
        raise RuntimeError(f"nft -f - failed (exit {code}): {err.strip()[:2000]}")


def nft_clean() -> None:
    """Remove the kube-proxy table (of the scratch namespace)."""
    nft_apply("add table ip kube-proxy\ndelete table ip kube-proxy\n")


def nft_state() -> dict:
    """The kube-proxy table as `nft -j` lists it: kind -> name -> what it holds (rules of a
    chain in order, elements of a set sorted), handles left out: comparable across loads."""
    proc = subprocess.run(["ip", "netns", "exec", NS, "nft", "-j", "list", "table", "ip",
                           "kube-proxy"], capture_output=True)
    return listing.table_state(proc.stdout.decode() if proc.returncode == 0 else "")


def nft_rule_count(state: dict) -> int:
    return sum(len(c.get("rules", [])) for c in state["chain"].values())


# --- synthetic services ---------------------------------------------------------------------------


def synthetic(n: int, per: int = 5) -> list:
    cluster_base = int(ipaddress.IPv4Address("10.96.0.0"))
    pod_base = int(ipaddress.IPv4Address("10.244.0.0"))
    services = []
    for i in range(n):
        eps = tuple(
            Endpoint(str(ipaddress.IPv4Address(pod_base + 1 + i * per + j)), 8080,
                     NODES[(i + j) % len(NODES)])
            for j in range(per)
        )
        services.append(ServicePort(
            "bench", f"svc-{i:05d}", "http", "TCP",
            str(ipaddress.IPv4Address(cluster_base + 1 + i)), 80, 8080,
            node_port=30000 + i // 5 if i % 5 == 0 else None, endpoints=eps,
        ))
    return services


def replace(svc: ServicePort, **changes) -> ServicePort:
    fields = {f: getattr(svc, f) for f in ServicePort.__dataclass_fields__}
    return ServicePort(**{**fields, **changes})


def change_one_endpoint(services: list, rep: int) -> list:
    """Move the last endpoint of one service (a different one each rep) to a fresh address."""
    k = (len(services) // 2 + 7919 * rep) % len(services)
    svc = services[k]
    moved = replace(svc, endpoints=svc.endpoints[:-1] + (Endpoint(f"10.244.250.{rep + 1}", 8080,
                                                                  "node2"),))
    return services[:k] + [moved] + services[k + 1:]


# --- measurements ---------------------------------------------------------------------------------


def timed_apply(backend: str, text_fn, ensure_jumps: bool, label: str) -> dict:
    t0 = time.perf_counter()
    text = text_fn()
    t1 = time.perf_counter()
    step_s = []
    if backend in NFT_MODES:   # a cold start in steps: one `nft -f -` per step, in order
        for step in coldstart.split(text):
            a = time.perf_counter()
            nft_apply(step)
            step_s.append(time.perf_counter() - a)
    else:
        restore.apply(ns_run, text, backend, ensure_jumps=ensure_jumps)
    t2 = time.perf_counter()
    steps = f" in {len(step_s)} transactions" if len(step_s) > 1 else ""
    print(f"  {label}: render {t1 - t0:.3f} s + apply {t2 - t1:.3f} s{steps}", flush=True)
    sample = {"render_s": t1 - t0, "apply_s": t2 - t1, "total_s": t2 - t0,
              "restore_bytes": len(text.encode()), "restore_lines": text.count("\n")}
    if len(step_s) > 1:
        sample["step_apply_s"] = step_s
    return sample


def collect(samples: list) -> dict:
    keys = samples[0].keys()
    return {k: [s[k] for s in samples] for k in keys}


def median(values: list) -> float:
    return statistics.median(values)


def render_full(backend: str, services: list) -> str:
    """A full sync's text into empty tables (nftables-steps: coldstart's steps, joined)."""
    if backend == STEPS:
        return coldstart.join(coldstart.render(services, NODE, **STEP_LIMITS))
    return (nft_rules if backend == NFTABLES else rules).render(services, NODE)


def steps_equal_one_transaction(n: int, services: list, after_steps: dict) -> bool:
    """Whether the table the steps left equals the one one `nft -f` of rules.render leaves
    (the nftables backend's, when it ran at this size; else loaded here, into emptied tables)."""
    if n not in ONE_TRANSACTION_STATE:
        nft_clean()
        nft_apply(nft_rules.render(services, NODE))
        ONE_TRANSACTION_STATE[n] = nft_state()
    return after_steps == ONE_TRANSACTION_STATE[n]


def bench_size(backend: str, n: int, reps: int) -> dict:
    services = synthetic(n)
    mode = nft_rules if backend in NFT_MODES else rules
    expected = endpoint_chains(backend, services)
    checks = []

    full, slow, after_steps = [], False, None
    for rep in range(reps):
        clean(backend)
        full.append(timed_apply(backend, lambda: render_full(backend, services),
                                ensure_jumps=True, label=f"full sync {rep + 1}/{reps}"))
        checks.append(sep_chains(backend) == expected)
        if rep == 0 and backend in NFT_MODES:
            state = nft_state()
            if backend == NFTABLES:
                ONE_TRANSACTION_STATE[n] = state
            else:
                after_steps = state
        if full[0]["total_s"] > SLOW_SYNC_S:
            slow, reps = True, 1
            print(f"  slower than {SLOW_SYNC_S:.0f} s: one repetition, no populated resync",
                  flush=True)
            break

    warm = []
    # nftables-steps over a table in place is the one transaction: the nftables row's resync
    for rep in range(0 if slow or backend == STEPS else reps):
        warm.append(timed_apply(backend, lambda: mode.render(services, NODE), ensure_jumps=True,
                                label=f"full resync {rep + 1}/{reps}"))
        checks.append(sep_chains(backend) == expected)

    partial, current = [], services
    for rep in range(reps):
        new = change_one_endpoint(current, rep)
        old = current
        partial.append(timed_apply(backend, lambda: mode.render_partial(old, new, NODE),
                                   ensure_jumps=False, label=f"one-endpoint change {rep + 1}/{reps}"))
        checks.append(sep_chains(backend) == endpoint_chains(backend, new))
        current = new

    after_partial = save_state(backend)
    clean(backend)
    load_whole(backend, current)
    equal = after_partial == save_state(backend)
    steps_equal = (steps_equal_one_transaction(n, services, after_steps)
                   if after_steps is not None else None)
    if backend in NFT_MODES:   # one table: its rules and chains
        counts = {"nat_rules": nft_rule_count(after_partial),
                  "nat_chains": len(after_partial["chain"]), "filter_rules": None}
    else:
        nat = after_partial.get("nat", {})
        counts = {"nat_rules": sum(len(r) for r in nat.values()), "nat_chains": len(nat),
                  "filter_rules": sum(len(r) for r in after_partial.get("filter", {}).values())}
    return {
        "backend": backend, "services": n, "endpoints_per_service": 5, **counts,
        "repetitions": reps,
        "slow_single_run": slow,
        "full_sync_empty_tables": collect(full),
        "full_resync_populated": collect(warm) if warm else None,
        "one_endpoint_change": collect(partial),
        "sep_chains_verified": all(checks),
        "partial_state_equals_full": equal,
        "steps": dict(STEP_LIMITS) if backend == STEPS else None,
        "steps_state_equals_one_transaction": steps_equal,
    }


def endpoint_chains(backend: str, services: list) -> set:
    """The endpoint chains (KUBE-SEP- / endpoint-) the node should hold."""
    if backend in NFT_MODES:
        return nft_rules.endpoint_chain_names(services, NODE)
    return rules.endpoint_chains(services, NODE)


def load_whole(backend: str, services: list) -> None:
    """A full sync of `services` (untimed), into empty tables."""
    if backend in NFT_MODES:
        for step in coldstart.split(render_full(backend, services)):
            nft_apply(step)
    else:
        restore.apply(ns_run, rules.render(services, NODE), backend)


def load_change(backend: str, old: list, new: list) -> None:
    """A partial sync from `old` to `new` (untimed)."""
    if backend in NFT_MODES:
        text = nft_rules.render_partial(old, new, NODE)
        if text:
            nft_apply(text)
    else:
        restore.apply(ns_run, rules.render_partial(old, new, NODE), backend, ensure_jumps=False)


def small_example() -> list:
    web = ServicePort("default", "web", "http", "TCP", "10.96.0.10", 80, 8080, node_port=30080,
                      load_balancer_ips=("198.51.100.10",), endpoints=(
                          Endpoint("10.244.1.2", 8080, "node1"),
                          Endpoint("10.244.2.2", 8080, "node2"),
                          Endpoint("10.244.1.3", 8080, "node1")))
    api = ServicePort("default", "api", "http", "TCP", "10.96.0.20", 80, 8080, node_port=30081,
                      load_balancer_ips=("198.51.100.11",), external_traffic_policy="Local",
                      session_affinity_seconds=10800, health_check_node_port=32000, endpoints=(
                          Endpoint("10.244.2.4", 8080, "node2"),
                          Endpoint("10.244.1.4", 8080, "node1"),
                          Endpoint("10.244.2.3", 8080, "node2")))
    empty = ServicePort("default", "empty", "", "UDP", "10.96.0.30", 53, 53, node_port=30053)
    return [web, api, empty]


def check_transitions(backend: str) -> dict:
    """Partial syncs of the small example on the real tool, each compared with a full render."""
    web, api, empty = small_example()
    steps = {
        "one endpoint moved": [replace(web, endpoints=web.endpoints[:2] + (
            Endpoint("10.244.1.9", 8080, "node1"),)), api, empty],
        "local endpoint gone": [web, replace(api, endpoints=api.endpoints[::2]), empty],
        "policy flipped": [replace(web, external_traffic_policy="Local"),
                           replace(api, external_traffic_policy="Cluster"), empty],
        "service removed": [api, empty],
        "endpoints for the empty one": [web, api, replace(empty, endpoints=(
            Endpoint("10.244.1.5", 53, "node1"),))],
    }
    results = {}
    for name, new in steps.items():
        clean(backend)
        load_whole(backend, [web, api, empty])
        load_change(backend, [web, api, empty], new)
        after_partial = save_state(backend)
        clean(backend)
        load_whole(backend, new)
        results[name] = after_partial == save_state(backend)
    clean(backend)
    return results


# --- report ---------------------------------------------------------------------------------------


def metadata() -> dict:
    def version(tool: str) -> str:
        return ns_output([tool, "-V"]).strip()

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    overhead = []
    for _ in range(5):
        t0 = time.perf_counter()
        ns_run(["true"])
        overhead.append(time.perf_counter() - t0)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "iptables": {"legacy": version("iptables-legacy"), "nft": version("iptables-nft")},
        "nft": ns_output(["nft", "--version"]).strip(),
        "git_commit": commit,
        "ip_netns_exec_true_s": overhead,
    }


def table(results: list) -> str:
    rows = [
        "| backend | services × endpoints | rules (nat; nftables: its table) | full sync, empty tables (render + restore) "
        "| full resync, populated | one-endpoint change (render + restore) | checks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        def cell(key: str) -> str:
            d = r[key]
            if d is None and r["backend"] == STEPS and key == "full_resync_populated":
                return "one transaction (the table is there): as nftables"
            if d is None:
                return "not measured"
            return (f"{median(d['total_s']):.3f} s ({median(d['render_s']):.3f} + "
                    f"{median(d['apply_s']):.3f})")
        ok = passed(r)
        rows.append(
            f"| {r['backend']} | {r['services']:,} × {r['endpoints_per_service']} "
            f"| {r['nat_rules']:,} | {cell('full_sync_empty_tables')} "
            f"| {cell('full_resync_populated')} | {cell('one_endpoint_change')} "
            f"| {'ok' if ok else 'FAILED'}{' (1 run)' if r['slow_single_run'] else ''} |"
        )
    return "\n".join(rows)


def passed(r: dict) -> bool:
    """Every check of one backend and size (steps: their table equals one transaction's)."""
    return (r["sep_chains_verified"] and r["partial_state_equals_full"]
            and r.get("steps_state_equals_one_transaction") is not False)


def verdicts(results: list) -> list:
    lines = []
    for r in results:
        if r["services"] == 10000:
            full = median(r["full_sync_empty_tables"]["total_s"])
            lines.append(f"- {r['backend']}: 10,000×5 full sync {full:.3f} s "
                         f"(target ≤ {TARGET_FULL_S} s: {'met' if full <= TARGET_FULL_S else 'MISSED'})")
        if r["backend"] == STEPS:
            first = r["full_sync_empty_tables"]
            steps = first.get("step_apply_s", [[0.0]])[0]
            same = {True: "yes", False: "NO", None: "not checked"}[
                r["steps_state_equals_one_transaction"]]
            lines.append(f"- {STEPS}: {r['services']:,}×5 cold start in {len(steps)} "
                         f"transactions, the last {steps[-1]:.3f} s, the slowest "
                         f"{max(steps):.3f} s; table equal to one transaction's: {same}")
        change = median(r["one_endpoint_change"]["total_s"])
        lines.append(f"- {r['backend']}: {r['services']:,}×5 one-endpoint change {change:.3f} s "
                     f"(target ≤ {TARGET_CHANGE_S} s: "
                     f"{'met' if change <= TARGET_CHANGE_S else 'MISSED'})")
    return lines


def write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps-max-lines", type=int, default=coldstart.DEFAULT_MAX_LINES,
                        help="nftables-steps: lines per transaction before the last")
    parser.add_argument("--steps-max-vmaps", type=int, default=coldstart.DEFAULT_MAX_VMAPS,
                        help="nftables-steps: anonymous vmaps per transaction before the last")
    args = parser.parse_args()
    STEP_LIMITS.update(max_lines=args.steps_max_lines, max_vmaps=args.steps_max_vmaps)
    if os.geteuid() != 0:
        print("kubeproxy_sync: needs root (it creates a network namespace)", file=sys.stderr)
        return 3

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        meta = metadata()
        record = {
            "benchmark": "kubeproxy_sync", "schema": 1, **meta,
            "namespace": NS, "repetitions": args.reps, "slow_sync_s": SLOW_SYNC_S,
            "cold_start_steps": dict(STEP_LIMITS),
            "targets": {"full_sync_10000x5_s": TARGET_FULL_S,
                        "one_endpoint_change_s": TARGET_CHANGE_S},
            "node": {"name": NODE.node_name, "ip": NODE.node_ip,
                     "cluster_cidr": NODE.cluster_cidr},
            "complete": False,
        }
        correctness = {b: check_transitions(b) for b in args.backends}
        record["transitions_equal_full"] = correctness
        print(f"partial-sync transitions equal to full renders: {json.dumps(correctness)}",
              flush=True)
        results = record["results"] = []
        for backend in args.backends:
            for n in args.sizes:
                print(f"{backend} {n}x5 ...", flush=True)
                results.append(bench_size(backend, n, args.reps))
                clean(backend)
                write_record(args.out, record)  # kept even if a later size is interrupted
        record["complete"] = True
        write_record(args.out, record)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    print()
    print(f"kernel {meta['kernel']}, {meta['iptables']['legacy']}, {meta['iptables']['nft']}, "
          f"{meta['nft']}, {meta['cpus']} CPUs, {meta['date']}; medians of {args.reps}")
    print()
    print(table(results))
    print()
    print("\n".join(verdicts(results)))
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    ok = all(passed(r) for r in results)
    ok = ok and all(all(v.values()) for v in correctness.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
