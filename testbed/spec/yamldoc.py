"""A YAML document that remembers where every value came from.

Specs are read from YAML written by people; every error must point at a file and a line. PyYAML's
composer keeps marks on nodes, so the document is built from the node tree, recording the line of
each key and value by its field path (a tuple such as ("services", "web", "nodePort")).
YAML mappings that repeat a key are reported here (PyYAML would keep the last one silently).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from testbed.errors import InputError, Problem

Path = tuple  # a field path, e.g. ("services", "web", "port")

MAX_FILE_BYTES = 4 * 1024 * 1024


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
    lines: dict = field(default_factory=dict)

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


def nearest(word: str, choices) -> str | None:
    """The closest valid word, for 'did you mean' hints."""
    found = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def read_document(file: str) -> Document:
    """Read and parse one YAML file; raise InputError (one line) if it cannot be read at all."""

    def fail(line: int, what: str, fix: str):
        raise InputError([Problem(file, line, "", what, fix)])

    if os.path.isdir(file):
        fail(0, "is a directory, not a YAML file", "give the path of a .yaml file inside it")
    try:
        size = os.path.getsize(file)
        if size > MAX_FILE_BYTES:
            fail(0, f"file is {size} bytes, larger than the {MAX_FILE_BYTES} allowed",
                 "a topology is a short description; generate fewer, larger deployments")
        with open(file, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        fail(0, "no such file", "check the path (see topologies/ for shipped examples)")
    except PermissionError:
        fail(0, "cannot be read (permission denied)", "make the file readable")
    except OSError as exc:
        fail(0, f"cannot be read ({exc.strerror})", "check the path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        fail(line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", "save the file as UTF-8")
    if "\x00" in text:
        fail(text[: text.index("\x00")].count("\n") + 1, "contains a NUL byte",
             "this is not a text file; give a YAML file")
    return parse_document(file, text)


def parse_document(file: str, text: str) -> Document:
    """Parse YAML text into a Document (one line per problem on failure)."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 0
            what = (exc.problem or exc.context or "invalid YAML").strip()
            raise InputError([Problem(file, line, "", f"YAML syntax error: {what}",
                                      "fix the YAML syntax on that line (indentation, colons, quotes)")])
        except yaml.YAMLError as exc:
            raise InputError([Problem(file, 0, "", f"YAML error: {exc}", "fix the YAML syntax")])
        if node is None:
            raise InputError([Problem(file, 1, "", "file is empty",
                                      "write a topology (see topologies/minimal.yaml)")])
        doc = Document(file, None)
        problems: list[Problem] = []
        doc.data = _build(loader, node, (), doc, problems)
        if problems:
            raise InputError(problems)
        return doc
    finally:
        loader.dispose()


def _build(loader, node, path: Path, doc: Document, problems: list) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(doc.file, key_node.start_mark.line + 1, _dotted(path),
                                        "a key must be a plain name", "use a plain name as key"))
                continue
            key = loader.construct_object(key_node, deep=True)
            key = str(key) if not isinstance(key, str) else key
            sub = path + (key,)
            if key in out:
                problems.append(Problem(doc.file, key_node.start_mark.line + 1, _dotted(sub),
                                        f"'{key}' is given twice (first on line {doc.lines[sub]})",
                                        "names must be unique; rename or remove one"))
                continue
            doc.lines[sub] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, sub, doc, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), doc, problems) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(Problem(doc.file, node.start_mark.line + 1, _dotted(path),
                                f"cannot read value ({exc})", "write a plain value"))
        return None


_dotted = dotted
