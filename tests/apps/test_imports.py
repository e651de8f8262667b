"""The applications layer sits on top: `apps` never imports the control plane's inside
(`services`, `db`, `api`, `server`), and nothing below it imports `apps` (the worker reaches
an application only through a recipe's entrypoint string; `cli` is its shell)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import modelfab

SRC = Path(modelfab.__file__).parent
FORBIDDEN_IN_APPS = ("services", "db", "api", "server")
MAY_IMPORT_APPS = ("apps", "cli")


def imports(path: Path) -> Iterator[str]:
    """Every modelfab module `path` imports, at any level of the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == "modelfab":  # from modelfab import services
                yield from (f"modelfab.{a.name}" for a in node.names)


def package(module: str) -> str | None:
    """ "services" for "modelfab.services.jobs"; None outside modelfab."""
    parts = module.split(".")
    return parts[1] if parts[0] == "modelfab" and len(parts) > 1 else None


def test_apps_never_import_the_control_planes_inside() -> None:
    bad = [
        (str(path.relative_to(SRC)), module)
        for path in sorted((SRC / "apps").rglob("*.py"))
        for module in imports(path)
        if package(module) in FORBIDDEN_IN_APPS
    ]
    assert bad == []


def test_nothing_below_apps_imports_them() -> None:
    bad = [
        (str(path.relative_to(SRC)), module)
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] not in MAY_IMPORT_APPS
        for module in imports(path)
        if package(module) == "apps"
    ]
    assert bad == []
