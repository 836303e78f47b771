"""The house checks: no import cycles among nubis's modules, and no module past its size.

Both read the source, not the running program, so they hold for code no test imports.

Import cycles. The graph has a node per module of ``src/nubis`` (a package is its
``__init__.py``) and an edge A -> B for every ``import B`` or ``from B import name`` in A that
names a nubis module (``from nubis.dicom import transcode`` names the module
``nubis.dicom.transcode``; ``from nubis.jobs.store import Job`` names ``nubis.jobs.store``).
Every import counts, wherever it stands:

- at a module's top level, where a cycle would fail at import time;
- inside a function (deferred, e.g. so a command loads only what it uses): deferring an import
  hides a cycle from the interpreter, not from the design. A lower module that calls back
  into a higher one is the knot these checks are here to keep out;
- under ``if TYPE_CHECKING:``: a type named in a signature is a dependency all the same.

Importing ``nubis.a.b`` also runs ``nubis/a/__init__.py``; that is not an edge of the graph,
which is why a package's ``__init__.py`` imports nothing (it would tie every module of the
package to whatever it imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nubis

SOURCE = Path(nubis.__file__).parent
# A module holds one concept; past this many lines it holds more and is split by concept.
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The nubis modules ``module`` imports, anywhere in its text."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import name``: name is a module of pkg, or a name defined in pkg.
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.append(submodule if submodule in known else base)
    targets = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path_within(graph: dict[str, set[str]], members: list[str]) -> str:
    """One loop through a component, for the failure message: a -> b -> ... -> a."""
    inside = set(members)
    start = members[0]
    trail, seen = [start], {start}
    node = start
    while True:
        nxt = sorted(graph[node] & inside)
        back = [n for n in nxt if n == start]
        if back and len(trail) > 1:
            return " -> ".join([*trail, start])
        fresh = [n for n in nxt if n not in seen]
        if not fresh:
            return " -> ".join([*trail, nxt[0]]) if nxt else start
        node = fresh[0]
        trail.append(node)
        seen.add(node)


def test_the_module_graph_has_no_cycle() -> None:
    known = _modules()
    graph = {module: _imported(module, path, known) for module, path in known.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles among nubis modules:\n" + "\n".join(
        f"  {len(c)} modules: {', '.join(c)}\n    e.g. {_path_within(graph, c)}" for c in cycles
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above cannot pass by seeing nothing: a deferred import closing a loop of
    three, and a type-only import closing a loop of two, are found; a chain is not."""
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a"},  # e.g. inside a function
        "d": {"e"},
        "e": {"d"},  # e.g. under TYPE_CHECKING
        "f": {"a"},
    }
    assert _cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert _path_within(graph, ["a", "b", "c"]) == "a -> b -> c -> a"


def test_imports_are_read_wherever_they_stand(tmp_path: Path) -> None:
    """Top level, inside a function, under TYPE_CHECKING, relative: each is an edge."""
    package = tmp_path / "nubis"
    package.mkdir()
    (package / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import nubis.one\n"
        "if TYPE_CHECKING:\n"
        "    from nubis.two import Thing\n"
        "def later():\n"
        "    from . import three\n"
        "    from nubis.four import name\n"
        "    from nubis import one\n"
    )
    known = {f"nubis.{n}": package / f"{n}.py" for n in ("top", "one", "two", "three", "four")}
    known["nubis"] = package / "__init__.py"
    imported = _imported("nubis.top", package / "top.py", known)
    assert imported == {"nubis.one", "nubis.two", "nubis.three", "nubis.four"}


def test_no_module_is_longer_than_the_limit() -> None:
    lengths = {
        str(path.relative_to(SOURCE.parent)): len(path.read_text().splitlines())
        for path in _modules().values()
    }
    assert lengths, "no module found: the check would pass by seeing nothing"
    over = {name: n for name, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by concept): {over}"
