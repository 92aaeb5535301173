"""The architecture as tests: the package's import graph (lazy imports inside functions
included) has no cycle and keeps its layers, and ``import jacengine`` stays light and portable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jacengine"
FRAMEWORKS = ("tensorflow", "keras", "tf_keras", "jacengine.tf")

# (modules whose name starts with this, may not import modules whose name starts with any of these)
RULES = [
    ("jacengine.planning", (*FRAMEWORKS, "zarr", "jacengine.storage", "jacengine.backends", "jacengine.executors",
                            "jacengine.api", "jacengine.preparation", "jacengine.task")),
    ("jacengine.executors", (*FRAMEWORKS, "jacengine.backends", "jacengine.api", "jacengine.preparation",
                             "jacengine.task", "jacengine.cli")),
    ("jacengine.storage", (*FRAMEWORKS, "jacengine.backends", "jacengine.executors", "jacengine.api")),
    ("jacengine.backends", (*FRAMEWORKS, "jacengine.api", "jacengine.executors")),
    # the command line parses flags and prints results: the API does the work, the registries
    # give the choices; no store internals, executors, signal handling or planning arithmetic
    ("jacengine.cli", (*FRAMEWORKS, "jacengine.storage", "jacengine.executors", "jacengine.preparation", "jacengine.task",
                       "jacengine.interrupt", "jacengine.jobs.jobqueue", "jacengine.planning.blocks",
                       "jacengine.planning.costmodel", "jacengine.planning.calibration", "jacengine.planning.fitting",
                       "jacengine.planning.method_choice")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the package's modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    assert first_cycle(import_graph()) is None, " -> ".join(first_cycle(import_graph()) or [])


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert first_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[rule[0] for rule in RULES])
def test_layer_rules(layer: str, forbidden: tuple[str, ...]) -> None:
    broken = [f"{source} imports {target}" for source, targets in import_graph().items() if source.startswith(layer)
              for target in targets if any(target == f or target.startswith(f + ".") for f in forbidden)]
    assert not broken, broken


def test_only_the_tensorflow_backend_imports_tensorflow() -> None:
    broken = [f"{source} imports {target}" for source, targets in import_graph().items()
              if not source.startswith("jacengine.tf")
              for target in targets if any(target == f or target.startswith(f + ".") for f in FRAMEWORKS)]
    assert not broken, broken


def test_import_jacengine_works_without_the_resource_module() -> None:
    """``resource`` is POSIX-only (Windows has none): importing jacengine, and planning, must
    not need it (memory is read through psutil, imported when a run starts)."""
    script = ("import sys; sys.modules['resource'] = None\n"
              "import jacengine\n"
              "print(jacengine.RunOptions(budget='1GiB').budget_bytes == 2**30 and 'psutil' not in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
