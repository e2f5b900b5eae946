"""The controller's module paths and layers: strings that name modules, and who imports whom."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Where a controllers.* module path may be written as a string: the controller itself, the
# testbed that launches it, the leftover check's process markers, the benchmarks.
SCANNED = ["controllers", "testbed", "tests/integration", "bench"]
MODULE_PATH = re.compile(r"(?<![\w.])controllers(?:\.[a-z_][a-z0-9_]*)+")

# controllers/__init__.py's module map, lower layers first: a module imports only earlier ones.
LAYERS = ["config", "health", "openflow", "topology", "icmp", "conntrack", "routing", "selection",
          "lb", "bgp", "vpc", "service", "rest", "app", "run"]


def _strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _module_paths() -> dict[str, list[str]]:
    """controllers.* module path written in a string -> where ('file:line')."""
    found: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, text in _strings(path):
                for name in MODULE_PATH.findall(text):
                    found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def test_every_controllers_module_path_in_a_string_exists():
    found = _module_paths()
    # The scan sees the launcher's `-m controllers.run` and the app module run_apps loads.
    assert {"controllers.run", "controllers.app"} <= set(found)
    missing = {name: where for name, where in found.items()
               if importlib.util.find_spec(name) is None}
    assert not missing, f"module paths that name no module: {missing}"


def test_the_module_run_apps_loads_defines_the_app():
    from os_ken.base import app_manager

    from controllers import run

    cls = app_manager.AppManager().load_app(run.APP_MODULE)
    assert cls is not None and cls.__name__ == "VpcController"   # run._on_signal looks it up


def test_the_launcher_and_the_checker_child_import_no_os_ken():
    """os-ken's hub type is fixed at its first import: run.main sets it first (and the checker
    child in the LB host's namespace needs nothing but the standard library)."""
    code = ("import sys, controllers.run, controllers.health; "
            "sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('os_ken', 'eventlet', 'routes', 'webob')) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_imports_only_lower_layers(module):
    path = ROOT / "controllers" / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "controllers":
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("controllers."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {a.name.split(".")[1] for a in node.names
                         if a.name.startswith("controllers.")}
    higher = {m for m in imported if m in LAYERS and LAYERS.index(m) >= LAYERS.index(module)}
    assert not higher, f"controllers.{module} imports higher layers {sorted(higher)}"


def test_the_layer_list_names_every_module():
    modules = {p.stem for p in (ROOT / "controllers").glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS)


def test_the_launcher_refuses_a_bad_fabric_in_one_line(tmp_path):
    """Runs `python -m controllers.run` up to the config check: every import on its path works."""
    bad = tmp_path / "fabric.json"
    bad.write_text('{"mode": "overlay"}')
    proc = subprocess.run([sys.executable, "-m", "controllers.run", "--config", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (f"controllers.run: {bad}.mode: 'overlay' is not one of nodeport, "
                           f"container-native\n")
