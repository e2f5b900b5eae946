"""report.md and report.html of a fixed run directory (tests/data/report/run), word for word.

The run holds what the report's sections must cope with: a metric with and without an
interval, a variant missing a metric, a ratio over a zero mean, a unit only the records give,
workloads outside the experiment's list, scaling groups, pod shares, nested environment
facts, faults with Markdown and HTML characters, drawn and skipped figures. After an intended
change to the report, rewrite the expected files with `python -m tests.unit.test_report` and
read the diff.
"""

import os
import shutil
import sys

import pytest

from testbed.analysis.report import to_html, to_markdown, write_report
from testbed.paths import REPO

DATA = os.path.join(REPO, "tests", "data", "report")
EXPECTED = ("report.md", "report.html")


def _written(run_dir: str) -> dict[str, str]:
    shutil.copytree(os.path.join(DATA, "run"), run_dir)
    write_report(run_dir)
    out = {}
    for name in EXPECTED:
        with open(os.path.join(run_dir, name), encoding="utf-8") as fh:
            out[name] = fh.read()
    return out


@pytest.mark.parametrize("name", EXPECTED)
def test_report_of_a_fixed_run_is_unchanged(tmp_path, name):
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        expected = fh.read()
    assert _written(str(tmp_path / "run"))[name] == expected


def test_report_does_not_draw_figures_when_the_index_exists(tmp_path):
    run = str(tmp_path / "run")
    _written(run)
    assert sorted(os.listdir(os.path.join(run, "figures"))) == ["index.json"]


def test_unknown_blocks_are_left_out():
    blocks = [("h1", "x"), ("video", "y"), ("p", "z")]
    assert to_markdown(blocks) == "# x\n\nz\n"
    assert "video" not in to_html(blocks) and "<p>z</p>" in to_html(blocks)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in _written(os.path.join(tmp, "run")).items():
            with open(os.path.join(DATA, name), "w", encoding="utf-8") as fh:
                fh.write(text)
            print(f"wrote {os.path.join(DATA, name)}", file=sys.stderr)
