"""The package's import graph has no cycle.

Every `import kgmae_jax.x` / `from kgmae_jax import x` counts: at module
level, inside a function, and in a script's `if __name__ == '__main__':`
block (a tool run as `__main__` that imports a module importing the tool is
a cycle between the two tools all the same).
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'kgmae_jax'


def _imports(tree, modules):
  """kgmae_jax modules imported anywhere in `tree`."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split('.')
        if parts[0] == 'kgmae_jax' and len(parts) > 1:
          out.add(parts[1])
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      parts = node.module.split('.')
      if parts[0] == 'kgmae_jax':
        if len(parts) > 1:
          out.add(parts[1])
        else:
          out.update(a.name for a in node.names if a.name in modules)
  return out


def import_graph():
  files = {p.stem: p for p in PACKAGE.glob('*.py') if p.stem != '__init__'}
  return {name: _imports(ast.parse(path.read_text()), files) - {name}
          for name, path in files.items()}


def find_cycle(graph):
  """One cycle as [a, b, ..., a], or None."""
  state = {}  # 1: on the current path, 2: done.
  path = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_finds_a_cycle_when_there_is_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c',
                                                              'a']
  assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None
  tree = ast.parse('from kgmae_jax import a, b as c\n'
                   'def f():\n  import kgmae_jax.d\n'
                   "if __name__ == '__main__':\n  from kgmae_jax import e\n")
  assert _imports(tree, {'a', 'b', 'd', 'e'}) == {'a', 'b', 'd', 'e'}


def test_no_import_cycle_in_the_package():
  graph = import_graph()
  assert {'predict', 'visualize', 'inference', 'tables'} <= set(graph)
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)
