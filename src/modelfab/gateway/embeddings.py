"""`POST /v1/embeddings`, OpenAI's shape over an embeddings endpoint: the request checked
and turned into a replica's body, and the replica's answer turned into OpenAI's.

Pure functions: the gateway (`Gateway.embeddings`) authenticates, routes, forwards and
meters around them. Bad requests answer 400 naming the param, as OpenAI's API does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from pydantic import ValidationError

from modelfab.errors import ModelfabError
from modelfab.gateway.errors import BadRequest
from modelfab.gateway.types import Forwarded
from modelfab.schemas.embeddings import (
    MAX_INPUTS,
    EmbeddingCreate,
    EmbeddingList,
    EmbeddingObject,
    EmbeddingUsage,
)
from modelfab.tasks import EMBEDDINGS

TASK = EMBEDDINGS
"""The task of the models this route serves (`modelfab.tasks.embeddings.NAME`; the gateway
imports nothing of the tasks)."""


def parse_request(body: bytes) -> EmbeddingCreate:
    """The request, checked. Raises BadRequest (400) naming the param: a body that is not a
    JSON object, token-id inputs, no or too many inputs, an empty one, a bad field."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc})", param="body") from exc
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object {"model": ..., "input": ...}')
    _refuse_token_ids(doc.get("input"))
    try:
        request = EmbeddingCreate.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        raise BadRequest(f"{param or 'body'}: {err['msg']}", param=param) from exc
    texts = inputs(request)
    if not 1 <= len(texts) <= MAX_INPUTS:
        raise BadRequest(
            f"input holds {len(texts)} texts; send 1 to {MAX_INPUTS} per request", param="input"
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise BadRequest(f"input[{i}] is empty; send text to embed", param=f"input[{i}]")
    return request


def _refuse_token_ids(value: Any) -> None:
    """OpenAI takes token ids too; here the model's own tokenizer reads text, so ids (of
    another tokenizer, most likely) are refused by name."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(i, int | list) and not isinstance(i, bool) for i in items):
        raise BadRequest(
            "input as token ids is not accepted: send text (a string or a list of strings); "
            "the model's own tokenizer reads it",
            param="input",
        )


def inputs(request: EmbeddingCreate) -> list[str]:
    return [request.input] if isinstance(request.input, str) else list(request.input)


def replica_body(texts: list[str]) -> bytes:
    """The replica's JSON body: each text as a named item (errors then name `input[i]`)."""
    items = [
        {"name": f"input[{i}]", "data": base64.b64encode(t.encode()).decode()}
        for i, t in enumerate(texts)
    ]
    return json.dumps({"images": items}).encode()


def replica_error(answer: Forwarded) -> ModelfabError:
    """A replica's refusal as the error to answer: its 422 (an input it cannot embed) is
    OpenAI's 400 with the same message and param; other statuses keep theirs."""
    try:
        error = json.loads(answer.content)["error"]
        message, param, code = str(error["message"]), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, param, code = "the replica refused the request", None, None
    failure = ModelfabError(message, param=param, code=code or "replica_error")
    failure.status = 400 if answer.status == 422 else answer.status
    return failure


def answer(request: EmbeddingCreate, forwarded: Forwarded) -> EmbeddingList:
    """OpenAI's answer from the replica's 2xx one: vectors in input order, encoded as asked,
    and the usage its token counts add up to. Raises BadRequest (param "dimensions") when
    `dimensions` asks for another length than the model's."""
    data = json.loads(forwarded.content)["data"]
    vectors = [np.asarray(item["embedding"], dtype=np.float32) for item in data]
    if request.dimensions is not None and request.dimensions != len(vectors[0]):
        raise BadRequest(
            f"dimensions: this model's embeddings have {len(vectors[0])} dimensions and are "
            f"not shortened; omit dimensions or pass {len(vectors[0])}",
            param="dimensions",
        )
    tokens = sum(int(item["tokens"]) for item in data)
    return EmbeddingList(
        data=[
            EmbeddingObject(index=i, embedding=_encode(v, request.encoding_format))
            for i, v in enumerate(vectors)
        ],
        model=request.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]
