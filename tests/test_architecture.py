"""The package's layering: modules import only those listed above them in the README, and never in a cycle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "echoengine"


def _unit(path: Path) -> str:
    """A module's entry in the README's list: its file name, or ``NAME/`` for a subpackage (models, service)."""
    relative = path.relative_to(PACKAGE)
    return f"{relative.parts[0]}/" if len(relative.parts) > 1 else relative.name


def _unit_of_import(name: str) -> str:
    """The README entry of an imported module, e.g. ``echoengine.service.mqtt`` -> ``service/``."""
    top = name.split(".")[1]
    return f"{top}/" if (PACKAGE / top).is_dir() else f"{top}.py"


def _imports(path: Path, *, top_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("echoengine"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "echoengine" else [node.module]
            found.update(_unit_of_import(name) for name in names if "." in name)
    return found


def _graph(*, top_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py") or path.parent != PACKAGE:
            unit = _unit(path)
            graph.setdefault(unit, set()).update(d for d in _imports(path, top_only=top_only) if d != unit)
    return graph


def _readme_order() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("src/echoengine/\n"):]
    return [m.group(1) for m in re.finditer(r"^  (\S+\.py|\w+/)\s", block[: block.index("\ntests/")], re.M)]


def test_no_module_imports_one_listed_below_it_in_the_readme():
    order = _readme_order()
    position = {unit: i for i, unit in enumerate(order)}
    graph = _graph(top_only=True)
    assert set(graph) - {"__init__.py"} <= set(position), sorted(set(graph) - set(position))
    upward = [(unit, dep) for unit, deps in graph.items() for dep in deps
              if unit in position and dep in position and position[dep] > position[unit]]
    assert not upward


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = _graph(top_only=False)
    state: dict[str, int] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for dep in sorted(graph.get(unit, ())):
            assert state.get(dep) != 1, " -> ".join([*path, unit, dep])
            if dep not in state:
                visit(dep, [*path, unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_the_model_kinds_name_functions_of_modules_listed_below_the_registry():
    """The registry imports what implements a kind when it is used: those modules lie below it, as imports would."""
    from echoengine.kinds import KINDS

    order = _readme_order()
    for kind in KINDS.values():
        for field in ("builder", "dataset", "make_embedder", "embedding_size", "serving"):
            target = getattr(kind, field)
            if target is not None:
                parts = target.path.partition(":")[0].split(".")[1:]
                unit = "models/" if parts[0] == "models" else f"{parts[0]}.py"
                assert order.index(unit) > order.index("kinds.py"), (kind.name, field, target.path)
