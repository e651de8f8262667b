"""The OpenAI surface without an engine: request checks name the field, the answer and chunk
shapes, the meter bills once, and an `EventStream` always runs its `on_close`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from modelfab.errors import ModelfabError, NotFound
from modelfab.gateway import Gateway, ReplicaRoute, Route
from modelfab.gateway.openai_chat import Meter, ReplicaRefused, Shapes, chat_completions
from modelfab.gateway.openai_params import BadParameter, parse_chat, parse_completion
from modelfab.schemas.completions import ChatCompletion, ChatCompletionChunk, TextCompletion
from modelfab.schemas.generation import GenerateDelta, GenerateFinished, GenerateStarted
from modelfab.serving.replica_app import ReplicaServer
from modelfab.sse import DONE, EventStream, event
from tests.gateway.callers import Principal

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "assistant", "messages": MESSAGES, **fields}


def refused(body: Any, parse: Any = parse_chat) -> str | None:
    with pytest.raises(BadParameter) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value.param


def test_a_chat_request_becomes_the_replica_request() -> None:
    got = parse_chat(
        chat(
            temperature=0,
            top_p=0.5,
            max_completion_tokens=7,
            stop="END",
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            user="ignored",
        )
    )
    assert got.chat and got.model == "assistant" and got.stream and got.include_usage
    g = got.generate
    assert (g.max_tokens, g.temperature, g.top_p, g.stop, g.seed) == (7, 0.0, 0.5, ["END"], 3)
    assert g.messages == MESSAGES and g.prompt is None


def test_content_parts_and_developer_messages_are_read_as_text() -> None:
    body = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    assert parse_chat(body).generate.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"n": True}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ({"model": ""}, "model"),
    ],
)
def test_bad_fields_are_refused_naming_them(fields: dict[str, Any], param: str) -> None:
    assert refused(chat(**fields)) == param


def test_a_completion_takes_one_prompt() -> None:
    got = parse_completion({"model": "m", "prompt": ["once"], "max_tokens": 5})
    assert not got.chat and got.generate.prompt == "once" and got.generate.messages is None
    assert refused({"model": "m", "prompt": ["a", "b"]}, parse_completion) == "prompt"
    assert refused([1], parse_completion) == "body"


class Sink:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, dict[str, float]]] = []

    def add(self, tenant_id: str, ref_type: str, ref_id: str, /, **q: float) -> None:
        self.rows.append((tenant_id, ref_type, ref_id, q))


def test_the_meter_bills_the_engine_counts_once_and_only_when_delivered() -> None:
    sink = Sink()
    meter = Meter(sink, "t1", "ep1")
    meter.started(GenerateStarted(prompt_tokens=11))
    meter.delta(GenerateDelta(text="a", tokens=2))
    meter.bill()
    assert sink.rows == []  # nothing reached the client
    meter.delivered = True
    meter.bill()
    meter.bill()
    assert sink.rows == [
        ("t1", "endpoint", "ep1", {"requests": 1, "tokens_in": 11, "tokens_out": 2})
    ]

    finished = Meter(sink, "t1", "ep1", delivered=True)
    finished.delta(GenerateDelta(text="a", tokens=1))
    finished.finish(GenerateFinished(finish_reason="stop", prompt_tokens=4, completion_tokens=3))
    assert finished.usage() == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_chat_chunks_and_answers_have_openai_shapes() -> None:
    shapes = Shapes(parse_chat(chat(stream=True)))
    first = shapes.chunk({"role": "assistant", "content": ""})
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = shapes.chunk(None, finish_reason="length")
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }

    meter = Meter(None, "t", "e")
    meter.finish(GenerateFinished(finish_reason="stop", prompt_tokens=2, completion_tokens=1))
    whole = Shapes(parse_completion({"model": "m", "prompt": "p"})).whole("hey", meter)
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "hey"
    assert whole["usage"]["total_tokens"] == 3


def test_the_answers_match_their_documented_schemas() -> None:
    meter = Meter(None, "t", "e")
    meter.finish(GenerateFinished(finish_reason="length", prompt_tokens=2, completion_tokens=1))
    chat_shapes = Shapes(parse_chat(chat()))
    ChatCompletion.model_validate(chat_shapes.whole("hi", meter), strict=True)
    for piece in ({"role": "assistant", "content": ""}, "hi", None):
        ChatCompletionChunk.model_validate(chat_shapes.chunk(piece), strict=True)
    usage_chunk = {**chat_shapes.head(chunk=True), "choices": [], "usage": meter.usage()}
    ChatCompletionChunk.model_validate(usage_chunk, strict=True)
    text_shapes = Shapes(parse_completion({"model": "m", "prompt": "p"}))
    TextCompletion.model_validate(text_shapes.whole("hi", meter), strict=True)
    TextCompletion.model_validate(text_shapes.chunk("hi"), strict=True)


def test_replica_refusals_pass_on_their_status_and_an_overload_says_when_to_retry() -> None:
    body = b'{"error": {"code": "engine_overloaded", "message": "full", "param": null}}'
    overloaded = ReplicaRefused.of(429, body)
    assert (overloaded.status, overloaded.code, overloaded.retry_after_s) == (
        429,
        "engine_overloaded",
        1.0,
    )
    context = ReplicaRefused.of(
        400,
        b'{"error": {"code": "context_length_exceeded", "message": "m", "param": "max_tokens"}}',
    )
    assert (context.status, context.param) == (400, "max_tokens")
    broken = ReplicaRefused.of(500, b"<html>")
    assert broken.status == 502 and broken.code == "replica_failed"


def test_events_are_sse_frames() -> None:
    assert event({"a": 1}) == b'data: {"a":1}\n\n'
    assert event(DONE) == b"data: [DONE]\n\n"


def test_an_event_stream_runs_on_close_once_when_the_client_leaves() -> None:
    """Over real HTTP (httpx's in-process transport reads whole answers): the client reads
    three events and hangs up; the body is closed and on_close learns the client left."""
    closed: list[bool] = []
    body_closed = threading.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            for i in range(3000):
                yield event({"i": i})
                await asyncio.sleep(0.01)
        finally:
            body_closed.set()

    async def stream(request: Request) -> Response:
        return EventStream(body(), on_close=closed.append)

    server = ReplicaServer(Starlette(routes=[StarletteRoute("/", stream)]))
    url = server.start()
    try:
        got = []
        with httpx.stream("GET", url, timeout=10) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    got.append(json.loads(line[5:]))
                if len(got) == 3:
                    break
        assert body_closed.wait(10)  # long before the 30 s the body would take
    finally:
        server.stop(drain_s=1)
    assert [g["i"] for g in got] == [0, 1, 2]
    assert closed == [True]


def test_an_event_stream_that_ends_runs_on_close_too() -> None:
    closed: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield event({"x": 1})

    async def run() -> str:
        transport = httpx.ASGITransport(app=EventStream(body(), on_close=closed.append))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/")).text

    assert asyncio.run(run()) == 'data: {"x":1}\n\n'
    assert closed == [False]


def dying_replica() -> Starlette:
    """A replica whose process dies after two tokens: the connection drops mid-stream."""

    async def generate(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield event({"prompt_tokens": 9})
            yield event({"text": "he", "tokens": 1})
            yield event({"text": "llo", "tokens": 2})
            await asyncio.sleep(0.05)
            raise RuntimeError("the replica process died")

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[StarletteRoute("/models/mv_1/generate", generate, methods=["POST"])])


def gateway_call(
    replica: Starlette, body: dict[str, Any], resolve_model: Any = lambda tenant, ref: ref
) -> tuple[int, str, Sink]:
    """POSTs `body` to /v1/chat/completions of a gateway whose one route is the endpoint
    "assistant" (ep_1, model version mv_1) on a real loopback server of `replica`; returns
    the status, the body and what was metered."""
    server = ReplicaServer(replica)
    url = server.start()
    sink = Sink()
    route = Route(
        "ep_1", "t_1", "assistant", "mv_1", 8, 5.0, replicas=(ReplicaRoute("job_a", url, None),)
    )
    gateway = Gateway(
        load_routes=lambda: {("t_1", "assistant"): route},
        authenticate=lambda token: Principal(),
        resolve_model=resolve_model,
        journal=sink,
    )

    async def call(request: Request) -> Response:
        try:
            return await chat_completions(gateway, request)
        except ModelfabError as exc:  # as the API's error handler answers
            return JSONResponse(exc.to_dict(), status_code=exc.status)

    app = Starlette(routes=[StarletteRoute("/v1/chat/completions", call, methods=["POST"])])

    async def main() -> tuple[int, str]:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                resp = await client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
                )
                return resp.status_code, resp.text
        finally:
            await gateway.aclose()

    try:
        status, text = asyncio.run(main())
    finally:
        server.stop(drain_s=1)
    return status, text, sink


def test_a_replica_that_dies_mid_stream_ends_it_with_an_error_and_meters_what_was_sent() -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    _, text, sink = gateway_call(dying_replica(), body)
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert [e["choices"][0]["delta"].get("content") for e in events[:3]] == ["", "he", "llo"]
    assert events[-1]["error"]["code"] == "replica_failed"  # no [DONE]: the answer is cut
    assert sink.rows == [
        ("t_1", "endpoint", "ep_1", {"requests": 1, "tokens_in": 9, "tokens_out": 3})
    ]


def answering_replica() -> Starlette:
    """A replica of model version mv_1 that answers "ok" in one token."""

    async def generate(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield event({"prompt_tokens": 5})
            yield event({"text": "ok", "tokens": 1})
            yield event({"finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 1})

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[StarletteRoute("/models/mv_1/generate", generate, methods=["POST"])])


def resolve(tenant: str, ref: str) -> str:
    """The registry of tenant t_1: support-bot:3 is mv_1 (served by "assistant"), other:1 is
    mv_9 (served by no endpoint)."""
    versions = {"support-bot:3": "mv_1", "support-bot@production": "mv_1", "other:1": "mv_9"}
    if tenant != "t_1" or ref not in versions:
        raise NotFound(f"no model {ref!r}", param="model")
    return versions[ref]


@pytest.mark.parametrize("model", ["support-bot:3", "support-bot@production"])
def test_a_registered_model_is_answered_by_the_endpoint_serving_it(model: str) -> None:
    status, text, sink = gateway_call(answering_replica(), chat(model=model), resolve)
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["content"] == "ok"
    assert sink.rows == [
        ("t_1", "endpoint", "ep_1", {"requests": 1, "tokens_in": 5, "tokens_out": 1})
    ]


@pytest.mark.parametrize(
    ("model", "says"), [("other:1", "no endpoint of yours serves"), ("nope:2", "does not exist")]
)
def test_a_registered_model_no_endpoint_serves_is_404(model: str, says: str) -> None:
    status, text, sink = gateway_call(answering_replica(), chat(model=model), resolve)
    assert status == 404, text
    error = json.loads(text)["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert says in error["message"]
    assert sink.rows == []
