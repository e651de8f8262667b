"""The model registry: versions, aliases, lineage and artifact downloads. A ref is NAME
(the latest version), NAME:VERSION or NAME@ALIAS; other tenants' models answer 404."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from modelfab.api.deps import Caller, Ctx
from modelfab.schemas.common import BODY, ERRORS, List, errors
from modelfab.schemas.models import AliasSet, Lineage, Model, ModelVersion, ModelVersionDetail

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/models")
def list_models(ctx: Ctx, principal: Caller) -> List[Model]:
    return List(data=ctx.registry.list_models(principal))


@router.get("/models/{ref}", responses=errors(404))
def get_model(ref: str, ctx: Ctx, principal: Caller) -> ModelVersionDetail:
    return ctx.registry.get(principal, ref)


@router.post("/models/{name}/aliases", responses={**BODY, **errors(404, 409)})
def set_alias(name: str, body: AliasSet, ctx: Ctx, principal: Caller) -> ModelVersion:
    return ctx.registry.set_alias(principal, name, alias=body.alias, version=body.version)


@router.get("/models/{ref}/lineage", responses=errors(404))
def lineage(ref: str, ctx: Ctx, principal: Caller) -> Lineage:
    return ctx.registry.lineage(principal, ref)


@router.get(
    "/models/{ref}/artifacts/{name}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The artifact's bytes; the X-Sha256 header carries their sha256.",
        },
        **errors(404, 409),
    },
)
def download_artifact(ref: str, name: str, ctx: Ctx, principal: Caller) -> FileResponse:
    """The artifact's bytes, checked against its sha256 first (409 artifact_corrupt if not)."""
    path, record = ctx.registry.artifact(principal, ref, name)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=record.name,
        headers={"X-Sha256": record.sha256},
    )
