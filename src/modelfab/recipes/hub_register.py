"""`hub-register`: a hub model registered as a version of the tenant's registry, so that an
endpoint can serve it (`modelfab endpoints create NAME --model MODEL`).

An endpoint serves registry versions only (each with verified artifacts, lineage and
aliases); this recipe is how a foundation model becomes one without training. It is a job
like any other, so the version has the lineage every version has (its job, the hub model as
its base). For now it takes the sentence-embedding models of the hub
(`modelfab.hub.catalog.EMBEDDING_CATALOG`). Light: no torch, it copies files.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field, field_validator

from modelfab.errors import NotFound
from modelfab.hub.catalog import EMBEDDING_CATALOG
from modelfab.hub.embeddings import embedding_folder, get_embedding_entry, sentence_card
from modelfab.recipes.base import RecipeContext, RecipeSpec
from modelfab.schemas.limits import NAME_PATTERN
from modelfab.tasks.embeddings import (
    CARD_NAME,
    CONFIG_NAME,
    NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
)

FORMATS = {CONFIG_NAME: "json", WEIGHTS_NAME: "safetensors", TOKENIZER_NAME: "json"}
"""The files of the hub folder a version carries, with their artifact formats."""


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    model: str = Field(
        description="The hub model to register: "
        + ", ".join(e.id for e in EMBEDDING_CATALOG)
        + " (sentence embeddings)."
    )
    model_name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The registry name of the version (default: the hub id).",
    )

    @field_validator("model")
    @classmethod
    def _known(cls, value: str) -> str:
        try:
            get_embedding_entry(value)
        except NotFound as exc:  # as a ValueError, so the error names params.model
            raise ValueError(exc.message) from exc
        return value


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    """Upload the hub model's serving files and its card, and register them. Raises
    ModelfabError base_model_unavailable when its package is not installed on the node."""
    entry = get_embedding_entry(params.model)
    folder = embedding_folder(entry)
    card = sentence_card(folder, model_id=entry.id)
    card_path = ctx.workdir / CARD_NAME
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    artifacts = [ctx.upload_artifact(folder / n, name=n, format=f) for n, f in FORMATS.items()]
    artifacts.append(ctx.upload_artifact(card_path, name=CARD_NAME, format="json"))
    name = params.model_name or entry.id
    ctx.register_model(
        {
            "name": name,
            "task": NAME,
            "artifacts": artifacts,
            "metrics": {},
            "base_model": entry.id,
            "extra": card,
        }
    )
    return {"model": name, "hub_model": entry.id, "dimensions": card["dimensions"]}


RECIPE = RecipeSpec(
    name="hub-register",
    version="1",
    description="Register a hub model (sentence embeddings) as a version an endpoint serves.",
    params=Params,
    entrypoint="modelfab.recipes.hub_register:run",
    tasks=(NAME,),
)
