"""The import graph of the two packages: no circle in ``gpart_jax/`` or in ``experiments/``, and the
library never imports the experiments.

Imports are read with ``ast`` (nothing is imported): ``import a.b`` and ``from a import b`` are an
edge to the module ``a.b`` when it is one, else to the package ``a``; relative imports are
resolved against the importing module. Imports inside functions count too (a lazy import still
ties the two modules), except the edges of ``LAZY_BY_DESIGN``; those under ``if TYPE_CHECKING:``
do not.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("gpart_jax", "experiments")
# Imports inside a function that would close a circle at import time, and are lazy for that reason.
LAZY_BY_DESIGN = {("gpart_jax.adapters", "gpart_jax"): "the package's __version__, read when saving"}


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: pathlib.Path, known: set[str], lazy: bool = True) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports (``lazy=False``: only
    at import time, not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def target(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(t for a in node.names if (t := target(a.name)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                t = target(f"{source}.{alias.name}") if f"{source}.{alias.name}" in known else target(source)
                if t:
                    out.add(t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(name)
    return out


def graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_reader_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "experiments"
    (pkg / "data").mkdir(parents=True)
    (tmp_path / "gpart_jax").mkdir()
    files = {
        "gpart_jax/__init__.py": "from gpart_jax import core\n",
        "gpart_jax/core.py": "import numpy\n",
        "experiments/__init__.py": "",
        "experiments/data/__init__.py": "from experiments.data.text import f\n",
        "experiments/data/text.py": "from . import order\nfrom .order import g\n",
        "experiments/data/order.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from experiments.data import text\n"
                                      "def h():\n    from .. import suite\n"),
        "experiments/suite.py": "import experiments.data.text as t\nfrom experiments.data import load\n",
    }
    lazy_only = tmp_path / "experiments" / "data" / "order.py"
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    edges = graph(tmp_path)
    assert edges == {"gpart_jax": {"gpart_jax.core"}, "gpart_jax.core": set(), "experiments": set(),
                     "experiments.data": {"experiments.data.text"},
                     "experiments.data.text": {"experiments.data.order"},
                     "experiments.data.order": {"experiments.suite"},
                     "experiments.suite": {"experiments.data.text", "experiments.data"}}
    assert cycle(edges) == ["experiments.data", "experiments.data.text", "experiments.data.order",
                            "experiments.suite", "experiments.data"]
    del edges["experiments.data.order"]
    assert cycle(edges) is None
    known = set(modules(tmp_path))
    assert imports("experiments.data.order", lazy_only, known, lazy=False) == set()


@pytest.mark.parametrize("package", PACKAGES)
def test_no_circle_in_a_package(package):
    edges = {name: {t for t in targets if t.split(".")[0] == package and (name, t) not in LAZY_BY_DESIGN}
             for name, targets in graph().items() if name.split(".")[0] == package}
    assert len(edges) > 10
    for source, target in LAZY_BY_DESIGN:  # still there, and still lazy (not at module level)
        if source.split(".")[0] == package:
            mods = modules()
            assert target in imports(source, mods[source], set(mods))
            assert target not in imports(source, mods[source], set(mods), lazy=False)
    found = cycle(edges)
    assert found is None, f"import circle in {package}/: {' -> '.join(found)}"


def test_the_library_never_imports_the_experiments():
    edges = graph()
    offending = {name: sorted(t for t in targets if t.split(".")[0] == "experiments")
                 for name, targets in edges.items() if name.split(".")[0] == "gpart_jax"}
    assert {name: t for name, t in offending.items() if t} == {}
    # and not by name either (importlib.import_module("experiments...."))
    for path in (ROOT / "gpart_jax").rglob("*.py"):
        assert "experiments." not in "".join(
            node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith("experiments.")), path


JAX_FREE = ("gpart_jax.files", "gpart_jax.errors", "gpart_jax.cli", "experiments.workdir",
            "experiments.suite", "experiments.config", "experiments.signals", "experiments.report")


@pytest.mark.parametrize("module", JAX_FREE)
def test_the_write_path_and_the_suite_runner_load_no_jax(module):
    """The workdir rules, the suite runner and the library's write path import without jax
    (``gpart_jax`` loads its names on first use), in a process of their own."""
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout


def test_every_exported_name_is_what_its_module_defines_in_any_order():
    """Each name of ``gpart_jax.__all__`` is the object its module defines, whether it is the
    first name used, or used after every submodule was imported (a submodule named like an
    exported function would shadow it: ``merge`` lives in ``gpart_jax.merging`` for that)."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys, types
        order = sys.argv[1]
        import gpart_jax as gj
        if order == "submodules first":
            for info in pkgutil.walk_packages(gj.__path__, "gpart_jax."):
                importlib.import_module(info.name)
        names = [n for n in gj.__all__ if n != "__version__"]
        if order == "reversed":
            names = names[::-1]
        submodules = ("filters", "interop", "layout", "methods", "parallel")
        bad = [n for n in names if isinstance(getattr(gj, n), types.ModuleType) != (n in submodules)]
        print(bad)
    """)
    for order in ("as listed", "reversed", "submodules first"):
        run = subprocess.run([sys.executable, "-c", code, order], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "[]", (order, run.stdout)
