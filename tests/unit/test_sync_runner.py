"""kube-proxy's sync pacing (testbed/kubernetes/dataplane/runner.py), on a fake clock, after
upstream's pkg/util/async bounded_frequency_runner_test.go: requests coalesce, a burst of two
runs back to back, then one run per min interval; a retry runs no later than asked."""

from __future__ import annotations

import threading

import pytest

from testbed.kubernetes.dataplane.runner import BoundedFrequencyRunner


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _runner(min_interval: float = 1.0, max_interval: float | None = None, burst: int = 2):
    clock, ran = Clock(), []
    runner = BoundedFrequencyRunner("test", lambda: ran.append(clock.now), min_interval,
                                    max_interval, burst, clock)
    return runner, clock, ran


def test_requests_coalesce_and_burst_then_one_per_min_interval():
    runner, clock, ran = _runner()
    assert not runner.step()            # nothing asked
    runner.run()
    runner.run()                        # coalesced with the first
    assert runner.step() and not runner.step()
    runner.run()
    assert runner.step()                # the burst's second run, at once
    runner.run()
    runner.run()
    assert not runner.step()            # too soon: deferred, not lost
    assert runner.timer_at == pytest.approx(1001.0)
    clock.now = 1000.5
    assert not runner.step()
    clock.now = 1001.0
    assert runner.step()                # the deferred request runs when allowed
    assert ran == [1000.0, 1000.0, 1001.0]
    clock.now = 1001.5
    runner.run()
    assert not runner.step()
    clock.now = 1002.0
    assert runner.step() and ran[-1] == 1002.0


def test_zero_min_interval_runs_every_request():
    runner, _, ran = _runner(min_interval=0.0)
    for _ in range(5):
        runner.run()
        assert runner.step()
    assert len(ran) == 5


def test_max_interval_runs_unrequested_and_retry_after_runs_sooner():
    runner, clock, ran = _runner(min_interval=1.0, max_interval=10.0)
    clock.now = 1009.9
    assert not runner.step()
    clock.now = 1010.0
    assert runner.step()                # periodic
    runner.retry_after(3.0)
    clock.now = 1013.0
    assert runner.step() and ran == [1010.0, 1013.0]


def test_no_max_interval_means_no_periodic_run():
    runner, clock, ran = _runner()
    clock.now = 10 ** 9
    assert not runner.step() and ran == []


def test_max_interval_below_min_interval_is_refused():
    with pytest.raises(ValueError, match="max_interval"):
        BoundedFrequencyRunner("bad", lambda: None, 2.0, 1.0)


def test_the_thread_runs_requests_and_stops():
    done = threading.Event()
    runner = BoundedFrequencyRunner("thread", done.set, 0.0)
    runner.start()
    try:
        runner.run()
        assert done.wait(5)
    finally:
        runner.stop()
    assert runner.thread is None and runner.runs == 1


def test_a_failing_run_does_not_end_the_loop(capsys):
    calls = []

    def fn() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("restore refused")
    runner = BoundedFrequencyRunner("flaky", fn, 0.0)
    runner.start()
    try:
        runner.run()
        for _ in range(500):
            if runner.runs == 1:
                break
            threading.Event().wait(0.01)
        runner.run()
        for _ in range(500):
            if runner.runs == 2:
                break
            threading.Event().wait(0.01)
    finally:
        runner.stop()
    assert runner.runs == 2 and "restore refused" in capsys.readouterr().err
