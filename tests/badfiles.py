"""The broken-file corpora: each file's first line says what its one-line error must be."""

import re


def expectation(path):
    """(line, text) from the file's '# expect line N: text' header."""
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace")
    m = re.match(r"# expect line (\d+): (.*)", first)
    assert m, f"{path} lacks its '# expect line N: text' header"
    return int(m.group(1)), m.group(2).strip()


LINE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): .+ — .+$")
