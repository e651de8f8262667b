"""The OpenAI embeddings route's pure half: requests checked with 400s naming the param,
replica answers turned into OpenAI's (base64 as the `openai` client decodes it), replica
refusals turned into OpenAI's statuses."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from modelfab.gateway.embeddings import answer, parse_request, replica_body, replica_error
from modelfab.gateway.errors import BadRequest
from modelfab.gateway.types import Forwarded


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "ep", **fields}).encode()


def forwarded(vectors: list[list[float]], tokens: list[int], status: int = 200) -> Forwarded:
    data = [
        {"index": i, "name": f"input[{i}]", "embedding": v, "tokens": t}
        for i, (v, t) in enumerate(zip(vectors, tokens, strict=True))
    ]
    return Forwarded(status, json.dumps({"data": data}).encode(), "application/json", len(data))


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{nope", "body"),
        (b"[1]", None),
        (body(input=[1, 2]), "input"),
        (body(input=[[1, 2]]), "input"),
        (body(input=[]), "input"),
        (body(input=["a"] * 65), "input"),
        (body(input=["a", ""]), "input[1]"),
        (body(input="a", encoding_format="int8"), "encoding_format"),
        (json.dumps({"input": "a"}).encode(), "model"),
    ],
)
def test_bad_requests_are_400_naming_the_param(raw: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(raw)
    assert (info.value.status, info.value.param) == (400, param)


def test_texts_reach_the_replica_as_named_items() -> None:
    items = json.loads(replica_body(["héllo", "b"]))["images"]
    assert [i["name"] for i in items] == ["input[0]", "input[1]"]
    assert base64.b64decode(items[0]["data"]).decode() == "héllo"


def test_answers_in_order_with_usage_and_base64_float32() -> None:
    vectors = [[0.6, 0.8], [1.0, 0.0]]
    out = answer(
        parse_request(body(input=["a", "b"], encoding_format="base64")), forwarded(vectors, [3, 4])
    )
    assert (out.usage.prompt_tokens, out.usage.total_tokens, out.model) == (7, 7, "ep")
    decoded = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in out.data]
    assert np.allclose(decoded, vectors) and [d.index for d in out.data] == [0, 1]
    floats = answer(parse_request(body(input="a")), forwarded(vectors[:1], [3]))
    assert floats.data[0].embedding == pytest.approx([0.6, 0.8])


def test_dimensions_other_than_the_models_are_refused() -> None:
    assert answer(parse_request(body(input="a", dimensions=2)), forwarded([[0.6, 0.8]], [3]))
    with pytest.raises(BadRequest) as info:
        answer(parse_request(body(input="a", dimensions=1)), forwarded([[0.6, 0.8]], [3]))
    assert info.value.param == "dimensions"


def test_a_replica_422_is_openai_400_with_its_param() -> None:
    error = {"code": "context_length_exceeded", "message": "too long", "param": "input[0]"}
    refused = Forwarded(422, json.dumps({"error": error}).encode(), "application/json", 0)
    failure = replica_error(refused)
    assert (failure.status, failure.param, failure.code) == (400, "input[0]", error["code"])
    garbled = replica_error(Forwarded(413, b"<html>", "text/html", 0))
    assert (garbled.status, garbled.code) == (413, "replica_error")
