"""The import graph of `medjax` and `medjax_kernels`: no cycles, and layers point down.

Every module of both packages is read from its source (nothing is imported),
its `import` statements are parsed with `ast` -- at module level, inside
functions and classes, absolute and relative -- and resolved to modules:

* `import a.b.c`: the longest prefix of `a.b.c` that is a module;
* `from a.b import c`: `a.b.c` if that is a module (a submodule import), else `a.b`;
* `from . import c`, `from ..x import c`: resolved against the importing module's
  package (a package's `__init__` is the package module itself);
* `importlib.import_module("a.b")` / `__import__("a.b")` with a literal name.

Imports under `if TYPE_CHECKING:` never run and are left out. The graph keeps
the edges between modules of the two packages; the layering checks also look
at imports of `experiments` and `tests`.

Layers: `experiments` and `tests` sit on top of `medjax`, which sits on top of
`medjax_kernels`; nothing imports upwards.
"""
from __future__ import annotations

import ast
import importlib.util
import os

import pytest

PACKAGES = ("medjax", "medjax_kernels")


# ----------------------------------------------------------------------------- discovery

def _package_root(package: str) -> str:
  """The source folder of a top-level package, found without importing it."""
  spec = importlib.util.find_spec(package)
  assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
  return list(spec.submodule_search_locations)[0]


def discover_modules(package: str, root: str) -> dict[str, tuple[str, bool]]:
  """`{module name: (path, is_package)}` for every `.py` file under `root`."""
  modules = {package: (os.path.join(root, "__init__.py"), True)}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d.isidentifier())  # skips __pycache__ etc.
    rel = os.path.relpath(dirpath, root)
    prefix = package if rel == "." else ".".join([package] + rel.split(os.sep))
    for name in sorted(filenames):
      if not name.endswith(".py") or not name[:-3].isidentifier():
        continue
      if name == "__init__.py":
        modules[prefix] = (os.path.join(dirpath, name), True)
      else:
        modules[f"{prefix}.{name[:-3]}"] = (os.path.join(dirpath, name), False)
  return modules


# ----------------------------------------------------------------------------- parsing

def _is_type_checking(test: ast.expr) -> bool:
  return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
          or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST):
  """Every import-like node, at any depth, except those under `if TYPE_CHECKING:`."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, ast.If) and _is_type_checking(node.test):
      stack.extend(node.orelse)
      continue
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, ast.Call):
      f = node.func
      name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
      if (name in ("import_module", "__import__") and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        yield node
    stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, known: set[str]) -> str:
  """The longest prefix of the dotted `name` that is a known module (else `name`)."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    candidate = ".".join(parts[:i])
    if candidate in known:
      return candidate
  return name


def imports_of(module: str, is_package: bool, source: str, known: set[str]) -> set[str]:
  """Absolute names of the modules that `module` imports (internal ones resolved
  against `known`, the rest as written)."""
  tree = ast.parse(source, filename=module)
  package = module if is_package else module.rpartition(".")[0]
  out = set()
  for node in _import_nodes(tree):
    if isinstance(node, ast.Import):
      out.update(_resolve(alias.name, known) for alias in node.names)
    elif isinstance(node, ast.Call):  # importlib.import_module("a.b") / __import__("a.b")
      out.add(_resolve(node.args[0].value, known))
    else:
      if node.level:
        parts = package.split(".") if package else []
        if node.level - 1 > len(parts) - 1:
          raise ValueError(f"{module}: relative import beyond the top-level package")
        base = ".".join(parts[:len(parts) - (node.level - 1)])
        base = f"{base}.{node.module}" if node.module else base
      else:
        base = node.module
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if alias.name != "*" and sub in known else _resolve(base, known))
  return out


def build_graph(modules: dict[str, tuple[str, bool]]) -> tuple[dict[str, set[str]],
                                                                dict[str, set[str]]]:
  """(`{module: internal modules it imports}`, `{module: every import, resolved}`)."""
  known = set(modules)
  raw = {}
  for name, (path, is_package) in modules.items():
    with open(path, encoding="utf-8") as f:
      raw[name] = imports_of(name, is_package, f.read(), known)
  graph = {name: {d for d in deps if d in known and d != name} for name, deps in raw.items()}
  return graph, raw


# ----------------------------------------------------------------------------- cycles

def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle `[a, b, ..., a]` per strongly connected component that has one
  (Tarjan's algorithm, iterative; self-loops count)."""
  index, low, on_stack, stack, sccs = {}, {}, set(), [], []
  counter = 0
  nodes = sorted(set(graph) | {d for deps in graph.values() for d in deps})
  for root in nodes:
    if root in index:
      continue
    work = [(root, iter(sorted(graph.get(root, ()))))]
    index[root] = low[root] = counter
    counter += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = counter
          counter += 1
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        parent = work[-1][0]
        low[parent] = min(low[parent], low[node])
      if low[node] == index[node]:
        scc = []
        while True:
          n = stack.pop()
          on_stack.discard(n)
          scc.append(n)
          if n == node:
            break
        if len(scc) > 1 or node in graph.get(node, ()):
          sccs.append(set(scc))
  return [_cycle_in(graph, scc) for scc in sorted(sccs, key=min)]


def _cycle_in(graph: dict[str, set[str]], scc: set[str]) -> list[str]:
  """A shortest cycle through the smallest node of a strongly connected component."""
  start = min(scc)
  parent = {start: None}
  frontier = [start]
  while frontier:
    nxt = []
    for node in frontier:
      for child in sorted(graph.get(node, ())):
        if child == start:
          path = [node]
          while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
          return path[::-1] + [start]
        if child in scc and child not in parent:
          parent[child] = node
          nxt.append(child)
    frontier = nxt
  raise AssertionError(f"no cycle in {scc}")  # cannot happen for an SCC


def format_cycle(cycle: list[str]) -> str:
  return " -> ".join(cycle)


# ----------------------------------------------------------------------------- the real packages

@pytest.fixture(scope="module")
def modules():
  found = {}
  for package in PACKAGES:
    found.update(discover_modules(package, _package_root(package)))
  return found


@pytest.fixture(scope="module")
def graphs(modules):
  return build_graph(modules)


def test_walk_finds_the_modules_and_the_edges(modules, graphs):
  # A walker that silently finds nothing would make every check below pass.
  graph, _ = graphs
  for name in ("medjax", "medjax.inference", "medjax.models", "medjax.models.unet",
               "medjax.train", "medjax.train.loop", "medjax_kernels",
               "medjax_kernels.conv3d", "medjax_kernels.soft_dice.api"):
    assert name in modules, name
  assert modules["medjax.models"][1] and not modules["medjax.models.unet"][1]
  assert len(modules) >= 40
  assert sum(map(len, graph.values())) >= 40
  # `from .soft_dice import soft_dice_stats` in kernels/__init__.py (relative, package)
  assert "medjax_kernels.soft_dice" in graph["medjax_kernels"]
  # `from medjax.train import config_check, ...` (submodules named in a from-import)
  assert "medjax.train.config_check" in graph["medjax.train.loop"]


def test_no_import_cycle(graphs):
  graph, _ = graphs
  cycles = find_cycles(graph)
  assert not cycles, "import cycles:\n" + "\n".join(format_cycle(c) for c in cycles)


def test_library_does_not_import_experiments_benchmarks_or_tests(graphs):
  _, raw = graphs
  bad = sorted(f"{m} imports {d}" for m, deps in raw.items() for d in deps
               if d.split(".")[0] in ("experiments", "benchmarks", "tests"))
  assert not bad, "\n".join(bad)


def test_kernels_do_not_import_medjax(graphs):
  _, raw = graphs
  bad = sorted(f"{m} imports {d}" for m, deps in raw.items() if m.split(".")[0] == "medjax_kernels"
               for d in deps if d.split(".")[0] == "medjax")
  assert not bad, "medjax_kernels is the lowest layer:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- self-tests

def test_find_cycles_on_synthetic_graphs():
  dag = {"a": {"b", "c"}, "b": {"c", "d"}, "c": {"d"}, "d": set(), "e": {"a"}}
  assert find_cycles(dag) == []
  assert find_cycles({}) == []
  assert find_cycles({"a": {"b"}}) == []  # an edge to a node with no entry

  ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "x": {"a"}}
  assert find_cycles(ring) == [["a", "b", "c", "a"]]
  assert format_cycle(find_cycles(ring)[0]) == "a -> b -> c -> a"

  # two separate cycles, one reached only through a DAG part, plus a self-loop
  graph = {"m": {"n"}, "n": {"p", "q"}, "p": {"n"}, "q": {"r"}, "r": {"s"}, "s": {"q"},
           "t": {"t"}, "u": {"m"}}
  assert find_cycles(graph) == [["n", "p", "n"], ["q", "r", "s", "q"], ["t", "t"]]

  # the reported cycle is a real one, and the shortest through its first node
  dense = {"a": {"b", "d"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"a"}}
  (cycle,) = find_cycles(dense)
  assert cycle == ["a", "b", "c", "a"]
  assert all(b in dense[a] for a, b in zip(cycle, cycle[1:]))

  # deep chains do not hit the recursion limit
  chain = {i: {i + 1} for i in range(5000)}
  assert find_cycles(chain) == []
  chain[5000] = {0}
  assert len(find_cycles(chain)[0]) == 5002


def test_imports_of_resolves_absolute_relative_submodule_and_nested_imports():
  known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d", "other"}
  source = '''
import os, numpy as np
import pkg.sub.c
import pkg.sub.missing.deep
from pkg.sub import d, helper
from pkg import sub
from . import a
from .sub.c import thing
from ..outside import nothing
from .sub import *
import importlib
from typing import TYPE_CHECKING
if TYPE_CHECKING:
  import other
else:
  import pkg.b

def f():
  import experiments.main
  from tests import conftest
  return importlib.import_module("pkg.a")

class K:
  def g(self):
    from medjax_kernels import conv3d
'''
  # "..outside" from pkg.sub.c is pkg.outside: not a module, so its package pkg;
  # likewise the missing pkg.sub.missing.deep resolves to pkg.sub
  deps = imports_of("pkg.sub.c", False, source, known)
  assert deps == {"os", "numpy", "pkg.sub.c", "pkg.sub", "pkg.sub.d", "pkg.sub",
                  "pkg.sub.c", "pkg.b", "pkg", "importlib", "typing",
                  "experiments.main", "tests", "medjax_kernels", "pkg.a"}
  assert "other" not in deps  # only under TYPE_CHECKING

  # in a package's __init__, "." is the package itself
  assert imports_of("pkg.sub", True, "from . import c\nfrom .d import x\nfrom .. import a",
                    known) == {"pkg.sub.c", "pkg.sub.d", "pkg.a"}
  assert imports_of("pkg", True, "from pkg import sub, name", known) == {"pkg.sub", "pkg"}
  with pytest.raises(ValueError, match="beyond the top-level package"):
    imports_of("pkg.a", False, "from ... import x", known)


def test_build_graph_and_find_cycles_on_a_synthetic_package(tmp_path):
  # pkg/__init__.py re-exports from pkg.a; pkg.a imports pkg.b at module level;
  # pkg.b imports pkg.a inside a function: a cycle, found through the function.
  root = tmp_path / "pkg"
  (root / "inner").mkdir(parents=True)
  (root / "__pycache__").mkdir()
  (root / "__init__.py").write_text("from pkg.a import run\n")
  (root / "a.py").write_text("from . import b\n\ndef run():\n  return b.go()\n")
  (root / "b.py").write_text("def go():\n  from pkg import a\n  return a\n")
  (root / "inner" / "__init__.py").write_text("")
  (root / "inner" / "c.py").write_text("from ..a import run\nfrom .. import inner\n")
  (root / "__pycache__" / "a.cpython-311.py").write_text("import nothing\n")
  modules = discover_modules("pkg", str(root))
  assert sorted(modules) == ["pkg", "pkg.a", "pkg.b", "pkg.inner", "pkg.inner.c"]
  graph, _ = build_graph(modules)
  assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"},
                   "pkg.inner": set(), "pkg.inner.c": {"pkg.a", "pkg.inner"}}
  assert [format_cycle(c) for c in find_cycles(graph)] == ["pkg.a -> pkg.b -> pkg.a"]
  (root / "b.py").write_text("def go():\n  return 1\n")
  assert find_cycles(build_graph(modules)[0]) == []
