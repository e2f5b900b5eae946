"""kube-proxy's sync pacing: upstream's BoundedFrequencyRunner (pkg/util/async).

BoundedFrequencyRunner: run(): request a run of `fn` as soon as allowed; requests coalesce, and
    runs start at least min_interval apart, except for a burst of `burst_runs` (a token bucket
    refilled one token per min_interval); with a max_interval, `fn` also runs at least that
    often. retry_after(s): run again no later than s from now (a failed sync). step() does what
    is due now (tests drive it with a fake clock); start() runs the loop in a thread.

kube-proxy's iptables proxier uses min_interval = --iptables-min-sync-period (1 s), burst 2,
and an hour as max_interval ("arbitrary": its resyncs come from iptables monitoring and from
RetryAfter(syncPeriod) after a failed sync). The testbed passes no max_interval: nothing edits
a node's tables behind kube-proxy's back, so a periodic resync would change nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

BURST_SYNCS = 2  # upstream iptables proxier's burstSyncs


class BoundedFrequencyRunner:
    """Runs `fn` on request, at most once per min_interval (modulo bursts), in one thread.

    name: for messages
    fn: the work (a sync); an exception it raises is printed and the loop goes on
    min_interval: seconds between runs (0: no limit)
    max_interval: seconds after which fn runs even unrequested (None: never)
    burst_runs: runs allowed back to back before min_interval applies
    clock: monotonic seconds (tests pass a fake one)
    """

    def __init__(self, name: str, fn: Callable[[], None], min_interval: float,
                 max_interval: float | None = None, burst_runs: int = BURST_SYNCS,
                 clock: Callable[[], float] = time.monotonic):
        if max_interval is not None and max_interval < min_interval:
            raise ValueError(f"{name}: max_interval ({max_interval}) must be >= min_interval "
                             f"({min_interval})")
        self.name, self.fn = name, fn
        self.min_interval, self.max_interval = min_interval, max_interval
        self.burst_runs, self.clock = max(1, burst_runs), clock
        now = clock()
        self.tokens = float(self.burst_runs)
        self.refilled_at = now
        self.last_run: float | None = None
        self.requested = False
        self.timer_at = self._periodic(now)   # when the timer fires next (inf: never)
        self.runs = 0
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False

    def _periodic(self, now: float) -> float:
        return now + self.max_interval if self.max_interval is not None else float("inf")

    # --- what callers use -------------------------------------------------------------------------

    def run(self) -> None:
        """Ask for a run as soon as allowed (coalesced with any request not yet served)."""
        with self.cond:
            self.requested = True
            self.cond.notify()

    def retry_after(self, interval: float) -> None:
        """Make sure fn runs again no later than `interval` seconds from now."""
        with self.cond:
            self.timer_at = min(self.timer_at, self.clock() + interval)
            self.cond.notify()

    def start(self) -> None:
        """Run the loop in a daemon thread (idempotent)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End the loop after the run in progress, if any."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    # --- the core, driven by the loop or by a test -----------------------------------------------

    def due(self) -> bool:
        """Whether step() would try a run now."""
        return self.requested or self.clock() >= self.timer_at

    def step(self) -> bool:
        """Do what is due now (upstream's tryRun on a request or the timer); True if fn ran."""
        with self.cond:
            if not self.due():
                return False
            self.requested = False
            now = self.clock()
            if self._take_token(now):
                self.timer_at = float("inf")   # no run pending until asked or periodic
                run = True
            else:
                # Too soon: come back when the next run is allowed (or the timer, if sooner).
                assert self.last_run is not None   # tokens only run out after a run
                next_possible = self.last_run + self.min_interval
                self.timer_at = min(self.timer_at if self.timer_at > now else float("inf"),
                                    max(next_possible, self._token_at(now)))
                run = False
        if not run:
            return False
        try:
            self.fn()
        finally:
            with self.cond:
                self.last_run = self.clock()
                self.runs += 1
                self.timer_at = min(self.timer_at, self._periodic(self.last_run))
        return True

    def _refill(self, now: float) -> None:
        if self.min_interval > 0:
            self.tokens = min(float(self.burst_runs),
                              self.tokens + (now - self.refilled_at) / self.min_interval)
        self.refilled_at = now

    def _take_token(self, now: float) -> bool:
        if self.min_interval <= 0:
            return True
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def _token_at(self, now: float) -> float:
        """When the bucket next holds a whole token."""
        return now + (1.0 - self.tokens) * self.min_interval

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.due():
                    wait = self.timer_at - self.clock()
                    self.cond.wait(None if wait == float("inf") else max(wait, 0.0))
                if self.stopping:
                    return
            try:
                self.step()
            except Exception as err:   # a sync that failed must not end the loop
                print(f"{self.name}: {err}", file=sys.stderr, flush=True)
