#!/usr/bin/env python3
"""Benchmark of workloads/podserver.c, the pod's HTTP server (a benchmark, not a test).

Builds the server, starts it on 127.0.0.1 (root namespace, loopback only) and drives it with
wrk: keep-alive with 32 connections (throughput), keep-alive with 1 connection (unloaded
latency: what a latency experiment adds per request), and a new connection per request
('Connection: close', as a classic L4 load balancer path without reuse would see).

CPU placement is pinned (taskset): the server on the first allowed CPU, wrk on the second.
Unpinned, the one-connection numbers flip between two regimes from run to run: on a VM, waking
a process on another vCPU costs tens of microseconds, far more than the server's own work. One
extra run puts wrk on the server's CPU to show that own cost.
Records requests/s, wrk's latency percentiles, the server's CPU time per run, and its RSS idle
and after load. Then starts 20 idle servers side by side and reads their PSS (shared libc
pages split between them): the per-pod memory cost when a topology runs hundreds of pods.
Writes bench/results/podserver.json and prints a Markdown table.

    python3 bench/podserver.py [--duration 5] [--out bench/results/podserver.json]

Bounded: the whole run stays under 60 s; everything started here is killed by its pid.
Standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SH = ROOT / "workloads" / "build.sh"
BINARY = ROOT / "build" / "podserver"
WRK = "/usr/bin/wrk"
HOST = "127.0.0.1"
BUDGET_S = 60.0
FLEET = 20
SCHEMA = 1

# name, wrk arguments besides duration and URL, wrk on the server's CPU?
RUNS = [
    ("keep-alive c32", ["-t1", "-c32", "--latency"], False),
    ("keep-alive c1", ["-t1", "-c1", "--latency"], False),
    ("keep-alive c1, same CPU", ["-t1", "-c1", "--latency"], True),
    ("new connection c32", ["-t1", "-c32", "--latency", "-H", "Connection: close"], False),
]


def pick_cpus():
    """(server CPU, other CPU) from the CPUs we may use; None when there is only one."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pinned(cmd, cpu):
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def build():
    subprocess.run([str(BUILD_SH)], check=True, timeout=120)


def start_server(port, pod="bench-0", cpu=None):
    """Start podserver; return its Popen once it has written "ready" on --ready-fd."""
    read_fd, write_fd = os.pipe()
    cmd = pinned([str(BINARY), "--port", str(port), "--pod", pod, "--node", "node1",
                  "--bind", HOST, "--ready-fd", str(write_fd)], cpu)
    proc = subprocess.Popen(cmd, pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 5)
        if not ready or os.read(read_fd, 16) != b"ready\n":
            proc.kill()
            proc.wait()
            raise RuntimeError("podserver did not become ready")
    finally:
        os.close(read_fd)
    return proc, cmd


def proc_status(pid):
    """VmRSS and VmHWM (peak RSS) of PID in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def pss_kib(pid):
    """Proportional set size of PID in KiB: shared pages divided among their users."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def idle_fleet():
    """Per-pod memory of FLEET idle servers running side by side (KiB, per server)."""
    procs = []
    try:
        for i in range(FLEET):
            procs.append(start_server(free_port(), pod=f"idle-{i}")[0])
        time.sleep(0.2)
        pss = [pss_kib(p.pid) for p in procs]
        rss = [proc_status(p.pid)["VmRSS"] for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    return {"servers": FLEET, "pss_kib_mean": round(sum(pss) / len(pss), 1),
            "pss_kib_max": max(pss), "rss_kib_mean": round(sum(rss) / len(rss), 1)}


def cpu_seconds(pid):
    """User + system CPU time of PID so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    return round(float(m.group(1)) * UNITS_MS[m.group(2)], 4)


def parse_wrk(out):
    """The numbers of one wrk run, latencies in ms."""
    res = {"requests_per_s": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))}
    m = re.search(r"(\d+) requests in ([0-9.]+\w+)", out)
    res["requests"] = int(m.group(1))
    res["latency_avg_ms"] = to_ms(re.search(r"Latency\s+(\S+)", out).group(1))
    for pct, value in re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M):
        res[f"latency_p{pct}_ms"] = to_ms(value)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    counts = map(int, m.groups()) if m else (0, 0, 0, 0)  # wrk prints the line only if any
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), counts, strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    return res


def run_wrk(name, args, duration, url, pid, cpu):
    cmd = pinned([WRK, *args, f"-d{duration}s", url], cpu)
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 15)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: wrk failed: {proc.stderr.strip()}")
    res = {"name": name, "command": cmd, "wall_s": round(wall, 3), "raw_output": proc.stdout}
    res.update(parse_wrk(proc.stdout))
    res["server_cpu_s"] = round(cpu_seconds(pid) - cpu0, 3)
    res["rss_after_kib"] = proc_status(pid)["VmRSS"]
    return res


def system_load():
    """Load average and CPU pressure (PSI): how much else was running, pyperf-style."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    res = {"loadavg_1_5_15": [float(x) for x in load]}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        res["cpu_pressure_some_avg10"] = float(re.search(r"avg10=([0-9.]+)", some).group(1))
    except (OSError, AttributeError):
        pass
    return res


def git_info():
    """Commit and dirty flag, read-only; None where there is no commit yet."""
    def git(*args):
        p = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "workloads/podserver.c"))}


def metadata():
    wrk_v = subprocess.run([WRK, "-v"], capture_output=True, text=True)
    cc_v = subprocess.run(["cc", "--version"], capture_output=True, text=True)
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "wrk_version": (wrk_v.stdout or wrk_v.stderr).splitlines()[0],
        "cc_version": cc_v.stdout.splitlines()[0],
        "build_command": str(BUILD_SH.relative_to(ROOT)),
        "python": platform.python_version(),
        "git": git_info(),
        "note": "wrk and podserver share the same CPUs on loopback",
    }


def table(record):
    rows = ["| run | req/s | p50 ms | p99 ms | server CPU | errors |",
            "|---|---:|---:|---:|---:|---:|"]
    for r in record["runs"]:
        errors = sum(r["socket_errors"].values()) + r["non_2xx"]
        cpu = r["server_cpu_s"] / r["wall_s"] * 100
        rows.append(f"| {r['name']} | {r['requests_per_s']:,.0f} | {r['latency_p50_ms']:.3f} | "
                    f"{r['latency_p99_ms']:.3f} | {cpu:.0f}% | {errors} |")
    rss = record["rss_kib"]
    rows.append("")
    rows.append(f"Server RSS: {rss['idle']} KiB idle, {rss['after_load']} KiB after load "
                f"(peak {rss['peak']} KiB).")
    f = record["idle_fleet"]
    rows.append(f"{f['servers']} idle servers side by side: PSS {f['pss_kib_mean']:.0f} KiB "
                f"per server (max {f['pss_kib_max']}), RSS {f['rss_kib_mean']:.0f} KiB.")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (1-12)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "podserver.json")
    opts = ap.parse_args()
    if not 1 <= opts.duration <= 12:
        ap.error("--duration must be 1-15 so the whole run stays under 60 s")
    start = time.monotonic()

    load_before = system_load()
    if load_before["loadavg_1_5_15"][0] > 0.5:
        print(f"warning: load average {load_before['loadavg_1_5_15'][0]} before the run; "
              "numbers will be noisy (recorded in the JSON)", file=sys.stderr)
    build()
    cpus = pick_cpus()
    server_cpu, other_cpu = cpus if cpus else (None, None)
    port = free_port()
    proc, server_cmd = start_server(port, cpu=server_cpu)
    try:
        time.sleep(0.2)
        idle = proc_status(proc.pid)["VmRSS"]
        url = f"http://{HOST}:{port}/"
        runs = []
        for name, args, same_cpu in RUNS:
            if time.monotonic() - start + opts.duration + 2 > BUDGET_S:
                print(f"skipping {name}: 60 s budget", file=sys.stderr)
                continue
            cpu = server_cpu if same_cpu else other_cpu
            runs.append(run_wrk(name, args, opts.duration, url, proc.pid, cpu))
        status = proc_status(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    fleet = idle_fleet()

    record = {
        "schema": SCHEMA,
        "benchmark": "podserver",
        "metadata": metadata(),
        # binary relative to the repo root, without --ready-fd (its number is arbitrary)
        "server_command": [str(BINARY.relative_to(ROOT)) if a == str(BINARY) else a
                           for a in server_cmd[:-2]],
        "cpus": {"server": server_cpu, "wrk": other_cpu, "same_cpu_run": server_cpu},
        "duration_s": opts.duration,
        "runs": runs,
        "rss_kib": {"idle": idle, "after_load": status["VmRSS"], "peak": status["VmHWM"]},
        "idle_fleet": fleet,
        # other work on the machine skews everything: wrk and the server share 2 CPUs
        "system_load": {"before": load_before, "after": system_load()},
        "total_wall_s": round(time.monotonic() - start, 2),
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(opts.out)
    print(table(record))
    print(f"\nwritten {opts.out} in {record['total_wall_s']} s")


if __name__ == "__main__":
    main()
