"""OpenAI's `/v1/chat/completions` and `/v1/completions` over the caller's chat endpoints
(`model` is an endpoint name). The gateway does the work (`gateway.openai_chat`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from modelfab.api.deps import get_ctx
from modelfab.gateway import openai_chat
from modelfab.schemas.common import ERRORS, errors
from modelfab.schemas.completions import ChatCompletion, ChatCompletionChunk, TextCompletion

router = APIRouter(tags=["chat"], responses=ERRORS)

OPENAI_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}
"""OpenAI's request bodies, checked by the gateway field by field (400 naming the field)."""


def _answers(whole: type[BaseModel], chunk: type[BaseModel]) -> dict[int | str, Any]:
    """The answer as JSON, or with `stream: true` server-sent chunks ending `data: [DONE]`."""
    return {
        200: {
            "model": whole,
            "description": "The answer; with `stream: true` server-sent events, each `data:` "
            "one chunk, ending with `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": chunk.model_json_schema()}},
        },
        **errors(400, 404, 413, 429, 503),
    }


@router.post(
    "/chat/completions",
    responses=_answers(ChatCompletion, ChatCompletionChunk),
    openapi_extra=OPENAI_BODY,
)
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions: messages, temperature, top_p, max_tokens (or
    max_completion_tokens), stop, seed, n=1, stream, stream_options.include_usage. Metered
    per request in tokens_in and tokens_out."""
    return await openai_chat.chat_completions(get_ctx(request).gateway, request)


@router.post(
    "/completions", responses=_answers(TextCompletion, TextCompletion), openapi_extra=OPENAI_BODY
)
async def completions(request: Request) -> Response:
    """OpenAI's (legacy) text completions: `prompt` as raw text, the same sampling fields."""
    return await openai_chat.completions(get_ctx(request).gateway, request)
