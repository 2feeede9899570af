"""The import layers of docs/ARCHITECTURE.md, read from the code with `ast`.

`core/` imports no Dagster; its groups import only their own group and the groups below;
the top-level modules likewise (names and interrupts at the bottom, dispatch, runner and
cli at the top); no module imports itself back through others. Every import counts,
also one inside a function or under TYPE_CHECKING, so a deferred import hides neither a
cycle nor an arrow that runs back up. A new module fails here until it is given a floor.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dedup_assets", "resources")

# core's groups by floor: `model` and `density` share one and must not import each other.
CORE_FLOORS = {"data": 0, "model": 1, "density": 1, "decision": 2, "quality": 3}

# The top level of dedup_assets (and the resources package), bottom floor first: a unit
# imports only units on lower floors, never one on its own floor or above.
TOP_FLOORS = [
    # interrupts: the storages hold a thread's interrupt while they write (`shielded`)
    {"interrupts"},
    {"names", "partitions", "timings", "ui", "event_storage", "step_signals", "core"},
    # engines sets core's share of the cores in a pool process (`pools.set_process_cores`);
    # instance_imports is what its worker server preloads; run_storage keeps its engine
    # as event_storage does; watch_handoff names its socket by the output's layout
    {"resources", "engines", "instance_imports", "run_storage", "watch_handoff"},
    {"config", "assets", "automation"},
    {"definitions"},
    {"dispatch"},
    {"runner"},
    {"cli", "api"},
]
FLOOR_OF = {unit: floor for floor, units in enumerate(TOP_FLOORS) for unit in units}


@dataclass(frozen=True)
class Arrow:
    source: str  # the importing module
    target: str  # the imported module, of the project or not
    line: int

    def __str__(self) -> str:
        return f"{self.source} (line {self.line}) -> {self.target}"


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _arrows(module: str, path: Path) -> list[Arrow]:
    """Every import of `module`, wherever it stands; `from package import module` names
    the module imported."""
    arrows = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            arrows += [Arrow(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                package = module.split(".")
                package = package[: len(package) - node.level + (path.stem == "__init__")]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                arrows.append(Arrow(module, sub if sub in MODULES else base, node.lineno))
    return arrows


ARROWS = [arrow for module, path in MODULES.items() for arrow in _arrows(module, path)]
INNER = [a for a in ARROWS if a.target in MODULES and a.target != a.source]


def _core_group(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["dedup_assets", "core"] and len(parts) > 2 else None


def _unit(module: str) -> str:
    parts = module.split(".")
    return "resources" if parts[0] == "resources" else ".".join(parts[1:2]) or parts[0]


def test_core_imports_no_dagster():
    found = [
        str(a)
        for a in ARROWS
        if a.source.startswith("dedup_assets.core")
        and a.target.split(".")[0].split("_")[0] == "dagster"
    ]
    assert not found, f"core/ is plain Python, no Dagster: {found}"


def test_every_core_module_is_in_a_group():
    loose = [
        m
        for m in MODULES
        if m.startswith("dedup_assets.core.") and _core_group(m) not in CORE_FLOORS
    ]
    assert not loose, f"put these in one of core's groups {sorted(CORE_FLOORS)}: {loose}"


def upward_in_core(arrows: list[Arrow]) -> list[str]:
    """The arrows from a core module to a group not below its own, or out of core."""
    wrong = []
    for a in arrows:
        source, target = _core_group(a.source), _core_group(a.target)
        if source is None:
            continue
        if target is None:
            wrong.append(f"{a}: core imports only core")
        elif source != target and CORE_FLOORS[target] >= CORE_FLOORS[source]:
            wrong.append(f"{a}: {target} is not below {source}")
    return wrong


def upward_at_top(arrows: list[Arrow]) -> list[str]:
    """The arrows between top-level units that do not run down a floor."""
    return [
        f"{a}: {_unit(a.target)} is not below {_unit(a.source)}"
        for a in arrows
        if _unit(a.source) != _unit(a.target)
        and FLOOR_OF[_unit(a.target)] >= FLOOR_OF[_unit(a.source)]
    ]


def test_core_groups_import_only_downward():
    wrong = upward_in_core(INNER)
    assert not wrong, "\n".join(wrong)


def test_top_level_modules_import_only_downward():
    units = {_unit(m) for m in MODULES} - {"dedup_assets"}
    assert units <= set(FLOOR_OF), f"give these a floor in TOP_FLOORS: {units - set(FLOOR_OF)}"
    wrong = upward_at_top(INNER)
    assert not wrong, "\n".join(wrong)


def cycles(arrows: list[Arrow]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a in arrows:
        graph[a.source].add(a.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

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


def test_no_import_cycle():
    assert not cycles(INNER), f"modules that import each other in a loop: {cycles(INNER)}"


def test_the_checks_see_an_upward_and_a_circular_import():
    down = Arrow("dedup_assets.core.decision.similarity", "dedup_assets.core.data.layout", 1)
    up = Arrow("dedup_assets.core.data.layout", "dedup_assets.core.decision.similarity", 1)
    across = Arrow("dedup_assets.core.model.augment", "dedup_assets.core.density.pca", 1)
    assert upward_in_core([down]) == []
    assert len(upward_in_core([up, across])) == 2
    assert upward_at_top([Arrow("dedup_assets.names", "dedup_assets.runner", 1)])
    loop = Arrow("dedup_assets.core.data.pools", "dedup_assets.core.data.image_folder", 1)
    assert ["dedup_assets.core.data.image_folder", "dedup_assets.core.data.pools"] in cycles(
        [*INNER, loop]
    )
