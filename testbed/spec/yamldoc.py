"""A YAML document that remembers where every value came from, read with bounded cost.

`read_document(file)` reads a file once and builds a Document (plain data and the line of every
field path, such as ("services", "web", "nodePort")) from the parser's events, one at a time
(libyaml's parser when PyYAML has it), not from PyYAML's node tree: so keys keep their text,
repeated keys are reported, a key beside a merge overrides the merged one, and size, depth,
aliases and tags are bounded (MAX_VALUES, MAX_DEPTH, ...): one-line problems, never a
traceback or a runaway. What this means for people writing files: docs/yaml.md.
"""

from __future__ import annotations

import difflib
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

import yaml

from testbed.errors import InputError, Problem

Path = tuple[str | int, ...]  # a field path, e.g. ("services", "web", "port")

# A topology or experiment is a few kilobytes (the largest shipped is under 2 KB; 250 nodes and
# 5,000 pods fit in well under 100 KB). These bound what any file may cost to read.
MAX_FILE_BYTES = 1024 * 1024
MAX_VALUES = 50_000         # keys, scalars and collections, each alias counted as a copy
MAX_DEPTH = 32              # collections inside collections (a topology needs 4)
MAX_PROBLEMS = 100          # reading stops after this many (a file of junk needs no more lines)


def dotted(path: Path) -> str:
    """The path as the user reads it: services.web.port, links[0].bw."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass
class Document:
    """A parsed YAML file: its plain data and the line of every field path.

    file: the path as the user gave it (used in messages)
    data: plain Python data (dicts, lists, scalars)
    lines: field path -> 1-based line
    """

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int:
        """The line of a path, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def problem(self, path: Path, what: str, fix: str) -> Problem:
        return Problem(self.file, self.line(path), dotted(path), what, fix)


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid word, for 'did you mean' hints."""
    found = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def read_document(file: str) -> Document:
    """Read one YAML file once and parse it; raise InputError (one line) if it cannot be read.

    The file is read as a stream, at most MAX_FILE_BYTES + 1 bytes, whatever it is: a regular
    file, /dev/stdin, a pipe from `<(...)`, or /dev/zero (which never ends). Its size as
    reported by stat is not trusted, so the same bound holds for all of them."""

    def fail(line: int, what: str, fix: str) -> NoReturn:
        raise InputError([Problem(file, line, "", what, fix)])

    if os.path.isdir(file):
        fail(0, "is a directory, not a YAML file", "give the path of a .yaml file inside it")
    try:
        with open(file, "rb") as fh:
            raw = _read_at_most(fh, MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        fail(0, "no such file", "check the path (see topologies/ for shipped examples)")
    except IsADirectoryError:
        fail(0, "is a directory, not a YAML file", "give the path of a .yaml file inside it")
    except PermissionError:
        fail(0, "cannot be read (permission denied)", "make the file readable")
    except OSError as exc:
        fail(0, f"cannot be read ({exc.strerror or exc})", "check the path")
    if len(raw) > MAX_FILE_BYTES:
        fail(0, f"file is larger than the {MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES >> 20} MiB) "
             "allowed",
             "a topology or experiment is a few kilobytes of YAML; give the right file, or "
             "describe fewer, larger deployments (replicas: N)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        fail(line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", "save the file as UTF-8")
    if "\x00" in text:
        fail(text[: text.index("\x00")].count("\n") + 1, "contains a NUL byte",
             "this is not a text file; give a YAML file")
    return parse_document(file, text)


def _read_at_most(fh: IO[bytes], limit: int) -> bytes:
    """Up to limit bytes from a stream (a pipe may return them in several pieces)."""
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = fh.read(limit - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def parse_document(file: str, text: str) -> Document:
    """Parse YAML text into a Document (one line per problem on failure)."""
    return _Builder(file, text).build()


# -- building a Document from parser events ---------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_MAPPING_TAGS = {None, "!", _TAG + "map"}
_SEQUENCE_TAGS = {None, "!", _TAG + "seq"}
_MERGE = _TAG + "merge"
_STR = _TAG + "str"
# libyaml's parser when PyYAML has it (5-6 times faster: bench/yaml_limits.py), else PyYAML's own
_LOADER = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class _Slot:
    """Markers for what a mapping expects next (besides a key's name)."""


_KEY, _DROP, _MERGE_VALUE = _Slot(), _Slot(), _Slot()


class _Stop(Exception):
    """Reading ends here: the rest would cost too much or cannot be trusted."""


# a `<<` value waiting for its mapping to close: (value, path, first and last index in order, line)
_Merge = tuple[Any, Path | None, int, int, int]


@dataclass
class _Frame:
    """A mapping or sequence being built.

    path: its field path (None: it will be thrown away, e.g. a mapping used as a key)
    start: len(order) when it began; order[start:] are the paths of its contents
    values: the value count when it began (its size, for an anchor, is the difference)
    height: levels of collections from here down, including what aliases copied
    key: a mapping's pending key name, or _KEY / _DROP / _MERGE_VALUE
    explicit: a mapping's keys written out (name -> line), for duplicates and merge overrides
    merges: a mapping's `<<` values: (value, path, first and last index in order, line)
    """

    path: Path | None
    data: Any
    anchor: str | None
    line: int
    start: int
    values: int
    height: int = 1
    key: Any = _KEY
    explicit: dict[str, int] = field(default_factory=dict)
    merges: list[_Merge] = field(default_factory=list)


@dataclass
class _Anchor:
    """A finished anchored value an alias copies: the data, the lines of its contents relative
    to it, how many values it holds and how deep it goes."""

    data: Any
    entries: list[tuple[Path, int]]
    size: int
    height: int


class _Builder:
    """Turns the parser's events into a Document, one event at a time and without recursion, so
    its cost is bounded by MAX_VALUES and MAX_DEPTH, whatever the file."""

    def __init__(self, file: str, text: str):
        self.file, self.text = file, text
        self.doc = Document(file, None)
        self.order: list[Path] = []    # recorded paths, in the order their lines were recorded
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Anchor] = {}
        self.values = 0
        self.problems: list[Problem] = []
        self.loader: Any = None

    def build(self) -> Document:
        try:
            self.loader = _LOADER(self.text)
            self._events()
        except yaml.YAMLError as exc:
            raise InputError([_yaml_problem(self.file, self.text, exc)]) from None
        except _Stop as stop:            # a problem that ends reading, or too many problems
            raise InputError(self.problems + ([stop.args[0]] if stop.args[0] else [])) from None
        finally:
            if self.loader is not None:
                self.loader.dispose()
        if self.problems:
            raise InputError(self.problems)
        return self.doc

    # -- the event loop --------------------------------------------------------------------
    def _events(self) -> None:
        get = self.loader.get_event
        get()                                   # StreamStartEvent
        if isinstance(get(), yaml.StreamEndEvent):
            raise _Stop(Problem(self.file, 1, "", "file is empty",
                                "write a topology (see topologies/minimal.yaml) or an experiment "
                                "(see experiments/compare.yaml)"))
        while True:
            event = get()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                self._scalar(event)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                self._open(event, kind is yaml.MappingStartEvent)
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                self._close()
            elif kind is yaml.AliasEvent:
                self._alias(event)
            elif kind is yaml.DocumentEndEvent:
                after = get()
                if not isinstance(after, yaml.StreamEndEvent):
                    self._stop(after.start_mark.line + 1, None,
                               "a second YAML document in one file (after '---')",
                               "keep one document per file: remove the '---' and what follows")
                return

    def _slot(self) -> tuple[Path | None, str]:
        """(path, role) of the next value: role is root, item, key, value or merge."""
        if not self.stack:
            return (), "root"
        top = self.stack[-1]
        if isinstance(top.data, list):
            return _join(top.path, len(top.data)), "item"
        if top.key is _KEY:
            return None, "key"
        if top.key is _MERGE_VALUE:
            return _join(_join(top.path, "<<"), len(top.merges)), "merge"
        if top.key is _DROP:
            return None, "value"
        return _join(top.path, top.key), "value"

    def _scalar(self, event: Any) -> None:
        line = event.start_mark.line + 1
        path, role = self._slot()
        self._count(1, line, path)
        if role == "key":
            self._key(event, line)
            return
        start = len(self.order)
        self._record(path, line)
        value = self._scalar_value(event, line, path)
        if event.anchor:
            self.anchors[event.anchor] = _Anchor(value, [], 1, 0)
        self._place(value, path, start, line)

    def _key(self, event: Any, line: int) -> None:
        """A mapping key: its name is the text as written ('on' stays 'on', not True)."""
        top = self.stack[-1]
        tag = event.tag
        if tag in (None, "!"):
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        elif tag not in _SCALAR_TAGS and tag != _MERGE:
            self._problem(line, top.path, f"key '{_short(event.value)}' has tag "
                          f"'{_show_tag(tag)}', which is not supported",
                          "remove the tag; a key is a plain name")
            top.key = _DROP
            return
        if tag == _MERGE:
            top.key = _MERGE_VALUE
            return
        name = event.value
        if top.path is not None:
            if name in top.explicit:
                self._problem(line, _join(top.path, name),
                              f"'{name}' is given twice (first on line {top.explicit[name]})",
                              "names must be unique; rename or remove one")
                top.key = _DROP
                return
            top.explicit[name] = line
            self._record(_join(top.path, name), line)
        top.key = name

    def _scalar_value(self, event: Any, line: int, path: Path | None) -> Any:
        """A scalar as SafeLoader would construct it; an explicit tag must be a plain type."""
        tag = event.tag
        explicit = tag not in (None, "!")
        if not explicit:
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        elif tag not in _SCALAR_TAGS:
            self._problem(line, path, f"tag '{_show_tag(tag)}' is not supported",
                          "remove the tag and write a plain value (quote it to keep it as text)")
            return None
        if tag == _STR:
            return event.value
        construct = yaml.SafeLoader.yaml_constructors.get(tag)
        if construct is None:                   # e.g. a bare '<<' as a value: plain text
            return event.value
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return construct(self.loader, node)
        except Exception:  # noqa: BLE001 - ValueError, KeyError, ... from a bad literal
            if not explicit:                    # e.g. 2024-13-45 looks like a date: keep the text
                return event.value
            self._problem(line, path, f"'{_short(event.value)}' is not a valid {_show_tag(tag)}",
                          "remove the tag, or write a value of that type")
            return None

    def _open(self, event: Any, mapping: bool) -> None:
        line = event.start_mark.line + 1
        path, _ = self._slot()             # a key's path is None: a mapping key is thrown away
        self._count(1, line, path)
        if len(self.stack) >= MAX_DEPTH:
            self._stop(line, path and path[:1], f"nested more than {MAX_DEPTH} levels deep",
                       "a topology or experiment is a few levels deep; close the brackets or "
                       "fix the indentation")
        allowed = _MAPPING_TAGS if mapping else _SEQUENCE_TAGS
        if event.tag not in allowed:
            self._problem(line, path, f"tag '{_show_tag(event.tag)}' is not supported",
                          f"remove the tag and write a plain {'mapping' if mapping else 'list'}")
        start = len(self.order)
        self._record(path, line)
        self.stack.append(_Frame(path, {} if mapping else [], event.anchor, line, start,
                                 self.values))

    def _close(self) -> None:
        frame = self.stack.pop()
        if frame.merges:
            frame.data = self._merged(frame)
        if frame.anchor:
            base = len(frame.path) if frame.path is not None else 0
            entries = [] if frame.path is None else [
                (p[base:], self.doc.lines[p]) for p in self.order[frame.start:]]
            self.anchors[frame.anchor] = _Anchor(frame.data, entries, self.values - frame.values,
                                                 frame.height)
        if self.stack:
            self.stack[-1].height = max(self.stack[-1].height, frame.height + 1)
        self._place(frame.data, frame.path, frame.start, frame.line)

    def _alias(self, event: Any) -> None:
        line = event.start_mark.line + 1
        path, role = self._slot()
        name = event.anchor
        if role == "key":
            self._count(1, line, None)
            self._problem(line, self.stack[-1].path, f"alias '*{name}' used as a key",
                          "a key is a plain name; write the name out")
            self.stack[-1].key = _DROP
            return
        anchor = self.anchors.get(name)
        where = path if path is not None else (self.stack[-1].path if self.stack else ())
        if anchor is None:
            if any(f.anchor == name for f in self.stack):
                self._problem(line, where, f"alias '*{name}' refers to the value that contains it",
                              "an alias copies a finished value; write this value out instead")
            else:
                self._problem(line, where, f"alias '*{name}' has no anchor '&{name}' before it",
                              f"put '&{name}' on an earlier value, or fix the name")
            anchor = _Anchor(None, [], 1, 0)
        self._count(anchor.size, line, where, alias=name)
        if len(self.stack) + anchor.height > MAX_DEPTH:
            self._stop(line, where, f"alias '*{name}' nests the file more than {MAX_DEPTH} "
                       "levels deep", "write the values out instead of nesting aliases")
        start = len(self.order)
        self._record(path, line)
        if path is not None:
            for rel, rel_line in anchor.entries:
                self._record(path + rel, rel_line)
        if self.stack:
            self.stack[-1].height = max(self.stack[-1].height, anchor.height + 1)
        self._place(_copy(anchor.data), path, start, line)

    def _place(self, value: Any, path: Path | None, start: int, line: int) -> None:
        """Put a finished value where its parent expects it."""
        if not self.stack:
            self.doc.data = value
            return
        top = self.stack[-1]
        if isinstance(top.data, list):
            top.data.append(value)
        elif top.key is _KEY:                  # a mapping or list used as a key
            self._problem(line, top.path, "a key must be a plain name", "use a plain name as key")
            top.key = _DROP
        elif top.key is _DROP:
            top.key = _KEY
        elif top.key is _MERGE_VALUE:
            top.merges.append((value, path, start, len(self.order), line))
            top.key = _KEY
        else:
            top.data[top.key] = value
            top.key = _KEY

    def _merged(self, frame: _Frame) -> dict[str, Any]:
        """A mapping with its `<<` values merged in, as YAML says: a key written out overrides a
        merged one; among merged mappings the first to give a key wins. The merged values'
        lines are recorded under this mapping's path."""
        merged: dict[str, Any] = {}
        source: dict[str | int, Path | None] = {}   # key -> path of the mapping it came from
        spans: list[tuple[Path | None, int, int, bool]] = []
        for value, vpath, first, last, line in frame.merges:
            if isinstance(value, dict):
                parts = [(value, vpath)]
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                parts = [(v, _join(vpath, i)) for i, v in enumerate(value)]
            else:
                self._problem(line, _join(frame.path, "<<"),
                              f"'<<' merges a mapping, got {_kind(value)}",
                              "point '<<' at an anchored mapping (<<: *defaults) or a list of "
                              "them, or remove it")
                continue
            for part, ppath in parts:
                for key, val in part.items():
                    if key not in merged:
                        merged[key] = val
                        source[key] = ppath
            spans.append((vpath, first, last, isinstance(value, list)))
        if frame.path is not None:
            for vpath, first, last, is_list in spans:
                assert vpath is not None   # a kept mapping's `<<` values have paths too
                base = len(vpath) + (1 if is_list else 0)
                for p in self.order[first:last]:
                    if len(p) > base and p[:len(vpath)] == vpath:
                        key = p[base]
                        if key not in frame.explicit and source.get(key) == p[:base]:
                            self._record(frame.path + p[base:], self.doc.lines[p])
        merged.update(frame.data)
        return merged

    # -- bookkeeping -----------------------------------------------------------------------
    def _record(self, path: Path | None, line: int) -> None:
        if path is not None and path not in self.doc.lines:
            self.doc.lines[path] = line
            self.order.append(path)

    def _count(self, n: int, line: int, path: Path | None, alias: str | None = None) -> None:
        self.values += n
        if self.values <= MAX_VALUES:
            return
        if alias:
            self._stop(line, path, f"alias '*{alias}' takes the file past {MAX_VALUES} values "
                       "(each alias counts as a copy of what it names)",
                       "write the values out; a topology needs far fewer")
        self._stop(line, path, f"the file holds more than {MAX_VALUES} values",
                   "a topology or experiment is short; describe fewer, larger deployments "
                   "(replicas: N)")

    def _problem(self, line: int, path: Path | None, what: str, fix: str) -> None:
        self.problems.append(Problem(self.file, line, dotted(path or ()), what, fix))
        if len(self.problems) >= MAX_PROBLEMS:
            self.problems.append(Problem(self.file, line, "", f"stopped reading after "
                                         f"{MAX_PROBLEMS} problems", "fix the ones above first"))
            raise _Stop(None)

    def _stop(self, line: int, path: Path | None, what: str, fix: str) -> NoReturn:
        raise _Stop(Problem(self.file, line, dotted(path or ()), what, fix))

def _yaml_problem(file: str, text: str, exc: yaml.YAMLError) -> Problem:
    """One line for what the YAML parser raised (a bad character, a syntax error)."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        at = text.find(char)
        line = text[:at].count("\n") + 1 if at >= 0 else 0
        what = "control character" if unicodedata.category(char) == "Cc" else "character"
        return Problem(file, line, "", f"contains the {what} U+{ord(char):04X}",
                       "remove it; YAML text cannot hold it")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = " ".join((exc.problem or exc.context or "invalid YAML").split())
        return Problem(file, line, "", f"YAML syntax error: {what}",
                       "fix the YAML syntax on that line (indentation, colons, quotes)")
    return Problem(file, 0, "", f"YAML error: {' '.join(str(exc).split())}",
                   "fix the YAML syntax")


def _join(path: Path | None, part: str | int) -> Path | None:
    return None if path is None else path + (part,)


def _copy(data: Any) -> Any:
    """A fresh copy of what an alias names (its depth is bounded by MAX_DEPTH)."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"{type(value).__name__} {_short(repr(value))}"


def _short(text: str, limit: int = 40) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag
