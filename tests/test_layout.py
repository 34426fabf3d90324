"""The package's import graph: no cycles between rosepo_jax modules, and no rosepo_jax import
hidden inside a function (the usual way to paper over a cycle)."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "rosepo_jax")


def _modules() -> dict[str, str]:
  """{dotted module name: file path} for every module of rosepo_jax."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), REPO)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
  return out


def _imported(node, modules) -> list[str]:
  """The rosepo_jax modules an Import / ImportFrom node names."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.split(".")[0] == "rosepo_jax"]
  if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rosepo_jax":
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
            for a in node.names]
  return []


def _graph():
  modules = _modules()
  edges, hidden = {}, []
  for name, path in modules.items():
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    edges[name] = set()
    for node in ast.walk(tree):
      for target in _imported(node, modules):
        edges[name].add(target)
    for fn in ast.walk(tree):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        for node in ast.walk(fn):
          if _imported(node, modules):
            hidden.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
  return edges, hidden


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in edges.get(v, ()):
        out.append(sorted(component))

  for v in edges:
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  edges, _ = _graph()
  assert "rosepo_jax.pipeline" in edges and edges["rosepo_jax.pipeline"]
  assert _cycles(edges) == []


def test_cycle_finder_finds_a_planted_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_rosepo_jax_import_inside_a_function():
  _, hidden = _graph()
  assert hidden == []


def test_stages_never_import_the_runner():
  edges, _ = _graph()
  for name, targets in edges.items():
    if name.startswith("rosepo_jax.stages"):
      assert "rosepo_jax.pipeline" not in targets, name
