"""The SDK's side of `/v1/chat/completions`: the request body, and `ChatStream`, which reads
a streamed answer's server-sent chunks with httpx.

Kept apart from `Client` so the SSE reading (the role chunk, text deltas, the finish, the
usage chunk with `choices: []`, `[DONE]`, an error event when a replica breaks off) is one
small piece with one job."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import httpx

from modelfab.client.errors import ApiError, Unreachable
from modelfab.errors import ModelfabError
from modelfab.schemas.completions import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    CompletionUsage,
    FinishReason,
)
from modelfab.sse import DONE

Messages = Sequence[Mapping[str, str]]
"""OpenAI's messages: `{"role": "system" | "user" | "assistant", "content": "..."}`."""


def chat_body(
    endpoint: str,
    messages: Messages,
    *,
    stream: bool,
    max_tokens: int | None,
    temperature: float | None,
    stop: str | list[str] | None,
    seed: int | None,
) -> dict[str, Any]:
    """The request body; options left None are not sent, so the server's defaults apply.
    A stream always asks for the usage chunk (`ChatStream` reports it)."""
    body: dict[str, Any] = {"model": endpoint, "messages": [dict(m) for m in messages]}
    options = {"max_tokens": max_tokens, "temperature": temperature, "stop": stop, "seed": seed}
    body.update({k: v for k, v in options.items() if v is not None})
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


class ChatStream(AbstractContextManager["ChatStream"]):
    """A streamed chat answer: iterate it for the text deltas as they arrive; once it is
    exhausted, `finish_reason`, `usage` and `completion()` are set. Leaving a `with` block
    (or `close()`) before the end closes the connection, which cancels the request on the
    server (billed for the tokens sent so far).

    Iterating raises ApiError when the server ends the stream with an error event (a
    replica that failed mid-answer: 502 with the server's code) and Unreachable when the
    connection breaks off before `[DONE]`; the text already yielded is all there is."""

    def __init__(self, response: httpx.Response):
        self._response = response
        self._pieces: list[str] = []
        self._head: ChatCompletionChunk | None = None
        self.finish_reason: FinishReason | None = None
        self.usage: CompletionUsage | None = None
        self._deltas = self._read()

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._deltas.close()
        self._response.close()

    def completion(self) -> ChatCompletion:
        """The whole answer, as the non-streamed call would have answered it. Raises
        ModelfabError (code stream_not_finished) before the stream was read to its end."""
        if self._head is None or self.finish_reason is None or self.usage is None:
            raise ModelfabError(
                "the stream is not finished; iterate it to its end before asking for the "
                "completion",
                code="stream_not_finished",
            )
        message = ChatMessage(content="".join(self._pieces))
        return ChatCompletion(
            id=self._head.id,
            created=self._head.created,
            model=self._head.model,
            choices=[ChatChoice(message=message, finish_reason=self.finish_reason)],
            usage=self.usage,
        )

    def _read(self) -> Generator[str, None, None]:
        try:
            for data in _events(self._response):
                if data == DONE:
                    return
                yield from self._take(json.loads(data))
        except httpx.TransportError as exc:
            raise _cut(self._response, f" ({exc})") from exc
        finally:
            self._response.close()
        raise _cut(self._response, "")

    def _take(self, raw: Any) -> Iterator[str]:
        """The text of one chunk, recording its id, finish reason and usage."""
        if isinstance(raw, dict) and "error" in raw:
            error = raw["error"]
            message = str(error.get("message"))
            raise ApiError(502, str(error.get("code")), message, error.get("param"))
        chunk = ChatCompletionChunk.model_validate(raw)
        self._head = self._head or chunk
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            if choice.delta.content:
                self._pieces.append(choice.delta.content)
                yield choice.delta.content


def _events(response: httpx.Response) -> Iterator[str]:
    """The `data:` payloads of an SSE response, in order."""
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def _cut(response: httpx.Response, why: str) -> Unreachable:
    return Unreachable(
        f"the answer from {response.request.url.host} broke off before its end{why}; "
        "the text shown is all that arrived, ask again"
    )
