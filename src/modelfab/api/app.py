"""The FastAPI application: `create_app(ctx)` wires routers and the error handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelfab import __version__
from modelfab.api import errors
from modelfab.api.context import AppContext
from modelfab.api.routers import (
    chat_completions,
    datasets,
    embeddings,
    endpoints,
    files,
    fine_tuning,
    hub,
    jobs,
    models,
    pool,
    tenants,
    worker,
)
from modelfab.schemas.common import Health


def create_app(ctx: AppContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await ctx.gateway.aclose()  # its pooled connections to replicas

    app = FastAPI(
        lifespan=lifespan,
        title="modelfab",
        version=__version__,
        description="Self-hosted AI factory: pooled compute, model production, model serving.",
    )
    app.state.ctx = ctx
    errors.install(app)
    for module in (
        tenants,
        datasets,
        files,
        fine_tuning,
        jobs,
        pool,
        worker,
        hub,
        models,
        endpoints,
        embeddings,
        chat_completions,
    ):
        app.include_router(module.router, prefix="/v1")

    @app.get("/v1/health", tags=["health"])
    def health() -> Health:
        return Health(version=__version__)

    return app
