#!/usr/bin/env python3
"""What `cnlb validate` costs on hostile or huge files: time and peak memory, per file.

The promise (README, "Bad input"): any file up to the size limit
(testbed.spec.yamldoc.MAX_FILE_BYTES)
is validated, or refused with one-line errors, in at most 2 s and 200 MB. This measures it on
pathological inputs built at that limit: deep nesting (flow and block), a "billion laughs"
alias bomb, an alias fanned out many times, chains of merges, very many values, one huge
scalar, a file of comments, a topology with as many services as the value budget allows,
/dev/zero, and a file four times the limit.

Every case runs in a fresh child process (`python -c ...`), which validates the file through
`testbed.cli.main.main(["validate", FILE])` and reports its own peak RSS (resource.getrusage,
ru_maxrss) and the time of the call; the parent also times the whole child process, interpreter
start-up and imports included. Each case runs with libyaml's parser (what PyYAML wheels ship)
and, with --pure, again with PyYAML's pure-Python parser.

Writes bench/results/yaml_limits.json and prints a Markdown table.

    .venv/bin/python bench/yaml_limits.py [--pure] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from testbed.spec.yamldoc import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES  # noqa: E402

OUT = ROOT / "bench" / "results" / "yaml_limits.json"
TARGET_S = 2.0
TARGET_MB = 200.0
LIMIT = MAX_FILE_BYTES

# The child: validate one file, report the call's time, peak RSS and the first line printed.
CHILD = r"""
import io, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
if sys.argv[3] == "pure":
    import yaml, testbed.spec.yamldoc as source
    source._LOADER = yaml.SafeLoader
from testbed.cli.main import main
err = io.StringIO()
sys.stderr, real = err, sys.stderr
start = time.perf_counter()
try:
    rc = main(["validate", sys.argv[2]])
    crash = ""
except BaseException as exc:            # a traceback is a failure of the promise
    rc, crash = -1, f"{type(exc).__name__}: {exc}"[:200]
seconds = time.perf_counter() - start
sys.stderr = real
lines = err.getvalue().splitlines()
print(json.dumps({"rc": rc, "validate_s": seconds, "crash": crash,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "first_line": lines[0][:160] if lines else "", "lines": len(lines)}))
"""


def fill(head: str, unit: str, tail: str = "", size: int = LIMIT) -> str:
    """head + as many units as fit + tail, at most size bytes."""
    n = (size - len(head.encode()) - len(tail.encode())) // len(unit.encode())
    return head + unit * n + tail


def block_nesting(size: int = LIMIT) -> str:
    """Mappings nested one space deeper per line, as deep as the size allows."""
    out, used, depth = [], 0, 0
    while True:
        line = " " * depth + f"k{depth}:\n"
        if used + len(line) > size:
            break
        out.append(line)
        used += len(line)
        depth += 1
    return "".join(out)


def laughs() -> str:
    """Billion laughs: ten lists of ten aliases of the list before (10^10 values expanded)."""
    text = "l0: &l0 [" + ", ".join(["lol"] * 10) + "]\n"
    for i in range(1, 10):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return fill(text, "#", "\n")


def merge_chain() -> str:
    """Each mapping merges the one before and adds a key: sizes grow, as do the copies."""
    text = "m0: &m0 {k0: 0}\n"
    i = 1
    while len(text) < LIMIT - 100:
        text += f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: {i}}}\n"
        i += 1
    return text


def services_topology() -> str:
    """A topology with as many ClusterIP services as the value budget and the size allow."""
    head = (open(ROOT / "topologies" / "minimal.yaml").read().split("services:")[0]
            + "services:\n  web: {type: LoadBalancer, port: 80, targetPort: 8080}\n")
    out, i = [head], 0
    used = len(head)
    per = 10                                    # values per service line
    while (i + 2) * per < MAX_VALUES - 100:
        line = f"  s{i}: {{type: ClusterIP, selector: web, port: 80, targetPort: 8080}}\n"
        if used + len(line) > LIMIT - 200:
            break
        out.append(line)
        used += len(line)
        i += 1
    out.append("loadBalancer: {vip: 198.51.100.10, targets: nodeport}\nclients:\n  client1: {}\n")
    return "".join(out)


CASES = {
    "flow nesting (1M x '[')": lambda: fill("links: ", "["),
    "flow mappings nested ('{a: ' x 256k)": lambda: fill("links: ", "{a: "),
    "block nesting (one space deeper per line)": block_nesting,
    "billion laughs": laughs,
    "one alias used 250k times": lambda: fill("a: &a {x: 1, y: [1, 2]}\nb: [", "*a, ", "]\n"),
    "merge chain": merge_chain,
    "wide list ([1,1,1,...])": lambda: fill("a: [", "1,", "]\n"),
    "many keys (block mapping)": lambda: "".join(f"k{i:07d}: {i}\n" for i in range(LIMIT // 16)),
    "one 1 MiB scalar": lambda: fill("name: ", "x", "\n"),
    "one 1 MiB quoted scalar with escapes": lambda: fill('name: "', "\\t", '"\n'),
    "comments only but one key": lambda: fill("name: t\n", "# a comment line of some length\n"),
    f"topology with ~{MAX_VALUES // 10} services": services_topology,
    "tags everywhere (!!python/name)": lambda: fill("a: [", "!!python/name:os.system x, ", "]\n"),
}


def run_case(path: str, loader: str, reps: int) -> dict:
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), path, loader],
                           capture_output=True, text=True, timeout=300)
        process_s = time.perf_counter() - start
        if p.returncode != 0 or not p.stdout.strip():
            runs.append({"rc": -1, "crash": (p.stderr or "no output")[-300:],
                         "validate_s": process_s, "process_s": process_s, "peak_rss_mb": 0.0,
                         "first_line": "", "lines": 0})
            continue
        row = json.loads(p.stdout.strip().splitlines()[-1])
        row["process_s"] = process_s
        runs.append(row)
    best = dict(runs[-1])
    best["validate_s"] = statistics.median(r["validate_s"] for r in runs)
    best["process_s"] = statistics.median(r["process_s"] for r in runs)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    best["ok"] = (best["rc"] in (0, 2) and not best.get("crash")
                  and best["process_s"] <= TARGET_S and best["peak_rss_mb"] <= TARGET_MB)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pure", action="store_true", help="also measure PyYAML's pure-Python parser")
    ap.add_argument("--reps", type=int, default=3, help="runs per case (median time, max RSS)")
    args = ap.parse_args()
    loaders = ["libyaml" if yaml.__with_libyaml__ else "pure"]
    if args.pure and loaders != ["pure"]:
        loaders.append("pure")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnlb-yaml-limits-") as tmp:
        files = {"/dev/zero": "/dev/zero"}
        big = os.path.join(tmp, "four-times-the-limit.yaml")
        with open(big, "w") as fh:
            fh.write(fill("name: t\nnodes:\n", "  n: {}\n", size=4 * LIMIT))
        files["4x the size limit"] = big
        baseline = str(ROOT / "topologies" / "talk.yaml")
        for name, make in CASES.items():
            path = os.path.join(tmp, f"case{len(files)}.yaml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(make())
            files[name] = path
        for loader in loaders:
            for name, path in [("talk.yaml (valid, baseline)", baseline)] + list(files.items()):
                size = os.path.getsize(path) if os.path.isfile(path) else None
                row = {"case": name, "loader": loader, "bytes": size,
                       **run_case(path, loader, args.reps)}
                # the scratch directory's name says nothing about the result: keep file names
                row["first_line"] = row["first_line"].replace(tmp + os.sep, "")
                rows.append(row)
                print(f"{loader:8} {name:45} {row['process_s']:6.2f}s {row['peak_rss_mb']:6.0f} MB "
                      f"rc={row['rc']} {row['first_line'][:70]}", file=sys.stderr)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(), "pyyaml": yaml.__version__,
        "libyaml": yaml.__with_libyaml__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "max_file_bytes": MAX_FILE_BYTES, "max_values": MAX_VALUES,
        "max_depth": MAX_DEPTH, "target_s": TARGET_S, "target_mb": TARGET_MB,
        "reps": args.reps,
        "note": "process_s includes interpreter start-up and imports; validate_s is the "
                "validate call alone; peak_rss_mb is the child's ru_maxrss; the targets are "
                "promised for libyaml's parser, 'pure' rows (PyYAML without libyaml) are for "
                "reference",
        "load_average": os.getloadavg(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "cases": rows}, indent=1) + "\n")
    print("| loader | case | bytes | validate s | process s | peak RSS MB | exit | within |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        size = r["bytes"] if r["bytes"] is not None else "-"
        print(f"| {r['loader']} | {r['case']} | {size} | {r['validate_s']:.3f} | "
              f"{r['process_s']:.3f} | {r['peak_rss_mb']:.0f} | {r['rc']} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    # The promise is made for the parser set-up installs (libyaml); --pure rows are for reference.
    return 0 if all(r["ok"] for r in rows if r["loader"] == loaders[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
