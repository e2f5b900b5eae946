"""A stage of bring-up that runs beside the others: Background."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """A function running in its own thread from the moment this is made; join() waits for it
    and raises what it raised, in the caller's thread.

    What needs nothing of the stages that follow starts early and is joined where it is due
    (kube-proxy's first sync does not wait for the VPC's switches, as on a real node)."""

    def __init__(self, fn: Callable[[], None], name: str):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as err:   # handed to whoever joins
            self._error = err

    def join(self, timeout: float | None = None) -> None:
        """Wait for it (at most `timeout` seconds); re-raise its exception, once."""
        self._thread.join(timeout)
        err, self._error = self._error, None
        if err is not None:
            raise err
