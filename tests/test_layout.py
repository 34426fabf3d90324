"""The package's import graph: no cycles between rosepo_jax modules, and no rosepo_jax import
hidden inside a function (the usual way to paper over a cycle); and the file layer: local-only
file calls (open, os, shutil, tempfile, np.load) only where a path cannot be under the workdir."""

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


# Where local-only file calls are right: (module, function) -> why. Everything else reads and
# writes through rosepo_jax.files, so that the workdir may be gs://.
LOCAL_FILE_CALLS = {
    ("files.py", "*"): "the file layer itself",
    ("data/records.py", "*"): "the raw dataset files, outside the workdir",
    ("data/tfds_builders.py", "*"): "TFDS builds in a local folder (load_dataset's local copy)",
    ("stages/data.py", "check"): "the raw dataset files (read by data/records.py), outside the "
                                 "workdir",
    ("checkpoints/gguf.py", "*"): "GGUF files: a backbone, outside the workdir",
    ("data/dataset.py", "<module>"): "the repository root",
    ("data/dataset.py", "resolve_path"): "config paths relative to the repository",
    ("data/dataset.py", "load_dataset"): "the builder's folder inside the local copy",
    ("workdir.py", "_file_digest"): "fingerprints of inputs outside the workdir",
    ("workdir.py", "fingerprint"): "fingerprints of inputs outside the workdir",
    ("workdir.py", "save_npz"): "np.savez into a bytes buffer",
    ("workdir.py", "load_npz"): "np.load from a bytes buffer",
    ("pipeline.py", "_check_workdir"): "os.access for a local workdir",
    ("checkpoints/__init__.py", "resolve_model_path"): "an installed package's folder",
    ("checkpoints/atomic.py", "<module>"): "the repository root",
    ("checkpoints/atomic.py", "check_destination"): "what a local destination would overwrite",
    ("checkpoints/atomic.py", "_default_permissions"): "permissions of a local folder",
    ("checkpoints/hf.py", "_read_json"): "in a local folder (load_hf copies a remote one)",
    ("checkpoints/hf.py", "_weight_files"): "in a local folder (load_hf copies a remote one)",
    ("checkpoints/hf.py", "load_hf"): "in a local folder (load_hf copies a remote one)",
    ("checkpoints/hf.py", "save_tokenizer"): "save_pretrained into a local temp folder",
}
_OS = {"makedirs", "mkdir", "replace", "rename", "remove", "unlink", "rmdir", "listdir", "walk",
       "scandir", "chmod", "stat", "access"}
_OS_PATH = {"exists", "lexists", "isfile", "isdir", "islink", "getsize", "getmtime", "abspath",
            "realpath", "normpath", "relpath"}


def _local_file_call(call: ast.Call) -> str:
  """The name of a local-only file function `call` calls, or ""."""
  f = call.func
  if isinstance(f, ast.Name):
    return "open" if f.id == "open" else ""
  if not isinstance(f, ast.Attribute):
    return ""
  v = f.value
  if isinstance(v, ast.Name):
    if (v.id == "os" and f.attr in _OS) or v.id in ("shutil", "tempfile") or (
        v.id == "np" and f.attr in ("load", "save", "savez", "savez_compressed")):
      return f"{v.id}.{f.attr}"
  if (isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id == "os"
      and v.attr == "path" and f.attr in _OS_PATH):
    return f"os.path.{f.attr}"
  return ""


def _local_file_calls(source: str) -> list[tuple[str, str, int]]:
  """(enclosing top-level function or class, call, line) of each local-only file call."""
  out = []
  for top in ast.parse(source).body:
    where = top.name if isinstance(top, (ast.FunctionDef, ast.ClassDef)) else "<module>"
    for node in ast.walk(top):
      if isinstance(node, ast.Call) and _local_file_call(node):
        out.append((where, _local_file_call(node), node.lineno))
  return out


def test_local_file_calls_only_where_no_workdir_path_goes():
  stray = []
  for name, path in _modules().items():
    rel = os.path.relpath(path, PACKAGE)
    for where, call, line in _local_file_calls(open(path, encoding="utf-8").read()):
      if (rel, "*") not in LOCAL_FILE_CALLS and (rel, where) not in LOCAL_FILE_CALLS:
        stray.append(f"rosepo_jax/{rel}:{line} {call} in {where}")
  assert stray == [], "use rosepo_jax.files for paths under the workdir"


def test_local_file_call_finder_finds_planted_calls():
  source = ("import os\nx = open('a')\ndef f(p):\n  return os.path.isfile(p) or os.listdir(p)\n"
            "class C:\n  def g(self):\n    shutil.rmtree('d')\n    return np.load('z')\n"
            "def h(p):\n  return os.path.join(p, 'x')\n")
  assert _local_file_calls(source) == [
      ("<module>", "open", 2), ("f", "os.path.isfile", 4), ("f", "os.listdir", 4),
      ("C", "shutil.rmtree", 7), ("C", "np.load", 8)]
