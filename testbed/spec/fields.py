"""Reading typed fields out of a Document, collecting every problem with its line.

Shared by the topology and experiment parsers so both speak the same error style.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable

from testbed.errors import InputError, Problem
from testbed.spec.yamldoc import Document, nearest

NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_MISSING = object()


class Reader:
    """Walks a Document and turns fields into typed values, remembering every problem.

    A reader never stops at the first problem: it records it, returns a harmless value, and
    lets the caller go on, so one run of `cnlb validate` lists everything that is wrong.
    """

    def __init__(self, doc: Document):
        self.doc = doc
        self.problems: list[Problem] = []

    # -- reporting -----------------------------------------------------------------------
    def problem(self, path, what: str, fix: str) -> None:
        self.problems.append(self.doc.problem(tuple(path), what, fix))

    def raise_if_any(self) -> None:
        if self.problems:
            raise InputError(self.problems)

    # -- lookup --------------------------------------------------------------------------
    def value(self, path) -> Any:
        data = self.doc.data
        for part in path:
            if isinstance(data, dict) and part in data:
                data = data[part]
            elif isinstance(data, list) and isinstance(part, int) and part < len(data):
                data = data[part]
            else:
                return _MISSING
        return data

    def mapping(self, path, allowed, required=(), what="section") -> dict:
        """A mapping at path whose keys must be in allowed (None = any key); {} if absent."""
        data = self.value(path)
        if data is _MISSING or data is None:
            for key in required:
                self.problem(path, f"missing required field '{key}'", f"add '{key}:'")
            return {}
        if not isinstance(data, dict):
            self.problem(path, f"expected a mapping ({what}), got {_kind(data)}",
                         "write it as 'key: value' lines")
            return {}
        if allowed is not None:
            for key in data:
                if key not in allowed:
                    hint = nearest(key, allowed)
                    fix = f"did you mean '{hint}'?" if hint else \
                        f"valid keys: {', '.join(sorted(allowed))}"
                    self.problem(tuple(path) + (key,), f"unknown key '{key}'", fix)
        for key in required:
            if key not in data:
                self.problem(path, f"missing required field '{key}'", f"add '{key}:'")
        return data

    def get(self, path, key, convert: Callable[[Any], Any], default=_MISSING, fix="") -> Any:
        """The field path.key converted; the default if absent; None (and a problem) if bad."""
        full = tuple(path) + (key,)
        raw = self.value(full)
        if raw is _MISSING:
            if default is _MISSING:
                self.problem(path, f"missing required field '{key}'", f"add '{key}:'")
                return None
            return default
        try:
            return convert(raw)
        except (ValueError, TypeError) as exc:
            self.problem(full, str(exc), fix or "see the format in README.md")
            return None


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# -- converters: raise ValueError with the 'what is wrong' part ------------------------------

def integer(low: int | None = None, high: int | None = None):
    def convert(raw):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expected a whole number, got {_kind(raw)} {raw!r}")
        if low is not None and raw < low or high is not None and raw > high:
            raise ValueError(f"{raw} is outside {low}-{high}")
        return raw
    return convert


def number(low: float | None = None, high: float | None = None):
    def convert(raw):
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {_kind(raw)} {raw!r}")
        if low is not None and raw < low or high is not None and raw > high:
            raise ValueError(f"{raw} is outside {low}-{high}")
        return float(raw)
    return convert


def boolean(raw):
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {_kind(raw)} {raw!r}")
    return raw


def choice(*options):
    def convert(raw):
        if raw not in options:
            hint = nearest(str(raw), options) if isinstance(raw, str) else None
            extra = f" (did you mean '{hint}'?)" if hint else ""
            raise ValueError(f"{raw!r} is not one of {', '.join(options)}{extra}")
        return raw
    return convert


def text(raw):
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected a non-empty string, got {_kind(raw)} {raw!r}")
    return raw


def network(raw):
    if not isinstance(raw, str):
        raise ValueError(f"expected a CIDR like 192.168.0.0/24, got {_kind(raw)} {raw!r}")
    try:
        net = ipaddress.IPv4Network(raw, strict=False)
    except ValueError:
        raise ValueError(f"'{raw}' is not an IPv4 CIDR") from None
    if "/" not in raw:
        raise ValueError(f"'{raw}' has no prefix length")
    if net.network_address != ipaddress.IPv4Address(raw.split("/")[0]):
        raise ValueError(f"'{raw}' has host bits set (the network is {net})")
    return net


def address(raw):
    if not isinstance(raw, str):
        raise ValueError(f"expected an IPv4 address, got {_kind(raw)} {raw!r}")
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise ValueError(f"'{raw}' is not an IPv4 address") from None


def duration_ms(raw):
    """'5ms', '1s', '250us' or a number of milliseconds."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*", raw)
        if not match:
            raise ValueError(f"'{raw}' is not a duration like 5ms")
        value = float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 5ms, got {_kind(raw)} {raw!r}")
    if value < 0 or value > 10_000:
        raise ValueError(f"{raw} is outside 0-10s")
    return value


def name(max_len: int):
    """A DNS-1123 label short enough to become an interface or host name."""
    def convert(raw):
        if not isinstance(raw, str) or not NAME_RE.match(raw):
            raise ValueError(f"{raw!r} is not a valid name (lower-case letters, digits, '-')")
        if len(raw) > max_len:
            raise ValueError(f"'{raw}' is longer than {max_len} characters")
        return raw
    return convert
