"""Durations in experiment files: always with a unit ('250us', '500ms', '1.5s', '2m'; a bare 0
is fine), unlike topology files where a bare number is milliseconds (docs/experiments.md).

    seconds: the converter (a range in seconds); fmt_s: a duration as messages write it
"""

from __future__ import annotations

import re
from typing import Any

from testbed.spec.fields import Converter

_DURATION_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s|m|min)\s*")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}


def seconds(low: float = 0.0, high: float = 3600.0) -> Converter[float]:
    """A duration with a unit ('500ms', '5s', '2m'; a bare 0 is fine) in seconds."""
    def convert(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a duration like 5s, got true/false {raw!r}")
        if isinstance(raw, (int, float)):
            if raw != 0:
                raise ValueError(f"{raw!r} has no unit")
            value = 0.0
        elif isinstance(raw, str):
            match = _DURATION_RE.fullmatch(raw)
            if not match:
                raise ValueError(f"'{raw}' is not a duration like 5s or 500ms")
            value = float(match.group(1)) * _UNIT_S[match.group(2)]
        else:
            raise ValueError(f"expected a duration like 5s, got {type(raw).__name__} {raw!r}")
        if value < low or value > high:
            raise ValueError(f"{raw} is outside {fmt_s(low)}-{fmt_s(high)}")
        return value
    return convert


def fmt_s(value: float) -> str:
    """A duration in seconds as messages write it (250ms, 5s)."""
    if value and value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"
