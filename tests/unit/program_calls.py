"""Which programs the project starts, found by reading its source (no root, nothing run).

Call: one process start, seen at a file and line: the program (argv[0], or a word of a shell
  string) and where it was found.
scan(root): every program the Python files under root's source folders and the shell scripts in
  workloads/ start, plus the places whose program cannot be told from the source.
shell_commands(text): the simple commands of a shell string, as word lists.

Starting points are the calls that start a process: subprocess's run/Popen/call/check_call/
check_output, os.exec*/os.system, a Mininet host's popen/cmd/sendCmd/pexec, and the cluster's
run_script/run_scripts (their lines go to a file that a node's shell runs). Their arguments are
followed through local and module names, f-strings, list building (append, +=, *starred),
dictionaries, for-loops, and calls to the project's own functions with their arguments bound,
so a wrapper (`def sh(*argv): subprocess.run(argv)`) or a renderer (testbed.kubernetes.cni.plugins's command lines)
is followed to where the text is written. In a program's arguments, a program it runs is found
too: `sh -c SCRIPT`, `nsenter ... -- PROG`, `ip netns exec NS PROG`, `mnexec -a PID PROG`,
`unshare -n PROG`, `taskset -c CPU PROG`, `cnlb exec HOST -- PROG`.
A part not known statically reads "{}" (`iptables-{}-restore`).
"""

from __future__ import annotations

import ast
import itertools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SOURCE_DIRS = ("testbed", "controllers", "bench", "tests", "workloads")
HOLE = "{}"
PARAM_HOLE = "{param}"      # a part a parameter of the function being read fills
MAX_ALTERNATIVES = 24
MAX_DEPTH = 10

# Calls that start a process: (kind, position of the argument that says what runs).
# argv: a list whose first item is the program; shell: one shell string; lines: a list of shell
# lines (run as a script); scripts: a dict of such lists.
SUBPROCESS = {"run": ("argv", 0), "Popen": ("argv", 0), "call": ("argv", 0),
              "check_call": ("argv", 0), "check_output": ("argv", 0)}
OS_CALLS = {"execvp": ("argv", 1), "execv": ("argv", 1), "execvpe": ("argv", 1),
            "execve": ("argv", 1), "system": ("shell", 0), "popen": ("shell", 0)}
HOST_METHODS = {"popen": ("argv", 0), "pexec": ("argv", 0), "cmd": ("shell", 0),
                "sendCmd": ("shell", 0)}
# testbed.emulation.cluster.Cluster writes these lines to a file and has the host's shell run it
SCRIPT_METHODS = {"run_script": ("lines", 1), "run_scripts": ("scripts", 0)}

STANDARD_BIN = ("/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/")


@dataclass(frozen=True)
class Call:
    program: str
    where: str      # path:line of the call that starts it


# -- values: what an expression may be, as far as the source tells ---------------------------

@dataclass(frozen=True)
class Text:
    s: str


@dataclass(frozen=True)
class Seq:
    items: tuple            # each item: a frozenset of alternatives
    tail: object = None     # what a *starred part that could not be spread was (Param/Unknown)


@dataclass(frozen=True)
class Mapping:
    values: frozenset


@dataclass(frozen=True)
class Param:
    """A parameter of the function being read with no caller bound: its callers say."""
    func: int
    name: str


@dataclass(frozen=True)
class Func:
    info: FuncInfo


class _Unknown:
    def __repr__(self) -> str:
        return "Unknown"


UNKNOWN = _Unknown()


def _ordered(values: Iterable) -> list:
    """Alternatives in a fixed order (sets of strings iterate differently from run to run)."""
    return sorted(values, key=repr)


def _cap(values: Iterable) -> frozenset:
    out = frozenset(values)
    if len(out) > MAX_ALTERNATIVES:
        return frozenset(_ordered(out)[:MAX_ALTERNATIVES])
    return out


# -- the project's source, indexed -----------------------------------------------------------

@dataclass(eq=False)
class FuncInfo:
    node: ast.AST
    module: Module
    parent: FuncInfo | None
    cls: str | None
    _assigns: dict | None = None
    _defs: dict | None = None
    _calls: list | None = None
    _returns: list | None = None
    _params: set | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def params(self) -> list[str]:
        a = self.node.args
        return [p.arg for p in a.posonlyargs + a.args]

    @property
    def vararg(self) -> str | None:
        return self.node.args.vararg.arg if self.node.args.vararg else None

    def all_params(self) -> set:
        if self._params is None:
            a = self.node.args
            self._params = set(self.params) | {p.arg for p in a.kwonlyargs}
            self._params |= {x.arg for x in (a.vararg, a.kwarg) if x}
        return self._params

    def calls(self) -> list:
        if self._calls is None:
            self._calls = [n for n in own_nodes(self.node.body) if isinstance(n, ast.Call)]
        return self._calls

    def returns(self) -> list:
        if self._returns is None:
            self._returns = [n.value for n in own_nodes(self.node.body)
                             if isinstance(n, ast.Return) and n.value is not None]
        return self._returns

    def assigns(self) -> dict:
        if self._assigns is None:
            self._assigns = collect_assigns(self.node.body)
        return self._assigns

    def local_defs(self) -> dict:
        if self._defs is None:
            self._defs = {n.name: n for n in own_nodes(self.node.body)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        return self._defs


@dataclass(eq=False)
class Module:
    path: str
    dotted: str
    tree: ast.Module
    assigns: dict = field(default_factory=dict)
    imports: dict = field(default_factory=dict)     # local name -> (dotted module, attr|None)


def own_nodes(body: list) -> Iterator[ast.AST]:
    """Every node of a body in source order, not descending into nested functions, classes or
    lambdas (the nested definitions themselves are yielded)."""
    todo = list(reversed(body))
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        todo += reversed(list(ast.iter_child_nodes(node)))


def collect_assigns(body: list) -> dict:
    """name -> list of (how, expr): '=' a value, 'item' a dict value, 'add' list items added
    (+=, extend), 'append' one item, 'iter' each item of, 'values' each value of a dict."""
    out: dict = {}

    def put(name, how, expr):
        out.setdefault(name, []).append((how, expr))

    def target(t, value):
        if isinstance(t, ast.Name):
            put(t.id, "=", value)
        elif isinstance(t, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(t.elts):
                for a, b in zip(t.elts, value.elts):
                    target(a, b)
            else:
                for a in t.elts:
                    target(a, None)
        elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
            put(t.value.id, "item", value)
        elif isinstance(t, ast.Starred):
            target(t.value, None)

    for node in own_nodes(body):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                target(t, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target(node.target, node.value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            put(node.target.id, "add", node.value)
        elif isinstance(node, ast.NamedExpr):
            put(node.target.id, "=", node.value)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            it = node.iter
            if isinstance(node.target, ast.Name):
                put(node.target.id, "iter", it)
            elif (isinstance(node.target, ast.Tuple) and len(node.target.elts) == 2
                  and isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute)
                  and it.func.attr == "items" and isinstance(node.target.elts[1], ast.Name)):
                put(node.target.elts[1].id, "values", it.func.value)
                target(node.target.elts[0], None)
            else:
                target(node.target, None)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    target(item.optional_vars, None)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.args):
            name, attr = node.func.value.id, node.func.attr
            if attr == "append":
                put(name, "append", node.args[0])
            elif attr == "insert" and len(node.args) == 2:
                put(name, "append", node.args[1])
            elif attr == "extend":
                put(name, "add", node.args[0])
    return out


class Project:
    """The parsed source of a checkout, with its functions and imports indexed."""

    def __init__(self, root: str):
        self.root = root
        self.modules: dict[str, Module] = {}
        self.funcs: list[FuncInfo] = []
        self.info: dict[int, FuncInfo] = {}
        self.by_name: dict[str, list[FuncInfo]] = {}
        self.methods: dict[str, list[FuncInfo]] = {}
        self.toplevel: dict[tuple, FuncInfo] = {}      # (dotted module, name) -> function
        self.class_attrs: dict[tuple, list] = {}       # (module, class, attr) -> exprs
        self.classes: dict[tuple, ast.ClassDef] = {}   # (module, class) -> its definition
        for path in python_files(root):
            self._add(path)

    def _add(self, path: str) -> None:
        rel = os.path.relpath(path, self.root)
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=rel)
        dotted = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
        mod = Module(rel, dotted, tree)
        self.modules[dotted] = mod
        mod.assigns = collect_assigns([n for n in tree.body
                                       if not isinstance(n, (ast.FunctionDef, ast.ClassDef))])
        package = dotted if rel.endswith("__init__.py") else dotted.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    mod.imports[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0], None)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(p for p in parts + ([node.module] if node.module else []) if p)
                for a in node.names:
                    mod.imports[a.asname or a.name] = (base, a.name)
        self._index(tree.body, mod, None, None)

    def _index(self, body, mod: Module, parent: FuncInfo | None, cls: str | None) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                info = FuncInfo(node, mod, parent, cls)
                self.funcs.append(info)
                self.info[id(node)] = info
                (self.methods if cls else self.by_name).setdefault(node.name, []).append(info)
                if parent is None and cls is None:
                    self.toplevel[(mod.dotted, node.name)] = info
                inner = [n for n in own_nodes(node.body)
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
                self._index(inner, mod, info, None)
            elif isinstance(node, ast.ClassDef):
                self.classes.setdefault((mod.dotted, node.name), node)
                for n in ast.walk(node):
                    if (isinstance(n, ast.Assign) and len(n.targets) == 1
                            and isinstance(n.targets[0], ast.Attribute)
                            and isinstance(n.targets[0].value, ast.Name)
                            and n.targets[0].value.id == "self"):
                        self.class_attrs.setdefault((mod.dotted, node.name, n.targets[0].attr),
                                                    []).append(n.value)
                self._index(node.body, mod, parent, node.name)

    def method(self, module: str, cls: str, name: str) -> FuncInfo | None:
        return next((f for f in self.methods.get(name, [])
                     if f.cls == cls and f.module.dotted == module), None)

    def resolve_import(self, mod: Module, name: str):
        """A name imported into mod: ('module', Module) or ('def', FuncInfo) or ('const', ...)."""
        if name not in mod.imports:
            return None
        base, attr = mod.imports[name]
        if attr is None:
            return ("module", self.modules.get(base)) if base in self.modules else None
        if f"{base}.{attr}" in self.modules:
            return ("module", self.modules[f"{base}.{attr}"])
        if (base, attr) in self.toplevel:
            return ("def", self.toplevel[(base, attr)])
        if (base, attr) in self.classes:
            return ("class", base, attr)
        if base in self.modules and attr in self.modules[base].assigns:
            return ("const", self.modules[base], attr)
        return None


def python_files(root: str) -> list[str]:
    out = []
    for top in SOURCE_DIRS:
        for dirpath, dirnames, files in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".py")]
    return out


def shell_scripts(root: str) -> list[str]:
    out = []
    for top in SOURCE_DIRS:
        for dirpath, dirnames, files in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".sh")]
    return out


# -- evaluation ---------------------------------------------------------------------------

@dataclass
class Ctx:
    """Where an expression is read: its function (None: module level) and what the caller
    bound its parameters to (name -> (expr, Ctx) or frozenset of values)."""
    module: Module
    func: FuncInfo | None
    env: dict
    depth: int = 0


class Reader:
    """Reads a Project's calls for the programs they start (calls), and the starts whose
    program it cannot tell (unresolved)."""

    def __init__(self, project: Project):
        self.p = project
        self.active: set = set()
        self.calls: set[Call] = set()
        self.unresolved: set[tuple] = set()     # (path, function, line, what)
        self.wrappers: set[int] = set()         # functions whose arguments say what runs
        self.param_hits: set[int] = set()
        self.origin: str | None = None
        self.reading: int | None = None     # the function read with its parameters unbound

    # values ---------------------------------------------------------------------------
    def ev(self, expr: ast.AST | None, ctx: Ctx) -> frozenset:
        if expr is None or ctx.depth > MAX_DEPTH:
            return frozenset({UNKNOWN})
        key = (id(expr), id(ctx.env), ctx.depth)
        if key in self.active:
            return frozenset({UNKNOWN})
        self.active.add(key)
        try:
            return _cap(self._ev(expr, ctx)) or frozenset({UNKNOWN})
        finally:
            self.active.discard(key)

    def _ev(self, e: ast.AST, ctx: Ctx) -> Iterable:
        if isinstance(e, ast.Constant):
            return {Text(e.value)} if isinstance(e.value, str) else {UNKNOWN}
        if isinstance(e, ast.JoinedStr):
            return self._fstring(e, ctx)
        if isinstance(e, (ast.List, ast.Tuple)):
            return self._seq(e.elts, ctx)
        if isinstance(e, ast.Dict):
            return {Mapping(_cap(v for x in e.values if x is not None for v in self.ev(x, ctx)))}
        if isinstance(e, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            return self._comprehension(e, ctx)
        if isinstance(e, ast.IfExp):
            return self.ev(e.body, ctx) | self.ev(e.orelse, ctx)
        if isinstance(e, ast.BoolOp):
            return frozenset().union(*(self.ev(v, ctx) for v in e.values))
        if isinstance(e, ast.BinOp):
            return self._binop(e, ctx)
        if isinstance(e, ast.Name):
            return self.name(e.id, ctx)
        if isinstance(e, ast.Attribute):
            return self._attribute(e, ctx)
        if isinstance(e, ast.Call):
            return self._call_value(e, ctx)
        if isinstance(e, ast.Starred):
            return self.ev(e.value, ctx)
        return {UNKNOWN}

    def _fstring(self, e: ast.JoinedStr, ctx: Ctx) -> set:
        parts = []
        for v in e.values:
            if isinstance(v, ast.Constant):
                parts.append([v.value])
                continue
            values = self.ev(v.value, ctx)
            if all(isinstance(x, Param) for x in values):
                parts.append([PARAM_HOLE])      # the callers fill it: read with them
                continue
            texts = sorted(x.s for x in values if isinstance(x, Text))
            parts.append(texts if 0 < len(texts) <= 4 else [HOLE])
        combos = list(itertools.islice(itertools.product(*parts), MAX_ALTERNATIVES))
        return {Text("".join(c)) for c in combos}

    def _seq(self, elts: list, ctx: Ctx) -> set:
        items: list = []
        for el in elts:
            if not isinstance(el, ast.Starred):
                items.append(self.ev(el, ctx))
                continue
            spread = self.ev(el.value, ctx)
            seqs = [v for v in spread if isinstance(v, Seq) and v.tail is None]
            if len(seqs) == 1 and len(spread) == 1:
                items += list(seqs[0].items)
                continue
            if len(seqs) == 1 and seqs[0].items:
                items += list(seqs[0].items)
            tail = next((v for v in spread if isinstance(v, Param)), UNKNOWN)
            if isinstance(tail, Param) or not items:
                return {Seq(tuple(items), tail)}
            return {Seq(tuple(items), UNKNOWN)}
        return {Seq(tuple(items))}

    def _comprehension(self, e, ctx: Ctx) -> set:
        env = dict(ctx.env)
        for gen in e.generators:
            items = self.items_of(self.ev(gen.iter, Ctx(ctx.module, ctx.func, env, ctx.depth)))
            for name in _names(gen.target):
                env[name] = items if isinstance(gen.target, ast.Name) else frozenset({UNKNOWN})
        # one item standing for every item the comprehension makes
        return {Seq((self.ev(e.elt, Ctx(ctx.module, ctx.func, env, ctx.depth)),))}

    def _binop(self, e: ast.BinOp, ctx: Ctx) -> set:
        left, right = self.ev(e.left, ctx), self.ev(e.right, ctx)
        out = set()
        pairs = itertools.product(_ordered(left), _ordered(right))
        for a, b in itertools.islice(pairs, MAX_ALTERNATIVES):
            if isinstance(e.op, ast.Add) and isinstance(a, Text) and isinstance(b, Text):
                out.add(Text(a.s + b.s))
            elif isinstance(e.op, ast.Div) and isinstance(b, Text):
                out.add(Text((a.s if isinstance(a, Text) else HOLE) + "/" + b.s))
            elif isinstance(e.op, ast.Add) and isinstance(a, Seq):
                if a.tail is not None:
                    out.add(a)
                elif isinstance(b, Seq):
                    out.add(Seq(a.items + b.items, b.tail))
                else:
                    out.add(Seq(a.items, b if isinstance(b, Param) else UNKNOWN))
            else:
                out.add(UNKNOWN)
        return out

    def _attribute(self, e: ast.Attribute, ctx: Ctx) -> set:
        if isinstance(e.value, ast.Name):
            base = e.value.id
            if (base, e.attr) == ("sys", "executable"):
                return {Text("python3")}     # .venv's interpreter (setup makes it)
            found = self._module_of(base, ctx)
            if found is not None and e.attr in found.assigns:
                return self._module_name(found, e.attr, ctx.depth)
            if found is not None and (found.dotted, e.attr) in self.p.toplevel:
                return {Func(self.p.toplevel[(found.dotted, e.attr)])}
            if base == "self" and ctx.func is not None and ctx.func.cls:
                exprs = self.p.class_attrs.get((ctx.module.dotted, ctx.func.cls, e.attr), [])
                if exprs:
                    unbound = Ctx(ctx.module, ctx.func, {}, ctx.depth + 1)
                    return set().union(*(self.ev(x, unbound) for x in exprs))
        return {UNKNOWN}

    def _module_of(self, name: str, ctx: Ctx) -> Module | None:
        found = self.p.resolve_import(ctx.module, name)
        return found[1] if found and found[0] == "module" else None

    def _module_name(self, mod: Module, name: str, depth: int) -> frozenset:
        return self.assigned(mod.assigns[name], Ctx(mod, None, {}, depth + 1))

    def name(self, name: str, ctx: Ctx) -> frozenset:
        func = ctx.func
        if name in ctx.env:
            bound = ctx.env[name]
            if isinstance(bound, tuple):
                expr, where = bound
                return self.ev(expr, where) if expr is not None else frozenset({UNKNOWN})
            return bound
        while func is not None:
            if name in func.all_params():
                if func is ctx.func and ctx.depth == 0:
                    return frozenset({Param(id(func.node), name)})
                return frozenset({UNKNOWN})
            if name in func.assigns():
                return self.assigned(func.assigns()[name], Ctx(ctx.module, func, ctx.env
                                                               if func is ctx.func else {},
                                                               ctx.depth))
            if name in func.local_defs():
                return frozenset({Func(self._info(func.local_defs()[name]))})
            func = func.parent
        mod = ctx.module
        if name in mod.assigns:
            return self._module_name(mod, name, ctx.depth)
        if (mod.dotted, name) in self.p.toplevel:
            return frozenset({Func(self.p.toplevel[(mod.dotted, name)])})
        found = self.p.resolve_import(mod, name)
        if found and found[0] == "def":
            return frozenset({Func(found[1])})
        cls = (mod.dotted, name) if (mod.dotted, name) in self.p.classes else (
            found[1:] if found and found[0] == "class" else None)
        if cls is not None:         # constructing a project class runs its __init__
            init = self.p.method(cls[0], cls[1], "__init__")
            return frozenset({Func(init)} if init else {UNKNOWN})
        if found and found[0] == "const":
            return self._module_name(found[1], found[2], ctx.depth)
        return frozenset({UNKNOWN})

    def _info(self, node: ast.AST) -> FuncInfo:
        return self.p.info[id(node)]

    def assigned(self, how_exprs: list, ctx: Ctx) -> frozenset:
        """The value of a name from its assignments: '=' values, with the items appended or
        added later joined on (a list built up: its first item is from the '=')."""
        firsts = [v for how, x in how_exprs if how == "=" for v in self.ev(x, ctx)]
        extra: list = []
        items_of_dicts: list = []
        for how, x in how_exprs:
            if how == "append":
                extra.append(self.ev(x, ctx))
            elif how == "add":
                for v in self.ev(x, ctx):
                    if isinstance(v, Seq):
                        extra += list(v.items)
            elif how == "iter":
                extra_items = self.items_of(self.ev(x, ctx))
                firsts += list(extra_items)
            elif how == "values":
                for v in self.ev(x, ctx):
                    firsts += list(v.values) if isinstance(v, Mapping) else [UNKNOWN]
            elif how == "item":
                items_of_dicts += list(self.ev(x, ctx))
        out = set()
        for v in firsts:
            if isinstance(v, Seq) and extra and v.tail is None:
                out.add(Seq(v.items + tuple(extra)))
            elif isinstance(v, Mapping) and items_of_dicts:
                out.add(Mapping(_cap(v.values | frozenset(items_of_dicts))))
            else:
                out.add(v)
        if items_of_dicts and not any(isinstance(v, Mapping) for v in out):
            out.add(Mapping(_cap(items_of_dicts)))
        return _cap(out)

    def items_of(self, values: frozenset) -> frozenset:
        out = set()
        for v in values:
            if isinstance(v, Seq):
                for item in v.items:
                    out |= item
                if v.tail is not None:
                    out.add(UNKNOWN)
            elif isinstance(v, Mapping):
                out.add(UNKNOWN)      # iterating a dict gives its keys
            else:
                out.add(UNKNOWN)
        return _cap(out)

    def _call_value(self, e: ast.Call, ctx: Ctx) -> set:
        f = e.func
        if isinstance(f, ast.Name) and f.id in ("list", "tuple", "str", "sorted") and e.args:
            return set(self.ev(e.args[0], ctx))
        if isinstance(f, ast.Name) and f.id in ("Path", "PurePath") or (
                isinstance(f, ast.Attribute) and f.attr == "join"
                and isinstance(f.value, ast.Attribute) and f.value.attr == "path"):
            parts = [self.ev(a, ctx) for a in e.args]
            texts = ["".join(sorted(x.s for x in p if isinstance(x, Text))[:1]) or HOLE
                     for p in parts]
            return {Text("/".join(texts))}
        if isinstance(f, ast.Attribute) and f.attr in ("replace", "strip", "split", "join",
                                                         "format", "lower"):
            return self._str_method(e, ctx)
        out = set()
        for func in self.callees(e, ctx, values=True):
            env = self.bind(func, e, ctx)
            inner = Ctx(func.module, func, env, ctx.depth + 1)
            for value in func.returns():
                out |= self.ev(value, inner)
        return out or {UNKNOWN}

    def _str_method(self, e: ast.Call, ctx: Ctx) -> set:
        attr, recv = e.func.attr, self.ev(e.func.value, ctx)
        args = [self.ev(a, ctx) for a in e.args]
        out = set()
        for r in recv:
            if attr == "join" and isinstance(r, Text) and args:
                for v in args[0]:
                    if isinstance(v, Seq):
                        out.add(Text(r.s.join(_one_text(i) for i in v.items)))
                    else:
                        out.add(UNKNOWN)
            elif not isinstance(r, Text):
                out.add(UNKNOWN)
            elif attr == "split" and not args:
                out.add(Seq(tuple(frozenset({Text(w)}) for w in r.s.split())))
            elif attr in ("strip", "lower"):
                out.add(Text(getattr(r.s, attr)()))
            elif attr == "replace" and len(args) >= 2:
                for a, b in itertools.product(args[0], args[1]):
                    if isinstance(a, Text) and isinstance(b, Text):
                        out.add(Text(r.s.replace(a.s, b.s)))
                    else:
                        out.add(UNKNOWN)
            else:
                out.add(UNKNOWN)
        return out

    # functions ------------------------------------------------------------------------
    def callees(self, call: ast.Call, ctx: Ctx, values: bool = False) -> list[FuncInfo]:
        """The project functions a call may run. A name bound to a function (a parameter
        passed one, a nested def) is followed; a method call goes to every method of that
        name; a call through a parameter nobody bound goes to every function of its name."""
        f = call.func
        if isinstance(f, ast.Name):
            found = [v.info for v in self.name(f.id, ctx) if isinstance(v, Func)]
            if found:
                return found
            if self._is_unbound_param(f.id, ctx) and not values:
                return list(self.p.by_name.get(f.id, []))
            return []
        if isinstance(f, ast.Attribute):
            if isinstance(f.value, ast.Name):
                mod = self._module_of(f.value.id, ctx)
                if mod is not None:
                    info = self.p.toplevel.get((mod.dotted, f.attr))
                    return [info] if info else []
                if f.value.id in ("subprocess", "os", "sys", "asyncio", "json", "time", "shutil"):
                    return []
            methods = self.p.methods.get(f.attr, [])
            here = ctx.func
            while here is not None and here.cls is None:
                here = here.parent
            if isinstance(f.value, ast.Name) and f.value.id == "self" and here is not None:
                same = [m for m in methods if m.cls == here.cls and m.module is here.module]
                return same or methods
            if (isinstance(f.value, ast.Call) and isinstance(f.value.func, ast.Name)
                    and f.value.func.id == "super"):
                if here is None:
                    return []
                cdef = self.p.classes.get((here.module.dotted, here.cls))
                bases = {b.id for b in cdef.bases if isinstance(b, ast.Name)} if cdef else set()
                return [m for m in methods if m.cls in bases]
            if f.attr.startswith("__"):
                return []
            return methods
        return []

    def _is_unbound_param(self, name: str, ctx: Ctx) -> bool:
        return ctx.func is not None and name in ctx.func.all_params() and name not in ctx.env

    def bind(self, func: FuncInfo, call: ast.Call, ctx: Ctx) -> dict:
        """The callee's parameters bound to the call's arguments (unread until needed); a
        parameter not passed gets its default."""
        params = func.params
        if func.cls and params and params[0] in ("self", "cls") and (
                isinstance(call.func, ast.Attribute) or func.name == "__init__"):
            params = params[1:]
        positional: list = []           # (expr, ctx) or the values of a spread item
        complete = True
        for a in call.args:
            if not isinstance(a, ast.Starred):
                positional.append((a, ctx))
                continue
            spread = self.ev(a.value, ctx)
            seq = next(iter(spread)) if len(spread) == 1 else None
            if not isinstance(seq, Seq) or seq.tail is not None:
                complete = False
                break
            positional += list(seq.items)
        env: dict = dict(zip(params, positional))
        if func.vararg:
            rest = positional[len(params):]
            items = tuple(self.ev(*x) if isinstance(x, tuple) else x for x in rest)
            env[func.vararg] = frozenset({Seq(items, None if complete else UNKNOWN)})
        for kw in call.keywords:
            if kw.arg in func.all_params():
                env[kw.arg] = (kw.value, ctx)
        for name in func.all_params() - set(env):     # not passed: the default
            default = _default(func, name) if complete else None
            env[name] = (default, Ctx(func.module, func.parent, {}, ctx.depth + 1))
        return env

    # process starts -------------------------------------------------------------------
    def launcher(self, call: ast.Call, ctx: Ctx) -> tuple | None:
        f = call.func
        if not isinstance(f, ast.Attribute):
            return None
        recv = f.value.id if isinstance(f.value, ast.Name) else None
        if recv == "subprocess" and f.attr in SUBPROCESS:
            return SUBPROCESS[f.attr]
        if recv == "os" and f.attr in OS_CALLS:
            return OS_CALLS[f.attr]
        if recv in ("subprocess", "os", "asyncio", "sys"):
            return None
        if f.attr in HOST_METHODS:
            return HOST_METHODS[f.attr]
        if f.attr in SCRIPT_METHODS:
            return SCRIPT_METHODS[f.attr]
        return None

    def visit_call(self, call: ast.Call, ctx: Ctx, report: bool) -> None:
        where = f"{ctx.module.path}:{call.lineno}"
        spec = self.launcher(call, ctx)
        if spec is not None:
            kind, pos = spec
            arg = _arg(call, pos)
            shell = any(kw.arg == "shell" and isinstance(kw.value, ast.Constant) and kw.value.value
                        for kw in call.keywords)
            values = self.ev(arg, ctx) if arg is not None else frozenset({UNKNOWN})
            self.started(kind, values, where, ctx, report, shell)
        if ctx.depth >= MAX_DEPTH:
            return
        for func in self.callees(call, ctx):
            if id(func.node) not in self.wrappers:
                continue        # what it starts does not depend on its arguments: read once
            env = self.bind(func, call, ctx)
            inner = Ctx(func.module, func, env, ctx.depth + 1)
            key = ("visit", id(func.node), ctx.depth)
            if key in self.active:
                continue
            self.active.add(key)
            try:
                for node in func.calls():
                    self.visit_call(node, inner, report=False)
            finally:
                self.active.discard(key)

    def read_function(self, func: FuncInfo, report: bool) -> bool:
        """Read the calls of one function with its parameters unbound; True when what it
        starts depends on a parameter (then every call of it is read with the arguments)."""
        self.param_hits = set()
        self.reading = id(func.node)
        self.read_calls(func.calls(), Ctx(func.module, func, {}), report)
        return id(func.node) in self.param_hits

    def read_calls(self, calls: list, ctx: Ctx, report: bool) -> None:
        for node in calls:
            self.origin = f"{ctx.module.path}:{node.lineno}"    # what is found is filed here
            self.visit_call(node, ctx, report)

    def started(self, kind: str, values: frozenset, where: str, ctx: Ctx, report: bool,
                shell: bool = False) -> None:
        for v in values:
            if isinstance(v, Param):
                self.param_hits.add(v.func)     # the callers are read with it bound
                continue
            if kind == "argv":
                if isinstance(v, Seq):
                    self.argv(v, where, ctx, report)
                elif isinstance(v, Text) and shell:
                    self.shell(v.s, where, ctx, report)
                elif isinstance(v, Text):       # a string as argv: Mininet splits it at spaces
                    self.program((v.s.split() or [""])[0], where, ctx, report)
                else:
                    self.unknown(where, ctx, report, "argv")
            elif kind == "shell":
                if isinstance(v, Text):
                    self.shell(v.s, where, ctx, report)
                elif isinstance(v, Seq):        # cmd("ip", "link"): Mininet joins the words
                    self.shell(" ".join(_one_text(i) for i in v.items), where, ctx, report)
                else:
                    self.unknown(where, ctx, report, "shell text")
            elif kind == "lines":
                if isinstance(v, Seq):
                    for item in v.items:
                        self.started("shell", item, where, ctx, report)
                    if isinstance(v.tail, Param):
                        self.param_hits.add(v.tail.func)
                    elif v.tail is not None:
                        self.unknown(where, ctx, report, "script lines")
                else:
                    self.unknown(where, ctx, report, "script lines")
            elif kind == "scripts":
                if isinstance(v, Mapping):
                    self.started("lines", v.values, where, ctx, report)
                else:
                    self.unknown(where, ctx, report, "scripts")

    def unknown(self, where: str, ctx: Ctx, report: bool, what: str) -> None:
        if report:
            func = ctx.func.name if ctx.func else "<module>"
            self.unresolved.add((ctx.module.path, func, where, what))

    def program(self, word: str, where: str, ctx: Ctx, report: bool) -> None:
        if PARAM_HOLE in word:
            self.param_hits.add(self.reading)   # read again where the callers bind it
            return
        name = normalise(word)
        if name is None:
            self.unknown(where, ctx, report, f"program {word!r}")
        else:
            self.calls.add(Call(name, self.origin or where))

    def shell(self, text: str, where: str, ctx: Ctx, report: bool) -> None:
        for words in shell_commands(text):
            items = tuple(frozenset({Text(w)}) for w in words)
            self.argv(Seq(items), where, ctx, report)

    def argv(self, seq: Seq, where: str, ctx: Ctx, report: bool, inner: bool = False) -> None:
        if not seq.items:
            if isinstance(seq.tail, Param):
                self.param_hits.add(seq.tail.func)
            elif seq.tail is not None and not inner:
                self.unknown(where, ctx, report, "argv")
            return
        for first in seq.items[0]:
            if isinstance(first, Param):
                self.param_hits.add(first.func)
                continue
            if not isinstance(first, Text):
                if not inner:
                    self.unknown(where, ctx, report, "argv[0]")
                continue
            self.program(first.s, where, ctx, report and not inner)
            rest = Seq(seq.items[1:], seq.tail)
            if isinstance(rest.tail, Param):
                self.param_hits.add(rest.tail.func)     # its arguments may name a program
            script = shell_script_argument(first.s, rest)
            if script is not None:
                self.started("shell", script, where, ctx, report)
            start = inner_command(normalise(first.s) or "", rest)
            if start is not None:
                self.argv(Seq(rest.items[start:], rest.tail), where, ctx, report, inner=True)


def _arg(call: ast.Call, pos: int) -> ast.AST | None:
    if pos < len(call.args):
        a = call.args[pos]
        return a.value if isinstance(a, ast.Starred) else a
    names = {0: ("args", "cmd", "argv"), 1: ("args", "argv", "cmds", "command")}.get(pos, ())
    return next((kw.value for kw in call.keywords if kw.arg in names), None)


def _default(func: FuncInfo, name: str) -> ast.AST | None:
    a = func.node.args
    positional = a.posonlyargs + a.args
    for p, d in zip(positional[len(positional) - len(a.defaults):], a.defaults):
        if p.arg == name:
            return d
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        if p.arg == name:
            return d
    return None


def _names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _one_text(item: frozenset) -> str:
    texts = sorted(x.s for x in item if isinstance(x, Text))
    return texts[0] if len(texts) == 1 else HOLE


def _const(item: frozenset) -> str | None:
    texts = [x.s for x in item if isinstance(x, Text)]
    return texts[0] if len(texts) == 1 and len(item) == 1 else None


def normalise(word: str) -> str | None:
    """A program's name as the table knows it: the bare name for the standard directories,
    the path from the project's root for the project's own (build/podserver), None when the
    name itself is not known statically."""
    word = word.strip()
    default = re.fullmatch(r"\$\{\w+:-([^}]+)\}", word)      # "${CC:-cc}"
    if default:
        word = default.group(1)
    if not word or HOLE == word or word.startswith(("$", HOLE + "-")) and "/" not in word:
        return None
    for d in STANDARD_BIN:
        if word.startswith(d):
            return word[len(d):]
    if word.endswith(".venv/bin/cnlb"):
        return "cnlb"
    if "/" in word and not word.startswith("/"):
        for top in ("build/", "workloads/", "tools/", "bench/"):
            if top in word:
                return word[word.index(top):]
        return None
    return word


def shell_script_argument(program: str, rest: Seq) -> frozenset | None:
    """The script of `sh -c SCRIPT` (also bash, dash)."""
    if os.path.basename(program) not in ("sh", "bash", "dash"):
        return None
    for i, item in enumerate(rest.items):
        word = _const(item)
        if word is None or not word.startswith("-"):
            return None
        if "c" in word[1:] and i + 1 < len(rest.items):
            return rest.items[i + 1]
    return None


# program -> options that take a value (skipped with it); the command follows the options
PREFIX_OPTIONS = {
    "mnexec": ("-a", "-g", "-r"),
    "unshare": (),
    "nsenter": ("-t", "--target", "-S", "-G"),
    "taskset": ("-c", "--cpu-list"),
    "timeout": ("-s", "--signal", "-k", "--kill-after"),
    "exec": ("-a",),
    "nohup": (), "command": (), "env": ("-u",), "nice": ("-n",), "setsid": (),
}


def inner_command(program: str, rest: Seq) -> int | None:
    """Where the command a prefix program runs starts among its arguments (None: no such)."""
    words = [_const(item) for item in rest.items]
    if (program in ("python3", "python") and words[:3] == ["-m", "testbed.cli", "exec"]
            or program == "cnlb" and words[:1] == ["exec"]):
        return words.index("--") + 1 if "--" in words else None
    if program == "ip" and words[:2] == ["netns", "exec"]:
        return 3
    if program not in PREFIX_OPTIONS:
        return None
    if program == "nsenter" and "--" in words:
        return words.index("--") + 1
    i = 0
    while i < len(words) and words[i] is not None and words[i].startswith("-"):
        if words[i] == "--":
            return i + 1
        i += 2 if words[i] in PREFIX_OPTIONS[program] else 1
    if program == "env":
        while i < len(words) and words[i] is not None and "=" in words[i]:
            i += 1
    if program == "taskset" and not any(w in ("-c", "--cpu-list") for w in words[:i]):
        i += 1       # the mask
    if program == "timeout":
        i += 1       # the duration
    return i


# -- shell text ----------------------------------------------------------------------------

RESERVED = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "case", "esac",
            "!", "{", "}", "[[", "]]", "function", "time"}


def _drop_heredocs(text: str) -> str:
    """Here-documents' bodies are data, not commands."""
    out, until = [], None
    for line in text.split("\n"):
        if until is not None:
            if line.strip() == until:
                until = None
            continue
        out.append(line)
        found = re.search(r"<<-?\s*(['\"]?)(\w+)\1", line)
        if found:
            until = found.group(2)
    return "\n".join(out)


def _matching(text: str, i: int, open_: str, close: str) -> int:
    """Index of the bracket closing the one opened just before i (quotes respected)."""
    depth, quote = 1, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text)


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell string, each as its words (quotes removed; a command
    substitution's own commands come out as commands, its place in the word as "{}").
    Separators: newline ; & && | || ( ) and reserved words (do, then, ...); assignments before
    a command, redirections and a `for`/`case` header are not commands."""
    text = _drop_heredocs(text)
    commands: list[list[str]] = []
    words: list[str] = []
    word: str | None = None
    i, n = 0, len(text)

    def end_word():
        nonlocal word
        if word is not None:
            words.append(word)
        word = None

    def end_command():
        nonlocal words
        end_word()
        if words:
            commands.append(words)
        words = []

    def add(s: str):
        nonlocal word
        word = (word or "") + s

    while i < n:
        c = text[i]
        if c in " \t":
            end_word()
            i += 1
        elif c == "\\":
            if text[i + 1:i + 2] != "\n":
                add(text[i + 1:i + 2])
            i += 2
        elif c == "#" and word is None:
            while i < n and text[i] != "\n":
                i += 1
        elif c == "'":
            j = text.find("'", i + 1)
            j = n if j < 0 else j
            add(text[i + 1:j])
            i = j + 1
        elif c == '"':
            i += 1
            add("")
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    add(text[i + 1])
                    i += 2
                elif text.startswith("$(", i) and not text.startswith("$((", i):
                    j = _matching(text, i + 2, "(", ")")
                    commands += shell_commands(text[i + 2:j])
                    add(HOLE)
                    i = j + 1
                elif text[i] == "`":
                    j = text.find("`", i + 1)
                    j = n if j < 0 else j
                    commands += shell_commands(text[i + 1:j])
                    add(HOLE)
                    i = j + 1
                else:
                    add(text[i])
                    i += 1
            i += 1
        elif text.startswith("$((", i):
            j = text.find("))", i)
            add(HOLE)
            i = n if j < 0 else j + 2
        elif text.startswith("$(", i):
            j = _matching(text, i + 2, "(", ")")
            commands += shell_commands(text[i + 2:j])
            add(HOLE)
            i = j + 1
        elif c == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j
            commands += shell_commands(text[i + 1:j])
            add(HOLE)
            i = j + 1
        elif c == "$" and text.startswith("${", i):
            j = text.find("}", i)
            j = n - 1 if j < 0 else j
            add(text[i:j + 1])
            i = j + 1
        elif c in ";&|\n()":
            end_command()
            i += 1
        elif c in "<>":
            if word is not None and word.isdigit():
                word = None             # "2>&1": the 2 is a file descriptor
            end_word()
            while i < n and text[i] in "<>&|-":
                i += 1
            while i < n and text[i] in " \t":
                i += 1
            j = i        # the redirection's target is one word
            while j < n and text[j] not in " \t;&|\n()<>":
                if text[j] in "'\"":
                    k = text.find(text[j], j + 1)
                    j = n if k < 0 else k
                j += 1
            i = j
        else:
            add(c)
            i += 1
    end_command()
    out = []
    for cmd in commands:
        while cmd and (re.fullmatch(r"[A-Za-z_]\w*=.*", cmd[0], re.S) or cmd[0] in RESERVED):
            cmd = cmd[1:]
        if cmd and cmd[0] not in ("for", "select", "in"):
            out.append(cmd)
    return out


# -- the whole scan ------------------------------------------------------------------------

@dataclass
class Scan:
    calls: set
    unresolved: set      # (path, function, where, what): a start whose program is not known

    def programs(self) -> dict[str, list[str]]:
        out: dict = {}
        for c in sorted(self.calls, key=lambda c: (c.program, c.where)):
            out.setdefault(c.program, []).append(c.where)
        return out


def scan(root: str) -> Scan:
    project = Project(root)
    reader = Reader(project)
    while True:     # which functions are wrappers: until reading them finds no new one
        found = {id(f.node) for f in project.funcs if reader.read_function(f, report=False)}
        if found <= reader.wrappers:
            break
        reader.wrappers |= found
    reader.calls = set()
    for mod in project.modules.values():
        top = [n for n in mod.tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef,
                                                               ast.AsyncFunctionDef))]
        calls = [n for n in own_nodes(top) if isinstance(n, ast.Call)]
        reader.read_calls(calls, Ctx(mod, None, {}), report=True)
    for func in project.funcs:
        reader.read_function(func, report=True)
    for path in shell_scripts(root):
        rel = os.path.relpath(path, root)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        reader.origin = rel
        for words in shell_commands(text):
            reader.argv(Seq(tuple(frozenset({Text(w)}) for w in words)), rel,
                        Ctx(Module(rel, rel, ast.Module(body=[], type_ignores=[])), None, {}),
                        report=True)
    return Scan(reader.calls, reader.unresolved)
