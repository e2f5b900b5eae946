"""Is a run directory what report, plot and agree can read? One line per problem (exit 2).

meta.json must be a JSON object with the fields the readers rely on (META_FIELDS), of their
types; records.jsonl one record object per line. A last line cut without its newline is what a
crash mid-write leaves: a warning, and the line is left out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from testbed.analysis.records import FORMAT, GROUP_FIELDS
from testbed.errors import Problem

STATUSES = ("running", "ok", "failed", "interrupted")
_NONE = type(None)
_TEXT, _INT, _NUM = (str,), (int,), (int, float)
# meta.json fields the readers (report, plots, agree) rely on: name -> (accepted types, required)
META_FIELDS = {
    "format": (_INT, True), "status": (_TEXT, True), "variants": ((list,), True),
    "experiment": ((dict, _NONE), True),
    "run_id": ((str, _NONE), False), "started": ((str, _NONE), False),
    "finished": ((str, _NONE), False), "duration_s": ((int, float, _NONE), False),
    "service": ((str, _NONE), False), "topology": ((dict, _NONE), False),
    "plans": ((dict, _NONE), False), "environment": ((dict, _NONE), False),
    "git": ((dict, _NONE), False), "faults": ((list, _NONE), False),
}
EXPERIMENT_FIELDS = {
    "name": (str, _NONE), "kind": (str, _NONE), "topology": (str, _NONE),
    "repetitions": (int, _NONE), "seed": (int, _NONE), "variants": (list, _NONE),
    "workloads": (list, _NONE), "events": (list, _NONE),
}
# records.jsonl: name -> (accepted types, required)
RECORD_FIELDS = {
    "variant": (_TEXT, True), "metric": (_TEXT, True), "value": ((int, float, _NONE), True),
    "repetition": (_INT, False), "unit": ((str, _NONE), False),
    **{g: ((str, int, float, _NONE), False) for g in GROUP_FIELDS},
}
MAX_LINE_PROBLEMS = 20     # per file: a file of garbage gets a few lines, not one per line
_META_FIX = "restore the meta.json `cnlb run` wrote, or run the experiment again"
_RECORD_FIX = ("remove or repair that line (records.jsonl holds one JSON object per line, "
               "as `cnlb run` wrote them)")


@dataclass(frozen=True)
class RunCheck:
    """What is wrong with a run directory (problems: bad input, exit 2) and what was
    tolerated (warnings: a last line cut by a crash, as records are written as they come)."""
    problems: list
    warnings: list


def check_run_dir(run_dir: str) -> RunCheck:
    """Check what report, plot and agree read: meta.json (a JSON object with the fields in
    META_FIELDS, of their types) and records.jsonl (one record object per line). A last line
    without its newline is what a crash mid-write leaves: a warning, the line is left out."""
    meta_path = os.path.join(run_dir, "meta.json")
    if not os.path.isdir(run_dir) or not os.path.lexists(meta_path):
        what = ("no such directory" if not os.path.lexists(run_dir)
                else "not a run directory (no meta.json)")
        return RunCheck([Problem(run_dir, 0, "", what, "give results/<run-id> or results/latest")],
                        [])
    problems = _check_meta(meta_path)
    warns: list = []
    records = os.path.join(run_dir, "records.jsonl")
    if os.path.lexists(records):
        problems += _check_records(records, warns)
    return RunCheck(problems, warns)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _type_ok(value, types: tuple) -> bool:
    """bool is an int to Python, but true is no repetition count or format number."""
    return not isinstance(value, bool) and isinstance(value, types)


def _wanted(types: tuple) -> str:
    names = {str: "text", int: "a whole number", float: "a number", list: "a list",
             dict: "an object", _NONE: "null"}
    words = [names[t] for t in types if not (t is int and float in types)]
    return " or ".join(words)


def _key_line(lines: list, key: str, after: int = 0) -> int:
    """1-based line of `"key":` (the first at or after line `after`), 0 if not found."""
    needle = json.dumps(key) + ":"
    for i in range(max(after - 1, 0), len(lines)):
        if needle in lines[i].replace('" :', '":'):
            return i + 1
    return 0


def _check_meta(path: str) -> list:
    meta, text, problems = _read_meta(path)
    if problems:
        return problems
    lines = text.splitlines()
    out, typed = _meta_types(path, meta, lines)
    return out + _meta_values(path, meta, lines, typed)


def _bad(path: str, line: int, field: str, what: str, fix: str = _META_FIX) -> list[Problem]:
    return [Problem(path, line, field, what, fix)]


def _read_meta(path: str) -> tuple[dict[str, Any], str, list[Problem]]:
    """(meta, its text, []) or ({}, "", the problem) when meta.json is not a JSON object."""
    def bad(line: int, what: str, fix: str) -> tuple[dict[str, Any], str, list[Problem]]:
        return {}, "", _bad(path, line, "", what, fix)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return bad(0, f"cannot be read ({exc.strerror or exc})",
                   "give a run directory whose meta.json you can read (sudo?)")
    if not raw.strip():
        return bad(0, "empty", _META_FIX)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return bad(0, "not UTF-8 text", _META_FIX)
    try:
        meta = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", 0)
        return bad(line, f"not JSON ({getattr(exc, 'msg', exc)})", _META_FIX)
    except RecursionError:
        return bad(0, "not JSON as `cnlb run` writes it (nested too deeply)", _META_FIX)
    if not isinstance(meta, dict):
        return bad(1, f"{_kind(meta)}, not an object", _META_FIX)
    return meta, text, []


def _meta_types(path: str, meta: dict[str, Any],
                lines: list[str]) -> tuple[list[Problem], set[str]]:
    """Problems of missing or mistyped fields, and the fields present with the right type."""
    out: list[Problem] = []
    typed: set[str] = set()   # present with the right type: their values are checked next
    for name, (types, required) in META_FIELDS.items():
        if name not in meta:
            if required:
                out += _bad(path, 0, name, "missing", _META_FIX)
        elif not _type_ok(meta[name], types):
            out += _bad(path, _key_line(lines, name), name,
                        f"{_kind(meta[name])}, not {_wanted(types)}", _META_FIX)
        else:
            typed.add(name)
    return out, typed


def _meta_values(path: str, meta: dict[str, Any], lines: list[str],
                 typed: set[str]) -> list[Problem]:
    """Problems of the values of the fields whose type is right."""
    def bad(line: int, field: str, what: str, fix: str = _META_FIX) -> list[Problem]:
        return _bad(path, line, field, what, fix)
    out: list[Problem] = []
    if "format" in typed and not 1 <= meta["format"] <= FORMAT:
        out += bad(_key_line(lines, "format"), "format",
                   f"{meta['format']} is not a format this cnlb reads (1 to {FORMAT})",
                   "read it with the cnlb that wrote it" if meta["format"] > FORMAT else _META_FIX)
    if "status" in typed and meta["status"] not in STATUSES:
        out += bad(_key_line(lines, "status"), "status", f"{meta['status']!r} is not one of "
                   + ", ".join(STATUSES), _META_FIX)
    for field, wanted in (("variants", str), ("faults", dict)):
        for i, v in enumerate((meta[field] or []) if field in typed else []):
            if not isinstance(v, wanted):
                out += bad(_key_line(lines, field), f"{field}[{i}]",
                           f"{_kind(v)}, not {'a variant name' if wanted is str else 'an object'}",
                           _META_FIX)
    for name, plan in ((meta["plans"] or {}) if "plans" in typed else {}).items():
        if not isinstance(plan, dict):
            out += bad(_key_line(lines, "plans"), f"plans.{name}", f"{_kind(plan)}, not an object",
                       _META_FIX)
    experiment = (meta["experiment"] or {}) if "experiment" in typed else {}
    at = _key_line(lines, "experiment")
    for name, types in EXPERIMENT_FIELDS.items():
        if name in experiment and not _type_ok(experiment[name], types):
            out += bad(_key_line(lines, name, at) or at, f"experiment.{name}",
                       f"{_kind(experiment[name])}, not {_wanted(types)}", _META_FIX)
    return out


def _check_records(path: str, warns: list) -> list:
    """Problems of records.jsonl, MAX_LINE_PROBLEMS at most (and one line saying how many more)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return [Problem(path, 0, "", f"cannot be read ({exc.strerror or exc})",
                        "give a run directory whose records.jsonl you can read (sudo?)")]
    lines = raw.split(b"\n")
    cut = len(lines) - 1 if lines[-1].strip() else None   # the last line has no newline
    out: list = []
    more = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        found = _record_problems(line)
        if not found:
            continue
        if i == cut and found[0][0] == "":
            warns.append(f"{path}:{i + 1}: warning: the last line was cut (the run stopped while "
                         "writing it); read without it")
            continue
        if len(out) >= MAX_LINE_PROBLEMS:
            more += 1
            continue
        out += [Problem(path, i + 1, field, what, _RECORD_FIX) for field, what in found]
    if more:
        out.append(Problem(path, 0, "", f"{more} more line(s) with problems like these",
                           _RECORD_FIX))
    return out


def _record_problems(line: bytes) -> list:
    """[(field, what)] wrong with one line of records.jsonl; field "" when it is no JSON object."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return [("", "not UTF-8 text")]
    except ValueError as exc:
        return [("", f"not JSON ({getattr(exc, 'msg', exc)})")]
    except RecursionError:
        return [("", "not a record (nested too deeply)")]
    if not isinstance(row, dict):
        return [("", f"{_kind(row)}, not a record object")]
    out = []
    for name, (types, required) in RECORD_FIELDS.items():
        if name not in row:
            if required:
                out.append((name, "missing"))
        elif not (_type_ok(row[name], types) or (name == "value" and isinstance(row[name], bool))):
            out.append((name, f"{_kind(row[name])}, not {_wanted(types)}"))
    return out
