"""The experiment runner's core: for each variant it calls the experiment kind's function
(KINDS: compare, failover, scaling, one module each), and gives it the run in progress:
progress lines with the time left, records, and mending what broke between steps (recorded
as faults). Also the description of the machine a run was measured on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from testbed.analysis.records import RunWriter
from testbed.emulation import machine
from testbed.emulation.cluster import Cluster
from testbed.experiments.compare import run_compare
from testbed.experiments.failover import run_failover
from testbed.experiments.kind import ExperimentKind
from testbed.experiments.rollout import run_rollout
from testbed.experiments.scaling import run_scaling
from testbed.spec.experiment import Resolved, Variant

KINDS: dict[str, ExperimentKind] = {
    "compare": run_compare,
    "failover": run_failover,
    "rollout": run_rollout,
    "scaling": run_scaling,
}


def experiment_kind(name: str) -> ExperimentKind:
    """The function that runs an experiment kind; ValueError naming the known kinds if unknown."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"no experiment kind {name!r} — one of {', '.join(sorted(KINDS))}") \
            from None


class Runner:
    """Runs one resolved experiment into one results directory.

    resolved: the experiment with a topology per variant (testbed.spec.experiment.Resolved)
    writer: where records, samples and meta go (testbed.analysis.records.RunWriter)
    say: progress lines (None: quiet)
    iptables: kube-proxy's backend for every cluster: auto (the machine's), nft or legacy
    datapath: the fabric's datapath for every cluster (None: the experiment's `datapath:`)
    """

    def __init__(self, resolved: Resolved, writer: RunWriter,
                 say: Callable[[str], None] | None = None, iptables: str = "auto",
                 datapath: str | None = None):
        self.iptables = iptables
        self.res = resolved
        self.exp = resolved.experiment
        self.datapath = datapath or self.exp.datapath
        self.w = writer
        self._say = say or (lambda msg: None)
        self.t0 = time.time()
        self.done_units = 0
        self.total_units = max(1, len(self.exp.variants) * self.exp.repetitions)

    def run(self) -> None:
        """Every variant, in the experiment's order."""
        kind = experiment_kind(self.exp.kind)
        for v in self.exp.variants:
            kind(self, v, self.res.variants[v.name])

    # -- what a kind is given (testbed.experiments.kind.RunContext) ----------------------------
    def say(self, msg: str) -> None:
        self._say(msg)

    def progress(self, variant: str, rep: int, what: str) -> None:
        elapsed = time.time() - self.t0
        left = ""
        if self.done_units:
            remaining = elapsed / self.done_units * (self.total_units - self.done_units)
            left = f", ~{remaining:.0f}s left"
        self.say(f"[{variant} rep {rep + 1}/{self.exp.repetitions}] {what} ({elapsed:.0f}s{left})")

    def unit_done(self) -> None:
        self.done_units += 1

    def rec(self, variant: Variant, rep: int, metric: str, value: object, workload: str,
            **extra: object) -> None:
        self.w.record(self.exp.name, variant.name, rep, metric, value, workload=workload, **extra)

    def mend(self, cluster: Cluster, variant: str, rep: int) -> None:
        """Notice what broke since the last workload, record it as a fault, and recover where
        the testbed can: a dead controller is restarted (its switches are reprogrammed), a
        restarted ovs-vswitchd is waited for (it reconnects and is reprogrammed), a dead pod
        server is started again. What cannot be mended stops the run with a clear message."""
        down = self._mend_controller(cluster, variant, rep)
        if down:
            self._fault("switches-disconnected", f"switches {down} not connected/programmed "
                        f"before a workload of {variant}; waited for them", variant, rep)
            self.say(f"[{variant}] switches {down} disconnected: waiting for them")
            cluster.controller.wait_programmed([s.name for s in cluster.plan.switches],
                                               timeout=60)
        dead = cluster.control.dead_pod_servers()
        if dead:
            self._fault("pod-server-died", f"pod servers {dead} had exited; restarted",
                        variant, rep)
            self.say(f"[{variant}] pod servers {dead} died: restarting them")
            cluster.control.restart_pod_servers(dead)
        if dead or down:
            cluster.wait_lb_ready()

    def _mend_controller(self, cluster: Cluster, variant: str, rep: int) -> list[str]:
        """Restart a dead VPC controller; the switches not connected and programmed."""
        for _ in range(10):   # it may die while we look
            if not cluster.controller.alive():
                self._fault("controller-died", f"the VPC controller exited "
                            f"({cluster.controller.proc.returncode}) before a workload of "
                            f"{variant}; restarted", variant, rep)
                self.say(f"[{variant}] the VPC controller died: restarting it")
                cluster.restart_controller(kill=False)
            try:
                status = cluster.controller.api("GET", "/v1/status", timeout=5)
                down = [s["name"] for s in status["switches"]
                        if not (s["connected"] and s["programmed"])]
            except Exception as exc:
                down = [f"(status unreadable: {exc})"]
                time.sleep(0.5)   # dying or busy: look again
                continue
            break
        return down

    def _fault(self, kind: str, detail: str, variant: str, rep: int) -> None:
        """A fault goes to meta.json (with its story) and to records.jsonl (countable)."""
        self.w.fault(kind, detail, variant=variant, repetition=rep)
        self.w.record(self.exp.name, variant, rep, "fault", 1, unit="event", kind=kind,
                      detail=detail)


def environment(iptables: str = "auto") -> dict[str, Any]:
    """The machine a run was measured on (recorded beside every result)."""
    return {"kube_proxy_iptables": machine.iptables_backend() if iptables == "auto" else iptables,
            "kernel": os.uname().release, "machine": os.uname().machine, "cpus": os.cpu_count(),
            "datapath": "kernel" if machine.kernel_datapath() else "userspace (netdev)",
            "iptables_backend": machine.iptables_backend(), "netem": machine.netem_available(),
            "tools": machine.tool_versions()}
