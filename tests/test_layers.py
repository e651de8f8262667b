"""The import direction of ARCHITECTURE.md, checked on the source: no cycles between
modelfab's packages, and the replica side, the worker and the applications never reach the
control plane's state."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import modelfab

ROOT = Path(modelfab.__file__).parent

FORBIDDEN: dict[str, set[str]] = {
    # replicas run on any node beside the control plane and talk to it only over HTTP
    "serving": {"services", "db", "api", "server", "gateway", "usage_journal", "metering", "apps"},
    # applications are products on top of the platform: they use it through its API
    "apps": {"services", "db", "api", "server", "gateway", "metering", "usage_journal"},
    # recipes run in workers, which never open the database
    "recipes": {"services", "db", "api", "server", "gateway", "metering", "usage_journal"},
    "hub": {"services", "db", "api", "server", "gateway"},
    # the language-model foundation: used by the hub, tasks, recipes and replicas alike
    "llm": {"services", "db", "api", "server", "gateway", "hub", "recipes", "compute", "tasks"},
    "data": {"services", "db", "api", "server", "gateway"},
    "compute.worker": {"services", "db", "api", "server", "gateway", "metering"},
    "client": {"services", "db", "api", "server", "gateway", "compute", "recipes", "serving"},
    # the control plane's front: routes, keys and refs are injected, never read here
    "gateway": {"services", "db", "api", "server", "recipes", "compute"},
    # task types are light: the served-model kind is an import string, loaded by replicas
    "tasks": {"services", "db", "api", "server", "gateway", "serving", "recipes", "compute"},
}
"""package -> packages it must never import (at any depth, in any function)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every modelfab module `path` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "modelfab":  # from modelfab import metering
                found.update(f"modelfab.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.startswith("modelfab.")}


def _package(module: str) -> str:
    """The top-level package (or module) of modelfab that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_imports() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, imported in _module_imports().items():
        for name in imported:
            if _package(name) != _package(module) and len(name.split(".")) > 1:
                graph[_package(module)].add(_package(name))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_packages_form_no_cycle() -> None:
    cycle = _cycle(_package_graph())
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_forbidden_imports() -> None:
    offences = []
    for module, imported in sorted(_module_imports().items()):
        for owner, banned in FORBIDDEN.items():
            if module != f"modelfab.{owner}" and not module.startswith(f"modelfab.{owner}."):
                continue
            offences += [
                f"{module} imports {name}" for name in sorted(imported) if _package(name) in banned
            ]
    assert not offences, "\n".join(offences)


def test_the_wire_format_imports_only_itself() -> None:
    """Every layer (the SDK included) may use `schemas`, so it stands on nothing."""
    offences = [
        f"{module} imports {name}"
        for module, imported in sorted(_module_imports().items())
        if _package(module) == "schemas"
        for name in sorted(imported)
        if _package(name) != "schemas"
    ]
    assert not offences, "\n".join(offences)


def test_only_the_cli_imports_applications() -> None:
    """Applications sit on top: the worker reaches one only through a recipe's entrypoint
    string, and `cli` is their shell."""
    offences = [
        f"{module} imports {name}"
        for module, imported in sorted(_module_imports().items())
        if _package(module) not in ("apps", "cli")
        for name in sorted(imported)
        if _package(name) == "apps"
    ]
    assert not offences, "\n".join(offences)
