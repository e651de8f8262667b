"""Server-sent events, both ways: `EventStream`, an ASGI response that streams events and
always runs its `on_close` (the stream ended, failed, or the client left), and `read_events`,
which reads a stream of them with aiohttp (the gateway reading a replica).

Why not Starlette's StreamingResponse: when the client leaves while the response waits in
`send`, Starlette cancels it and the body generator is left suspended (closed whenever it is
collected), so a `finally` in it may run late or never. Replicas cancel engine requests and
the gateway meters in `on_close`, which must run at once and exactly once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

DONE = "[DONE]"
"""OpenAI's last event of a stream."""


def event(data: dict[str, Any] | str) -> bytes:
    """One SSE event: `data: <json or text>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class EventStream(Response):
    """An ASGI response streaming the bytes `body` yields (events made with `event`).

    `on_close(client_left)` runs exactly once after the body ended, failed or the client
    disconnected (`client_left` True then); the body is closed (`aclose`) before it, so a
    `finally` in the body has run. Exceptions of the body after the headers went out end the
    stream (logged); the client sees a cut stream, never a second status line."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        on_close: Callable[[bool], None] | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.events = body
        self.on_close = on_close
        self.extra_headers = {"cache-control": "no-cache", **(headers or {})}
        self.status_code = 200
        self.background = None  # what frameworks read of a Response; nothing runs after
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client_left = False
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    nonlocal client_left
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    client_left = not self._ended  # after the end: the normal close
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            with anyio.CancelScope(shield=True):
                await _close(self.events)
            if self.on_close is not None:
                self.on_close(client_left)

    async def _stream(self, send: Send) -> None:
        raw_headers = [(k.encode(), v.encode()) for k, v in self.extra_headers.items()]
        raw_headers.append((b"content-type", self.media_type.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        try:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:
            logger.exception("a server-sent event stream failed; cutting it")
        self._ended = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _close(body: AsyncIterator[Any]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.exception("closing a server-sent event stream failed")


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON `data:` events of an SSE response, in order; stops at `[DONE]` or the end.
    Raises ValueError for an event that is not JSON."""
    async for raw in response.content:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == DONE:
            return
        yield json.loads(data)
