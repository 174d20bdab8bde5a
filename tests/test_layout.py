"""The package's layering, read from its imports (every import, also those inside
functions): no import circle between modules, and each layer imports only the
layers below it (DESIGN: samplers never import a method; methods never import the
loop, the experiment, the evaluator or the command line; the loop is on top of the
library, not inside it)."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gensuite')


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _modules() -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        out[_module_name(path)] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """module -> the gensuite modules it imports (a package import counts as its
  __init__; `from pkg import sub` as the submodule when there is one)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          sub = f'{node.module}.{a.name}'
          deps.add(sub if sub in modules else node.module)
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
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
      comp = set()
      while True:
        w = stack.pop()
        on.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_circles():
  assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


ABOVE_METHODS = ('gensuite.train', 'gensuite.experiment', 'gensuite.evaluate',
                 'gensuite.run', 'gensuite.cli', 'gensuite.bench', 'gensuite.sweep')


@pytest.mark.parametrize('package, forbidden', [
    ('gensuite.samplers', ('gensuite.methods',) + ABOVE_METHODS),
    ('gensuite.nets', ('gensuite.methods', 'gensuite.samplers') + ABOVE_METHODS),
    ('gensuite.data', ('gensuite.methods',) + ABOVE_METHODS),
    ('gensuite.metrics', ('gensuite.methods',) + ABOVE_METHODS),
    ('gensuite.methods', ABOVE_METHODS),
    ('gensuite.experiment', ('gensuite.train.loop', 'gensuite.run', 'gensuite.cli')),
    ('gensuite.evaluate', ('gensuite.experiment', 'gensuite.train.loop', 'gensuite.run',
                           'gensuite.cli')),
])
def test_layers_import_only_what_is_below_them(package, forbidden):
  graph = import_graph()
  wrong = sorted((m, d) for m, deps in graph.items()
                 if m == package or m.startswith(package + '.')
                 for d in deps if d.startswith(forbidden))
  assert wrong == []
