"""The experiment file: what to measure, on which topology, in which variants, how often.

`load_experiment(file)` parses and checks a file on its own (shape, ranges, choices, that the
topology file exists) into an Experiment; `resolve(experiment, topology)` checks it against the
topology (the measured service, the pods and nodes events name, each variant's mode against the
topology's limits) and gives every variant's topology; `load_resolved(file)` does both. The
parsers and WORKLOADS hold every default and range; every problem is one line,
`FILE:LINE: field.path: what is wrong — how to fix`. The file's manual: docs/experiments.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from testbed.errors import InputError, Problem
from testbed.spec import rollout as rollout_spec
from testbed.spec.durations import fmt_s as _fmt_s
from testbed.spec.durations import seconds
from testbed.spec.fields import Reader, choice, integer, name, text
from testbed.spec.kube_proxy import variant_dsr_problems, variant_network, with_data_plane
from testbed.spec.model import LB_KINDS, MODES, Topology, placement
from testbed.spec.scaling import check_sizes, read_sweeps
from testbed.spec.topology import parse_topology
from testbed.spec.yamldoc import Document, Path, nearest, read_document

KINDS = ("compare", "scaling", "failover", "rollout")
POLICIES = ("Cluster", "Local")
TARGETS = ("vip", "pods")        # where a variant's clients send: the LB's VIP, or the pods
ACTIONS = ("remove-pod", "fail-pod", "fail-node")
MAX_VARIANTS = 12                # one colour each in the plots' palette

# workload name -> (tool that drives it, allowed keys with their defaults)
WORKLOADS: dict[str, tuple[str, dict[str, float]]] = {
    "latency": ("cnlb client: a new TCP connection per request", {"requests": 200}),
    "keepalive": ("wrk: keep-alive latency percentiles",
                  {"duration": 5.0, "connections": 4, "threads": 1}),
    "load": ("wrk: requests/s under load", {"duration": 5.0, "connections": 32, "threads": 2}),
    "throughput": ("iperf 2: one bulk TCP connection", {"duration": 5.0}),
    "path": ("cnlb client: hops, cross-node bytes, pod, source address", {"requests": 50}),
}

COMMON_KEYS = {"name", "kind", "topology", "service", "seed", "repetitions", "warmup", "variants",
               "datapath"}
KIND_KEYS = {
    "compare": {"workloads"},
    "scaling": {"workloads", "services", "endpoints", "pods", "podsPerNode"},
    "failover": {"duration", "rate", "timeout", "events"},
    "rollout": rollout_spec.ROLLOUT_KEYS,
}
ALL_KEYS = COMMON_KEYS.union(*KIND_KEYS.values())



@dataclass(frozen=True)
class Variant:
    """One way of running the cluster: a column in every table, a colour in every figure.

    name: the label in plots and records
    mode: nodeport (the LB targets node IP:NodePort) or container-native (pod IP:targetPort)
    external_traffic_policy: set on every LoadBalancer service (Cluster | Local)
    to: where the clients send: vip (through the cloud LB) or pods (each pod's own address in
        turn, no LB: the fabric's cost alone; compare only, container-native addressing)
    timing: the control plane's clock, realistic or instant (None: the topology's
        `kubernetes: {timing: ...}`)
    readiness_gates, deregistration_delay_s: the LB's readiness gate on every deployment and
        its draining time (None: the topology's; testbed.spec.rollout)
    proxy_mode: kube-proxy's mode (None: the topology's kubeProxy.mode, or run --proxy-mode)
    lb: the cloud load balancer's kind, l4 or l7 (None: the topology's loadBalancer.kind;
        `cnlb run --lb` overrides every variant's)
    """
    name: str
    mode: str
    external_traffic_policy: str = "Cluster"
    to: str = "vip"
    timing: str | None = None
    readiness_gates: bool | None = None
    deregistration_delay_s: float | None = None
    proxy_mode: str | None = None
    lb: str | None = None
    cni: str | None = None   # the pods' routing: bgp (docs/bgp.md); None: the topology's
    bpf_lb_mode: str | None = None   # the ebpf mode's snat or dsr; None: the topology's

    def apply(self, topology: Topology) -> Topology:
        """The topology in this variant's mode, every LoadBalancer service's policy overridden.

        A service that becomes Local keeps a healthCheckNodePort the file gave it and otherwise
        gets None, so the plan assigns the first free port; a service that becomes Cluster has
        none (kube-proxy only serves health checks for Local)."""
        services = []
        for svc in topology.services:
            if svc.type == "LoadBalancer":
                local = self.external_traffic_policy == "Local"
                keep = local and svc.external_traffic_policy == "Local"
                svc = replace(svc, external_traffic_policy=self.external_traffic_policy,
                              health_check_node_port=svc.health_check_node_port if keep else None)
            services.append(svc)
        kubernetes = (replace(topology.kubernetes, mode=self.timing) if self.timing
                      else topology.kubernetes)
        topology = rollout_spec.with_variant_settings(topology, kubernetes, self.readiness_gates,
                                                      self.deregistration_delay_s)
        topology = with_data_plane(topology, self.proxy_mode, self.bpf_lb_mode, self.cni)
        lb = replace(topology.load_balancer, targets=self.mode,
                     kind=self.lb or topology.load_balancer.kind)
        return replace(topology, mode=self.mode, services=tuple(services), load_balancer=lb)


@dataclass(frozen=True)
class Workload:
    """One measurement the runner makes per variant and repetition.

    name: latency | keepalive | load | throughput | path (see WORKLOADS for the tool)
    requests: number of requests (latency, path)
    duration_s: how long it runs (keepalive, load, throughput)
    connections, threads: wrk's -c and -t (keepalive, load)
    """
    name: str
    requests: int | None = None
    duration_s: float | None = None
    connections: int = 1
    threads: int = 1


@dataclass(frozen=True)
class Event:
    """Something done to the cluster during a failover run.

    at_s: seconds after the steady load started
    action: remove-pod (delete one pod; the deployment replaces it) | fail-pod (its server
        crashes, as `cnlb pod fail`; not restarted) | fail-node (the node goes down; its pods
        move to the other nodes)
    target: the pod (remove-pod, fail-pod) or node (fail-node)
    index: the event's position in the file's list (for messages)
    """
    at_s: float
    action: str
    target: str
    index: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Experiment:
    """A whole experiment as the user described it.

    topology: path of the topology file (relative to the working directory, or absolute)
    service: the LoadBalancer service to measure (None: the topology's first one)
    warmup_s: discarded run time before each workload
    workloads: in run order (compare; scaling: latency only; failover: none)
    services, endpoints: scaling only — synthetic service counts and endpoints per service
    pods, pods_per_node: scaling only — the pod counts of the pods sweep (a cluster built per
        count: testbed.spec.scaling.scale_topology) and the pods a node gets
    duration_s, rate, timeout_s, events: failover only — steady load of `rate` requests/s for
        `duration_s`, a request slower than `timeout_s` counts as an error, events in time order
    datapath: what every cluster's fabric asks OVS for: auto or afxdp (AF_XDP ports polled by
        a PMD thread; testbed.emulation.machine.FABRIC_DATAPATHS)
    """
    name: str
    file: str
    kind: str
    topology: str
    service: str | None
    seed: int
    repetitions: int
    warmup_s: float
    variants: tuple[Variant, ...]
    workloads: tuple[Workload, ...] = ()
    services: tuple[int, ...] = ()
    endpoints: int = 0
    pods: tuple[int, ...] = ()
    pods_per_node: int = 0
    duration_s: float = 0.0
    rate: float = 0.0
    timeout_s: float = 1.0
    events: tuple[Event, ...] = ()
    datapath: str = "auto"
    rollout_at_s: float = 0.0        # rollout: when it starts after the load, and what it rolls
    deployment: str | None = None
    doc: Document | None = field(repr=False, compare=False, default=None)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def workload(self, name: str) -> Workload | None:
        return next((w for w in self.workloads if w.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for meta.json (the source document left out)."""
        out: dict[str, Any] = {}
        for f in self.__dataclass_fields__.values():
            if f.name == "doc":
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out


@dataclass(frozen=True)
class Resolved:
    """An experiment checked against its topology: what the runner builds and measures.

    variants: variant name -> the topology in that variant's mode and policy (experiment order)
    service: the LoadBalancer service measured
    """
    experiment: Experiment
    topology: Topology
    service: str
    variants: dict[str, Topology] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__ if k != "doc"}
    return value


# -- loading ----------------------------------------------------------------------------------

def load_experiment(file: str, topology: str | None = None) -> Experiment:
    """Read, parse and check an experiment file.

    topology: a topology file to use instead of the file's `topology:` (the CLI's --topology)
    """
    return parse_experiment(_read(file), topology=topology)


def load_resolved(file: str, topology: str | None = None, netem: bool | None = None) -> Resolved:
    """The experiment, its topology loaded and both checked together: what `cnlb run` needs."""
    return resolve_document(_read(file), topology=topology, netem=netem)


def resolve_document(doc: Document, topology: str | None = None,
                     netem: bool | None = None) -> Resolved:
    """An experiment already read (source.read_document, which reads a file once), parsed,
    its topology loaded, and both checked together; `cnlb validate` decides a file's kind from
    its parsed content and then checks it here."""
    from testbed.spec.topology import load_topology
    exp = parse_experiment(doc, topology=topology)
    return resolve(exp, load_topology(exp.topology, netem=netem))


def validate_files(files: Iterable[str], netem: bool | None = None) -> list[Problem]:
    """Every problem in several experiment files, each checked against its topology."""
    problems: list[Problem] = []
    for f in files:
        try:
            load_resolved(f, netem=netem)
        except InputError as exc:
            problems.extend(exc.problems)
    return problems


def _read(file: str) -> Document:
    """read_document, with its hints pointed at experiments rather than topologies."""
    try:
        return read_document(file)
    except InputError as exc:
        fixes = {"no such file": "check the path (see experiments/ for shipped examples)",
                 "file is empty": "write an experiment (see experiments/compare-quick.yaml)"}
        raise InputError([replace(p, fix=fixes.get(p.what, p.fix)) if p.what in fixes else p
                          for p in exc.problems]) from None


def parse_experiment(doc: Document, topology: str | None = None) -> Experiment:
    r = Reader(doc)
    if not isinstance(doc.data, dict):
        r.problem((), "an experiment must be a mapping of fields",
                  "start with 'name:', 'topology:', 'variants:' (see experiments/README.md)")
        r.raise_if_any()
    kind = r.get((), "kind", choice(*KINDS), default="compare",
                 fix="use compare, scaling, failover or rollout") or "compare"
    _check_keys(r, kind)
    default_name = os.path.splitext(os.path.basename(doc.file))[0]
    if not re.fullmatch(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?", default_name):
        default_name = "experiment"
    exp_name = r.get((), "name", name(40), default=default_name,
                     fix="name it with lower-case letters, digits and '-' (at most 40)")
    topo_path = _topology(r, doc.file, topology)
    service = r.get((), "service", name(20), default=None,
                    fix="name a LoadBalancer service of the topology")
    seed = r.get((), "seed", integer(0, 2**32 - 1), default=0,
                 fix="use a whole number 0-4294967295")
    reps = r.get((), "repetitions", integer(1, 100), default=3, fix="use 1-100 repetitions")
    warmup = r.get((), "warmup", seconds(0, 60), default=1.0,
                   fix="write a warm-up like 1s (at most 60s)")
    variants = _variants(r, kind)
    extra: dict[str, Any] = {"datapath": r.get(
        (), "datapath", choice("auto", "afxdp"), default="auto",
        fix="use auto (the kernel datapath, or OVS's userspace one without the module) or afxdp "
            "(AF_XDP ports polled by a PMD thread: fewer microseconds per hop, one CPU busy)")}
    if kind == "compare":
        extra["workloads"] = _workloads(r, allowed=tuple(WORKLOADS), default=None)
    elif kind == "scaling":
        extra["workloads"] = _workloads(r, allowed=("latency",),
                                        default={"latency": {"requests": 100}})
        extra.update(read_sweeps(r))
    else:
        extra.update(_failover(r) if kind == "failover" else rollout_spec.read_rollout(r))
    r.raise_if_any()
    return Experiment(exp_name, doc.file, kind, topo_path, service, seed, reps, warmup,
                      variants, doc=doc, **extra)


def _check_keys(r: Reader, kind: str) -> None:
    data = r.value(())
    allowed = COMMON_KEYS | KIND_KEYS[kind]
    for key in data:
        if key in allowed:
            continue
        owners = [k for k in KINDS if key in KIND_KEYS[k]]
        if owners:
            r.problem((key,), f"'{key}' belongs to kind {' or '.join(owners)}, "
                      f"this is kind {kind}",
                      f"set 'kind: {owners[0]}' or remove '{key}'")
        else:
            hint = nearest(key, ALL_KEYS)
            r.problem((key,), f"unknown key '{key}'", f"did you mean '{hint}'?" if hint else
                      f"valid keys: {', '.join(sorted(allowed))}")


def _topology(r: Reader, file: str, override: str | None) -> str:
    if override is not None:
        return override
    if "topology" not in r.value(()):
        r.problem((), "missing required field 'topology'",
                  "add 'topology: ../topologies/talk.yaml' (relative to this file)")
        return ""
    given = r.get((), "topology", text,
                  fix="give the topology file's path relative to this file, "
                      "e.g. ../topologies/talk.yaml")
    if given is None:
        return ""
    path = given if os.path.isabs(given) else os.path.normpath(
        os.path.join(os.path.dirname(file), given))
    if os.path.isdir(path):
        r.problem(("topology",), f"'{given}' is a directory", "name a .yaml file inside it")
    elif not os.path.isfile(path):
        r.problem(("topology",), f"no such file '{given}' (looked for {path})",
                  "give the path relative to this experiment file, e.g. ../topologies/talk.yaml")
    return path


def _variants(r: Reader, kind: str) -> tuple[Variant, ...]:
    path = ("variants",)
    if "variants" not in r.value(()):
        r.problem((), "missing required field 'variants'",
                  "add 'variants:' with e.g. 'container-native: {mode: container-native}'")
        return ()
    raw = r.mapping(path, None, what="variant name: {mode: ...}")
    if not raw:
        if isinstance(r.value(path), (dict, type(None))):
            r.problem(path, "no variants",
                      "add at least one, e.g. 'container-native: {mode: container-native}'")
        return ()
    if len(raw) > MAX_VARIANTS:
        r.problem(path, f"{len(raw)} variants are more than the {MAX_VARIANTS} the plots have "
                  "colours for",
                  f"split the experiment into files of at most {MAX_VARIANTS} variants")
    out = []
    for vname in raw:
        vpath = path + (vname,)
        try:
            name(30)(vname)
        except ValueError as exc:
            r.problem(vpath, str(exc),
                      "name variants like nodeport-cluster (at most 30 characters)")
            continue
        if r.value(vpath) is None:
            r.problem(vpath, "missing required field 'mode'",
                      "add '{mode: nodeport}' or '{mode: container-native}'")
            continue
        r.mapping(vpath, {"mode", "externalTrafficPolicy", "to", "timing", "lb", "cni",
                          "proxyMode", "bpfLbMode", *rollout_spec.VARIANT_KEYS},
                  required=("mode",), what="mode: ...")
        if not isinstance(r.value(vpath), dict) or "mode" not in r.value(vpath):
            continue
        mode = r.get(vpath, "mode", choice(*MODES), fix="use nodeport or container-native")
        policy = r.get(vpath, "externalTrafficPolicy", choice(*POLICIES), default="Cluster",
                       fix="use Cluster or Local")
        to = r.get(vpath, "to", choice(*TARGETS), default="vip", fix="use vip or pods")
        timing = r.get(vpath, "timing", choice("realistic", "instant"), default=None,
                       fix="use realistic (the topology's kubernetes delays) or instant")
        lb = r.get(vpath, "lb", choice(*LB_KINDS), default=None,
                   fix="use l4 (the VPC's OpenFlow balancer) or l7 (HAProxy, an HTTP proxy LB)")
        if to == "pods" and kind != "compare":
            r.problem(vpath + ("to",), f"only a compare experiment sends to the pods directly "
                      f"(this is kind {kind})", "remove 'to: pods'")
            continue
        if to == "pods" and mode == "nodeport":
            # classic pods live on the overlay: the client has no route to them
            r.problem(vpath + ("to",), "in mode nodeport the pods' addresses are not routable "
                      "from the client", "use 'mode: container-native' with 'to: pods'")
            continue
        if mode and policy and to:
            out.append(Variant(vname, mode, policy, to, timing, lb=lb, **variant_network(r, vpath),
                               **rollout_spec.read_variant_settings(r, vpath)))
    seen: dict[tuple[object, ...], str] = {}
    for v in out:
        key = (v.mode, v.external_traffic_policy, v.to, v.timing, v.readiness_gates, v.proxy_mode,
               v.deregistration_delay_s, v.lb, v.cni, v.bpf_lb_mode)
        if key in seen:
            r.problem(path + (v.name,), f"runs the same as variant '{seen[key]}' (mode {v.mode}, "
                      f"externalTrafficPolicy {v.external_traffic_policy}, to {v.to})",
                      "remove one, or change its mode, externalTrafficPolicy or to")
        seen[key] = v.name
    return tuple(out)


def _workloads(r: Reader, allowed: tuple[str, ...],
               default: Mapping[str, Mapping[str, Any]] | None) -> tuple[Workload, ...]:
    path = ("workloads",)
    if "workloads" not in r.value(()) and default is not None:
        return tuple(Workload(n, **{_FIELD[k]: v for k, v in body.items()})
                     for n, body in default.items())
    raw = r.mapping(path, None, what="workload name: {...}")
    if not raw:
        if "workloads" not in r.value(()):
            r.problem((), "missing required field 'workloads'",
                      "add 'workloads:' with e.g. 'latency: {requests: 200}'")
        elif isinstance(r.value(path), (dict, type(None))):
            r.problem(path, "no workloads", "add at least one, e.g. 'latency: {requests: 200}'")
        return ()
    out = []
    for wname in raw:
        wpath = path + (wname,)
        if wname not in allowed:
            hint = nearest(str(wname), allowed)
            if wname in WORKLOADS:
                r.problem(wpath, f"workload '{wname}' is not part of this kind of experiment",
                          f"remove it (allowed: {', '.join(allowed)})")
            else:
                r.problem(wpath, f"unknown workload '{wname}'",
                          f"did you mean '{hint}'?" if hint
                          else f"use one of {', '.join(allowed)}")
            continue
        values = _workload_values(r, wpath, WORKLOADS[wname][1])
        if None in values.values():
            continue
        if values.get("threads", 0) > values.get("connections", 1 << 30):
            r.problem(wpath + ("threads",), f"{values['threads']} threads for "
                      f"{values['connections']} connections (wrk needs at least one connection "
                      "per thread)",
                      f"use at most {values['connections']} threads or more connections")
            continue
        out.append(Workload(wname, **{_FIELD[k]: v for k, v in values.items()}))
    return tuple(out)


def _workload_values(r: Reader, wpath: Path, defaults: Mapping[str, float]) -> dict[str, Any]:
    """A workload's settings (file key -> value; None where the value is wrong)."""
    if r.value(wpath) is not None:
        r.mapping(wpath, set(defaults), what="requests/duration/...")
    values: dict[str, Any] = {}
    for key, dflt in defaults.items():
        if key == "requests":
            values[key] = r.get(wpath, key, integer(1, 1_000_000), default=dflt,
                                fix="use 1-1000000 requests")
        elif key == "duration":
            values[key] = r.get(wpath, key, seconds(0.1, 3600), default=dflt,
                                fix="write a duration like 5s (100ms-1h)")
        elif key == "connections":
            values[key] = r.get(wpath, key, integer(1, 10_000), default=dflt,
                                fix="use 1-10000 connections")
        elif key == "threads":
            values[key] = r.get(wpath, key, integer(1, 64), default=dflt,
                                fix="use 1-64 threads")
    return values


_FIELD = {"requests": "requests", "duration": "duration_s", "connections": "connections",
          "threads": "threads"}


def _failover(r: Reader) -> dict[str, Any]:
    duration = r.get((), "duration", seconds(1, 3600), default=30.0,
                     fix="write a duration like 30s (1s-1h)")
    rate = r.get((), "rate", integer(1, 100_000), default=200,
                 fix="use 1-100000 requests per second")
    timeout = r.get((), "timeout", seconds(0.01, 10), default=1.0,
                    fix="write a timeout like 1s (10ms-10s)")
    events = []
    raw = r.value(("events",))
    if "events" not in r.value(()):
        r.problem((), "missing required field 'events'",
                  "add e.g. 'events: [{at: 5s, action: remove-pod, pod: web-0}]'")
    elif not isinstance(raw, list) or not raw:
        r.problem(("events",), "expected a list of events",
                  "write e.g. 'events: [{at: 5s, action: remove-pod, pod: web-0}]'")
    else:
        for i, body in enumerate(raw):
            epath = ("events", i)
            if not isinstance(body, dict):
                r.problem(epath, "expected a mapping {at: ..., action: ...}",
                          "write e.g. '{at: 5s, action: fail-node, node: node2}'")
                continue
            action = r.get(epath, "action", choice(*ACTIONS),
                           fix="use remove-pod, fail-pod or fail-node")
            needs = {"remove-pod": "pod", "fail-pod": "pod", "fail-node": "node"}.get(action)
            r.mapping(epath, {"at", "action", needs} if needs else {"at", "action", "pod", "node"})
            at = r.get(epath, "at", seconds(0, 3600), fix="write a time like 5s")
            if at is not None and duration is not None and at >= duration:
                r.problem(epath + ("at",), f"{_fmt_s(at)} is not before the end of the run "
                          f"({_fmt_s(duration)})",
                          "make the event earlier or the duration longer")
                at = None
            target = r.get(epath, needs, name(20),
                           fix=f"name a {needs} of the topology") if needs else None
            if at is not None and action is not None and target is not None:
                events.append(Event(at, action, target, i))
    return {"duration_s": duration or 30.0, "rate": float(rate or 200), "timeout_s": timeout or 1.0,
            "events": tuple(sorted(events, key=lambda e: e.at_s))}


# -- against the topology ---------------------------------------------------------------------

def resolve(experiment: Experiment, topology: Topology) -> Resolved:
    """Check the experiment against its topology; every variant's topology, checked in its mode.

    Problems with the experiment (an event naming a pod that does not exist) point at the
    experiment file; a variant the topology cannot run (more pods on a node than
    maxPodsPerNode in container-native mode) points at the topology file. All are raised
    together as one InputError."""
    r = Reader(experiment.doc or Document(experiment.file, {}))
    lb_services = [s.name for s in topology.services if s.type == "LoadBalancer"]
    service = experiment.service
    if service is None:
        if not lb_services:
            r.problem(("topology",), f"topology '{topology.file}' has no LoadBalancer service",
                      "the experiment measures through the load balancer's VIP: give a service "
                      "'type: LoadBalancer' in the topology")
        service = lb_services[0] if lb_services else ""
    elif service not in lb_services:
        hint = nearest(service, lb_services)
        r.problem(("service",), f"the topology has no LoadBalancer service '{service}'",
                  f"did you mean '{hint}'?" if hint else
                  (f"use one of {', '.join(lb_services)}" if lb_services else
                   "give the topology a service with 'type: LoadBalancer'"))
    pods = [f"{d.name}-{k}" for d in topology.deployments
            for k in range(len(placement(topology, d)))]
    nodes = [n.name for n in topology.nodes]
    done: dict[str, dict[str, int]] = {"pod": {}, "node": {}}
    for ev in sorted(experiment.events, key=lambda e: e.index):
        key = "node" if ev.action == "fail-node" else "pod"
        where = ("events", ev.index, key)
        names, seen = (pods if key == "pod" else nodes), done[key]
        if ev.target not in names:
            hint = nearest(ev.target, names)
            r.problem(where, f"the topology has no {key} '{ev.target}'",
                      f"did you mean '{hint}'?" if hint else f"use one of {', '.join(names[:8])}")
            continue
        if ev.target in seen:
            done_what = "removed or failed" if key == "pod" else "failed"
            r.problem(where, f"{key} '{ev.target}' is already {done_what} "
                      f"by events[{seen[ev.target]}]", "name another one or remove this event")
            continue
        seen[ev.target] = ev.index
        if key == "node" and len(seen) >= len(nodes):
            r.problem(where, f"failing node '{ev.target}' leaves no node for the pods to move to",
                      "keep at least one node up, or add nodes to the topology")

    problems = list(r.problems)
    variants = {}
    checked: dict[str, list[Problem]] = {}
    for v in experiment.variants:
        if topology.doc is not None and v.mode not in checked:
            try:
                parse_topology(topology.doc, mode=v.mode)
                checked[v.mode] = []
            except InputError as exc:
                checked[v.mode] = exc.problems
                problems.extend(replace(p, what=f"{p.what} (in mode {v.mode}, which variant "
                                        f"'{v.name}' of {experiment.file} uses)")
                                for p in exc.problems)
        if not checked.get(v.mode):
            variants[v.name] = v.apply(topology)
            problems += variant_dsr_problems(r, v.name, v.bpf_lb_mode, variants[v.name])
    problems += _size_problems(experiment, topology, service, variants)
    if experiment.kind == "rollout":
        problems += rollout_spec.rollout_problems(r.doc, topology, service,
                                                  experiment.deployment)
    if problems:
        raise InputError(problems)
    return Resolved(experiment, topology, service, variants)


def _size_problems(experiment: Experiment, topology: Topology, service: str,
                   variants: Mapping[str, Topology]) -> list[Problem]:
    """The pods sweep's sizes, each checked in the modes whose variants the topology runs."""
    if not experiment.pods or not variants:
        return []
    modes: dict[str, str] = {}   # mode -> its first variant
    for v in experiment.variants:
        if v.name in variants:
            modes.setdefault(v.mode, v.name)
    r = Reader(experiment.doc or Document(experiment.file, {}))
    check_sizes(r, topology, experiment.pods, experiment.pods_per_node, modes, service)
    return r.problems
