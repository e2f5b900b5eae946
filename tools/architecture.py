"""The house rules that a linter does not check: layers, import cycles, sizes, module strings.

    python tools/architecture.py        prints one line per breach; exit 1 if any

- layers: a module never imports a higher layer (LAYERS, lowest first), nor a sibling of the
  same rank (kubernetes and cloud know nothing of each other);
- no import cycle between testbed's modules (imports inside functions count too);
- sizes: no module over 600 lines, no function over 80, no class over 300 (data models named in
  pyproject.toml's [tool.cnlb.sizes] are excepted);
- module paths written as strings (`-m testbed.x`, `run_apps(["controllers.x"])`) name modules
  that exist, so they move with the files.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import tomllib
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# testbed's layers, lowest first; a module may import its own layer's modules and lower layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("testbed.errors", "testbed.paths"),
    ("testbed.spec.topology",),
    ("testbed.plan.addresses",),
    ("testbed.kubernetes", "testbed.cloud", "testbed.analysis"),
    ("testbed.emulation",),
    ("testbed.experiments",),
    ("testbed.cli",),
)
MAX_MODULE, MAX_FUNCTION, MAX_CLASS = 600, 80, 300
MODULE_STRING = re.compile(
    r"""["'](?:-m["'],\s*["'])?((?:testbed|controllers)(?:\.[a-z_]+)+)["']""")


def python_files(*roots: str) -> Iterator[str]:
    for root in roots:
        for dirpath, dirs, files in os.walk(os.path.join(REPO, root)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path: str) -> set[str]:
    """Every testbed module a file imports, at any depth of the file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("testbed"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("testbed"):
            for alias in node.names:   # `from testbed.x import y` may name a submodule y
                sub = f"{node.module}.{alias.name}"
                found.add(sub if importlib.util.find_spec(node.module) and _is_module(sub)
                          else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.add("<relative>")
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return rank
    return None


def area_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def layer_breaches() -> list[str]:
    out = []
    for path in python_files("testbed"):
        mod = module_name(path)
        own = layer_of(mod)
        for imp in sorted(imports_of(path)):
            if imp == "<relative>":
                out.append(f"{mod}: relative import — write `from testbed.x import y`")
                continue
            theirs = layer_of(imp)
            if own is None or theirs is None:
                continue
            if theirs > own or (theirs == own and area_of(imp) != area_of(mod)):
                out.append(f"{mod} imports {imp}: a lower or sibling layer may not import it")
    return out


def cycles() -> list[str]:
    graph = {module_name(p): {i for i in imports_of(p) if i != "<relative>"}
             for p in python_files("testbed")}
    graph = {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[str] = []
    counter = [0]

    def visit(v: str) -> None:   # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append("import cycle: " + " -> ".join(sorted(comp)))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def size_exceptions() -> set[str]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        conf = tomllib.load(fh)
    return set(conf.get("tool", {}).get("cnlb", {}).get("sizes", {}).get("data-models", []))


def size_breaches() -> list[str]:
    allowed = size_exceptions()
    out = []
    for path in python_files("testbed", "controllers"):
        rel = os.path.relpath(path, REPO)
        src = open(path, encoding="utf-8").read()
        if src.count("\n") > MAX_MODULE:
            out.append(f"{rel}: {src.count(chr(10))} lines (at most {MAX_MODULE})")
        for node in ast.walk(ast.parse(src, path)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1 \
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else 0
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and length > MAX_FUNCTION:
                out.append(f"{rel}:{node.lineno}: function {node.name} is {length} lines "
                           f"(at most {MAX_FUNCTION})")
            if isinstance(node, ast.ClassDef) and length > MAX_CLASS \
                    and f"{module_name(path)}.{node.name}" not in allowed:
                out.append(f"{rel}:{node.lineno}: class {node.name} is {length} lines "
                           f"(at most {MAX_CLASS})")
    return out


def module_strings() -> list[tuple[str, str]]:
    """(file, module) for every module path written as a string in code."""
    out = []
    for path in python_files("testbed", "controllers", "tests", "bench"):
        for mod in MODULE_STRING.findall(open(path, encoding="utf-8").read()):
            out.append((os.path.relpath(path, REPO), mod))
    return out


def _names_something(dotted: str) -> bool:
    """A module, or an attribute of one (mock.patch("testbed.x.y.name"))."""
    if _is_module(dotted):
        return True
    module, _, attr = dotted.rpartition(".")
    return bool(module) and _is_module(module) and hasattr(importlib.import_module(module), attr)


def string_breaches() -> list[str]:
    sys.path.insert(0, REPO)
    return [f"{f}: names module {m!r}, which does not exist" for f, m in module_strings()
            if not _names_something(m)]


def main() -> int:
    sys.path.insert(0, REPO)
    problems = layer_breaches() + cycles() + size_breaches() + string_breaches()
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
