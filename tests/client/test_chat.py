"""`Client.chat` and `Client.chat_stream`: the stream's reading against canned server-sent
events (an error event, a stream cut before `[DONE]`, a refusal), and both calls against a
real platform whose endpoint's replica is a real worker process serving a tiny chat model
(`tests/e2e/chat.py`), checked against each other and the metered tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import ApiError, Client, Unreachable
from modelfab.errors import ModelfabError
from modelfab.server import Platform
from tests.e2e.chat import serve_chat, team_key
from tests.e2e.helpers import eventually

MESSAGES = [{"role": "user", "content": "How do I reset the line?"}]
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "bot"}


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**HEAD, "choices": [choice]}


def sse(*events: dict[str, Any] | str) -> Iterator[bytes]:
    for data in events:
        yield f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class Events(httpx.SyncByteStream):
    """A response body of server-sent events, then (when given) a broken connection."""

    def __init__(self, events: Iterator[bytes], then: Exception | None = None):
        self.events, self.then = events, then

    def __iter__(self) -> Iterator[bytes]:
        yield from self.events
        if self.then is not None:
            raise self.then


def client_answering(status: int, body: httpx.SyncByteStream) -> Client:
    def handle(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        return httpx.Response(status, stream=body)

    return Client("http://modelfab.test", "key", transport=httpx.MockTransport(handle))


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
WHOLE = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
         chunk({"content": " there"}), chunk({}, "length"),
         {**HEAD, "choices": [], "usage": USAGE}, "[DONE]"]  # fmt: skip


def test_a_stream_yields_its_text_then_knows_its_end() -> None:
    with client_answering(200, Events(sse(*WHOLE))) as c, c.chat_stream("bot", MESSAGES) as s:
        with pytest.raises(ModelfabError, match="iterate it to its end"):
            s.completion()
        assert list(s) == ["Hi", " there"]
    assert s.finish_reason == "length" and s.usage is not None and s.usage.total_tokens == 7
    answer = s.completion()
    assert answer.choices[0].message.content == "Hi there" and answer.id == "chatcmpl-1"


def test_an_error_event_raises_the_servers_error_after_the_text() -> None:
    error = {"error": {"code": "replica_failed", "message": "the replica stopped", "param": None}}
    events = Events(sse(WHOLE[0], WHOLE[1], error))
    with client_answering(200, events) as c, c.chat_stream("bot", MESSAGES) as s:
        pieces = iter(s)
        assert next(pieces) == "Hi"
        with pytest.raises(ApiError) as caught:
            next(pieces)
    assert caught.value.status == 502 and caught.value.code == "replica_failed"
    assert caught.value.message == "the replica stopped"


@pytest.mark.parametrize("then", [None, httpx.ReadError("connection reset")])
def test_a_stream_cut_before_done_is_unreachable(then: Exception | None) -> None:
    events = Events(sse(WHOLE[0], WHOLE[1]), then=then)
    with (
        client_answering(200, events) as c,
        c.chat_stream("bot", MESSAGES) as s,
        pytest.raises(Unreachable, match="broke off before its end"),
    ):
        list(s)
    assert s.finish_reason is None


def test_a_refused_stream_raises_before_any_text() -> None:
    error = {"error": {"code": "invalid_parameter", "message": "bad seed", "param": "seed"}}
    body = httpx.ByteStream(json.dumps(error).encode())
    with client_answering(400, body) as c, pytest.raises(ApiError) as caught:
        c.chat_stream("bot", MESSAGES, seed=1)
    assert (caught.value.status, caught.value.param) == (400, "seed")


# The SDK over the real wiring is under test, not the database.
@pytest.mark.e2e
@pytest.mark.one_backend
@pytest.mark.timeout(120)
def test_chat_and_chat_stream_against_a_replica(
    platform: Platform, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    key = team_key(platform)
    serve_chat(platform, factory, tmp_path, key)
    with Client(platform.url, key) as team:
        whole = team.chat("assistant", MESSAGES, max_tokens=8, temperature=0)
        assert whole.model == "assistant" and 1 <= whole.usage.completion_tokens <= 8
        with team.chat_stream("assistant", MESSAGES, max_tokens=8, temperature=0) as stream:
            pieces = list(stream)
        assert len(pieces) >= 1 and "".join(pieces) == whole.choices[0].message.content
        streamed = stream.completion()
        assert streamed.choices == whole.choices and streamed.usage == whole.usage

        seeded = team.chat("assistant", MESSAGES, max_tokens=4, stop=["\n"], seed=3)
        assert seeded.usage.completion_tokens <= 4

        for call in (team.chat, team.chat_stream):
            with pytest.raises(ApiError) as caught:
                call("nobody", MESSAGES)
            assert (caught.value.status, caught.value.code) == (404, "model_not_found")

        def three_metered() -> dict[str, float] | None:
            usage = {r.meter: r.quantity for r in team.usage(by="meter")}
            return usage if usage.get("requests") == 3 else None

        metered = eventually(three_metered, timeout_s=15, what="three requests to be metered")
    answers = [whole.usage, streamed.usage, seeded.usage]
    assert metered["tokens_out"] == sum(u.completion_tokens for u in answers)
    assert metered["tokens_in"] == sum(u.prompt_tokens for u in answers)
