"""The package's import graph, read from the source (nothing is imported): no module imports itself through others,
and the lower layers (modeling/, data/, convert/, eval/) never import train/ (WORKSPACE.md, "Layers")."""

import ast
import pathlib

PACKAGE = "electra_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
LOWER_LAYERS = ("modeling", "data", "convert", "eval")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """{module: the package's modules it imports}, counting imports inside functions too (a deferred import is still a
  dependency). `from a import b` names the module a.b when it is one, else a."""
  files = {_module_name(p): p for p in ROOT.rglob("*.py")}
  graph: dict[str, set[str]] = {}
  for name, path in files.items():
    is_package = path.name == "__init__.py"
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      targets: list[str] = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = name.split(".") if is_package else name.split(".")[:-1]
          base = ".".join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
      for t in targets:
        while t and t not in files and "." in t:   # a.b.c where c is a name in a.b
          t = t.rsplit(".", 1)[0]
        if t in files and t != name and not name.startswith(t + "."):   # a module's own packages load first anyway
          deps.add(t)
    graph[name] = deps
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
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
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 50 and f"{PACKAGE}.train.pretrain_lib" in graph
  assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_lower_layers_never_import_train():
  graph = import_graph()
  bad = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
               if m.split(".")[1] in LOWER_LAYERS and d.startswith(f"{PACKAGE}.train"))
  assert bad == []
