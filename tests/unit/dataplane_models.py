"""Packet models of the service data planes, one per kube-proxy mode, for the behaviour suite.

tests/unit/test_dataplane.py runs one suite against every mode in DATAPLANES (as upstream's
packet tracer runs against iptables and nftables alike); a mode plugs in with one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tests.unit.ebpf_model import EbpfNode
from tests.unit.iptables_model import IptablesNode
from tests.unit.nftables_model import NFTablesNode
from tests.unit.traces import Packet, Trace


class NodeModel(Protocol):
    """One node's data plane state, modelled without root.

    load: what apply_text does with the text render / render_partial returned
    snapshot: the whole state, comparable with another node's
    trace: where a connection's first packet can go
    check: the mode's own consistency checks of a rendered text (raise AssertionError)
    """

    def load(self, text: str) -> None: ...

    def snapshot(self) -> object: ...

    def trace(self, pkt: Packet) -> Trace: ...

    def check(self, text: str) -> None: ...


MODELS: dict[str, Callable[[], NodeModel]] = {
    "iptables": IptablesNode,
    "ebpf": EbpfNode,
    "nftables": NFTablesNode,
}
