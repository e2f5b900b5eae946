"""Integration tests build real clusters: root, Mininet, Open vSwitch. One at a time."""

import os
import shutil

import pytest

from testbed.emulation import machine
from testbed.paths import REPO


def _missing():
    if os.geteuid() != 0:
        return "needs root"
    if not machine.start_ovs():
        return "Open vSwitch is not running (make setup)"
    if not os.path.exists(os.path.join(REPO, "build", "podserver")):
        return "build/podserver missing (make setup)"
    if not shutil.which("mnexec"):
        return "mininet missing (make setup)"
    return None


@pytest.fixture(scope="session")
def machine_ready():
    why = _missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def no_leftovers(machine_ready):
    """Asserts the test left nothing of what its clusters made (their journals) and no process
    it started; what others run on the machine meanwhile is not the test's to judge."""
    from tests.integration.leftovers import Watch
    watch = Watch()
    yield watch
    left = watch.leftovers()
    assert not left, f"left behind: {left}"
