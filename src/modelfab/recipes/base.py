"""The recipe interface and catalog.

A recipe module defines a pydantic `Params` model (defaults strong, a docstring per field)
and a `RECIPE` spec whose `entrypoint` names the function that does the work. The control
plane imports only the spec, to validate params at `jobs create`; the worker imports the
entrypoint, so heavy libraries (torch) stay out of the control plane.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from modelfab.errors import InvalidRequest, NotFound
from modelfab.hub.catalog import get_entry

# name -> module that defines RECIPE; recipes added in later issues are one line here.
CATALOG: dict[str, str] = {
    "sleep": "modelfab.recipes.sleep",
    "image-classification": "modelfab.recipes.image_classification",
    "anomaly-detection": "modelfab.recipes.anomaly_detection",
    "serve": "modelfab.recipes.serve",
    "batch-inspection": "modelfab.recipes.batch_inspection",
}


def register_recipe(name: str, module: str) -> None:
    """Add recipe `name`, defined by `RECIPE` in `module`, to `CATALOG` (plugins call this
    when imported: see `modelfab.plugins`). Registering the same pair again is a no-op;
    raises ValueError when `name` is another module's recipe."""
    known = CATALOG.get(name)
    if known is not None and known != module:
        raise ValueError(f"recipe {name!r} is already registered by {known}")
    CATALOG[name] = module


class RecipeContext(Protocol):
    """What a running recipe gets from the worker."""

    job_id: str
    attempt: int
    dataset: dict[str, Any] | None  # the dataset version object of the API (name, ref, stats)
    dataset_path: Path | None
    base_weights: Path | None  # imported hub weights of params.base_model, sha256-checked
    resources: dict[str, Any]  # what the job asked for: gpus, cpus, memory_bytes
    workdir: Path

    def event(
        self,
        message: str,
        *,
        type: str = "message",
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None: ...

    def metrics(self, step: int | None = None, **values: float) -> None: ...

    def cancelled(self) -> bool: ...

    def upload_artifact(self, path: Path, *, name: str, format: str) -> dict[str, Any]: ...

    def register_model(self, model: dict[str, Any]) -> None: ...

    def flush(self) -> None:
        """Block until buffered events reached the control plane (or it stays unreachable)."""
        ...


@dataclass(frozen=True)
class RecipeSpec:
    name: str
    version: str
    description: str
    params: type[BaseModel]
    entrypoint: str  # "module:function", called as function(ctx, params) -> result dict
    needs_dataset: bool = False
    tasks: tuple[str, ...] = field(default_factory=tuple)
    internal: bool = False  # run by the platform (endpoint replicas), not by tenants
    needs_model: bool = False
    """params.model names a registry model (NAME, NAME:VERSION or NAME@ALIAS); at create the
    control plane pins the servable version it names in params.model_version_id, so every
    attempt of the job runs the same version."""
    server_paths: tuple[str, ...] = ()
    """Params that name paths on the node (absolute): admins may use any, other tenants only
    paths under the server's `path_roots`."""

    def validate_params(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Coerce and check params; raises InvalidRequest naming the offending `params.<field>`."""
        try:
            return self.params.model_validate(raw).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            field_name = ".".join(str(p) for p in err["loc"]) or "params"
            raise InvalidRequest(
                f"recipe {self.name!r}: param {field_name!r}: {err['msg']}",
                param=f"params.{field_name}",
            ) from exc

    def load_entrypoint(self) -> Callable[[RecipeContext, Any], dict[str, Any] | None]:
        module_name, func = self.entrypoint.split(":")
        fn: Callable[[RecipeContext, Any], dict[str, Any] | None] = getattr(
            importlib.import_module(module_name), func
        )
        return fn


def get_recipe(name: str) -> RecipeSpec:
    if name not in CATALOG:
        raise NotFound(
            f"no recipe named {name!r}; available: {', '.join(sorted(CATALOG))}", param="recipe"
        )
    spec: RecipeSpec = importlib.import_module(CATALOG[name]).RECIPE
    return spec


def list_recipes() -> list[RecipeSpec]:
    """The recipes tenants can run (internal ones are left out)."""
    return [s for s in (get_recipe(name) for name in sorted(CATALOG)) if not s.internal]


def known_hub_model(value: str, task: str | None = None) -> str:
    """`value` when it is a hub model id (of `task`, when given); raises ValueError saying
    why not, for a pydantic field validator to report."""
    try:
        entry = get_entry(value)
    except NotFound as exc:
        raise ValueError(exc.message) from exc
    if task is not None and entry.task != task:
        raise ValueError(f"{value} is a {entry.task} model, not {task}")
    return value
