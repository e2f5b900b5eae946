"""The control plane's clock on a running cluster: one thread, a heap of due actions.

Agenda: the heap (pure, no thread: tests drive it with their own clock).
Scheduler: the thread that runs an Agenda's actions when they fall due and writes each one,
  with its time, to a log (JSON lines: the cluster's state directory keeps `timeline.jsonl`, a
  failover run copies it next to its samples). stop() ends it and drops what was still due:
  teardown and Ctrl-C leave nothing running.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True)
class Due:
    """One action waiting for its time.

    when: the clock's time it falls due
    seq: ties keep the order actions were added in
    label: what the log calls it ({"action", "target", "by", ...}; "quiet": not logged)
    run: what to do; returning False means it found nothing to do (logged as skipped)
    """

    when: float
    seq: int
    label: dict[str, Any] = field(compare=False)
    run: Callable[[], object] = field(compare=False)


class Agenda:
    """Actions by due time. clock: seconds, monotonic (injected by tests)"""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._heap: list[Due] = []
        self._seq = itertools.count()

    def add(self, delay: float, label: dict[str, Any], run: Callable[[], object]) -> Due:
        """Run `run` `delay` seconds from now."""
        due = Due(self.clock() + max(delay, 0.0), next(self._seq), label, run)
        heapq.heappush(self._heap, due)
        return due

    def pop_due(self) -> Due | None:
        """The earliest action whose time has come, or None."""
        if self._heap and self._heap[0].when <= self.clock():
            return heapq.heappop(self._heap)
        return None

    def next_in(self) -> float | None:
        """Seconds until the earliest action (0 if due; None if there is none)."""
        if not self._heap:
            return None
        return max(self._heap[0].when - self.clock(), 0.0)

    def clear(self) -> int:
        """Drop every action; how many there were."""
        n = len(self._heap)
        self._heap.clear()
        return n

    def __len__(self) -> int:
        return len(self._heap)


class Scheduler:
    """Runs actions at their time on one thread.

    log_path: where each action is written when it runs (JSON lines; None: nowhere)
    lock: held while an action runs (the control plane's, so actions and requests alternate)
    clock: monotonic seconds; wall: the time written in the log (epoch seconds)
    """

    def __init__(self, log_path: str | None, lock: threading.RLock,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.agenda = Agenda(clock)
        self.lock = lock
        self.wall = wall
        self.log_path = log_path
        self.errors: list[str] = []
        self.ran: list[dict[str, Any]] = []     # the log, in memory too
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopping = False

    def at(self, delay: float, label: dict[str, Any], run: Callable[[], object]) -> None:
        """Run `run` in `delay` seconds (0: as soon as the thread gets to it)."""
        with self._wake:
            self.agenda.add(delay, label, run)
            self._wake.notify()
        self._ensure_thread()

    def run_due(self) -> int:
        """Run every action whose time has come, in order; how many ran (the thread's work;
        tests call it with their own clock)."""
        n = 0
        while True:
            with self._wake:
                due = None if self._stopping else self.agenda.pop_due()
            if due is None:
                return n
            self._run(due)
            n += 1

    def pending(self) -> int:
        """Actions not run yet."""
        with self._wake:
            return len(self.agenda)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to run (True), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> int:
        """End the thread and drop what was still due; how many were dropped."""
        with self._wake:
            self._stopping = True
            dropped = self.agenda.clear()
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)
        return dropped

    def log(self, label: dict[str, Any], when: float | None = None) -> None:
        """Write one line to the log without running anything (an event's start, a probe's
        verdict). when: its time (epoch seconds; None: now)"""
        row = {"time": round(self.wall() if when is None else when, 6), **label}
        self.ran.append(row)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, separators=(",", ":")) + "\n")

    # -- the thread ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._wake:
            if self._stopping or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, name="control-plane-clock",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping:
                    wait = self.agenda.next_in()
                    if wait == 0:
                        break
                    self._wake.wait(wait)   # None: until something is added
                if self._stopping:
                    return
            self.run_due()

    def _run(self, due: Due) -> None:
        with self.lock:
            if self._stopping:
                return
            began = self.wall()
            try:
                done = due.run()
                if due.label.get("quiet"):
                    return
                skipped = {"skipped": True} if done is False else {}
                self.log({**due.label, **skipped, "took_s": round(self.wall() - began, 4)},
                         began)
            except Exception as exc:   # one action failing must not stop the clock
                msg = f"{due.label}: {type(exc).__name__}: {exc}"
                self.errors.append(msg)
                self.log({**due.label, "error": msg,
                          "traceback": traceback.format_exc(limit=5)}, began)
