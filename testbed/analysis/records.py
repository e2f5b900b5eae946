"""The run directory's format, written as the run goes: a crash keeps every measurement made
before it. Read back by the plots, the report and `cnlb agree`.

RunWriter writes meta.json at the start (rewritten atomically on every fault and at the end),
appends fsynced lines to records.jsonl and samples/<variant>/r<repetition>-<workload>.jsonl;
new_run_dir names a run directory and moves results/latest. METRICS fixes every metric's name
and unit, GROUP_FIELDS what tells records of one metric apart; the readers and summarize (mean
and interval over repetitions) serve the analysis. Field by field: docs/results.md.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime

from testbed.analysis.stats import MeanCI, jain, mean, mean_ci, shares
from testbed.paths import REPO

FORMAT = 1


@dataclass(frozen=True)
class Metric:
    """A measured quantity: its unit, a label for axes and tables, and which way is better."""
    unit: str
    label: str
    better: str | None = None      # "lower" | "higher" | None


METRICS = {
    # latency: per workload (latency = a new connection per request, keepalive = wrk)
    "latency_p50_ms": Metric("ms", "latency p50", "lower"),
    "latency_p90_ms": Metric("ms", "latency p90", "lower"),
    "latency_p99_ms": Metric("ms", "latency p99", "lower"),
    "latency_mean_ms": Metric("ms", "latency mean", "lower"),
    # capacity
    "requests_per_s": Metric("req/s", "requests/s", "higher"),
    "throughput_mbps": Metric("Mbit/s", "throughput", "higher"),
    # path
    "path_hops": Metric("hops", "routed hops per request", "lower"),
    "cross_node_bytes_fraction": Metric("fraction", "bytes crossing between nodes", "lower"),
    "cross_node_bytes": Metric("bytes", "bytes crossing between nodes", "lower"),
    "source_ip_preserved": Metric("fraction", "requests where the pod saw the client's address",
                                  "higher"),
    # distribution: pod_share has extra "pod", entry_share extra "node" (where the LB sent it)
    "jain_fairness": Metric("index", "Jain's fairness index", "higher"),
    "pod_share": Metric("fraction", "share of requests per pod"),
    "entry_share": Metric("fraction", "share of requests per entry node"),
    # the testbed's own cost (workload "overhead", derived per repetition from the latency
    # and veth workloads: testbed.analysis.overhead)
    "p50_over_veth": Metric("ratio", "new-connection p50 over a plain veth's", "lower"),
    "hop_cost_us": Metric("us", "cost per routed hop", "lower"),
    "extra_hop_cost_us": Metric("us", "extra cost over container-native per extra hop", "lower"),
    # bookkeeping
    "requests": Metric("count", "requests made"),
    "errors": Metric("count", "failed requests", "lower"),
    # scaling (extra "services", or "pods" for a cluster of that many pods): kube-proxy's rule
    # sync time at that size; with "pods" also the cluster's bring-up ("stage": one stage's
    # share, none: the whole), teardown, node count and the LB's time to serve every target
    "sync_time_ms": Metric("ms", "kube-proxy sync time", "lower"),
    "rules": Metric("count", "kube-proxy rules"),
    "endpoint_change_ms": Metric("ms", "kube-proxy one-endpoint change (partial sync)", "lower"),
    "ruleset_bytes": Metric("bytes", "kube-proxy ruleset as the kernel lists it", "lower"),
    "rules_kernel_kib": Metric("KiB", "kernel memory a node's full sync took", "lower"),
    "bringup_s": Metric("s", "bring-up time", "lower"),
    "teardown_s": Metric("s", "teardown time", "lower"),
    "lb_ready_s": Metric("s", "time until the LB serves from every target", "lower"),
    "nodes": Metric("count", "nodes in the cluster"),
    # failover (extra "event": index in the experiment's events)
    "recovery_time_s": Metric("s", "time until traffic is whole again", "lower"),
    "bgp_withdraw_s": Metric("s", "time until the VPC dropped a failed node's BGP routes",
                             "lower"),   # cni.routing bgp: fail-node events only
    # rollout (testbed.analysis.rollout; errors also per kind, extra "error")
    "success_rate": Metric("fraction", "requests answered from the rollout's start", "higher"),
    "rollout_duration_s": Metric("s", "rolling update's duration", "lower"),
    # (testbed.analysis.failover; whole run, or with "event": that event's window)
    "outage_s": Metric("s", "longest time with fewer than half the requests succeeding",
                       "lower"),
    "degraded_s": Metric("s", "longest time with some requests failing", "lower"),
    "successes_per_s": Metric("req/s", "successful requests per second", "higher"),
}

# Fields of a record that name *what* was measured besides variant and metric; a summary is kept
# per distinct combination of them.
GROUP_FIELDS = ("workload", "pod", "node", "services", "pods", "stage", "event", "error")

# The raw sample rows the plots understand (a runner may add more fields):
SAMPLE_FIELDS = {
    "t": "seconds since the workload started",
    "latency_ms": "request latency (connect to last byte)",
    "ok": "true if the request got a good answer",
    "pod": "the pod that answered",
    "node": "the node that pod runs on",
    "entry_node": "the node the load balancer sent the request to (nodeport)",
    "source_ip": "the client address the pod saw",
    "hops": "routed hops (from the reply's TTL)",
    # rows of the pseudo-workload "events" (failover): {"t", "action", "target"}
}


# -- plain data -------------------------------------------------------------------------------

def plain(value):
    """Dataclasses, tuples, addresses... as JSON-ready data (a Document is left out; a number
    that is not finite becomes null)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value) if f.name != "doc"}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv4Network, os.PathLike)):
        return str(value)
    return str(value)


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _atomic_write_json(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- run directories --------------------------------------------------------------------------

def new_run_dir(results_root: str, name: str, now: float | None = None) -> str:
    """Create results_root/YYYYmmdd-HHMMSS-<name> (suffixed -2, -3.. if taken) and point
    results_root/latest at it (a relative symlink, replaced atomically). Returns its path.

    A `latest` that is not a symlink (a user's own directory) is left alone, with a warning."""
    os.makedirs(results_root, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    run_id = f"{stamp}-{name}"
    path = os.path.join(results_root, run_id)
    k = 1
    while True:
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            k += 1
            run_id = f"{stamp}-{name}-{k}"
            path = os.path.join(results_root, run_id)
    update_latest(results_root, run_id)
    return path


def update_latest(results_root: str, run_id: str) -> None:
    latest = os.path.join(results_root, "latest")
    if os.path.lexists(latest) and not os.path.islink(latest):
        warnings.warn(f"{latest} is not a symlink; left alone "
                      "(remove it to get results/latest back)", stacklevel=2)
        return
    tmp = os.path.join(results_root, f".latest.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(run_id, tmp)
    os.replace(tmp, latest)


def git_revision(repo: str) -> dict:
    """{"revision": commit or None, "dirty": bool or None, "changes": changed paths (first 50)}.

    Read-only: `git rev-parse HEAD` and `git status --porcelain`, with optional locks off so
    not even the index is refreshed."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    out: dict = {"revision": None, "dirty": None, "changes": []}
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, env=env)
        if head.returncode != 0:
            out["error"] = (head.stderr.strip().splitlines() or ["not a git repository"])[-1]
            return out
        out["revision"] = head.stdout.strip()
        status = subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True,
                                text=True, timeout=30, env=env)
        if status.returncode == 0:
            changes = [line[3:] for line in status.stdout.splitlines() if line.strip()]
            out["dirty"] = bool(changes)
            out["changes"] = changes[:50]
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["error"] = str(exc)
    return out


# -- writing ----------------------------------------------------------------------------------

class RunWriter:
    """Writes one run directory as the run goes.

    out_dir: the run directory (created if needed; see new_run_dir)
    experiment: the Experiment (or a dict) — stored in meta.json; its variants fix the order
        (and so the colours) of variants in every figure
    topology: the base Topology (or a dict) — stored resolved, plus its source file's text
    environment: what the runner knows about the machine (kernel, datapath, iptables backend,
        tool versions, cpu count...) — stored as given
    variants: variant name -> the Topology that variant runs (experiment.resolve's output);
        each one's address plan is stored in meta.json for the diagrams
    service: the LoadBalancer service measured (the diagrams draw its path)
    resolved: an experiment.Resolved — fills experiment, topology, variants and service at once
    git: the git_revision() dict (None: taken from the repository this package lives in)
    clock: time source (tests)

    Usable as a context manager: leaving it on an exception finishes the run as "failed"
    ("interrupted" on Ctrl-C) with the exception as a fault.
    """

    def __init__(self, out_dir: str, experiment=None, topology=None,
                 environment: dict | None = None, variants: dict | None = None,
                 service: str | None = None, resolved=None,
                 git: dict | None = None, clock=time.time):
        if resolved is not None:
            experiment = experiment if experiment is not None else resolved.experiment
            topology = topology if topology is not None else resolved.topology
            variants = variants if variants is not None else resolved.variants
            service = service if service is not None else resolved.service
        self.dir = out_dir
        self.clock = clock
        self._lock = threading.Lock()
        os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
        if os.path.exists(self.path("meta.json")):
            raise FileExistsError(f"{out_dir} already holds a run (meta.json) — "
                                  "give a new directory")
        started = clock()
        variant_names = []
        if experiment is not None and getattr(experiment, "variants", None):
            variant_names = [v.name for v in experiment.variants]
        elif isinstance(experiment, dict) and experiment.get("variants"):
            vs = experiment["variants"]
            variant_names = [v["name"] if isinstance(v, dict) else str(v) for v in vs]
        elif variants:
            variant_names = list(variants)
        self.meta = {
            "format": FORMAT,
            "run_id": os.path.basename(os.path.normpath(out_dir)),
            "status": "running",
            "started": _now_iso(started),
            "started_unix": started,
            "finished": None,
            "finished_unix": None,
            "variants": variant_names,
            "experiment": plain(experiment.to_dict() if hasattr(experiment, "to_dict")
                                else experiment),
            "service": service,
            "topology": plain(topology),
            "topology_source": _source(topology),
            "timing": _timing(topology, variants),
            "plans": _plans(variants),
            "environment": plain(environment or {}),
            "git": git if git is not None else git_revision(REPO),
            "faults": [],
            "counts": {"records": 0, "samples": 0},
        }
        self._records = open(self.path("records.jsonl"), "a", encoding="utf-8")
        self._write_meta()

    def path(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    def _write_meta(self) -> None:
        _atomic_write_json(self.path("meta.json"), self.meta)

    def record(self, experiment: str, variant: str, repetition: int, metric: str, value,
               unit: str | None = None, **extra) -> dict:
        """Append one measurement to records.jsonl, flushed and fsynced before returning.

        unit: must be the metric's unit in METRICS (None: taken from there); a metric not in
            METRICS needs a unit
        value: a number (true/false become 1/0; a value that is not finite is stored as null)
        extra: what else identifies it — workload, pod, node, services, event, ..."""
        known = METRICS.get(metric)
        if known is not None:
            if unit is None:
                unit = known.unit
            elif unit != known.unit:
                raise ValueError(f"metric {metric} is in {known.unit}, not {unit}")
        elif not unit:
            raise ValueError(f"metric {metric} is not one of METRICS; give its unit")
        if isinstance(value, bool):
            value = int(value)
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"metric {metric}: value {value!r} is not a number")
        row = {"experiment": experiment, "variant": variant, "repetition": int(repetition),
               "metric": metric, "value": plain(value), "unit": unit,
               "time": round(self.clock(), 6)}
        for key, val in extra.items():
            if key in row:
                raise ValueError(f"extra field {key} would overwrite the record's own")
            row[key] = plain(val)
        line = json.dumps(row, separators=(",", ":")) + "\n"
        with self._lock:
            self._records.write(line)
            self._records.flush()
            os.fsync(self._records.fileno())
            self.meta["counts"]["records"] += 1
        return row

    def distribution(self, experiment: str, variant: str, repetition: int, pod_counts: dict,
                     entry_counts: dict | None = None, endpoints: Iterable[str] = (),
                     workload: str = "path") -> float:
        """Record who answered: pod_share per pod, jain_fairness, and entry_share per node.

        pod_counts: pod -> requests it answered; endpoints: every pod that could have answered
            (missing ones count 0, so an idle pod lowers the fairness index)
        entry_counts: node -> requests the load balancer sent to it (nodeport), if known
        Returns Jain's index."""
        counts = {p: 0 for p in endpoints}
        counts.update(pod_counts)
        for pod, share in shares(counts).items():
            self.record(experiment, variant, repetition, "pod_share", share, workload=workload,
                        pod=pod)
        index = jain(list(counts.values())) if counts else math.nan
        self.record(experiment, variant, repetition, "jain_fairness", index, workload=workload)
        for node, share in shares(entry_counts or {}).items():
            self.record(experiment, variant, repetition, "entry_share", share, workload=workload,
                        node=node)
        return index

    def samples(self, variant: str, repetition: int, workload: str, rows: Iterable[dict]) -> str:
        """Append raw sample rows to samples/<variant>/r<repetition>-<workload>.jsonl (flushed and
        fsynced); returns the file's path."""
        folder = self.path("samples", variant)
        os.makedirs(folder, exist_ok=True)
        file = os.path.join(folder, f"r{int(repetition)}-{workload}.jsonl")
        n = 0
        with self._lock, open(file, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(plain(row), separators=(",", ":")) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
            self.meta["counts"]["samples"] += n
        return file

    def fault(self, kind: str, detail: str, **extra) -> None:
        """Something went wrong but the run goes on (a tool failed, a variant was skipped);
        kept in meta.json at once."""
        entry = {"time": _now_iso(self.clock()), "kind": kind, "detail": detail}
        entry.update(plain(extra))
        with self._lock:
            self.meta["faults"].append(entry)
            self._write_meta()

    def finish(self, status: str = "ok") -> None:
        """Close records.jsonl and rewrite meta.json with the end time and status."""
        if status not in ("ok", "failed", "interrupted"):
            raise ValueError(f"status {status!r} is not ok, failed or interrupted")
        with self._lock:
            if not self._records.closed:
                self._records.close()
            end = self.clock()
            self.meta.update(status=status, finished=_now_iso(end), finished_unix=end,
                             duration_s=round(end - self.meta["started_unix"], 3))
            self._write_meta()

    @property
    def finished(self) -> bool:
        return self.meta["status"] != "running"

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        if exc_type is None:
            self.finish("ok")
            return
        if issubclass(exc_type, KeyboardInterrupt):
            self.fault("interrupted", "stopped by Ctrl-C or SIGTERM")
            self.finish("interrupted")
        else:
            self.fault("error", f"{exc_type.__name__}: {exc}")
            self.finish("failed")


def _source(topology) -> dict | None:
    file = getattr(topology, "file", None)
    if not file:
        return None
    try:
        with open(file, encoding="utf-8") as fh:
            return {"file": file, "text": fh.read()}
    except OSError as exc:
        return {"file": file, "error": str(exc)}


def _timing(topology, variants: dict | None) -> dict:
    """The control plane's clock the run ran with (the topology's `kubernetes:` section as
    Timing; a variant may change it): {"topology": ..., "variants": {name: ...}}."""
    def one(topo) -> dict | None:
        found = topo.get("kubernetes") if isinstance(topo, dict) else \
            getattr(topo, "kubernetes", None)
        return plain(found) if found is not None else None
    return {"topology": one(topology),
            "variants": {name: one(topo) for name, topo in (variants or {}).items()}}


def _plans(variants: dict | None) -> dict:
    if not variants:
        return {}
    from testbed.plan.addresses import build_plan
    out = {}
    for name, topo in variants.items():
        if isinstance(topo, dict):
            out[name] = topo
            continue
        try:
            out[name] = plain(build_plan(topo).to_dict())
        except Exception as exc:   # a plan the runner could not build either: note, go on
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# -- reading ----------------------------------------------------------------------------------

def _read_jsonl(path: str) -> list:
    """Rows of a JSON-lines file; a cut last line (a crash mid-write) is dropped, a damaged
    line elsewhere is skipped with a warning."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            if i != len(lines) - 1:
                warnings.warn(f"{path}:{i + 1}: not a JSON object; skipped", stacklevel=2)
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def read_records(run_dir: str) -> list:
    """Every record of a run, in the order written."""
    return _read_jsonl(os.path.join(run_dir, "records.jsonl"))


def read_meta(run_dir: str) -> dict:
    """meta.json as written ({} if there is none)."""
    try:
        with open(os.path.join(run_dir, "meta.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return {}


def sample_files(run_dir: str) -> list[tuple[str, int, str, str]]:
    """[(variant, repetition, workload, path)] of every samples file, sorted."""
    out: list[tuple[str, int, str, str]] = []
    root = os.path.join(run_dir, "samples")
    if not os.path.isdir(root):
        return out
    for variant in sorted(os.listdir(root)):
        folder = os.path.join(root, variant)
        if not os.path.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            if not (fname.startswith("r") and fname.endswith(".jsonl") and "-" in fname):
                continue
            rep, _, workload = fname[1:-len(".jsonl")].partition("-")
            if rep.isdigit():
                out.append((variant, int(rep), workload, os.path.join(folder, fname)))
    return out


def read_samples(run_dir: str, workload: str | None = None) -> dict:
    """{(variant, repetition, workload): rows} for every samples file (of one workload)."""
    return {(v, r, w): _read_jsonl(p) for v, r, w, p in sample_files(run_dir)
            if workload is None or w == workload}


def variant_order(meta: dict, records: Iterable[dict] = (), samples: Iterable = ()) -> list:
    """Variants in the experiment's order; any others seen in records/samples after them."""
    order = list(meta.get("variants") or [])
    for row in records:
        if row.get("variant") not in order and row.get("variant") is not None:
            order.append(row["variant"])
    for key in samples:
        if key[0] not in order:
            order.append(key[0])
    return order


# -- summaries --------------------------------------------------------------------------------

def group_of(row: dict) -> tuple:
    """The ((field, value), ...) of a record's GROUP_FIELDS that it has."""
    return tuple((f, row[f]) for f in GROUP_FIELDS if row.get(f) is not None)


def summarize(records: Iterable[dict], confidence: float = 0.95) -> dict:
    """{(variant, metric, group): MeanCI over repetitions}.

    Several records of the same (variant, metric, group) in one repetition are averaged first,
    so the interval is over repetitions, as the runs are the independent samples. Records
    without a numeric value are left out."""
    per_rep: dict = {}
    for row in records:
        value = row.get("value")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        key = (row.get("variant"), row.get("metric"), group_of(row))
        per_rep.setdefault(key, {}).setdefault(row.get("repetition", 0), []).append(float(value))
    return {key: mean_ci([mean(v) for v in reps.values()], confidence)
            for key, reps in per_rep.items()}


__all__ = ["FORMAT", "METRICS", "Metric", "GROUP_FIELDS", "SAMPLE_FIELDS", "RunWriter",
           "new_run_dir", "update_latest", "git_revision", "read_records", "read_meta",
           "read_samples", "sample_files", "variant_order", "summarize", "group_of", "plain",
           "MeanCI"]
