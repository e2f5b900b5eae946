"""Errors a user can act on.

Every problem with a user's input is reported as one line:

    FILE:LINE: field.path: what is wrong — how to fix

and the command exits with status 2, without a traceback and without building anything.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file.

    file: the file's path as the user gave it
    line: 1-based line of the offending value (0 when the file has no lines to point at)
    path: dotted field path, e.g. services.web.nodePort
    what: what is wrong
    fix: how to fix it
    """

    file: str
    line: int
    path: str
    what: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        return _one_line(f"{where}:{field} {self.what} — {self.fix}")


def _one_line(text: str) -> str:
    """Control characters from a user's file (a key with a newline...) are shown escaped, so
    every problem stays one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class InputError(Exception):
    """Raised with every problem found in one or more input files."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(Exception):
    """A bad command line or an impossible request, reported as one line (exit 2)."""


class EnvironmentProblem(Exception):
    """The machine cannot do what was asked (not root, OVS not running, ...); the message says
    how to fix it (exit 3)."""
