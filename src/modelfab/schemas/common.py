"""What every answer shares: the model bases, the list envelope, the error body, health."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class WireModel(BaseModel):
    """An object of the API. Unknown fields are ignored when parsing, so an SDK keeps
    working against a newer server that answers more."""

    model_config = ConfigDict(extra="ignore")


class OpenModel(BaseModel):
    """An object whose unknown fields pass through (kept when parsed and answered as given):
    for answers still built as dicts by services that may add fields, and free-form parts."""

    model_config = ConfigDict(extra="allow")


class List(WireModel, Generic[T]):
    """`{"object": "list", "data": [...]}`: every collection the API answers."""

    object: Literal["list"] = "list"
    data: list[T]


class ErrorDetail(WireModel):
    code: str = Field(description="Stable, machine-readable, e.g. not_found, quota_exceeded.")
    message: str = Field(description="What went wrong and what to do about it.")
    param: str | None = Field(default=None, description="The offending field, when one is.")


class ErrorResponse(WireModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (401, "Missing or invalid key"),
        (403, "Not allowed for this key"),
        (404, "Not found"),
        (409, "Conflict"),
        (413, "Payload too large"),
        (422, "Invalid request: the named param is wrong"),
        (429, "Quota or rate limit reached"),
    )
}
"""`responses=` for routers: the error body documented on the 4xx answers."""


class Health(WireModel):
    status: Literal["ok"] = "ok"
    version: str
