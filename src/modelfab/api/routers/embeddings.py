"""OpenAI's embeddings API through the gateway: `model` names one of the caller's endpoints
serving an embeddings model; other tenants' endpoints answer 404."""

from __future__ import annotations

from fastapi import APIRouter, Request

from modelfab.api.deps import get_ctx
from modelfab.schemas.common import ERRORS, errors
from modelfab.schemas.embeddings import EmbeddingCreate, EmbeddingList

router = APIRouter(tags=["openai"], responses=ERRORS)


@router.post(
    "/embeddings",
    responses=errors(400, 404, 413, 429, 503, 504),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingCreate.model_json_schema()}},
        }
    },
)
async def create_embeddings(request: Request) -> EmbeddingList:
    """One vector per input text, in order. Metered per request: `requests`, `items` (the
    texts) and `tokens_in` (equal to the answer's `usage.prompt_tokens`). The body is read
    by the gateway, after the key and its rate limit are checked."""
    return await get_ctx(request).gateway.embeddings(request)
