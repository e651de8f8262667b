"""The gateway's `/v1/chat/completions` and `/v1/completions`: OpenAI's surface over chat
endpoints.

Per request: authenticate and rate-limit as predict does (`Gateway.admit`), check the body
(`openai_params`), find the caller's endpoint named by `model` (another tenant's or none:
404), check the token budget and reserve the prompt's estimated tokens + max_tokens from the
key's tokens per minute (`token_limits`; settled to the metered tokens when it ends), open
a stream to a replica's `/models/{version}/generate` and turn its events into OpenAI's
shapes: one `chat.completion` (or `text_completion`), or server-sent chunks ending
with the finish reason, the usage chunk (`choices: []`, with `stream_options.include_usage`)
and `[DONE]`.

Metering (`Meter`): once per request, through the usage journal, whatever the client asked:
`requests` 1, `tokens_in` the templated prompt's tokens and `tokens_out` the generated
ones, stop token included, both counted by the engine. A stream the client abandons (or a
replica that dies mid-stream) bills the prompt and the tokens the replica had streamed to
the gateway by then; a non-streamed answer that fails bills nothing (the client got no
text). The `usage` of an answer is the metered counts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelfab.errors import ModelfabError, NotFound, error_body
from modelfab.gateway.forwarding import Upstream
from modelfab.gateway.gateway import Gateway, require_task
from modelfab.gateway.openai_params import BadParameter, Completion, parse_chat, parse_completion
from modelfab.gateway.token_limits import Reservation, estimate_tokens
from modelfab.gateway.types import Caller, Route, UsageSink
from modelfab.schemas.generation import GenerateDelta, GenerateFinished, GenerateStarted
from modelfab.sse import DONE, EventStream, event, read_events
from modelfab.tasks import CHAT

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-modelfab-replica"


async def chat_completions(gateway: Gateway, request: Request) -> Response:
    """POST /v1/chat/completions. Raises ModelfabErrors for the error handler: 400 naming
    the parameter (also context too long, naming the limit, and a request larger than the
    key's tokens per minute), 401, 404 (model), 429 (with Retry-After for rate limits; also
    an exhausted token budget), 503."""
    return await _complete(gateway, request, parse_chat)


async def completions(gateway: Gateway, request: Request) -> Response:
    """POST /v1/completions; as `chat_completions`."""
    return await _complete(gateway, request, parse_completion)


async def _complete(
    gateway: Gateway, request: Request, parse: Callable[[Any], Completion]
) -> Response:
    principal = await gateway.admit(request)
    completion = parse(_json(await gateway.read_body(request)))
    route = await _endpoint(gateway, principal.tenant_id, completion.model)
    reservation = _reserve(gateway, principal, completion)
    try:
        upstream = await _open(gateway, route, completion)
    except BaseException:
        gateway.tokens.settle(reservation, 0)  # refused: nothing metered
        raise
    gateway.track(route.endpoint_id, +1)
    meter = Meter(gateway.journal, principal.tenant_id, route.endpoint_id)
    shape = Shapes(completion)
    headers = {REPLICA_HEADER: upstream.replica.job_id}

    def done() -> None:
        upstream.close()
        meter.bill()
        gateway.tokens.settle(reservation, meter.billable_tokens())
        gateway.track(route.endpoint_id, -1)

    if completion.stream:
        meter.delivered = True  # the first chunk goes out with the headers
        return EventStream(
            _chunks(upstream, meter, shape), on_close=lambda _: done(), headers=headers
        )
    try:
        text = "".join([t async for t in _texts(upstream, meter)])
        answer = shape.whole(text, meter)
        meter.delivered = True
    finally:
        done()
    return JSONResponse(answer, headers=headers)


def _reserve(gateway: Gateway, caller: Caller, completion: Completion) -> Reservation:
    """The request's hold on its key's tokens per minute: the prompt's estimated tokens plus
    max_tokens (see `TokenQuotas.reserve` for what it raises)."""
    ask = completion.generate
    texts = [m["content"] for m in ask.messages] if ask.messages else [ask.prompt or ""]
    return gateway.tokens.reserve(
        caller,
        prompt_tokens=estimate_tokens(texts),
        max_tokens=ask.max_tokens,
        prompt_param="messages" if completion.chat else "prompt",
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadParameter(f"the request body is not JSON ({exc})", "body") from exc


async def _endpoint(gateway: Gateway, tenant_id: str, model: str) -> Route:
    """The caller's endpoint named `model`, or else the caller's endpoint serving the
    registered chat model `model` names (NAME, NAME:VERSION or NAME@ALIAS); 404 in OpenAI's
    words for anything else."""
    try:
        route = await gateway.route(tenant_id, model)
    except NotFound:
        route = await _serving_ref(gateway, tenant_id, model)
    require_task(route, model, CHAT, "chat completions")
    return route


async def _serving_ref(gateway: Gateway, tenant_id: str, model: str) -> Route:
    try:
        version_id = await gateway.resolve_version(tenant_id, model)
    except ModelfabError as exc:
        raise NotFound(
            f"the model {model!r} does not exist or you do not have access to it; name one of "
            "your endpoints (`modelfab endpoints list`) or a registered chat model an "
            "endpoint of yours serves",
            param="model",
            code="model_not_found",
        ) from exc
    route = await gateway.serving(tenant_id, version_id, CHAT)
    if route is None:
        raise NotFound(
            f"no endpoint of yours serves {model!r}; create one with `modelfab endpoints "
            f"create NAME --model {model}`",
            param="model",
            code="model_not_found",
        )
    return route


async def _open(gateway: Gateway, route: Route, completion: Completion) -> Upstream:
    """The replica's stream, or its refusal raised as the same status and error."""
    body = completion.generate.model_dump_json(exclude_none=True).encode()
    path = f"/models/{route.version_id}/generate"
    upstream = await gateway.forwarder.open_stream(
        route, path, body, {"content-type": "application/json"}
    )
    if upstream.response.status == 200:
        return upstream
    try:
        raw = await upstream.response.read()
    finally:
        upstream.close()
    raise ReplicaRefused.of(upstream.response.status, raw)


class ReplicaRefused(ModelfabError):
    """The replica's 4xx (the engine's: a bad parameter, the context, an overload) passed
    on with its status, code, message and param; anything else as a 502."""

    def __init__(self, status: int, message: str, *, param: str | None, code: str):
        super().__init__(message, param=param, code=code)
        self.status = status
        if status == 429:
            self.retry_after_s = 1.0

    @classmethod
    def of(cls, status: int, raw: bytes) -> ReplicaRefused:
        try:
            error = json.loads(raw)["error"]
            message, code, param = str(error["message"]), str(error["code"]), error.get("param")
        except (ValueError, KeyError, TypeError):
            message, code, param = "the replica failed", "replica_failed", None
        if not 400 <= status < 500:
            logger.warning("a replica answered %s to generate: %s", status, message)
            return cls(502, "the model's replica failed; retry", param=None, code="replica_failed")
        return cls(status, message, param=param, code=code)


@dataclass
class Meter:
    """The counts of one request as they arrive, journalled once by `bill`."""

    sink: UsageSink | None
    tenant_id: str
    endpoint_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: GenerateFinished | None = None
    delivered: bool = False
    """Whether the client got any of the answer (a failed non-streamed one bills nothing)."""
    _billed: bool = False

    def started(self, event: GenerateStarted) -> None:
        self.prompt_tokens = event.prompt_tokens

    def delta(self, event: GenerateDelta) -> None:
        self.completion_tokens += event.tokens

    def finish(self, event: GenerateFinished) -> None:
        self.finished = event
        self.prompt_tokens = event.prompt_tokens
        self.completion_tokens = event.completion_tokens  # the engine's own count

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def billable_tokens(self) -> int:
        """The tokens `bill` journals (0 when the client got none of the answer)."""
        return self.prompt_tokens + self.completion_tokens if self.delivered else 0

    def bill(self) -> None:
        """Journal the request once (never waits on the database)."""
        if self._billed or self.sink is None or not self.delivered:
            return
        self._billed = True
        self.sink.add(
            self.tenant_id,
            "endpoint",
            self.endpoint_id,
            requests=1,
            tokens_in=self.prompt_tokens,
            tokens_out=self.completion_tokens,
        )


class ReplicaCut(ModelfabError):
    """The replica's stream ended or failed before its last event."""

    status = 502
    code = "replica_failed"


async def _texts(upstream: Upstream, meter: Meter) -> AsyncIterator[str]:
    """The answer's text pieces from the replica's events, counting them in `meter`. Raises
    ReplicaCut when the stream breaks off, or ends in an engine error."""
    try:
        async for raw in read_events(upstream.response):
            if "finish_reason" in raw:
                meter.finish(GenerateFinished.model_validate(raw))
            elif "prompt_tokens" in raw:
                meter.started(GenerateStarted.model_validate(raw))
            else:
                delta = GenerateDelta.model_validate(raw)
                meter.delta(delta)
                yield delta.text
    except (aiohttp.ClientError, TimeoutError, ValueError, ValidationError) as exc:
        logger.warning("the stream of replica %s broke off (%r)", upstream.replica.job_id, exc)
        raise ReplicaCut("the model's replica stopped mid-answer; retry") from exc
    if meter.finished is None:
        raise ReplicaCut("the model's replica stopped mid-answer; retry")
    if meter.finished.finish_reason == "error":
        logger.warning("the engine failed a request: %s", meter.finished.error)
        raise ReplicaCut("the model failed while answering; retry")


async def _chunks(upstream: Upstream, meter: Meter, shape: Shapes) -> AsyncIterator[bytes]:
    """The server-sent chunks of a streamed answer: (chat) the role, the text pieces, the
    finish reason, the usage chunk when asked, `[DONE]`; an error event when the replica
    breaks off."""
    if shape.completion.chat:
        yield event(shape.chunk({"role": "assistant", "content": ""}))
    try:
        async for text in _texts(upstream, meter):
            if text:
                yield event(shape.chunk(text))
    except ReplicaCut as exc:
        yield event(error_body(exc.status, exc.code, exc.message, None))
        return
    assert meter.finished is not None  # _texts raised otherwise
    yield event(shape.chunk(None, finish_reason=_finish_reason(meter.finished)))
    if shape.completion.include_usage:
        yield event({**shape.head(chunk=True), "choices": [], "usage": meter.usage()})
    yield event(DONE)


def _finish_reason(finished: GenerateFinished) -> str:
    return "length" if finished.finish_reason == "length" else "stop"


class Shapes:
    """OpenAI's answer objects for one request (one id and creation time)."""

    def __init__(self, completion: Completion):
        self.completion = completion
        prefix = "chatcmpl" if completion.chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def head(self, *, chunk: bool) -> dict[str, Any]:
        if self.completion.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.completion.model,
        }

    def chunk(
        self, piece: str | dict[str, Any] | None, *, finish_reason: str | None = None
    ) -> dict[str, Any]:
        """A streamed chunk: a text piece, a chat delta (dict), or (None) the last, empty
        one carrying `finish_reason`."""
        choice: dict[str, Any] = {"index": 0}
        if self.completion.chat:
            choice["delta"] = piece if isinstance(piece, dict) else _content(piece)
        else:
            choice["text"] = piece if isinstance(piece, str) else ""
        choice.update(logprobs=None, finish_reason=finish_reason)
        return {**self.head(chunk=True), "choices": [choice]}

    def whole(self, text: str, meter: Meter) -> dict[str, Any]:
        """The non-streamed answer, with the metered usage."""
        assert meter.finished is not None
        choice: dict[str, Any] = {"index": 0}
        if self.completion.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=_finish_reason(meter.finished))
        return {**self.head(chunk=False), "choices": [choice], "usage": meter.usage()}


def _content(text: str | None) -> dict[str, Any]:
    return {} if text is None else {"content": text}
