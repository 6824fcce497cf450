"""The layout rules of docs/architecture.md, checked on the source (``ast``), not trusted.

The import graph of pipeline/, android_harness/ and models/ is built from every import
statement (module level and inside functions; ``from pipeline.x import y`` counts as an import
of the submodule ``pipeline.x.y`` when there is one; ``importlib.import_module("literal")``
counts too). Each rule is its own test and lists every offender with file:line. No
whitelists: a rule that has to bend is changed here, in the open. The ``test_checker_*`` tests
run each checker on a small bad package written to tmp_path, so a checker that stopped
finding anything fails too.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "android_harness", "models")
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras")
# The one module allowed to import them (inside functions: importing it stays cheap).
HEAVY_OWNER = "pipeline.core.keras_env"
PRIVATE = ("tf_keras.src", "keras.src", "tensorflow.python", "tensorflow_model_optimization.python")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Which layers a layer may import (besides itself, the standard library and third parties).
# "pipeline" is the package root (pipeline/__init__.py, pipeline/__main__.py): like cli.
ALLOWED = {
    "core": {"core"},
    "tflite": {"core", "tflite"},
    "keras": {"core", "keras"},
    "stages": {"core", "tflite", "keras", "stages", "models"},
    "cli": {"core", "tflite", "keras", "stages", "models", "cli", "pipeline"},
    "pipeline": {"core", "tflite", "keras", "stages", "models", "cli", "pipeline"},
    "android_harness": {"android_harness", "core", "tflite"},
    # the zoo raises the pipeline's errors (a missing extra is a one-line exit 2), nothing more
    "models": {"models", "core"},
}
PIPELINE_LAYERS = ("core", "tflite", "keras", "stages", "cli")
LAZY = re.compile(r"#\s*lazy:\s*\S")
LONG = re.compile(r"\s*#\s*long:")


@dataclass
class Import:
    target: str          # the full dotted name imported (a module, or module.attribute)
    module: str | None   # the internal module it resolves to (None: third party / stdlib)
    line: int
    end_line: int
    lazy: bool           # inside a function (runs when called, not at import)


@dataclass
class Module:
    name: str
    path: Path
    rel: str
    lines: list[str]
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)

    def where(self, line: int) -> str:
        return f"{self.rel}:{line}"


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> str:
    """pipeline.core.x -> core; pipeline.x (the root) -> pipeline; android_harness.x ->
    android_harness; models.x -> models."""
    parts = name.split(".")
    if parts[0] == "pipeline":
        return parts[1] if len(parts) >= 2 and parts[1] in PIPELINE_LAYERS else "pipeline"
    return parts[0]


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_function(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _import_targets(node: ast.AST, package: str) -> list[str]:
    """Dotted names an import statement (or a literal importlib.import_module call) imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = package.split(".")
            pkg = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            base = ".".join(pkg + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


class Project:
    """Every .py file of the packages under ``root``, parsed, with its resolved imports."""

    def __init__(self, root: Path, packages=PACKAGES):
        self.root = root
        self.modules: dict[str, Module] = {}
        for pkg in packages:
            for path in sorted((root / pkg).rglob("*.py")):
                rel = path.relative_to(root)
                text = path.read_text(encoding="utf-8")
                self.modules[_module_name(rel)] = Module(
                    _module_name(rel), path, rel.as_posix(), text.splitlines(),
                    ast.parse(text, filename=str(path)))
        for mod in self.modules.values():
            self._collect(mod)

    def resolve(self, dotted: str) -> str | None:
        """The internal module a dotted name lives in (longest existing prefix)."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.modules:
                return ".".join(parts[:n])
        return None

    def _collect(self, mod: Module) -> None:
        parents = _parents(mod.tree)
        is_pkg = mod.path.name == "__init__.py"
        package = mod.name if is_pkg else mod.name.rpartition(".")[0]
        for node in ast.walk(mod.tree):
            targets = _import_targets(node, package)
            if not targets:
                continue
            lazy = _in_function(node, parents)
            end = getattr(node, "end_lineno", node.lineno)
            if isinstance(node, ast.ImportFrom):
                # `from a.b import c`: a.b.c, which resolves to the submodule a.b.c if there is
                # one, else to a.b (c is then an attribute of it)
                targets = targets[1:] or targets[:1]
            seen = set()
            for t in targets:
                key = (self.resolve(t) or t)
                if key not in seen:
                    seen.add(key)
                    mod.imports.append(Import(t, self.resolve(t), node.lineno, end, lazy))

    def edges(self, lazy: bool | None = None):
        """(importer, imported, Import) between internal modules; lazy=False: module level only."""
        for mod in self.modules.values():
            for imp in mod.imports:
                if imp.module and imp.module != mod.name and (lazy is None or imp.lazy == lazy):
                    yield mod, imp.module, imp


# ---------------------------------------------------------------- checkers (list offenders)

def forbidden_edges(p: Project) -> list[str]:
    out = []
    for mod, target, imp in p.edges():
        src, dst = layer(mod.name), layer(target)
        if dst not in ALLOWED.get(src, set()):
            out.append(f"{mod.where(imp.line)}: {src} -> {dst} ({mod.name} imports {target})")
    return out


def heavy_imports(p: Project) -> list[str]:
    out = []
    for mod in p.modules.values():
        if mod.name == HEAVY_OWNER:
            continue
        for imp in mod.imports:
            if imp.target.split(".")[0] in HEAVY:
                out.append(f"{mod.where(imp.line)}: {mod.name} imports {imp.target} "
                           f"(only {HEAVY_OWNER} may)")
    return sorted(set(out))


def heavy_owner_imports_lazily(p: Project) -> list[str]:
    """keras_env itself imports the heavy packages only inside functions."""
    mod = p.modules.get(HEAVY_OWNER)
    if mod is None:
        return []
    return [f"{mod.where(i.line)}: {i.target} at module level" for i in mod.imports
            if i.target.split(".")[0] in HEAVY and not i.lazy]


def harness_reaches_heavy(p: Project) -> list[str]:
    """Module-level import chains from android_harness to a module-level heavy import."""
    out = []
    for start in sorted(n for n in p.modules if layer(n) == "android_harness"):
        seen, stack = {start: [start]}, [start]
        while stack:
            name = stack.pop()
            mod = p.modules[name]
            for imp in mod.imports:
                if imp.lazy:
                    continue
                if imp.target.split(".")[0] in HEAVY:
                    out.append(f"{start}: " + " -> ".join(seen[name]) + f" -> {imp.target} "
                               f"({mod.where(imp.line)})")
                elif imp.module and imp.module not in seen:
                    seen[imp.module] = seen[name] + [imp.module]
                    stack.append(imp.module)
    return out


def cycles(p: Project) -> list[str]:
    """Strongly connected components of the import graph (every import counts)."""
    graph: dict[str, dict[str, str]] = {n: {} for n in p.modules}
    for mod, target, imp in p.edges():
        graph[mod.name].setdefault(target, mod.where(imp.line))
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]

    def strongconnect(v):  # iterative Tarjan: no recursion limit on deep graphs
        work = [(v, iter(graph[v]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    out = []
    for comp in comps:
        members = set(comp)
        links = [f"{a} -> {b} ({graph[a][b]})" for a in comp for b in sorted(graph[a])
                 if b in members]
        out.append("cycle among " + ", ".join(comp) + ": " + "; ".join(links))
    return out


def unexplained_lazy_imports(p: Project) -> list[str]:
    out = []
    for mod, target, imp in p.edges(lazy=True):
        text = " ".join(mod.lines[imp.line - 1:imp.end_line])
        if not LAZY.search(text):
            out.append(f"{mod.where(imp.line)}: function-level import of {target} without a "
                       "`# lazy: <why>` comment (move it to the top of the module)")
    return sorted(set(out))


def private_imports(p: Project) -> list[str]:
    out = []
    for mod in p.modules.values():
        for imp in mod.imports:
            if any(imp.target == q or imp.target.startswith(q + ".") for q in PRIVATE):
                out.append(f"{mod.where(imp.line)}: private API {imp.target}")
    return sorted(set(out))


def long_modules(p: Project) -> list[str]:
    return [f"{m.rel}: {len(m.lines)} lines (> {MAX_MODULE_LINES})" for m in p.modules.values()
            if len(m.lines) > MAX_MODULE_LINES]


def long_functions(p: Project) -> list[str]:
    out = []
    for mod in p.modules.values():
        for node in ast.walk(mod.tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            n = node.end_lineno - node.lineno + 1
            if n <= MAX_FUNCTION_LINES:
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            before = mod.lines[first - 2] if first >= 2 else ""
            if not LONG.match(before):
                out.append(f"{mod.where(node.lineno)}: {node.name} is {n} lines "
                           f"(> {MAX_FUNCTION_LINES}; split it, or put `# long: <why>` above)")
    return out


def harness_import_loads(root: Path, names: list[str], heavy=HEAVY) -> list[str]:
    """Import the harness modules in a fresh interpreter; the heavy packages it loaded."""
    code = ("import importlib, json, sys\n"
            f"for n in {names!r}:\n    importlib.import_module(n)\n"
            f"print(json.dumps(sorted(h for h in {list(heavy)!r} if h in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the rules, on this repository

_PROJECT: Project | None = None


def project() -> Project:
    global _PROJECT
    if _PROJECT is None:
        _PROJECT = Project(REPO)
    return _PROJECT


def _report(what: str, offenders: list[str]) -> str:
    return f"{len(offenders)} {what}:\n  " + "\n  ".join(offenders)


def test_the_scan_sees_the_packages():
    p = project()
    for name in ("pipeline.core.keras_env", "pipeline.stages.run", "android_harness.cli",
                 "models.digits_cnn"):
        assert name in p.modules
    assert any(i.module == "pipeline.core.errors" for i in p.modules["pipeline.stages.run"].imports)


def test_no_forbidden_package_edges():
    offenders = forbidden_edges(project())
    assert not offenders, _report("imports across a forbidden package edge", offenders)


def test_only_keras_env_imports_tensorflow_or_keras():
    offenders = heavy_imports(project()) + heavy_owner_imports_lazily(project())
    assert not offenders, _report("TensorFlow/Keras/tfmot imports outside keras_env's "
                                  "functions", offenders)


def test_android_harness_never_reaches_tensorflow_at_import():
    offenders = harness_reaches_heavy(project())
    assert not offenders, _report("module-level import chains from android_harness to "
                                  "TensorFlow/Keras", offenders)


def test_importing_every_harness_module_loads_no_tensorflow():
    names = sorted(n for n in project().modules if layer(n) == "android_harness"
                   and not n.endswith("__main__"))
    assert len(names) > 5
    loaded = harness_import_loads(REPO, names)
    assert loaded == [], f"importing {', '.join(names)} loaded {loaded}"


def test_no_import_cycles():
    offenders = cycles(project())
    assert not offenders, _report("import cycles (function-level imports count)", offenders)


def test_function_level_imports_say_why():
    offenders = unexplained_lazy_imports(project())
    assert not offenders, _report("unexplained function-level imports", offenders)


def test_no_private_tensorflow_or_keras_imports():
    offenders = private_imports(project())
    assert not offenders, _report("private-module imports", offenders)


def test_modules_stay_short():
    offenders = long_modules(project())
    assert not offenders, _report("modules over the limit", offenders)


def test_functions_stay_short():
    offenders = long_functions(project())
    assert not offenders, _report("functions over the limit", offenders)


# ---------------------------------------------------------------- each checker catches a bad module

def _write(root: Path, files: dict[str, str]) -> Project:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            init = root / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
        path.write_text(text)
    return Project(root)


_GOOD = {"pipeline/core/errors.py": "X = 1\n",
         "pipeline/tflite/model.py": "from pipeline.core import errors\n",
         "android_harness/cli.py": "from pipeline.tflite import model\n"}


def test_checker_the_good_sample_passes(tmp_path):
    p = _write(tmp_path, _GOOD)
    for check in (forbidden_edges, heavy_imports, harness_reaches_heavy, cycles,
                  unexplained_lazy_imports, private_imports, long_modules, long_functions):
        assert check(p) == [], check.__name__


def test_checker_forbidden_edges(tmp_path):
    p = _write(tmp_path, {**_GOOD,
                          "pipeline/core/bad.py": "import os\nfrom pipeline.tflite import model\n",
                          "pipeline/keras/k.py": "from pipeline.stages.s import f\n",
                          "pipeline/stages/s.py": "def f():\n"
                                                  "    import pipeline.cli.app  # lazy: x\n",
                          "pipeline/cli/app.py": "",
                          "models/m.py": "from pipeline.stages import run\n",
                          "android_harness/h.py": "from pipeline.keras import k\n"})
    found = forbidden_edges(p)
    assert any("pipeline/core/bad.py:2: core -> tflite" in f for f in found), found
    assert any("pipeline/keras/k.py:1: keras -> stages" in f for f in found), found
    assert any("pipeline/stages/s.py:2: stages -> cli" in f for f in found), found
    assert any("models/m.py:1: models -> stages" in f for f in found), found
    assert any("android_harness/h.py:1: android_harness -> keras" in f for f in found), found
    assert len(found) == 5, found


def test_checker_heavy_imports(tmp_path):
    p = _write(tmp_path, {**_GOOD,
                          "pipeline/core/keras_env.py": "def load():\n    import tensorflow\n",
                          "pipeline/keras/k.py": "def f():\n    import tf_keras.layers\n",
                          "pipeline/keras/k3.py": "import importlib\n"
                                                  "keras = importlib.import_module('keras')\n",
                          "models/m.py": "from tensorflow_model_optimization import q\n"})
    found = heavy_imports(p)
    assert [f.split(":")[0] + ":" + f.split(":")[1] for f in found] == [
        "models/m.py:1", "pipeline/keras/k.py:2", "pipeline/keras/k3.py:2"], found
    assert heavy_owner_imports_lazily(p) == []
    p = _write(tmp_path, {"pipeline/core/keras_env.py": "import tensorflow\n"})
    assert heavy_owner_imports_lazily(p) == ["pipeline/core/keras_env.py:1: tensorflow at "
                                             "module level"]


def test_checker_harness_reaching_tensorflow(tmp_path):
    files = {**_GOOD, "pipeline/tflite/model.py": "from pipeline.core import heavy\n",
             "pipeline/core/heavy.py": "import tensorflow as tf\n",
             "pipeline/core/lazy.py": "def f():\n    import tensorflow\n",
             "android_harness/ok.py": "from pipeline.core import lazy\n",
             "tensorflow/__init__.py": ""}  # a stand-in: nothing real is imported
    p = _write(tmp_path, files)
    found = harness_reaches_heavy(p)
    assert found == ["android_harness.cli: android_harness.cli -> pipeline.tflite.model -> "
                     "pipeline.core.heavy -> tensorflow (pipeline/core/heavy.py:1)"], found
    assert harness_import_loads(tmp_path, ["android_harness.ok"]) == []
    assert harness_import_loads(tmp_path, ["android_harness.cli"]) == ["tensorflow"]


def test_checker_cycles(tmp_path):
    p = _write(tmp_path, {**_GOOD,
                          "pipeline/stages/a.py": "from pipeline.stages import b\n",
                          "pipeline/stages/b.py": "def f():\n    from pipeline.stages.c "
                                                  "import g  # lazy: x\n",
                          "pipeline/stages/c.py": "import pipeline.stages.a\ndef g():\n    pass\n"})
    found = cycles(p)
    assert len(found) == 1 and "pipeline.stages.a, pipeline.stages.b, pipeline.stages.c" in \
        found[0], found
    assert "pipeline.stages.b -> pipeline.stages.c (pipeline/stages/b.py:2)" in found[0]


def test_checker_unexplained_lazy_imports(tmp_path):
    p = _write(tmp_path, {**_GOOD,
                          "pipeline/stages/a.py": "import json\n"
                                                  "def f():\n"
                                                  "    import numpy\n"
                                                  "    from pipeline.core import errors\n"
                                                  "    from pipeline.tflite import (  # lazy: big\n"
                                                  "        model)\n"
                                                  "    from pipeline.core import errors"
                                                  "  # lazy:\n"})
    found = unexplained_lazy_imports(p)
    assert [f.split(": function")[0] for f in found] == ["pipeline/stages/a.py:4",
                                                          "pipeline/stages/a.py:7"], found


def test_checker_private_imports(tmp_path):
    p = _write(tmp_path, {**_GOOD,
                          "pipeline/core/keras_env.py": "import importlib\n"
                                                        "def f():\n"
                                                        "    from tf_keras.src import backend\n"
                                                        "    from tensorflow.python.util import x\n"
                                                        "    from tf_keras import src\n"
                                                        "    importlib.import_module("
                                                        "'keras.src.ops')\n"
                                                        "    import tf_keras.saving\n"})
    found = private_imports(p)
    assert [f.split(": private")[0] for f in found] == [
        f"pipeline/core/keras_env.py:{n}" for n in (3, 4, 5, 6)], found


def test_checker_long_modules_and_functions(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    fn = ("def fits():\n" + body[:-len("    x59 = 59\n")]  # 60 lines with the def
          + "\n\ndef too_long():\n" + body
          + "\n\n# long: a table\n@staticmethod\ndef allowed():\n" + body
          + "\n\nclass C:\n    def method(self):\n" + body.replace("    ", "        "))
    p = _write(tmp_path, {**_GOOD, "pipeline/core/big.py": "X = 1\n" * (MAX_MODULE_LINES + 1),
                          "pipeline/core/fn.py": fn})
    assert long_modules(p) == [f"pipeline/core/big.py: {MAX_MODULE_LINES + 1} lines "
                               f"(> {MAX_MODULE_LINES})"]
    lines = fn.splitlines()
    where = {n: lines.index(d) + 1 for n, d in (("too_long", "def too_long():"),
                                                 ("method", "    def method(self):"))}
    found = long_functions(p)
    assert [f.split(" (")[0] for f in found] == [
        f"pipeline/core/fn.py:{where['too_long']}: too_long is 61 lines",
        f"pipeline/core/fn.py:{where['method']}: method is 61 lines"], found
