"""The topology: read a user's YAML file and check it into the typed model (testbed.spec.model).

`load_topology(file)` reads, parses and checks; every problem is one line pointing at the file,
the line and the field (sections are read in testbed.spec.sections, whole-topology checks live
in testbed.spec.checks). The promise: a topology accepted here builds — the plan, the CNI
scripts, kube-proxy's rules and the fabric config render, and `cnlb up` does not fail on the
file's content (tests/unit/test_validate_property.py holds it to that). Nothing here touches the
machine: the netem check takes the machine's answer as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from testbed.errors import InputError, Problem
from testbed.spec.checks import cross_checks
from testbed.spec.external_ips import check_external_ips
from testbed.spec.fields import Reader, name
from testbed.spec.kube_proxy import check_dsr, read_kube_proxy
from testbed.spec.model import MODE_HINT, Topology
from testbed.spec.sections import (
    declared,
    read_clients,
    read_cni,
    read_deployments,
    read_links,
    read_load_balancer,
    read_nodes,
    read_vpc,
)
from testbed.spec.services import read_services
from testbed.spec.timing import read_kubernetes
from testbed.spec.yamldoc import Document, read_document

TOP_KEYS = {"name", "vpc", "cni", "nodes", "deployments", "services", "loadBalancer", "clients",
            "links", "kubernetes", "kubeProxy"}


def load_topology(file: str, mode: str | None = None, netem: bool | None = None,
                  proxy_mode: str | None = None) -> Topology:
    """Read, parse and validate a topology file.

    mode: override the file's loadBalancer.targets (the CLI's --mode)
    netem: whether the kernel has netem (None = do not check delay/loss)
    proxy_mode: override the file's kubeProxy.mode (the CLI's --proxy-mode)
    """
    doc = read_document(file)
    return parse_topology(doc, mode=mode, netem=netem, proxy_mode=proxy_mode)


def parse_topology(doc: Document, mode: str | None = None,
                   netem: bool | None = None, proxy_mode: str | None = None) -> Topology:
    r = Reader(doc)
    if not isinstance(doc.data, dict):
        r.problem((), "a topology must be a mapping of sections",
                  f"start with 'name:', 'vpc:', 'nodes:' (sections: {', '.join(sorted(TOP_KEYS))})")
        r.raise_if_any()
    r.mapping((), TOP_KEYS, required=("nodes",), hints={"mode": MODE_HINT})
    topo_name = r.get((), "name", name(20), default="cluster")
    vpc = read_vpc(r)
    cni = read_cni(r)
    nodes = read_nodes(r, vpc)
    deployments = read_deployments(r, declared(r, "nodes"))
    services = read_services(r, deployments, declared(r, "deployments"))
    lb = read_load_balancer(r)
    clients = read_clients(r)
    links = read_links(r, netem)
    timing = read_kubernetes(r)
    kube_proxy = read_kube_proxy(r)
    if proxy_mode:
        kube_proxy = replace(kube_proxy, mode=proxy_mode)
    r.raise_if_any()
    topo = Topology(topo_name, doc.file, mode or lb.targets, vpc, cni, nodes, deployments,
                    services, lb, clients, links, doc, kubernetes=timing, kube_proxy=kube_proxy)
    cross_checks(r, topo)
    check_dsr(r, topo)
    check_external_ips(r, topo)
    r.raise_if_any()
    return topo


def validate_files(files: Iterable[str], mode: str | None = None,
                   netem: bool | None = None) -> list[Problem]:
    """Validate several files; return every problem (empty list: all good)."""
    problems: list[Problem] = []
    for f in files:
        try:
            load_topology(f, mode=mode, netem=netem)
        except InputError as exc:
            problems.extend(exc.problems)
    return problems
