"""Endpoints: create, list, show, update, delete, and predict through the gateway.
Other tenants' endpoints answer 404."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from modelfab.api.deps import Caller, Ctx, get_ctx
from modelfab.api.idempotency import IdemKey
from modelfab.schemas.common import BODY, ERRORS, List, errors
from modelfab.schemas.endpoints import (
    Endpoint,
    EndpointCreate,
    EndpointDeleted,
    EndpointUpdate,
    Prediction,
)
from modelfab.services.endpoints import EndpointSpec

router = APIRouter(tags=["endpoints"], responses=ERRORS)


@router.post("/endpoints", status_code=201, responses={**BODY, **errors(403, 404, 409)})
def create_endpoint(body: EndpointCreate, ctx: Ctx, principal: Caller, idem: IdemKey) -> Endpoint:
    return ctx.endpoints.create(principal, EndpointSpec(**body.model_dump()), idem=idem)


@router.get("/endpoints")
def list_endpoints(ctx: Ctx, principal: Caller) -> List[Endpoint]:
    return List(data=ctx.endpoints.list_endpoints(principal))


@router.get("/endpoints/{name}", responses=errors(404))
def get_endpoint(name: str, ctx: Ctx, principal: Caller) -> Endpoint:
    return ctx.endpoints.get(principal, name)


@router.patch("/endpoints/{name}", responses={**BODY, **errors(404, 409)})
def update_endpoint(name: str, body: EndpointUpdate, ctx: Ctx, principal: Caller) -> Endpoint:
    """Answers at once. A new model is rolled out by the controller (status "updating",
    progress in `rollout`): loaded on every ready replica, then switched to; if a replica
    cannot load it the endpoint keeps its model and says why in `rollout_error`."""
    return ctx.endpoints.update(principal, name, body)


@router.delete("/endpoints/{name}", responses=errors(404))
async def delete_endpoint(name: str, ctx: Ctx, principal: Caller) -> EndpointDeleted:
    """Stops routing to the endpoint, waits for its in-flight requests, then stops its
    replicas."""
    return await ctx.endpoint_deleter.delete(principal, name)


@router.post(
    "/endpoints/{name}/predict",
    responses={
        200: {"model": Prediction, "description": "One result per image, in order."},
        **errors(400, 404, 413, 415, 429, 503, 504),
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {"schema": {"type": "object"}},
                "application/json": {"schema": {"type": "object"}},
            }
        }
    },
)
async def predict(name: str, request: Request) -> Response:
    """Image files as multipart/form-data, or JSON `{"images": ["<base64>", ...]}`.
    Authenticated with the caller's key like every call; metered per request and image."""
    return await get_ctx(request).gateway.predict(request, name)
