"""One experiment from file to report: what `cnlb run` does, callable from bench/ and notebooks.

    result = run_experiment("experiments/compare.yaml", topology="topologies/talk.yaml")
    print(result.report)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from testbed.analysis.plots import plot_run, written
from testbed.analysis.records import RunWriter, new_run_dir
from testbed.analysis.report import write_report
from testbed.emulation import machine
from testbed.emulation.journal import Lock
from testbed.errors import UsageError
from testbed.experiments.runner import Runner, environment
from testbed.paths import RESULTS
from testbed.spec.experiment import Resolved, load_resolved
from testbed.spec.model import Topology


@dataclass(frozen=True)
class RunResult:
    """Where a finished run put its records, figures and report.

    out: the run directory (results/<run-id>)
    figures: the figure files written
    report: the path of report.md
    """
    out: str
    figures: list[str]
    report: str


def run_experiment(experiment: str, topology: str | None = None, out: str | None = None,
                   iptables: str = "auto", datapath: str | None = None,
                   progress: Callable[[str], None] = lambda msg: None,
                   lb: str | None = None, proxy_mode: str | None = None) -> RunResult:
    """Check the files, measure every variant into a new run directory, then plot and report.

    experiment: the experiment file; topology: overrides the file's `topology:`
    out: the run directory (None: a new results/<run-id>); iptables: kube-proxy's backend
    datapath: the fabric's datapath (None: the experiment's `datapath:`)
    progress: called with one line per step
    lb: the cloud load balancer's kind for every variant (None: the topology's
        loadBalancer.kind)
    proxy_mode: kube-proxy's mode for the variants that name no proxyMode (None: the
        topology's kubeProxy.mode); meta.json's environment records each variant's
    Raises InputError (bad files), UsageError (out already holds a run), EnvironmentProblem.
    """
    resolved = load_resolved(experiment, topology, netem=machine.netem_available())
    if lb:
        resolved = with_lb_kind(resolved, lb)
    if proxy_mode:
        resolved = with_proxy_mode(resolved, proxy_mode)
    Lock().refuse_if_held()   # before a results directory is made
    if out:
        if os.path.exists(os.path.join(out, "meta.json")):
            raise UsageError(f"cnlb run: --out {out} already holds a run — give a new directory")
    else:
        out = new_run_dir(RESULTS, resolved.experiment.name)
    progress(f"results go to {out}")
    env = environment(iptables)
    env["kube_proxy_modes"] = {name: t.kube_proxy.mode for name, t in resolved.variants.items()}
    with RunWriter(out, resolved=resolved, environment=env) as writer:
        Runner(resolved, writer, progress, iptables=iptables, datapath=datapath).run()
    progress("drawing figures ...")
    figures = written(plot_run(out))
    return RunResult(out, figures, write_report(out))


def with_proxy_mode(resolved: Resolved, mode: str) -> Resolved:
    """The file's topology, and every variant's that names no proxyMode of its own, with
    kubeProxy.mode set (cnlb run --proxy-mode): a variant's own proxyMode is kept, so a file
    that compares modes still does."""
    def one(topo: Topology) -> Topology:
        return replace(topo, kube_proxy=replace(topo.kube_proxy, mode=mode))
    own = {v.name for v in resolved.experiment.variants if v.proxy_mode}
    return replace(resolved, topology=one(resolved.topology),
                   variants={name: t if name in own else one(t)
                             for name, t in resolved.variants.items()})


def with_lb_kind(resolved: Resolved, kind: str) -> Resolved:
    """Every variant's topology (and the file's) with loadBalancer.kind set (cnlb run --lb):
    the clusters are built with it and meta.json records it."""
    def one(topo: Topology) -> Topology:
        return replace(topo, load_balancer=replace(topo.load_balancer, kind=kind))
    return replace(resolved, topology=one(resolved.topology),
                   variants={name: one(t) for name, t in resolved.variants.items()})
