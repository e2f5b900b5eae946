"""Reading typed fields out of a Document, collecting every problem with its line.

Shared by the topology and experiment parsers so both speak the same error style.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

from testbed.errors import InputError, Problem
from testbed.spec.yamldoc import Document, Path, dotted

NAME_RE = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")   # used with fullmatch: '$' allows a "\n"
_MISSING = object()
T = TypeVar("T")
Converter = Callable[[Any], T]   # raw YAML value -> typed value; ValueError says what is wrong


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The choice a typo was meant to be, or None when nothing is close enough to say
    "did you mean": the same word in another case or with '-'/'_' (nodeport, node_port),
    a unique prefix of three letters or more (container), or a few letters off (linkz, Locale;
    one letter for words of four letters or fewer, so 'mode' does not become 'nodes')."""
    word = str(word)
    norm = _normal(word)
    choices = sorted(str(c) for c in choices)
    same = [c for c in choices if _normal(c) == norm]
    if same:
        return same[0]
    if len(norm) >= 3:
        prefixed = [c for c in choices if _normal(c).startswith(norm)]
        if len(prefixed) == 1:
            return prefixed[0]
    allowed = 1 if len(norm) <= 4 else 2 if len(norm) <= 10 else 3
    best = None
    for choice in choices:
        dist = _distance(norm, _normal(choice))
        if dist <= allowed and (best is None or dist <= best[0]):   # a tie: the later name
            best = (dist, choice)                                   # (az-c: az-b, not az-a)
    return best[1] if best else None


def _normal(word: str) -> str:
    return word.lower().replace("-", "").replace("_", "")


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) from a to b."""
    if abs(len(a) - len(b)) > 3:
        return 4
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            row.append(cost)
        prev2, prev = prev, row
    return prev[-1]


def did_you_mean(word: str, choices: Iterable[str], otherwise: str) -> str:
    """A fix: "did you mean 'x'?" for a close typo, else the otherwise text."""
    hint = close_match(word, choices)
    return f"did you mean '{hint}'?" if hint else otherwise


class Reader:
    """Walks a Document and turns fields into typed values, remembering every problem.

    A reader never stops at the first problem: it records it, returns a harmless value, and
    lets the caller go on, so one run of `cnlb validate` lists everything that is wrong.
    """

    def __init__(self, doc: Document):
        self.doc = doc
        self.problems: list[Problem] = []

    # -- reporting -----------------------------------------------------------------------
    def problem(self, path: Path, what: str, fix: str) -> None:
        self.problems.append(self.doc.problem(tuple(path), what, fix))

    def raise_if_any(self) -> None:
        if self.problems:
            raise InputError(self.problems)

    # -- lookup --------------------------------------------------------------------------
    def value(self, path: Path) -> Any:
        data = self.doc.data
        for part in path:
            if isinstance(data, dict) and part in data:
                data = data[part]
            elif isinstance(data, list) and isinstance(part, int) and part < len(data):
                data = data[part]
            else:
                return _MISSING
        return data

    def has(self, path: Path) -> bool:
        """Whether the file writes this field (even as null)."""
        return self.value(path) is not _MISSING

    def mapping(self, path: Path, allowed: Collection[str] | None,
                required: Iterable[str] = (), what: str = "section",
                hints: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A mapping at path whose keys must be in allowed (None = any key); {} if absent.

        hints: unknown key -> the fix to print for it (a key that belongs elsewhere)
        """
        data = self.value(path)
        if data is _MISSING or data is None:
            for key in required:
                self.problem(tuple(path) + (key,), "missing required field", f"add '{key}:'")
            return {}
        if not isinstance(data, dict):
            self.problem(path, f"expected a mapping ({what}), got {kind_of(data)}",
                         "write it as 'key: value' lines")
            return {}
        if allowed is not None:
            for key in data:
                if key in allowed:
                    continue
                if hints and key in hints:
                    fix = hints[key]
                elif not allowed:
                    fix = f"{dotted_or_root(path)} takes no fields; remove '{key}'"
                else:
                    fix = did_you_mean(key, allowed, f"valid keys: {', '.join(sorted(allowed))}")
                self.problem(tuple(path) + (key,), f"unknown key '{key}'", fix)
        for key in required:
            if key not in data:
                self.problem(tuple(path) + (key,), "missing required field", f"add '{key}:'")
        return data

    def get(self, path: Path, key: str | int, convert: Converter[Any], default: Any = _MISSING,
            fix: str = "") -> Any:
        """The field path.key converted; the default if absent; None (and a problem) if bad."""
        full = tuple(path) + (key,)
        raw = self.value(full)
        if raw is _MISSING:
            if default is _MISSING:
                self.problem(full, "missing required field", f"add '{key}:'")
                return None
            return default
        try:
            return convert(raw)
        except (ValueError, TypeError) as exc:
            self.problem(full, str(exc), fix or "see the format in README.md")
            return None


def dotted_or_root(path: Path) -> str:
    """A path as the user reads it in a sentence ('clients.client1', 'the file')."""
    return dotted(path) if path else "the file"


def kind_of(value: object) -> str:
    """A value's YAML kind, for messages: a mapping, a list, a string..."""
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# -- converters: raise ValueError with the 'what is wrong' part ------------------------------

def integer(low: int | None = None, high: int | None = None) -> Converter[int]:
    def convert(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expected a whole number, got {kind_of(raw)} {raw!r}")
        if low is not None and raw < low or high is not None and raw > high:
            raise ValueError(f"{raw} is outside {low}-{high}")
        return raw
    return convert


def number(low: float | None = None, high: float | None = None) -> Converter[float]:
    def convert(raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {kind_of(raw)} {raw!r}")
        if not math.isfinite(raw):   # YAML's .nan and .inf compare false with every bound
            raise ValueError(f"expected a number, got {raw!r}")
        if low is not None and raw < low or high is not None and raw > high:
            raise ValueError(f"{raw} is outside {low}-{high}")
        return float(raw)
    return convert


def boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {kind_of(raw)} {raw!r}")
    return raw


def choice(*options: str) -> Converter[str]:
    def convert(raw: Any) -> str:
        if raw not in options:
            hint = close_match(raw, options) if isinstance(raw, str) else None
            extra = f" (did you mean '{hint}'?)" if hint else ""
            raise ValueError(f"{raw!r} is not one of {', '.join(options)}{extra}")
        return raw
    return convert


def text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"expected a non-empty string, got {kind_of(raw)} {raw!r}")
    return raw


def network(raw: Any) -> ipaddress.IPv4Network:
    if not isinstance(raw, str):
        raise ValueError(f"expected a CIDR like 192.168.0.0/24, got {kind_of(raw)} {raw!r}")
    try:
        net = ipaddress.IPv4Network(raw, strict=False)
    except ValueError:
        raise ValueError(f"'{raw}' is not an IPv4 CIDR") from None
    if "/" not in raw:
        raise ValueError(f"'{raw}' has no prefix length")
    if net.network_address != ipaddress.IPv4Address(raw.split("/")[0]):
        raise ValueError(f"'{raw}' has host bits set (the network is {net})")
    return net


def address(raw: Any) -> ipaddress.IPv4Address:
    if not isinstance(raw, str):
        raise ValueError(f"expected an IPv4 address, got {kind_of(raw)} {raw!r}")
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise ValueError(f"'{raw}' is not an IPv4 address") from None


def duration_ms(raw: Any) -> float:
    """'5ms', '1s', '250us' or a number of milliseconds."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw):
            raise ValueError(f"expected a duration like 5ms, got {raw!r}")
        value = float(raw)
    elif isinstance(raw, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*", raw)
        if not match:
            raise ValueError(f"'{raw}' is not a duration like 5ms")
        unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}[match.group(2)]
        value = float(match.group(1)) * unit
    else:
        raise ValueError(f"expected a duration like 5ms, got {kind_of(raw)} {raw!r}")
    if value < 0 or value > 10_000:
        raise ValueError(f"{raw} is outside 0-10s")
    return value


def name(max_len: int) -> Converter[str]:
    """A DNS-1123 label short enough to become an interface or host name."""
    def convert(raw: Any) -> str:
        if not isinstance(raw, str) or not NAME_RE.fullmatch(raw):
            raise ValueError(f"{raw!r} is not a valid name (lower-case letters, digits, '-')")
        if len(raw) > max_len:
            raise ValueError(f"'{raw}' is longer than {max_len} characters")
        return raw
    return convert


_GO_DURATION_RE = re.compile(r"(?:[0-9]*\.?[0-9]+(?:ns|us|µs|ms|s|m|h))+")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(high_s: float) -> Converter[float]:
    """A duration as Kubernetes' components write theirs (Go's time.ParseDuration: '1s',
    '500ms', '5m', '1m30s'; 0 alone needs no unit), in seconds, at most high_s."""
    def convert(raw: Any) -> float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == 0:
            return 0.0
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raise ValueError(f"{raw!r} has no unit")
        if not isinstance(raw, str) or not _GO_DURATION_RE.fullmatch(raw.strip()):
            raise ValueError(f"expected a duration like 1s or 500ms, got {kind_of(raw)} {raw!r}")
        value = sum(float(n) * _GO_UNITS[u]
                    for n, u in re.findall(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)", raw))
        if not math.isfinite(value) or value > high_s:
            raise ValueError(f"{raw} is longer than {format_seconds(high_s)}")
        return value
    return convert


def format_seconds(value: float) -> str:
    """Seconds as the file writes them back: 300ms, 1s, 1m30s, 1h."""
    if value == 0:
        return "0s"
    if value < 1:
        return f"{value * 1000:g}ms"
    if value < 60 or value % 60:
        return f"{value:g}s" if value < 60 else f"{int(value // 60)}m{value % 60:g}s"
    if value % 3600:
        return f"{int(value // 60)}m"
    return f"{int(value // 3600)}h"
