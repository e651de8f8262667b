"""`serve`: one replica of an endpoint. Runs a model server on loopback until cancelled.

The platform queues this recipe for each replica of an endpoint (tenants cannot); the
scheduler places it like any job, so it holds its devices and counts against quota. The
replica answers only requests that present the secret it makes at start (the gateway and
the endpoint controller do), and announces its URL with that secret once it answers; the
controller loads the endpoint's model on it, then the gateway routes requests to it. Models
are loaded on first use (or when the controller warms one before a rollout) and evicted LRU
within `memory_budget_bytes`.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from pydantic import BaseModel, Field

from modelfab.errors import ModelfabError
from modelfab.recipes.base import (
    AnnouncesServing,
    FetchesModels,
    HasHub,
    RecipeContext,
    RecipeSpec,
)
from modelfab.schemas.limits import MAX_IMAGES_PER_REQUEST
from modelfab.serving.models import ModelCache, ModelFiles, fetch_files
from modelfab.serving.replica_app import ReplicaServer, create_replica_app

POLL_S = 0.2


class Params(BaseModel):
    model_config = {"extra": "forbid"}

    endpoint_id: str = Field(description="The endpoint this replica serves.")
    host: str = Field(default="127.0.0.1", description="Interface the replica listens on.")
    intra_op_threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime threads per model (default: all)."
    )
    memory_budget_bytes: int = Field(
        default=2 << 30, ge=1 << 20, description="Models kept loaded, LRU, within this."
    )
    max_images: int = Field(
        default=MAX_IMAGES_PER_REQUEST, ge=1, description="Images per request at most."
    )
    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="Request body limit.")
    drain_s: float = Field(default=10.0, ge=0, description="In-flight requests get this long.")


def run(ctx: RecipeContext, params: Params) -> dict[str, Any]:
    if not isinstance(ctx, AnnouncesServing) or not isinstance(ctx, FetchesModels):
        raise ModelfabError(
            "the serve recipe needs a context that can announce a URL and fetch models"
        )
    cache = ModelCache(
        _loader(ctx),
        budget_bytes=params.memory_budget_bytes,
        use_cuda=_has_gpu(),
        intra_op_threads=params.intra_op_threads,
        hub_dir=ctx.hub_dir if isinstance(ctx, HasHub) else None,
    )
    secret = secrets.token_urlsafe(32)  # per attempt; only the control plane learns it
    app = create_replica_app(
        cache,
        secret=secret,
        max_images=params.max_images,
        max_body_bytes=params.max_body_bytes,
        workers=params.intra_op_threads,
    )
    server = ReplicaServer(app, host=params.host, port=0)
    url = server.start()
    started = time.monotonic()
    try:
        ctx.announce_serving(url, secret)
        ctx.event(f"Replica serving at {url}", data={"url": url, "status": "serving"})
        while not ctx.cancelled():
            time.sleep(POLL_S)
        ctx.event("Replica draining", data={"status": "draining"})
    finally:
        server.stop(drain_s=params.drain_s)
    return {"url": url, "served_s": round(time.monotonic() - started, 3)}


def _loader(ctx: FetchesModels) -> Any:
    def load(version_id: str) -> ModelFiles:
        return fetch_files(version_id, ctx.model_files(version_id))

    return load


def _has_gpu() -> bool:
    """Devices were placed. ONNX Runtime falls back to the CPU when it has no CUDA provider
    (the CPU wheel, or the fake devices of a test pool)."""
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())


RECIPE = RecipeSpec(
    name="serve",
    version="1",
    description="Endpoint replicas are started by `modelfab endpoints create`.",
    params=Params,
    entrypoint="modelfab.recipes.serve:run",
    internal=True,
)
