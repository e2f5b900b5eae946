"""testbed.emulation.background: a bring-up stage beside the others, its error re-raised once."""

import threading

import pytest

from testbed.emulation.background import Background


def test_join_waits_for_the_function_and_it_ran_in_another_thread():
    seen = []
    go = threading.Event()
    stage = Background(lambda: (go.wait(5), seen.append(threading.current_thread().name)),
                       "first sync")
    assert seen == []            # still waiting: it runs beside the caller
    go.set()
    stage.join()
    assert seen == ["first sync"]


def test_its_exception_reaches_whoever_joins_once():
    def fails():
        raise RuntimeError("kube-proxy on node1: refused")
    stage = Background(fails, "first sync")
    with pytest.raises(RuntimeError, match="node1"):
        stage.join()
    stage.join()                 # reported once: a second join (teardown's) is quiet
