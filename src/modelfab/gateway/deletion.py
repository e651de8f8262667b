"""Deleting an endpoint around the gateway's drain: stop routing to it, let its in-flight
requests finish, then stop its replicas. The two database steps are injected (they are
the endpoint service's), so the gateway stays below the services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from modelfab.gateway.gateway import Gateway
from modelfab.schemas.endpoints import EndpointDeleted

P = TypeVar("P")


class EndpointDeleter(Generic[P]):
    """`start_delete(principal, name)` marks the endpoint deleting and returns its id (or
    raises NotFound); `finish_delete(endpoint id)` stops its replicas and removes it."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        start_delete: Callable[[P, str], str],
        finish_delete: Callable[[str], None],
        drain_timeout_s: float = 30.0,
    ):
        self.gateway = gateway
        self.start_delete = start_delete
        self.finish_delete = finish_delete
        self.drain_timeout_s = drain_timeout_s

    async def delete(self, principal: P, name: str) -> EndpointDeleted:
        """Stop routing to `name`, wait up to `drain_timeout_s` for its in-flight requests,
        then stop its replicas. Raises NotFound for an endpoint not the caller's."""
        endpoint_id = await run_in_threadpool(self.start_delete, principal, name)
        in_flight = await self.gateway.drain(endpoint_id, self.drain_timeout_s)
        await run_in_threadpool(self.finish_delete, endpoint_id)
        self.gateway.invalidate()
        return EndpointDeleted(name=name, deleted=True, drained=in_flight)
