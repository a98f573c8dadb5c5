"""The README and the result write-ups point at things that exist.

Read from the Markdown sources (nothing is imported or run), for `README.md` and
`experiments/results/*.md`:

* every link or image `[text](target)` names an existing file relative to the
  Markdown file, and its `#anchor`, if any, a heading of the target (GitHub's
  heading slugs);
* every `python -m X` names a module of this repository (a `.py` file, or a
  package with `__main__.py`) or an installed one (`pytest`, `pip`);
* every repository path such as `experiments/configs/unet3d_synthetic.py` exists;
* every dotted name `medjax.a.b` / `medjax_kernels.a` resolves: its longest
  prefix that is a module of the repository defines the next name (a function,
  class, assignment or import at module level, or a submodule), read with `ast`;
* the README's map of the code ("Where things go in the code") names files and
  folders that exist: each entry of the tree at its place, and each file its
  description names (`a/b.py` from the entry's top-level folder, a bare `b.py`
  anywhere below it).
"""
from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# import name -> source folder (setup.py installs kernels/ as medjax_kernels)
PACKAGE_DIRS = {"medjax": "medjax", "medjax_kernels": "kernels", "experiments": "experiments",
                "benchmarks": "benchmarks"}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PYTHON_M = re.compile(r"python -m ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?![.\w<])")  # not `X.<name>`
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:medjax|kernels|experiments|benchmarks|tests)/"
                       r"[a-z0-9_/.-]*\.(?:py|md|sh|json|csv|png))")
DOTTED = re.compile(r"(?<![\w.])(medjax(?:_kernels)?(?:\.[A-Za-z_]\w*)+)")


def markdown_files() -> list[str]:
  files = [os.path.join(REPO, "README.md")]
  files += sorted(glob.glob(os.path.join(REPO, "experiments", "results", "*.md")))
  return files


def _rel(path: str) -> str:
  return os.path.relpath(path, REPO)


@functools.lru_cache(maxsize=None)
def read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: str) -> frozenset[str]:
  """Slugs of the Markdown headings of `path` (outside fenced code blocks)."""
  slugs, fenced = set(), False
  for line in read(path).splitlines():
    if line.startswith("```"):
      fenced = not fenced
    elif not fenced and re.match(r"#{1,6} ", line):
      slugs.add(github_slug(line.lstrip("#")))
  return frozenset(slugs)


def links(path: str) -> list[str]:
  return [t for t in LINK.findall(read(path)) if not re.match(r"[a-z]+:", t)]


def module_file(dotted: str) -> str | None:
  """The source file of a repository module `a.b.c` (a package's `__init__.py`), or None."""
  top, *rest = dotted.split(".")
  if top not in PACKAGE_DIRS:
    return None
  base = os.path.join(REPO, PACKAGE_DIRS[top], *rest)
  for candidate in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.isfile(candidate):
      return candidate
  return None


@functools.lru_cache(maxsize=None)
def defined_names(source_file: str) -> frozenset[str]:
  """Names a module defines at its top level, plus the submodules of a package."""
  names = set()
  for node in ast.parse(read(source_file)).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
  if source_file.endswith("__init__.py"):
    folder = os.path.dirname(source_file)
    for entry in os.listdir(folder):
      if entry.endswith(".py") or os.path.isfile(os.path.join(folder, entry, "__init__.py")):
        names.add(entry[:-3] if entry.endswith(".py") else entry)
  return frozenset(names)


def unresolved_dotted(name: str) -> str | None:
  """Why `medjax.a.b.c` does not resolve, or None when it does."""
  parts = name.split(".")
  for end in range(len(parts), 0, -1):
    source = module_file(".".join(parts[:end]))
    if source is None:
      continue
    if end == len(parts) or parts[end] in defined_names(source):
      return None
    return f"{'.'.join(parts[:end])} ({_rel(source)}) defines no {parts[end]!r}"
  return f"no module {parts[0]!r} in the repository"


@pytest.mark.parametrize("path", markdown_files(), ids=_rel)
def test_links_resolve(path):
  missing = []
  for target in links(path):
    file_part, _, anchor = target.partition("#")
    linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
    if not os.path.exists(linked):
      missing.append(f"{target}: no file {_rel(linked)}")
    elif anchor and linked.endswith(".md") and anchor not in anchors(linked):
      missing.append(f"{target}: no heading #{anchor} in {_rel(linked)}")
  assert not missing, f"{_rel(path)}: " + "; ".join(missing)


@pytest.mark.parametrize("path", markdown_files(), ids=_rel)
def test_python_m_modules_exist(path):
  missing = []
  for module in sorted(set(PYTHON_M.findall(read(path)))):
    top = module.split(".")[0]
    if top in PACKAGE_DIRS:
      base = os.path.join(REPO, PACKAGE_DIRS[top], *module.split(".")[1:])
      if not (os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__main__.py"))):
        missing.append(module)
    elif importlib.util.find_spec(top) is None:
      missing.append(module)
  assert not missing, f"{_rel(path)}: python -m of missing modules: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=_rel)
def test_repository_paths_exist(path):
  missing = sorted({p for p in REPO_PATH.findall(read(path))
                    if not os.path.exists(os.path.join(REPO, p))})
  assert not missing, f"{_rel(path)}: paths that do not exist: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=_rel)
def test_dotted_names_resolve(path):
  problems = sorted({why for name in set(DOTTED.findall(read(path)))
                     if (why := unresolved_dotted(name.rstrip(".")))})
  assert not problems, f"{_rel(path)}: " + "; ".join(problems)


def test_the_checks_catch_stale_names():
  """The resolvers reject what a stale README would hold (the checks can fail)."""
  assert unresolved_dotted("medjax.inference.sliding_window") is None
  assert unresolved_dotted("medjax.models.UNet.original") is None
  assert unresolved_dotted("medjax_kernels.conv_xla") is None
  assert unresolved_dotted("medjax.train.sources") is not None  # renamed config_data
  assert unresolved_dotted("medjax.bench") is not None  # moved to benchmarks/
  assert module_file("medjax.train.freeze") is None  # merged into optim
  assert github_slug("What it can and cannot do yet") == "what-it-can-and-cannot-do-yet"
  assert (github_slug("Post-processing (`medjax.postprocess`)")
          == "post-processing-medjaxpostprocess")


def code_map_entries(readme: str) -> list[tuple[str, list[str]]]:
  """(path of a tree entry, `name.py` files its description names) of the README's map."""
  section = readme.split("## Where things go in the code", 1)[1]
  block = section.split("```", 2)[1]
  entries, parents = [], []  # parents: (indent, folder path) of the enclosing folders
  for line in block.splitlines()[1:]:
    match = re.match(r"( *)(\S+)", line)
    if not match or len(match.group(1)) >= 20:  # a continued description
      if entries:
        entries[-1][1].extend(re.findall(r"(?<![\w/])[\w/]+\.(?:py|sh|md)\b", line))
      continue
    indent, name = len(match.group(1)), match.group(2)
    while parents and parents[-1][0] >= indent:
      parents.pop()
    if name.startswith("("):  # "(also)": a description of the folder above
      entries.append((parents[-1][1] if parents else "", []))
    else:
      path = os.path.join(parents[-1][1], name) if parents else name
      if name.endswith("/"):
        parents.append((indent, path))
      entries.append((path, []))
    entries[-1][1].extend(re.findall(r"(?<![\w/])[\w/]+\.(?:py|sh|md)\b",
                                  line[indent + len(name):]))
  return entries


def test_code_map_names_existing_files():
  missing = []
  for path, named in code_map_entries(read(os.path.join(REPO, "README.md"))):
    if not os.path.exists(os.path.join(REPO, path)):
      missing.append(path)
      continue
    top = os.path.join(REPO, path.split("/")[0])
    for name in named:
      found = (os.path.exists(os.path.join(top, name)) if "/" in name
               else glob.glob(os.path.join(top, "**", name), recursive=True))
      if not found:
        missing.append(f"{name} (named by {path})")
  assert not missing, f"README code map: no such file or folder: {missing}"
