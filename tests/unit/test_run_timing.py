"""Every run's meta.json records the control plane's clock (the whole Timing) it ran with."""

import json
import os
from dataclasses import asdict, replace

from testbed.analysis.records import RunWriter
from testbed.paths import REPO
from testbed.spec.model import Timing
from testbed.spec.topology import load_topology


def test_meta_records_the_topologys_and_each_variants_timing(tmp_path):
    topo = load_topology(os.path.join(REPO, "topologies", "ports.yaml"))
    instant = replace(topo, kubernetes=Timing(mode="instant"))
    run = str(tmp_path / "run")
    with RunWriter(run, topology=topo, variants={"real": topo, "ideal": instant}, git={}):
        pass
    with open(os.path.join(run, "meta.json")) as fh:
        timing = json.load(fh)["timing"]
    assert timing["topology"] == asdict(topo.kubernetes)
    assert timing["variants"]["real"]["node_monitor_grace_period_s"] == 50.0
    assert timing["variants"]["ideal"]["mode"] == "instant"
    assert set(timing["variants"]["ideal"]) == set(asdict(Timing()))


def test_a_run_without_a_topology_records_no_timing(tmp_path):
    run = str(tmp_path / "run")
    with RunWriter(run, experiment={"name": "x", "variants": []}, git={}):
        pass
    with open(os.path.join(run, "meta.json")) as fh:
        assert json.load(fh)["timing"] == {"topology": None, "variants": {}}
