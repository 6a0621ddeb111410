"""Rules about the shape of the ``smpc`` package, checked on its source with ``ast``.

- No import cycle among ``smpc`` modules. Imports inside functions and under
  ``TYPE_CHECKING`` count too: a cycle that only works because one side imports lazily
  still means two modules that cannot be understood (or split) one without the other.
- No module over :data:`MAX_LINES` lines, except faithful ports of PLINK routines
  (:data:`PLINK_PORTS`), which follow PLINK's own structure so they can be compared
  with it line by line.
- Protocol names are compared with string literals only inside ``smpc/protocols/``:
  everywhere else asks the protocol registry, so that adding a protocol does not mean
  finding every ``if spec.protocol == "..."``.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import smpc

PACKAGE = Path(smpc.__file__).resolve().parent
ROOT_NAME = "smpc"
MAX_LINES = 600
# modules allowed over MAX_LINES: faithful ports of PLINK routines, kept in PLINK's own order
# (regression: PLINK 1.9's glm_linear / logistic regression and their output columns)
PLINK_PORTS: frozenset[str] = frozenset({"smpc.protocols.gwas.plink.regression"})
PROTOCOL_NAMES = frozenset({"protocol", "compute"})


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. smpc.core.field; a package is the name of its __init__
    path: Path
    is_package: bool


def _modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join([ROOT_NAME, *parts])
        modules[name] = Module(name, path, is_package)
    return modules


def _parse(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))


def _imported(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> Iterator[str]:
    """The ``smpc`` modules one import statement imports (parent packages not counted)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name
        return
    if node.level:
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base not in known:
        return
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        # `from pkg import name`: the submodule if there is one, else pkg's __init__
        yield submodule if submodule in known else base


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(_parse(module)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(module, node, known):
                    if target != name:
                        edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a component (breadth first)."""
    start = min(component)
    previous: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for target in sorted(graph[node]):
            if target not in component:
                continue
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle in component {sorted(component)}")


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    modules = _modules()
    steps = [
        f"{a} (line {graph[a][b]} of {modules[a].path.relative_to(PACKAGE.parent)}) -> {b}"
        for a, b in itertools.pairwise(cycle)
    ]
    return "\n  ".join(steps)


def test_find_cycles_reports_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among smpc modules:\n  " + "\n\n  ".join(
        _describe(graph, cycle) for cycle in cycles
    )


def test_modules_are_small() -> None:
    too_long = {}
    for name, module in _modules().items():
        lines = len(module.path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in PLINK_PORTS:
            too_long[name] = lines
    assert not too_long, f"modules over {MAX_LINES} lines (split them by subject): " + ", ".join(
        f"{name} ({lines})" for name, lines in sorted(too_long.items())
    )


def _is_protocol_name(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in PROTOCOL_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr in PROTOCOL_NAMES
    )


def _is_str_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and all(_is_str_literal(e) for e in node.elts)
    return False


def protocol_name_comparisons() -> list[str]:
    """``file:line: source`` of each comparison of a protocol name with a string literal
    outside ``smpc/protocols/``."""
    found = []
    protocols = PACKAGE / "protocols"
    for module in _modules().values():
        if module.path.is_relative_to(protocols):
            continue
        source = module.path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for a, b in itertools.pairwise(operands):
                if (_is_protocol_name(a) and _is_str_literal(b)) or (
                    _is_protocol_name(b) and _is_str_literal(a)
                ):
                    where = module.path.relative_to(PACKAGE.parent)
                    found.append(f"{where}:{node.lineno}: {ast.get_source_segment(source, node)}")
                    break
    return sorted(found, key=lambda hit: (hit.split(":")[0], int(hit.split(":")[1])))


def test_protocol_name_comparison_detector() -> None:
    def hits(code: str) -> bool:
        tree = ast.parse(code)
        compare = next(n for n in ast.walk(tree) if isinstance(n, ast.Compare))
        operands = [compare.left, *compare.comparators]
        return any(
            (_is_protocol_name(a) and _is_str_literal(b))
            or (_is_protocol_name(b) and _is_str_literal(a))
            for a, b in itertools.pairwise(operands)
        )

    assert hits('spec.protocol == "sum"')
    assert hits('"gwas" != job.compute')
    assert hits('protocol in ("sum", "fedavg")')
    assert hits('compute not in {"assoc"}')
    assert not hits("spec.protocol == other.protocol")
    assert not hits('spec.name == "sum"')
    assert not hits("protocol in REGISTRY")


def test_no_protocol_name_literals_outside_protocols() -> None:
    found = protocol_name_comparisons()
    assert not found, (
        "protocol names compared with string literals outside smpc/protocols/ "
        "(ask the protocol registry instead):\n  " + "\n  ".join(found)
    )
