"""The house rules (tools/architecture.py): layers, no cycles, sizes, module paths in strings."""

import importlib.util
import os

import pytest

from testbed.paths import REPO

spec = importlib.util.spec_from_file_location("architecture",
                                              os.path.join(REPO, "tools", "architecture.py"))
arch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(arch)


def test_no_module_imports_a_higher_or_sibling_layer():
    assert arch.layer_breaches() == []


def test_no_import_cycles():
    assert arch.cycles() == []


def test_sizes_within_limits():
    assert arch.size_breaches() == []


def test_module_paths_in_strings_exist():
    found = {m for _, m in arch.module_strings()}
    # the checker must see the strings that start processes, or it proves nothing
    assert {"testbed.cli", "controllers.run", "testbed.kubernetes.dataplane.healthserver"} <= found
    assert arch.string_breaches() == []


@pytest.mark.parametrize("importer, imported, bad", [
    ("testbed.spec.topology", "testbed.emulation.cluster", True),     # lower imports higher
    ("testbed.kubernetes.cni.vxlan", "testbed.cloud.fabric", True),  # sibling of the same rank
    ("testbed.emulation.cluster", "testbed.plan.addresses", False),
    ("testbed.cli.commands", "testbed.experiments.runner", False),
])
def test_the_layer_rule_itself(tmp_path, monkeypatch, importer, imported, bad):
    fake = tmp_path / "fake.py"
    fake.write_text(f"import {imported}\n")
    monkeypatch.setattr(arch, "python_files", lambda *roots: iter([str(fake)]))
    monkeypatch.setattr(arch, "module_name", lambda path: importer)
    assert bool(arch.layer_breaches()) is bad


def test_a_cycle_is_found(tmp_path, monkeypatch):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import testbed.plan.addresses\n")
    b.write_text("import testbed.spec.topology\n")
    names = {str(a): "testbed.spec.topology", str(b): "testbed.plan.addresses"}
    monkeypatch.setattr(arch, "python_files", lambda *roots: iter([str(a), str(b)]))
    monkeypatch.setattr(arch, "module_name", lambda path: names[path])
    assert arch.cycles() and "testbed.plan.addresses" in arch.cycles()[0]


def test_a_missing_module_string_is_found(tmp_path, monkeypatch):
    f = tmp_path / "x.py"
    missing = "testbed." + "no_such_module"   # spelled apart, or this file would be a breach
    f.write_text(f'argv = [sys.executable, "-m", "{missing}"]\n')
    monkeypatch.setattr(arch, "python_files", lambda *roots: iter([str(f)]))
    assert arch.string_breaches() and "no_such_module" in arch.string_breaches()[0]
