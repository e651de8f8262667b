"""Plugins: modules imported at start in every modelfab process, to register what lies
outside the package (a task with `modelfab.tasks.register_task`, a recipe with
`modelfab.recipes.base.register_recipe`, ...).

They are named by `MODELFAB_PLUGINS` (comma-separated module names), which the control
plane reads through `ServerSettings.plugins` and the worker and replica processes, which
inherit the control plane's environment, read directly. Importing a plugin twice is
harmless: registrations of the same thing are idempotent.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable, Mapping

from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)

PLUGINS_ENV = "MODELFAB_PLUGINS"


def parse_plugins(raw: str | None) -> list[str]:
    """Module names from a comma-separated list (blanks and spaces dropped)."""
    return [name.strip() for name in (raw or "").split(",") if name.strip()]


def load_plugins(modules: Iterable[str]) -> list[str]:
    """Import each module (its import registers what it brings) and return their names.

    Raises:
        ModelfabError: code "plugin_error" (param "MODELFAB_PLUGINS") naming a module that
            cannot be imported, with the reason.
    """
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a plugin's import may fail in any way; it is the plugin's
            raise ModelfabError(
                f"plugin {name!r} cannot be imported ({type(exc).__name__}: {exc}); fix it "
                f"or remove it from {PLUGINS_ENV}",
                code="plugin_error",
                param=PLUGINS_ENV,
            ) from exc
        loaded.append(name)
    if loaded:
        logger.info("plugins loaded: %s", ", ".join(loaded))
    return loaded


def load_env_plugins(environ: Mapping[str, str] = os.environ) -> list[str]:
    """`load_plugins` of the modules `MODELFAB_PLUGINS` names in `environ` (worker and
    replica processes call this at start)."""
    return load_plugins(parse_plugins(environ.get(PLUGINS_ENV)))
