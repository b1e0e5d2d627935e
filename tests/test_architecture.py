"""The house as built (docs/ARCHITECTURE.md): imports run one way, from the command line down
to the ops, with no import of seqmem inside a function (no cycle dodged) and no file circle.

Read from the source with `ast`, so a new module is checked as soon as it exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seqmem"

# Lower tiers first; a module may import its own package and anything in a lower tier.
TIERS = [
    ("errors",),
    ("registry", "store", "devices"),
    ("ops",),
    ("mixers",),
    ("models", "tasks", "curricula"),
    ("config",),
    ("train", "continual"),
    ("build",),
    ("analysis", "bench"),
    ("report",),
    ("dashboard",),
    ("engine",),
    ("sweep", "flagship"),
    ("reproduce",),
    ("cli",),
]
TIER = {name: i for i, names in enumerate(TIERS) for name in names}


def _unit(module: str) -> str:
    """The tier unit of a dotted module name: its first component below seqmem."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        yield name, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module):
    """(seqmem module imported, at module level?) for every import in the tree."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for n in names:
            if n == "seqmem" or n.startswith("seqmem."):
                yield n, id(node) in top
                break


MODULES = dict(_modules())


def test_every_unit_has_a_tier():
    units = {_unit(m) for m in MODULES} - {""}
    assert units <= set(TIER), f"add these to TIERS and docs/ARCHITECTURE.md: {units - set(TIER)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module):
    unit = _unit(module)
    for target, at_top in _imports(MODULES[module]):
        assert at_top, f"{module} imports {target} inside a function"
        tu = _unit(target)
        if not tu or tu == unit:
            continue
        assert TIER[tu] < TIER[unit], (f"{module} (tier {TIER[unit]}: {unit}) imports "
                                       f"{target} (tier {TIER[tu]}: {tu}): imports run down")


def test_no_file_circle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, tree in MODULES.items():
        for target, _ in _imports(tree):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != m:
                graph[m].add(target)
    # A package's __init__ re-exporting its modules is not a circle: drop package -> child.
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    seen: dict[str, int] = {}

    def visit(m, stack):
        seen[m] = 1
        for t in graph[m]:
            if seen.get(t) == 1:
                circle = [*stack[stack.index(t):], t]
                raise AssertionError("file circle: " + " -> ".join(circle))
            if t not in seen:
                visit(t, [*stack, t])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
