"""What an experiment kind is: a function the runner core calls once per variant, with the
run in progress (RunContext: the experiment, its records, progress lines, mending) and the
variant's topology. Adding a kind is adding a module with such a function and an entry in
`testbed.experiments.runner.KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from testbed.analysis.records import RunWriter
from testbed.emulation.cluster import Cluster
from testbed.spec.experiment import Experiment, Resolved, Variant
from testbed.spec.model import Topology


class RunContext(Protocol):
    """One run in progress, as an experiment kind sees it (the runner core implements it).

    exp: the experiment
    res: the experiment resolved (its measured service, a topology per variant)
    w: where records, samples and meta go
    iptables: kube-proxy's backend for every cluster of the run
    datapath: what every cluster's fabric asks OVS for (auto or afxdp)
    """

    exp: Experiment
    res: Resolved
    w: RunWriter
    iptables: str
    datapath: str

    def say(self, msg: str) -> None:
        """One progress line."""

    def progress(self, variant: str, rep: int, what: str) -> None:
        """A progress line for a step of a repetition, with the time elapsed and left."""

    def mend(self, cluster: Cluster, variant: str, rep: int) -> None:
        """Notice and record what broke since the last step; recover where the testbed can."""

    def rec(self, variant: Variant, rep: int, metric: str, value: object, workload: str,
            **extra: object) -> None:
        """One record (records.jsonl)."""

    def unit_done(self) -> None:
        """A variant's repetition is done (for the time-left estimate)."""


# (the run, the variant, the variant's topology) -> None: builds clusters, measures, records
ExperimentKind = Callable[[RunContext, Variant, Topology], None]
