"""The recipe interface and catalog.

A recipe module defines a pydantic `Params` model (defaults strong, a docstring per field)
and a `RECIPE` spec whose `entrypoint` names the function that does the work.

Two halves, two layers. The light catalogue -- this module and the modules `CATALOG`
names (`sleep`, `image_classification`, `anomaly_detection`, `serve`, `batch_inspection`,
`llm_finetune`, `llm_distill`, `hub_register`: names, params, specs) -- sits below `services`, which
import it to validate params at `jobs create`. The heavy halves (`recipes.vision`,
`recipes.anomaly`, `recipes.llm`, `recipes.training`: torch) are loaded only through an
`entrypoint`, in a worker or by `run_recipe`; the control plane never imports them
(tests/recipes/test_local.py checks it).

A recipe runs against a `RecipeContext`: the worker's, or `recipes.local.LocalContext`
in-process.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
    "llm-finetune": "modelfab.recipes.llm_finetune",
    "llm-distill": "modelfab.recipes.llm_distill",
    "hub-register": "modelfab.recipes.hub_register",
}


def register_recipe(name: str, module: str) -> None:
    """Add recipe `name`, defined by `RECIPE` in `module`, to `CATALOG` (plugins call this
    when imported: see `modelfab.plugins`). Registering the same pair again is a no-op;
    raises ValueError when `name` is another module's recipe."""
    known = CATALOG.get(name)
    if known is not None and known != module:
        raise ValueError(f"recipe {name!r} is already registered by {known}")
    CATALOG[name] = module


class Reporter(Protocol):
    """Where a recipe's progress goes: the part of a `RecipeContext` the shared training
    loop and the recipes' pure halves need."""

    def event(
        self,
        message: str,
        *,
        type: str = "message",
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Record `message` (type: message, metrics, checkpoint or progress). Never blocks."""
        ...

    def metrics(self, step: int | None = None, **values: float) -> None:
        """A metrics event of `values` at optimizer step `step`."""
        ...

    def cancelled(self) -> bool:
        """True once the job should stop (a cancel, or the attempt is over); the recipe
        returns what it has, soon."""
        ...


class RecipeContext(Reporter, Protocol):
    """What a running recipe gets, from the worker (`compute.worker.context.WorkerContext`)
    or in-process (`recipes.local.LocalContext`). Recipes that need more ask for an opt-in
    capability below with `isinstance`."""

    job_id: str
    attempt: int
    dataset: dict[str, Any] | None  # the dataset version object of the API (name, ref, stats)
    dataset_path: Path | None
    base_weights: Path | None  # imported hub weights of params.base_model, sha256-checked
    resources: dict[str, Any]  # what the job asked for: gpus, cpus, memory_bytes
    workdir: Path

    def upload_artifact(self, path: Path, *, name: str, format: str) -> dict[str, Any]:
        """Store `path`; returns {object, name, format, sha256, size_bytes}, the record for a
        model's `artifacts` list. Blocks."""
        ...

    def register_model(self, model: dict[str, Any]) -> None:
        """Register `model` (name, task, artifacts, metrics, ...) if the job succeeds; each
        call adds one model (a job may register several, each its own version)."""
        ...

    def flush(self) -> None:
        """Block until buffered events reached the control plane (or it stays unreachable)."""
        ...


@runtime_checkable
class FetchesModels(Protocol):
    """Capability: the files of a registered model version of the job's tenant."""

    def model_files(self, version_id: str) -> dict[str, Any]:
        """{version_id, onnx, labels}, each file a `{uri, sha256}` reference."""
        ...


@runtime_checkable
class FetchesModelArtifacts(Protocol):
    """Capability: every artifact of a registered model version of the job's tenant (a
    registered chat model a recipe starts from, say)."""

    def model_artifacts(self, version_id: str) -> dict[str, Any]:
        """{version_id, task, artifacts: {name: {uri, sha256}}} for every artifact. Raises
        ModelfabError when the tenant has no such version."""
        ...


@runtime_checkable
class HasHub(Protocol):
    """Capability: this node's hub folder, where `modelfab.hub.chat.chat_model_folder`
    finds (or converts, once) a chat model's weights."""

    hub_dir: Path | None


@runtime_checkable
class AnnouncesServing(Protocol):
    """Capability: tell the platform this job (an endpoint replica) answers at a URL to
    requests that present `secret` as a bearer token."""

    def announce_serving(self, url: str, secret: str) -> None: ...


InputsCheck = Callable[[Mapping[str, Any], str | None, Mapping[str, str | None]], None]
"""(params as the user gave them, the dataset's task or None, {param of `registered_models`:
the pinned version's task, None for a hub id}) -> None; raises InvalidRequest."""


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
    hub_models: tuple[str, ...] = ()
    """Params that name a chat model of the hub (catalog or imported): the control plane
    checks at create that each is there and usable."""
    registered_models: tuple[str, ...] = ()
    """Params that name a model either of the hub (an id, checked as `hub_models` are) or of
    the tenant's registry (NAME:VERSION or NAME@ALIAS, of one of `tasks`): at create the
    control plane pins the version a ref names in params.<name>_version_id (None for a hub
    id), so every attempt uses the same one; the worker fetches its files through
    `FetchesModelArtifacts`."""
    meters: tuple[str, ...] = ()
    """Usage the recipe counts itself, as numbers in its result under these names (e.g.
    tokens_trained); the control plane meters them with the attempt's seconds."""
    server_paths: tuple[str, ...] = ()
    """Params that name paths on the node (absolute): admins may use any, other tenants only
    paths under the server's `path_roots`."""
    check_inputs: InputsCheck | None = None
    """Checks at create that the inputs go together (e.g. a teacher's task and the
    dataset's), after the registered models are pinned; raises InvalidRequest naming the
    param."""
    weights_param: str = "base_model"
    """The param naming the hub image model whose imported weights the worker hands the
    recipe as `RecipeContext.base_weights`."""

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


def run_recipe(
    recipe: str | RecipeSpec, params: Mapping[str, Any] | BaseModel, ctx: RecipeContext
) -> dict[str, Any]:
    """Validate `params` through the recipe's spec and run its entrypoint with `ctx`, in
    this process (blocks for the run). Returns the recipe's result ({} for None).

    Raises NotFound for an unknown recipe, InvalidRequest naming a bad param, and whatever
    the recipe raises."""
    spec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    raw = params.model_dump(mode="json") if isinstance(params, BaseModel) else dict(params)
    typed = spec.params.model_validate(spec.validate_params(raw))
    return spec.load_entrypoint()(ctx, typed) or {}


def list_recipes() -> list[RecipeSpec]:
    """The recipes tenants can run (internal ones are left out)."""
    return [s for s in (get_recipe(name) for name in sorted(CATALOG)) if not s.internal]


REGISTRY_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}(:[0-9]{1,9}|@[a-z0-9][a-z0-9._-]{0,62})$")
"""A registered model version: NAME:VERSION or NAME@ALIAS (a bare name is a hub id)."""


def is_registry_ref(value: str) -> bool:
    """True when `value` names a registered version (NAME:VERSION or NAME@ALIAS), not a
    hub id: what a param of `RecipeSpec.registered_models` holds when it is pinned."""
    return REGISTRY_REF_RE.fullmatch(value) is not None


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
