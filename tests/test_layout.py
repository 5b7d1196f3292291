"""The package's layout: who imports whom, where `step` lives, and what kernels may not contain.

The optimizers never import the fast paths (minima.fast registers itself with them, imported last by
minima/optim/__init__.py); the import graph has no cycle; only the base class (and LBFGS, which is no elementwise
optimizer) defines `step`; and the reference kernels are plain formulas: no scratch memory, no `temporaries`, no
`out=` or `tmp=` arguments."""
import ast, importlib, inspect, re, textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minima"
# Modules of the old fast path (nbs/x_old_*.ipynb), kept while the optimizers are converted; to be deleted.
TRANSITIONAL = {"minima.optim.flat", "minima.optim.compiled"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__": parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name): return MODULES.get(name, Path()).name == "__init__.py"


def imports(name: str) -> list:
    """Every module `name` imports, at any level (functions included), relative imports resolved, as
    (module, line). `from package import name` counts as importing the submodule when `name` is one."""
    path = MODULES[name]
    package = name if is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else: target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def minima_graph():
    "The import graph restricted to minima's modules (a module importing itself, e.g. `from . import x`, dropped)."
    return {name: sorted({t for t, _ in imports(name) if t in MODULES and t != name}) for name in MODULES}


def test_the_modules_are_found():
    for name in ["minima.optim.optimizer", "minima.optim.adam", "minima.fast", "minima.fast.flat", "minima.fast.fused"]:
        assert name in MODULES
    assert "minima.optim.optimizer" in minima_graph()["minima.fast.fused"]   # `from ..optim.optimizer import`
    assert "minima.optim.lr_scheduler" in minima_graph()["minima.optim"]     # `from . import lr_scheduler`


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = minima_graph(), {}, []
    def visit(node, path):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open": cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state: visit(nxt, path + [nxt])
        state[node] = "done"
    for node in graph:
        if node not in state: visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_optimizers_never_import_the_fast_paths():
    "minima.fast imports the optimizers and registers itself; only minima/optim/__init__.py imports it (last)."
    offenders = [f"{name}:{line} imports {target}" for name in MODULES if name.startswith("minima.optim.")
                 for target, line in imports(name) if target == "minima.fast" or target.startswith("minima.fast.")]
    assert not offenders, "\n".join(offenders)
    assert any(t == "minima.fast" for t, _ in imports("minima.optim")), "minima/optim/__init__.py must register them"


def test_the_fast_paths_import_no_matplotlib():
    offenders = [f"{name}:{line} imports {target}" for name in MODULES if name.split(".")[:2] == ["minima", "fast"]
                 for target, line in imports(name) if target.split(".")[0] == "matplotlib"]
    assert not offenders, "\n".join(offenders)


# Only these classes define `step`: the base class; LBFGS (its own loop of closures); Prodigy (its distance
# estimate sums over every group before any group moves); Lookahead (a wrapper around another optimizer's step);
# the schedule-free base (its counters advance once per group and step, and a step in eval mode is refused).
# The schedulers of lr_scheduler.py step learning rates, not parameters.
OWN_STEP = {("minima.optim.optimizer", "Optimizer"), ("minima.optim.lbfgs", "LBFGS"),
            ("minima.optim.prodigy", "Prodigy"), ("minima.optim.lookahead", "Lookahead"),
            ("minima.optim.schedule_free", "_ScheduleFree")}


def test_only_the_base_class_and_lbfgs_define_step():
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("minima.optim.") or name in TRANSITIONAL | {"minima.optim.lr_scheduler"}: continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef): continue
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "step" \
                        and (name, node.name) not in OWN_STEP:
                    offenders.append(f"{name}.{node.name}.step (line {item.lineno})")
    assert not offenders, "these classes should leave `step` to the base class:\n" + "\n".join(offenders)


def optim_modules():
    return [importlib.import_module(n) for n in MODULES
            if n.startswith("minima.optim.") and n not in TRANSITIONAL]


def public_functions(module):
    "The public functions defined in `module`, and the methods of its public classes."
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__: continue
        if inspect.isfunction(obj): yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                member = inspect.unwrap(member) if inspect.isfunction(member) else member
                if inspect.isfunction(member): yield f"{module.__name__}.{name}.{attr}", member


FORBIDDEN_WORDS = re.compile(r"scratch|temporaries")
FORBIDDEN_ARGS = {"out", "tmp"}


def identifiers(node):
    "The names a node of code uses: variables, arguments, attributes, keywords, functions defined."
    for n in ast.walk(node):
        if isinstance(n, ast.Name): yield n.id
        elif isinstance(n, ast.arg): yield n.arg
        elif isinstance(n, ast.Attribute): yield n.attr
        elif isinstance(n, ast.keyword) and n.arg: yield n.arg
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)): yield n.name


def forbidden(source: str) -> list:
    "What the code of `source` has that a kernel may not (comments and prose aside), each kind once."
    tree, found = ast.parse(textwrap.dedent(source)), set()
    found |= {f"uses {m.group()!r}" for name in identifiers(tree) for m in FORBIDDEN_WORDS.finditer(name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in FORBIDDEN_ARGS: found.add(f"passes {node.arg}=")
        if isinstance(node, ast.arg) and node.arg in FORBIDDEN_ARGS: found.add(f"takes an argument {node.arg!r}")
    return sorted(found)


def test_kernels_have_no_scratch_temporaries_or_out_arguments():
    offenders, seen = [], set()
    for module in optim_modules():
        for qualname, fn in public_functions(module):
            if fn in seen: continue   # an alias (AdaGrad is Adagrad)
            seen.add(fn)
            try: source = inspect.getsource(fn)
            except (OSError, TypeError): continue
            offenders += [f"{qualname}: {what}" for what in forbidden(source)]
    assert not offenders, "\n".join(offenders)


def test_the_checks_see_what_they_look_for():
    "The checks above would find an `out=`, a scratch argument and a `tmp` parameter."
    src = ("def k(p, g, scratch=None, tmp=None):  # scratch\n"
           "    t, = temporaries(scratch, p, 1)\n    np.multiply(g, 2, out=p)\n")
    assert forbidden(src) == ["passes out=", "takes an argument 'tmp'", "uses 'scratch'", "uses 'temporaries'"]
    assert forbidden("def k(al):\n    'al: a scratch list (prose may say so)'\n") == []
    found = {q for m in optim_modules() for q, _ in public_functions(m)}
    assert {"minima.optim.adam.adam", "minima.optim.adam.adam_rule", "minima.optim.adam.Adam._update"} <= found


def test_the_transitional_fast_path_modules_are_gone():
    "minima/optim/flat.py and compiled.py (the old fast path) are deleted once every optimizer is converted."
    left = sorted(n for n in TRANSITIONAL if n in MODULES)
    assert not left, f"still present: {left}"
