"""The fabric on AF_XDP ports (`datapath: afxdp`): every host port is an AF_XDP socket on the
userspace datapath, the cluster answers as on the default datapath, reports say which datapath
ran, and nothing of it (ports, XDP programs) outlives the cluster."""

import json
import os
import subprocess

from testbed.emulation import machine
from testbed.emulation.cluster import Cluster
from testbed.emulation.reachability import reachability
from testbed.paths import REPO
from testbed.spec.topology import load_topology

MINIMAL = os.path.join(REPO, "topologies", "minimal.yaml")


def interface_types(ports):
    out = subprocess.run(["ovs-vsctl", "--format=json", "--columns=name,type,error", "list",
                          "Interface"], capture_output=True, text=True, check=True).stdout
    rows = {name: (typ, err) for name, typ, err in json.loads(out)["data"]}
    return {p: rows.get(p) for p in ports}


def test_afxdp_fabric_answers_and_leaves_nothing(no_leftovers):
    topo = load_topology(MINIMAL, mode="container-native")
    said = []
    with Cluster(topo, datapath="afxdp", progress=said.append) as cluster:
        ports = [a.port for a in cluster.plan.attachments]
        bridges = [s.name for s in cluster.plan.switches]
        if machine.afxdp_ports():
            assert cluster.datapath == "afxdp"
            types = interface_types(ports)
            assert all(t == "afxdp" and err in ("", ["set", []]) for t, err in types.values()), \
                types
            assert machine.datapath_of(bridges) == machine.AFXDP_LABEL
        else:   # the machine's OVS has no AF_XDP ports: the default datapath, said so
            assert cluster.datapath in ("kernel", "userspace")
            assert any("no AF_XDP ports" in line for line in said), said
        bad = [r for r in reachability(cluster) if not r.ok]
        assert not bad, bad
    assert not [p for p, t in interface_types(ports).items() if t is not None]
