"""The replica's route for chat models: `POST /models/{version_id}/generate` takes a
`GenerateRequest` and streams server-sent events (`GenerateDelta`s, then one
`GenerateFinished` with the engine's token counts) for the gateway to turn into OpenAI's
shapes. When the gateway's connection drops (its client left) the engine request is
cancelled at once, so its slot frees.

Torch-free: the kind (`serving.chat.ChatModel`) is reached through the `Generates`
capability, so vision replicas never import the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfab.errors import InvalidRequest
from modelfab.schemas.generation import GenerateEvent, GenerateRequest
from modelfab.serving.inputs import check_content_length, read_body
from modelfab.sse import EventStream, event

MAX_GENERATE_BODY_BYTES = 4 << 20
"""A generate request's body at most (conversations are text)."""


@runtime_checkable
class Generates(Protocol):
    """A served model that generates text (the chat kind)."""

    def generate(self, request: GenerateRequest) -> tuple[str, AsyncIterator[GenerateEvent]]:
        """Queue `request`: (request id, its events). Raises 4xx ModelfabErrors at once."""
        ...

    def cancel(self, request_id: str) -> bool:
        """End the request now; False when it had ended already."""
        ...


class ReplicaState(Protocol):
    """What the route needs of the replica (`replica_app.Replica`)."""

    outstanding: int

    async def hold(self, version_id: str) -> tuple[Any, Callable[[], None]]: ...


def chat_routes(replica: ReplicaState, wrap: Callable[[Any], Any]) -> list[Route]:
    """The generate route over `replica`; `wrap` maps errors to JSON (the app's own)."""

    async def generate(request: Request) -> Response:
        return await _generate(replica, request)

    return [Route("/models/{version_id}/generate", wrap(generate), methods=["POST"])]


async def _generate(replica: ReplicaState, request: Request) -> Response:
    """Validate, queue in the engine (its 4xx errors answer as JSON before any event), then
    stream."""
    check_content_length(
        request.headers.get("content-length"), max_body_bytes=MAX_GENERATE_BODY_BYTES
    )
    body = await read_body(request.stream(), max_body_bytes=MAX_GENERATE_BODY_BYTES)
    try:
        wanted = GenerateRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc
    model, release = await replica.hold(request.path_params["version_id"])
    try:
        if not isinstance(model, Generates):
            raise InvalidRequest(
                "this endpoint's model does not generate text; send images to "
                "/v1/endpoints/{name}/predict",
                param="model",
            )
        request_id, events = model.generate(wanted)
    except BaseException:
        release()
        raise
    replica.outstanding += 1

    async def body_events() -> AsyncIterator[bytes]:
        async for item in events:
            yield event(item.model_dump())

    def on_close(client_left: bool) -> None:
        """Whether the gateway left or the stream ended, the request is over: a cancel
        of an ended request does nothing."""
        replica.outstanding -= 1
        model.cancel(request_id)
        release()

    return EventStream(body_events(), on_close=on_close)
